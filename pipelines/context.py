"""What every graph node gets besides its state: the run's services, and the protocol a
pipeline module implements.

Nodes read the context through LangGraph's runtime (``runtime.context``); it is never
checkpointed. Services are typed attributes, made on first use where they are costly (the
embedding model, the sandbox pool), so that a test injects a fake by setting the
attribute:

    >>> from tagsmith.core.config import Config
    >>> ctx = RunContext(run_id="r1", store=None, gateway=None, config=Config())
    >>> ctx.embed = lambda texts: [[1.0] for _ in texts]      # a test's fake embedder
    >>> ctx.embedder()(["a", "b"])
    [[1.0], [1.0]]
    >>> ctx.config.pipeline.vocab.sample_size                 # each pipeline reads its own section
    120
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tagsmith.core.config import Config
from tagsmith.core.vocabulary import Vocabulary

if TYPE_CHECKING:  # annotations only: importing these here would load them for every pipeline
    from langgraph.graph import StateGraph

    from tagsmith.agents.evolver import Proposer
    from tagsmith.agents.gateway import Gateway
    from tagsmith.evaluators.evo_tasks import Task
    from tagsmith.evaluators.sandbox import SandboxPool
    from tagsmith.store.db import Store
    from tagsmith.store.models import Run

Embed = Callable[[list[str]], Any]  # texts -> unit vectors (n, d), numpy


class BatchStage(Protocol):
    """The per-run part of a batch pipeline (assignment, scoring): what it needs to process
    one batch of records (a vocabulary, an index, a limiter), made once per run."""

    async def process(self, batch: list[dict[str, Any]]) -> Any: ...


class Checkpoints(Protocol):
    """The run's checkpoints, as far as a node needs them: old ones can be dropped."""

    async def prune(self, run_id: str, keep: int) -> int: ...


class Progress(Protocol):
    """Where a long run reports how far it is (the CLI shows a bar; tests may count)."""

    def total(self, total: int, done: int = 0) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass
class RunContext:
    """The services of one run. ``gateway`` is the only way to a model; ``store`` the only
    way to the database."""

    run_id: str
    store: Store
    gateway: Gateway
    config: Config
    progress: Progress | None = None
    embed: Embed | None = None  # default: the bundled MiniLM, loaded on first use
    sandbox: SandboxPool | None = None  # evolution: candidates run here (closed with the run)
    task: Task | None = None  # evolution: the task being evolved
    proposer: Proposer | None = None  # evolution: LLM or random edits
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)  # vocab run id -> final vocabulary
    stage: BatchStage | None = None  # assignment, scoring: the batch stage's per-run resources
    checkpoints: Checkpoints | None = None  # set by the runtime: batch waves prune old checkpoints

    def embedder(self) -> Embed:
        if self.embed is None:
            from tagsmith.evaluators.embeddings import default_embedder

            self.embed = default_embedder().encode
        return self.embed

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(n)

    async def aclose(self) -> None:
        """Release what the run started (the sandbox's workers); the gateway is closed by
        the runtime, which made it."""
        if self.sandbox is not None:
            close = getattr(self.sandbox, "aclose", None) or getattr(self.sandbox, "close", None)
            if close is not None:
                result = close()
                if hasattr(result, "__await__"):
                    await result
            self.sandbox = None


@runtime_checkable
class Pipeline(Protocol):
    """A pipeline module: one graph and what the runtime needs around it.

    - ``KIND``: the run kind it serves (``tagsmith runs list`` shows it);
    - ``PROMPTS``: names of the prompt files it uses (their hashes are stored with the run);
    - ``build_graph()``: the uncompiled graph; the runtime compiles it with its checkpointer;
    - ``initial_state(inputs)``: the graph's first state from the run's stored inputs (a
      batch pipeline keeps records out of it);
    - ``finish(ctx, state)``: the run's metrics once the graph is done;
    - ``export_rows(store, run)``: the run's results as rows, streamed, for ``tagsmith export``.
    """

    KIND: str
    PROMPTS: tuple[str, ...]

    def build_graph(self) -> StateGraph: ...

    def initial_state(self, inputs: dict[str, Any]) -> dict[str, Any]: ...

    def finish(self, ctx: RunContext, state: dict[str, Any]) -> dict[str, Any]: ...

    def export_rows(self, store: Store, run: Run) -> Iterable[dict[str, Any]]: ...
