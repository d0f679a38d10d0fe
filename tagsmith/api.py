"""The library: one function per job. Each owns the whole behaviour of its job (reading the
input, sampling, seeding, the run, its metrics); the CLI's commands parse flags and call
these, and so can a notebook or a test:

    >>> from tagsmith.core.config import load_config
    >>> config = load_config(overrides={"llm": {"model": "fake/x"}, "store": {"db": "api.db"},
    ...                                 "pipeline": {"vocab": {"sample_size": 5}}})
    >>> from tagsmith.agents.fake import FakeLLM
    >>> import tests_policies                                    # doctest: +SKIP
    >>> vocab = build_vocabulary(ItemSource(path="movielens:30"), config, seed_field="genres",
    ...                          backend=FakeLLM(default=tests_policies.reply_for))   # doctest: +SKIP
    >>> vocab.metrics["sample_items"], vocab.metrics["catalog_items"]                # doctest: +SKIP
    (5, 30)

Every function returns when its run has ended; a run that stopped (budget, a fault) still
returns its row with its status, and ``tagsmith resume RUN`` (``resume``) continues it.
Heavy libraries (LangGraph, litellm, torch) are imported by the functions that need them,
so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tagsmith.core.config import Config, deep_merge, read_config_file, validate_config
from tagsmith.core.errors import ConfigError, Interrupted
from tagsmith.core.datasets import ItemSource
from tagsmith.core.records import Item, LoadReport
from tagsmith.core.vocabulary import Facet, Vocabulary
from tagsmith.runtime import open_store

if TYPE_CHECKING:
    from tagsmith.agents.gateway import Backend
    from tagsmith.pipelines.context import Embed, Progress
    from tagsmith.store.db import Store
    from tagsmith.store.models import Run

__all__ = ["RunResult", "Selection", "ItemSource", "open_store", "probe", "build_vocabulary", "tag", "score", "select",
           "evolve", "resume", "export", "recsys_eval", "final_vocabulary"]

Items = ItemSource | Sequence[Item]
SELECT_METHODS = ("askllm", "density", "random", "combined")


@dataclass
class RunResult:
    """A finished (or stopped) run: its row, its metrics, how long it took, and what
    reading the input reported (skipped records per reason)."""

    run: Run
    seconds: float
    report: LoadReport | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads(self.run.metrics_json or "{}")

    @property
    def id(self) -> str:
        return self.run.id


@dataclass
class Selection:
    ids: list[str]
    report: dict[str, Any] = field(default_factory=dict)


class _StoreScope:
    """The caller's store, or one opened (and closed) for the call."""

    def __init__(self, config: Config, store: Store | None):
        self.config, self.given, self.store = config, store, store

    def __enter__(self) -> Store:
        if self.store is None:
            self.store = open_store(self.config)
        return self.store

    def __exit__(self, *exc: object) -> None:
        if self.given is None and self.store is not None:
            self.store.close()


def _items(source: Items) -> tuple[list[Item], LoadReport | None]:
    if isinstance(source, ItemSource):
        return source.load()
    items = list(source)
    if not items:
        raise ConfigError("no items to work on")
    return items, None


def _id_text(items: Iterable[Item]) -> list[dict[str, str]]:
    """What a graph's input holds of an item: id and text."""
    return [{"id": i.id, "text": i.text} for i in items]


def run_sync(coro: Any) -> Any:
    """``asyncio.run``, with SIGTERM handled as Ctrl-C is: the run's task is cancelled, so
    the run is marked interrupted and the store released; then ``Interrupted`` is raised
    (Ctrl-C raises KeyboardInterrupt, as ever)."""
    terminated = False

    async def main() -> Any:
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()
        try:
            loop.add_signal_handler(signal.SIGTERM, on_term)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass
        try:
            return await coro
        finally:
            try:
                loop.remove_signal_handler(signal.SIGTERM)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise Interrupted("terminated (SIGTERM)") from None
        raise


