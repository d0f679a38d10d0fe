"""tagsmith: LLM agents as LangGraph graphs for tagging, program evolution and data scoring.

The repository's top-level folders install under this namespace: ``tagsmith.core``
(config, errors, the vocabulary model, readers), ``tagsmith.store``, ``tagsmith.prompts``,
``tagsmith.evaluators``, ``tagsmith.agents``, ``tagsmith.pipelines``; this folder holds the
shell: ``tagsmith.api`` (one function per job), ``tagsmith.runtime`` (runs and resume) and
the CLI.
"""

__version__ = "0.1.0"
