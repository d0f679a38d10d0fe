"""tagsmith: LLM agents as LangGraph graphs for tagging, program evolution and data scoring.

The top-level folders of the repository (agents/, pipelines/, store/, evaluators/,
prompts/) install as ``tagsmith.agents``, ``tagsmith.pipelines`` and so on.
"""

import os

# litellm fetches a model cost map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