def load_report(run: Run, store: Store) -> LoadReport | None:
    """What loading a batch run's input skipped: counts per reason and the first lines."""
    st = store.stats(run.id)
    if not st.get("skipped"):
        return None
    inputs = json.loads(run.inputs_json)
    return LoadReport(path=inputs.get("source", {}).get("path", "input"), loaded=int(st.get("loaded", 0)),
                      skipped=int(st["skipped"]), errors=[e for _, e in store.iter_records(run.id, "load_error")],
                      reasons={k.removeprefix("skipped: "): int(v) for k, v in st.items() if k.startswith("skipped: ")})


def _execute(kind: str, config: Config, inputs: dict[str, Any], store: Store, **services: Any) -> tuple[Run, float]:
    from tagsmith.runtime import execute

    started = time.perf_counter()
    run, _ = run_sync(execute(kind, config, inputs, store=store, **services))
    return run, time.perf_counter() - started


def _batch_inputs(source: Items, engine: str = "asyncio", **params: Any) -> dict[str, Any]:
    """A batch run's inputs: its source (options, files with sizes and mtimes), never its
    records; a library call's list of items is kept on the run row (small inputs)."""
    if isinstance(source, ItemSource):
        source.check()  # a wrong field or format fails before a run exists
        if engine == "ray":
            from tagsmith.pipelines.batch_ray import require_ray

            require_ray()  # without the extra: one line saying what to install, before a run exists
        return {"source": source.fingerprint(), "params": params, "engine": engine}
    if engine == "ray":
        raise ConfigError("the ray engine reads its input from files: give an ItemSource (a file, folder or glob)")
    items = list(source)
    if not items:
        raise ConfigError("no items to work on")
    return {"items": _id_text(items), **params}


