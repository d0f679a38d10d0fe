"""Runs: start a pipeline graph as a recorded run, or resume one from its checkpoint.

Every command is a run (store.models.Run). The graph's state is checkpointed by LangGraph's
SQLite saver with the run id as thread id, synchronously after every step, so a crash loses
at most the node in flight; that node's LLM calls are in the response cache, so re-running
it costs nothing.

    >>> from tagsmith.agents.fake import FakeLLM
    >>> from tagsmith.core.config import load_config
    >>> config = load_config(overrides={"llm": {"model": "fake/x"}, "store": {"db": "runs.db"},
    ...                                 "progress": False}, environ={})
    >>> card = '{"genre": "comedy", "audience": "kids", "mood": "warm"}'
    >>> run, state = asyncio.run(execute("probe", config, {"items": [{"id": "1", "text": "Toy Story"}]},
    ...                                  backend=FakeLLM([card])))
    >>> run.status, run.calls, state["done"]
    ('done', 1, 1)
    >>> asyncio.run(resume(run.id, config, backend=FakeLLM()))[0].calls   # finished: nothing is sent again
    1
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError

from tagsmith.agents.gateway import Backend, Gateway
from tagsmith.core.config import Config, deep_merge, validate_config
from tagsmith.core.errors import BudgetExceeded, ConfigError
from tagsmith.pipelines.context import Embed, Pipeline, Progress, RunContext
from tagsmith.store.checkpoints import open_checkpointer
from tagsmith.store.db import Store, StoreError, describe_db_error, lease_done, lease_owner
from tagsmith.store.models import utcnow

__all__ = ["PIPELINES", "Pipeline", "RunContext", "execute", "resume", "pipeline", "open_store", "checkpointer"]

# run kind -> the module that implements the Pipeline protocol for it (imported on demand:
# `tagsmith runs list` must not load every graph)
PIPELINES: dict[str, str] = {
    "probe": "tagsmith.pipelines.probe",
    "vocab": "tagsmith.pipelines.vocabulary",
    "tag": "tagsmith.pipelines.assignment",
    "evolve": "tagsmith.pipelines.evolution",
    "score": "tagsmith.pipelines.scoring",
}


def pipeline(kind: str) -> Pipeline:
    """The pipeline module of a run kind, checked against the protocol."""
    if kind not in PIPELINES:
        raise ConfigError(f"unknown run kind {kind!r}; known: {', '.join(sorted(PIPELINES))}")
    module = importlib.import_module(PIPELINES[kind])
    if not isinstance(module, Pipeline):  # a programming error, caught by the tests
        raise TypeError(f"{PIPELINES[kind]} does not implement the Pipeline protocol")
    return module


def open_store(config: Config) -> Store:
    return Store(config.store.db, busy_timeout_ms=config.store.busy_timeout_ms)


def checkpointer(config: Config, store: Store):
    """LangGraph's checkpointer for the store (its own SQLite file unless
    ``store.checkpoint_db`` names another)."""
    if config.store.checkpoint_db:
        target = config.store.checkpoint_db
    elif store.url.startswith("postgresql"):
        target = store.url  # the checkpoints live in the store's database
    else:
        target = store.path or ":memory:"
    return open_checkpointer(target, busy_timeout_ms=config.store.busy_timeout_ms)


current_run: str | None = None  # the run this process drives now (the CLI names it when stopped)


def _graph_config(run_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": run_id}, "recursion_limit": 10_000}


@dataclass
class Services:
    """What a caller may lend a run: a model backend (tests: the fake), a progress display,
    an embedder. Anything left out is made by the run itself."""

    backend: Backend | None = None
    progress: Progress | None = None
    embed: Embed | None = None


async def _drive(kind: str, run_id: str, config: Config, store: Store, inputs: dict[str, Any] | None,
                 services: Services) -> dict[str, Any]:
    module = pipeline(kind)
    owner, ttl = lease_owner(), config.store.lease_s
    holder = store.acquire_lease(run_id, owner, ttl)
    if holder is not None:
        raise ConfigError(f"run {run_id} is being driven by {holder}; one process drives a run at a time "
                          f"(wait for it, or for its lease to expire)")
    gateway = Gateway(config.llm, store=store, run_id=run_id, backend=services.backend)
    ctx = RunContext(run_id=run_id, store=store, gateway=gateway, config=config, progress=services.progress,
                     embed=services.embed)
    store.update_run(run_id, status="running", error=None)
    global current_run
    current_run = run_id
    lost: list[str] = []
    beat = asyncio.create_task(_heartbeat(store, run_id, owner, ttl, asyncio.current_task(), lost))
    try:
        async with checkpointer(config, store) as checkpoints:
            ctx.checkpoints = checkpoints
            graph = module.build_graph().compile(checkpointer=checkpoints.saver)
            cfg = _graph_config(run_id)
            snapshot = await graph.aget_state(cfg)
            # ``next`` leaves out tasks whose writes were saved before a crash that came ahead
            # of the step's checkpoint; the graph is only finished when no task is left at all.
            if inputs is None and snapshot.values and not snapshot.next and not snapshot.tasks:
                state = snapshot.values  # finished graph; only the bookkeeping was lost
            else:
                start = inputs if not snapshot.values else None
                if start is None and not snapshot.values:
                    start = json.loads(store.require_run(run_id).inputs_json)
                state = await graph.ainvoke(None if start is None else module.initial_state(start), cfg,
                                            context=ctx, durability="sync")
            await checkpoints.prune(run_id, keep=1)  # a finished run keeps its last checkpoint only
        metrics = module.finish(ctx, state)
        run = store.require_run(run_id)
        metrics = {**metrics, "llm_calls": run.calls, "cache_hits": run.cache_hits,
                   "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
                   "cost_usd": run.cost_usd}
        store.update_run(run_id, status="done", finished_at=utcnow(), metrics_json=json.dumps(metrics, default=float))
        return state
    except (KeyboardInterrupt, asyncio.CancelledError, Exception) as exc:
        if lost:  # another process drives the run now: leave its row alone
            await _release_cancelled_tasks(exc)
            raise StoreError(lost[0]) from None
        # Ctrl-C and SIGTERM reach a run as the cancellation of its task (asyncio.run)
        status = ("budget" if isinstance(exc, BudgetExceeded) else
                  "interrupted" if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)) else "failed")
        await _release_cancelled_tasks(exc)
        try:
            store.update_run(run_id, status=status, error=f"{type(exc).__name__}: {exc}"[:2000])
        except StoreError:
            pass  # the store itself is failing (full, locked): the original error says why
        if isinstance(exc, (sqlite3.OperationalError, OperationalError)):
            # the checkpointer's SQLite error, worded like the store's own
            raise StoreError(describe_db_error(exc, store.url)) from exc
        raise
    finally:
        beat.cancel()
        await ctx.aclose()
        await gateway.aclose()
        lease_done(owner)
        if not lost:
            try:
                store.release_lease(run_id, owner)
            except StoreError:
                pass  # the store is failing; the lease expires by itself


async def _heartbeat(store: Store, run_id: str, owner: str, ttl: float, driver: asyncio.Task | None,
                     lost: list[str]) -> None:
    """Renew the run's lease every third of its length; if it was taken over (this process
    stalled past it), stop driving the run at once."""
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            ours = await asyncio.to_thread(store.renew_lease, run_id, owner, ttl)
        except StoreError:
            continue  # the store is failing for a moment: the run's own writes will say so
        if not ours:
            lost.append(f"run {run_id}: another process took over its lease; this one stopped driving it")
            if driver is not None:
                driver.cancel()
            return


async def _release_cancelled_tasks(exc: BaseException) -> None:
    """When one node fails, LangGraph cancels the others; a task cancelled in the middle of
    its checkpoint write keeps that write's SQLite cursor alive in its coroutine frame, and
    the closed checkpointer connection then holds the database's write lock until the
    cursor is collected, so the run's status could not be recorded ("database is locked").
    Those frames are reachable from the error's traceback: keep the traceback as text (a
    note, shown with --debug) and let the frames, and the lock, go."""
    import gc
    import traceback

    if exc.__traceback__ is not None:
        exc.add_note("".join(traceback.format_tb(exc.__traceback__)).rstrip())
        exc.__traceback__ = None
    for chained in (exc.__cause__, exc.__context__):
        if chained is not None:
            chained.__traceback__ = None
    for _ in range(3):  # the cancelled tasks finish unwinding only when the loop runs them
        await asyncio.sleep(0.01)
    gc.collect()


def _config_record(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


async def execute(kind: str, config: Config, inputs: dict[str, Any], *, store: Store | None = None,
                  backend: Backend | None = None, parent_run: str | None = None,
                  progress: Progress | None = None, embed: Embed | None = None, run_id: str | None = None):
    """Start a new run of ``kind``; returns (run row, final state)."""
    module = pipeline(kind)
    own = store is None
    store = store or open_store(config)
    try:
        from tagsmith.prompts import prompt_hash

        run = store.create_run(kind, config=_config_record(config), model=config.llm.model, inputs=inputs,
                               parent_run=parent_run, run_id=run_id,
                               prompt_hashes={p: prompt_hash(p) for p in module.PROMPTS})
        state = await _drive(kind, run.id, config, store, inputs, Services(backend, progress, embed))
        return store.require_run(run.id), state
    finally:
        if own:
            store.close()


async def resume(run_id: str, config: Config, *, overrides: dict[str, Any] | None = None,
                 store: Store | None = None, backend: Backend | None = None,
                 progress: Progress | None = None, embed: Embed | None = None):
    """Continue a run from its last checkpoint with its own stored configuration.

    ``overrides`` (e.g. a larger budget) are merged over the stored configuration; the
    database location always comes from ``config``."""
    own = store is None
    store = store or open_store(config)
    try:
        run = store.require_run(run_id)
        stored = json.loads(run.config_json)
        stored["store"] = config.store.model_dump()
        merged = validate_config(deep_merge(stored, overrides or {}), source=f"run {run.id} configuration")
        store.update_run(run.id, config_json=json.dumps(_config_record(merged)))  # what the run now uses
        state = await _drive(run.kind, run.id, merged, store, None, Services(backend, progress, embed))
        return store.require_run(run.id), state
    finally:
        if own:
            store.close()