def _with(config: Config, section: str, **values: Any) -> Config:
    """The configuration with pipeline.<section> fields replaced (None leaves a field)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return config
    return validate_config(deep_merge(config.model_dump(mode="json"), {"pipeline": {section: values}}))


# -- smoke test -----------------------------------------------------------------------------------
def probe(source: Items, config: Config, *, store: Store | None = None, backend: Backend | None = None) -> RunResult:
    """One structured call per item (genre, audience, mood): the smallest run that goes
    through the whole runtime (gateway, cache, log, checkpoints)."""
    items, report = _items(source)
    with _StoreScope(config, store) as st:
        run, seconds = _execute("probe", config, {"items": _id_text(items)}, st, backend=backend)
    return RunResult(run, seconds, report)


# -- tagging --------------------------------------------------------------------------------------
def seed_facets(seed_vocab: str | Path) -> list[Facet]:
    """Facets a vocabulary starts from, from a file (YAML/JSON ``facets: [{name, definition,
    descriptors: [{name, definition}]}]``)."""
    from pydantic import ValidationError

    try:
        return Vocabulary.model_validate(read_config_file(seed_vocab)).facets
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{seed_vocab}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc


def build_vocabulary(source: Items, config: Config, *, seed_field: str | None = None,
                     seed_vocab: str | Path | None = None, store: Store | None = None,
                     backend: Backend | None = None, progress: Progress | None = None,
                     embed: Embed | None = None) -> RunResult:
    """Build a descriptor vocabulary (architect + annotators) on a seeded sample of the
    items (``pipeline.vocab.sample_size``, drawn as the input streams by). Seed facets come
    from ``seed_vocab`` (a file), ``seed_field`` (the most frequent values of a metadata
    field over all the items; also ``pipeline.vocab.seed_field``) and
    ``pipeline.vocab.seed_facets``."""
    extra: dict[str, Any] = {}
    if seed_vocab:
        extra["seed_facets"] = ([f.model_dump() for f in config.pipeline.vocab.seed_facets]
                                + [f.model_dump() for f in seed_facets(seed_vocab)])
    config = _with(config, "vocab", seed_field=seed_field, **extra)
    if isinstance(source, ItemSource):
        source.check()
        inputs: dict[str, Any] = {"source": source.fingerprint()}
    else:
        inputs = {"items": [{"id": i.id, "text": i.text, "fields": i.fields} for i in source]}
    with _StoreScope(config, store) as st:
        run, seconds = _execute("vocab", config, inputs, st, backend=backend, progress=progress, embed=embed)
        return RunResult(run, seconds, load_report(run, st))


def final_vocabulary(run_id: str, config: Config, *, store: Store | None = None) -> tuple[Vocabulary, dict[str, int]]:
    """The finished vocabulary of a vocab run and its usage in the last annotation round."""
    from tagsmith.pipelines.vocabulary import final_vocabulary as final

    with _StoreScope(config, store) as st:
        return final(st, st.require_run(run_id, kind="vocab").id)


def tag(source: Items, config: Config, *, vocab_run: str, store: Store | None = None,
        backend: Backend | None = None, progress: Progress | None = None,
        embed: Embed | None = None) -> RunResult:
    """Assign in-vocabulary descriptors to every item with the vocabulary of ``vocab_run``."""
    with _StoreScope(config, store) as st:
        vocab_id = st.require_run(vocab_run, kind="vocab").id  # a wrong id fails before the items are read
        run, seconds = _execute("tag", config, _batch_inputs(source, config.engine.kind, vocab_run=vocab_id), st,
                                backend=backend,
                                progress=progress, embed=embed, parent_run=vocab_id)
        return RunResult(run, seconds, load_report(run, st))


# -- data scoring ---------------------------------------------------------------------------------
def score(source: Items, config: Config, *, store: Store | None = None, backend: Backend | None = None,
          progress: Progress | None = None, embed: Embed | None = None) -> RunResult:
    """Ask-LLM P(yes) for every document and, unless ``pipeline.score.density`` is off, its
    density under an LSH sketch of MiniLM embeddings."""
    with _StoreScope(config, store) as st:
        run, seconds = _execute("score", config, _batch_inputs(source, config.engine.kind), st, backend=backend,
                                progress=progress, embed=embed)
        return RunResult(run, seconds, load_report(run, st))


def select(run_id: str, config: Config, *, method: Literal["askllm", "density", "random", "combined"],
           rate: float, seed: int = 0, strata: int = 5, store: Store | None = None) -> Selection:
    """A subset of a score run's documents: the top Ask-LLM scores, inverse-propensity
    density sampling, random, or density strata ranked by score (``combined``)."""
    from tagsmith.evaluators.selection import select as choose
    from tagsmith.evaluators.selection import selection_report

    if method not in SELECT_METHODS:
        raise ConfigError(f"select: method must be one of {', '.join(SELECT_METHODS)}, not {method!r}")
    with _StoreScope(config, store) as st:
        run = st.require_run(run_id, kind="score")
        ids: list[str] = []
        quality: list[float | None] = []
        for key, _, score in st.iter_results(run.id, "doc"):  # in load order, a chunk at a time
            ids.append(key)
            quality.append(None if score is None else score["score"])
        if all(q is None for q in quality) and not st.count_work(run.id, "doc", "done"):
            raise ConfigError(f"run {run.id} has no scores yet (tagsmith resume {run.id})")
        dens_list = [None if d is None else d["density"] for _, _, d in st.iter_joined(run.id, "doc", "density")]
    askllm = quality if any(q is not None for q in quality) else None
    dens = dens_list if any(d is not None for d in dens_list) else None
    try:
        chosen = choose(ids, method, rate, askllm=askllm or None, density=dens or None, seed=seed, strata=strata)
    except ValueError as exc:
        raise ConfigError(f"select {method}: {exc}") from exc
    return Selection(chosen, selection_report(ids, chosen, askllm=askllm or None, density=dens or None))


# -- evolution ------------------------------------------------------------------------------------
def evolve(config: Config, *, store: Store | None = None, backend: Backend | None = None,
           progress: Progress | None = None) -> RunResult:
    """Evolve the program of ``pipeline.evolve.task`` (a built-in task or a task folder)."""
    from tagsmith.pipelines.evolution import resolve_task

    resolve_task(config.pipeline.evolve)  # a bad task or data folder fails before the run exists
    with _StoreScope(config, store) as st:
        run, seconds = _execute("evolve", config, {}, st, backend=backend, progress=progress)
    return RunResult(run, seconds)


# -- any run --------------------------------------------------------------------------------------
def resume(run_id: str, config: Config, *, overrides: dict[str, Any] | None = None, store: Store | None = None,
           backend: Backend | None = None, progress: Progress | None = None,
           embed: Embed | None = None) -> RunResult:
    """Continue a run from its checkpoint with its stored configuration; ``overrides`` (a
    larger budget, another concurrency) are merged over it. A finished run is returned as
    it is."""
    from tagsmith.runtime import resume as resume_run

    with _StoreScope(config, store) as st:
        run = st.require_run(run_id)
        if run.status == "done":
            return RunResult(run, 0.0)
        started = time.perf_counter()
        run, _ = run_sync(resume_run(run.id, config, overrides=overrides, store=st, backend=backend,
                                        progress=progress, embed=embed))
        return RunResult(run, time.perf_counter() - started)


def export_rows(run_id: str, config: Config, *, store: Store | None = None) -> Iterable[dict[str, Any]]:
    """A run's results as rows (the pipeline decides what a row is)."""
    from tagsmith.runtime import pipeline

    with _StoreScope(config, store) as st:
        run = st.require_run(run_id)
        yield from pipeline(run.kind).export_rows(st, run)


def export(run_id: str, config: Config, *, fmt: Literal["jsonl", "csv", "parquet"] = "jsonl",
           output: str | Path, store: Store | None = None) -> int:
    """Write a run's rows to ``output`` ('-' for stdout) as JSONL, CSV or Parquet; returns
    the number of rows."""
    from tagsmith.core.writers import write_rows

    return write_rows(export_rows(run_id, config, store=store), fmt, str(output))


# -- downstream -----------------------------------------------------------------------------------
def recsys_eval(config: Config, *, tags: Sequence[str], models: Sequence[str], data: str = "movielens",
                seeds: int = 3, epochs: int | None = None, max_history: int = 20, core: int = 5,
                beam: int | None = None, jobs: int = 1, threads: int | None = None,
                log: Any = None) -> dict[str, Any]:
    """Train and evaluate recommenders (``models``) on each tag source over ``seeds`` seeds:
    full-ranking Recall/NDCG@5/10/20 on a leave-one-out split. Tag sources: a tagging run
    id (in ``config.store.db``), a JSONL/CSV file of id + descriptors, or genres, tfidf,
    random, random:SPEC, none. Returns the report (``evaluate.write`` saves it)."""
    from tagsmith.evaluators.recsys import MODELS, TAG_FREE

    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in MODELS]
    if not models or unknown:
        raise ConfigError(f"models: unknown {', '.join(unknown) or '(none given)'} (choose from {', '.join(MODELS)})")
    specs = list(dict.fromkeys(tags))
    if not specs:
        raise ConfigError("tags: give at least one tag source")
    if seeds < 1:
        raise ConfigError("seeds must be at least 1")
    if epochs is not None and epochs < 1:
        raise ConfigError("epochs must be at least 1")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError("jobs and threads must be at least 1")
    if data != "movielens" and any(s in ("genres", "tfidf", "random") for s in specs):
        raise ConfigError("tags genres/tfidf/random describe MovieLens; with another data file give a run or a "
                          "tags file (random:FILE for random tags of the same cardinality)")
    from tagsmith.evaluators.recsys import evaluate as ev
    from tagsmith.evaluators.recsys import tags as tagmod
    from tagsmith.evaluators.recsys.data import load_split

    started = time.perf_counter()
    split = load_split(data, core=core, max_history=max_history)
    db = config.store.db

    def source(spec: str):
        fixed = None if tagmod.seed_dependent(spec) else tagmod.resolve(spec, db=db)  # resolve once; fail early

        def make(seed: int):
            return fixed if fixed is not None else tagmod.resolve(spec, seed=seed, db=db)
        if fixed is None:
            make(0)  # fail early on a bad base source too
        return make

    sources = {spec: source(spec) for spec in specs} if any(m not in TAG_FREE for m in models) else {}
    opts = ev.Options(progress=bool(config.progress))
    opts.epochs = epochs
    if beam:
        opts.generative.beam = beam
    if log is not None:
        log(f"recsys: {split.name}: {split.n_users} users, {split.n_items} items; models {', '.join(models)}; "
            f"tags {', '.join(specs)}; seeds 0..{seeds - 1}")
    report = ev.run_grid(split, sources, models, list(range(seeds)), opts, log=log or (lambda _m: None),
                         jobs=jobs, threads=threads or ev.THREADS)
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report
