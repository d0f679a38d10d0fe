"""The batch stage: one machinery for every job that sends each record of a large input
through a model (assignment: a batch of items per call; scoring: a document per call).

A stage implements one function, ``process(batch) -> BatchResult``; this module does the
rest, once: streaming the input into the store in chunks, waves of work read from the
store, bounded concurrency, idempotent writes, retries of failed batches, progress and
counters. The graph is the control flow; the store is the truth:

    load -> wave -> wave -> load -> wave -> ... -> retry -> wave -> [after] -> finalize
         \\________________ route() after every node _______________/

- ``load`` reads the next chunk of the source (file, folder or glob of shards) from the
  cursor kept in the store, and writes the chunk's records (state ``pending``), the new
  cursor and the skip counters in one transaction. A resumed run loads on from there, and
  refuses with one line a source that changed underneath it.
- ``wave`` streams pending records by an indexed query (its cost does not grow with what
  is done) through the engine, and writes each batch's records' new state and result and
  its counters in one group-committed transaction the moment it is answered. A crash loses at most the
  batches in flight, whose calls the response cache may already hold.
- ``retry`` puts failed records back once more (in batches of one).

Graph state holds ids, counters and flags, never record texts and nothing that grows with
the input or the number of waves; counters that must survive a crash live in the store
(``run_stat``). Old checkpoints are pruned as the run goes: checkpoint bytes stay flat.

    >>> route({"exhausted": False, "pending": 0, "wave_size": 64})
    'load'
    >>> route({"exhausted": True, "pending": 10, "wave_size": 64})
    'wave'
    >>> route({"exhausted": True, "pending": 0, "wave_size": 64, "failed": 3, "retry_round": 0, "retries": 1})
    'retry'
    >>> route({"exhausted": True, "pending": 0, "wave_size": 64, "failed": 3, "retry_round": 1, "retries": 1})
    'after'
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from tagsmith.core.datasets import ItemSource
from tagsmith.core.errors import BudgetExceeded, InputError, LLMError
from tagsmith.pipelines.context import RunContext
from tagsmith.pipelines.stage import BatchResult, Record, Skips, Stage
from tagsmith.store.db import Write

__all__ = ["BatchResult", "BatchSettings", "BatchState", "Record", "Skips", "Stage", "build", "initial_state",
           "load_metrics", "route"]

CHECKPOINTS_KEPT = 2  # while a run goes on; a finished run keeps its last one
WAVE_ROUNDS = 4  # a wave streams this many wave_size's worth of records between checkpoints


class BatchState(TypedDict, total=False):
    engine: str  # "asyncio" (waves in this process) or "ray" (one node hands the work to Ray Data)
    source: dict  # an ItemSource fingerprint, or {"inline": true} (records in the run's inputs)
    params: dict  # the stage's own inputs (e.g. the vocabulary run)
    loaded: int
    exhausted: bool
    pending: int  # pending records, counted up to wave_size
    failed: int  # failed records that may be retried, counted up to 1
    wave_size: int
    waves: int
    retry_round: int
    retries: int


@dataclass
class BatchSettings:
    """Each batch pipeline's section maps onto these (batch_size, wave_batches, retries,
    load_chunk)."""

    batch_size: int
    wave_batches: int
    retries: int = 1
    load_chunk: int = 10_000


# -- routing --------------------------------------------------------------------------------------
def route(state: BatchState) -> Literal["load", "wave", "retry", "after"]:
    """Load while less than a wave is pending, then waves, then one retry round, then
    whatever the pipeline does after its waves."""
    if not state.get("exhausted") and state.get("pending", 0) < state["wave_size"]:
        return "load"
    if state.get("pending", 0) > 0:
        return "wave"
    if state.get("failed", 0) > 0 and state.get("retry_round", 0) < state.get("retries", 1):
        return "retry"
    return "after"


def _counts(ctx: RunContext, stage: Stage, wave_size: int) -> dict[str, int]:
    return {"pending": ctx.store.count_work(ctx.run_id, stage.input_kind, "pending", cap=wave_size),
            "failed": ctx.store.count_work(ctx.run_id, stage.input_kind, "failed", cap=1)}


# -- loading --------------------------------------------------------------------------------------
def load_chunk(ctx: RunContext, stage: Stage, state: BatchState, chunk: int) -> dict[str, Any]:
    """Read the next ``chunk`` records of the source into the store (see the module text)."""
    store, run_id, kind = ctx.store, ctx.run_id, stage.input_kind
    spec = source_of(ctx) if not state["source"].get("inline") else state["source"]
    cursor = store.cursor(run_id, kind)
    if spec.get("inline"):
        if cursor is None:  # a library call's list of items, kept on the run
            inputs = json.loads(store.require_run(run_id).inputs_json)
            items = next((inputs[k] for k in INLINE if k in inputs), [])
            store.load_work(run_id, kind, [(str(i["id"]), {"text": i["text"]}) for i in items],
                            cursor={"file": 0, "records": len(items), "exhausted": True},
                            stats={"loaded": len(items)}, duplicates="skip")
        return {"exhausted": True}
    if cursor is not None and cursor.get("exhausted"):
        return {"exhausted": True}
    source = ItemSource.model_validate({k: v for k, v in spec.items() if k != "files"})
    at = (cursor["file"], cursor["records"]) if cursor else (0, 0)
    if cursor is not None:
        source.check_unchanged(spec)  # the records past the cursor must be the ones it points into
    rows: list[Record] = []
    where_of: dict[str, str] = {}
    skips = Skips(source.on_error, already=int(store.stats(run_id).get("skipped", 0)))
    new_cursor = at
    exhausted = True
    for entry in source.read(cursor=at):
        new_cursor = entry.cursor
        if entry.item is None:
            skips.add(entry.where, entry.reason or "bad record")
        elif entry.item.id in where_of:
            skips.add(entry.where, f"duplicate id {entry.item.id!r} (first seen at {where_of[entry.item.id]})")
        else:
            where_of[entry.item.id] = entry.where
            rows.append((entry.item.id, {"text": entry.item.text}))
        if len(rows) >= chunk:
            exhausted = False
            break
    mark = {"file": new_cursor[0], "records": new_cursor[1], "exhausted": exhausted}
    dupes = store.load_work(run_id, kind, rows, cursor=mark, stats={"loaded": len(rows), **skips.stats},
                            errors=skips.errors, duplicates=source.on_error)
    if dupes:
        if source.on_error == "raise":
            first = min(dupes, key=lambda k: where_of[k])
            raise InputError(f"{where_of[first]}: duplicate id {first!r} (first seen in an earlier chunk)")
        extra = {"loaded": -len(dupes), "skipped": len(dupes), "skipped: duplicate id '…'": len(dupes)}
        store.transact(Write(run_id=run_id, stats=extra))
    if exhausted and not store.count_records(run_id, kind):
        n = int(store.stats(run_id).get("skipped", 0))
        raise InputError(f"{source.path}: no items to work on" + (f" ({n} bad records skipped)" if n else ""))
    return {"exhausted": exhausted, "loaded": state.get("loaded", 0) + len(rows) - len(dupes)}


INLINE = ("items", "docs")  # where a run's inputs hold records given as a list


def initial_state(inputs: dict[str, Any]) -> BatchState:
    """The graph's first state from the run's inputs: the source and the stage's params,
    never records. Inputs are ``{"source": fingerprint, "params": {...}}``, or records given
    as a list (``{"items": [{"id", "text"}...], **params}``), which stay on the run row.

        >>> initial_state({"vocab_run": "v1", "items": [{"id": "1", "text": "a"}]})["params"]
        {'vocab_run': 'v1'}
    """
    if "source" in inputs:  # the state keeps a digest of the file list; the run row keeps the list
        source, params = compact(inputs["source"]), inputs.get("params", {})
    else:
        source, params = {"inline": True}, {k: v for k, v in inputs.items() if k not in INLINE + ("engine",)}
    return {"source": source, "params": params, "loaded": 0, "waves": 0, "retry_round": 0,
            "engine": inputs.get("engine", "asyncio")}


def compact(source: dict[str, Any]) -> dict[str, Any]:
    """A source fingerprint as graph state holds it: the options and a digest of the files
    (thousands of shards must not make every checkpoint large)."""
    files = source.get("files") or []
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {**{k: v for k, v in source.items() if k != "files"}, "n_files": len(files), "files_digest": digest}


def source_of(ctx: RunContext) -> dict[str, Any]:
    """The run's full source fingerprint (files with sizes and mtimes), from the run row."""
    return json.loads(ctx.store.require_run(ctx.run_id).inputs_json)["source"]


def load_metrics(stats: dict[str, float]) -> dict[str, Any]:
    """What loading did, for the run's metrics: records loaded, skipped, and per reason."""
    reasons = {k.removeprefix("skipped: "): int(v) for k, v in stats.items() if k.startswith("skipped: ")}
    return {"loaded": int(stats.get("loaded", 0)), "skipped": int(stats.get("skipped", 0)),
            **({"skipped_by_reason": reasons} if reasons else {}),
            "failed_batches": int(stats.get("failed_batches", 0)), "waves": int(stats.get("waves", 0))}


# -- the engine -----------------------------------------------------------------------------------
Fetch = Callable[[int, int], list[tuple[int, str, dict[str, Any]]]]  # (after row id, n) -> (id, key, data)


class AsyncioEngine:
    """Runs a wave in this process as a stream, not a barrier: batches start as slots free up
    (at most ``2 x llm.concurrency`` past their prompt building; the gateway's own limit
    keeps C calls in flight), the next pending records are read from the store as the
    queue runs low, and each batch's outcome is written the moment it is answered. Only the
    wave's end waits for its slowest batch."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.slots = 2 * ctx.config.llm.concurrency

    async def run(self, stage: Stage, fetch: Fetch, quota: int, batch_size: int) -> dict[str, float]:
        ctx = self.ctx
        totals = {"batches": 0.0, "records": 0.0, "failed_batches": 0.0}
        free = asyncio.Semaphore(self.slots)

        async def one(batch: list[Record]) -> None:
            try:
                try:
                    result = await stage.process(batch)
                except BudgetExceeded:
                    raise
                except LLMError as exc:  # the model kept failing on this batch: record, go on
                    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                    result = BatchResult(failed=[(k, stage.failure(k, reason)) for k, _ in batch],
                                         stats={"failed_batches": 1})
                    totals["failed_batches"] += 1
                await ctx.store.write(ctx.store.work_write(ctx.run_id, stage.input_kind, result.done, result.failed,
                                                           {"batches": 1, **result.stats}))
            finally:
                free.release()
            totals["batches"] += 1
            ctx.advance(len(batch))

        after, taken = 0, 0
        try:
            async with asyncio.TaskGroup() as tg:  # one batch's budget stop or store error cancels the others
                while taken < quota:
                    n = min(quota - taken, self.slots * batch_size)
                    rows = await asyncio.to_thread(fetch, after, n)
                    if not rows:
                        break
                    after = rows[-1][0]
                    taken += len(rows)
                    for i in range(0, len(rows), batch_size):
                        await free.acquire()  # a slot: the queue of prompts to build stays short
                        tg.create_task(one([(k, d) for _, k, d in rows[i:i + batch_size]]))
        except BaseExceptionGroup as group:
            raise _first(group) from None
        totals["records"] = taken
        return totals


def _first(group: BaseExceptionGroup) -> BaseException:
    """The error a wave stopped for: a budget stop before anything else."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)
    walk(group)
    return next((e for e in leaves if isinstance(e, BudgetExceeded)), leaves[0])


# -- the graph ------------------------------------------------------------------------------------
StageFactory = Callable[[RunContext, dict[str, Any]], Stage]
SettingsOf = Callable[[RunContext], BatchSettings]


def build(make_stage: StageFactory, settings: SettingsOf, state_type: type = BatchState,
          after: tuple[tuple[str, Callable], ...] = ()) -> StateGraph:
    """The batch graph around a stage. ``after``: nodes the pipeline runs once the waves are
    done, in order (each returns ``{"after_done": True}`` when it has finished, or loops on
    itself by returning nothing of that)."""

    def stage_of(ctx: RunContext, state: BatchState) -> Stage:
        if ctx.stage is None:  # once per process: a fresh run, or a resumed one
            if not state.get("exhausted") and state.get("source", {}).get("n_files"):  # to be read: unchanged?
                spec = source_of(ctx)
                ItemSource.model_validate({k: v for k, v in spec.items() if k != "files"}).check_unchanged(spec)
            ctx.stage = make_stage(ctx, state.get("params", {}))
        return ctx.stage

    def wave_size(ctx: RunContext) -> int:
        s = settings(ctx)
        return s.batch_size * max(s.wave_batches, 4 * ctx.config.llm.concurrency)

    async def load(state: BatchState, runtime: Runtime) -> dict:
        ctx = runtime.context
        stage = stage_of(ctx, state)
        size = wave_size(ctx)
        out = await asyncio.to_thread(load_chunk, ctx, stage, state, max(settings(ctx).load_chunk, size))
        out.update(_counts(ctx, stage, size), wave_size=size, retries=settings(ctx).retries)
        if ctx.progress is not None:
            ctx.progress.total(ctx.store.count_records(ctx.run_id, stage.input_kind),
                               ctx.store.count_work(ctx.run_id, stage.input_kind, "done"))
        return out

    async def wave(state: BatchState, runtime: Runtime) -> dict:
        ctx = runtime.context
        stage = stage_of(ctx, state)
        size = wave_size(ctx)
        bsize = 1 if state.get("retry_round", 0) else stage.batch_size  # a retry goes one by one

        planning = [0.0]

        def fetch(after: int, n: int) -> list[tuple[int, str, dict[str, Any]]]:
            started = time.thread_time()
            rows = ctx.store.next_work(ctx.run_id, stage.input_kind, n, after=after)
            planning[0] += time.thread_time() - started  # what finding the next work costs
            return rows

        await AsyncioEngine(ctx).run(stage, fetch, quota=size * WAVE_ROUNDS, batch_size=bsize)
        await ctx.store.add_stats(ctx.run_id, {"waves": 1, "plan_cpu_s": planning[0]})
        if ctx.checkpoints is not None:
            await ctx.checkpoints.prune(ctx.run_id, keep=CHECKPOINTS_KEPT)
        return {"waves": state.get("waves", 0) + 1, **_counts(ctx, stage, size), "wave_size": size}

    async def on_ray(state: BatchState, runtime: Runtime) -> dict:
        """The whole remaining work as a Ray Data pipeline (pipelines/batch_ray.py)."""
        from tagsmith.pipelines import batch_ray

        ctx = runtime.context
        stage = stage_of(ctx, state)
        batch_ray.start(ctx.config)  # connect (or start a local instance) on the main thread
        out = await asyncio.to_thread(batch_ray.run, ctx, make_stage, stage.input_kind, source_of(ctx),
                                      state.get("params", {}), stage.batch_size)
        await ctx.store.add_stats(ctx.run_id, {"engine_runs": 1})
        return {"exhausted": True, "pending": 0, "failed": 0, "wave_size": 1, "loaded": out["done"] + out["failed"]}

    async def retry(state: BatchState, runtime: Runtime) -> dict:
        ctx = runtime.context
        stage = stage_of(ctx, state)
        n = await asyncio.to_thread(ctx.store.retry_failed, ctx.run_id, stage.input_kind,
                                    1 + settings(ctx).retries)
        await ctx.store.add_stats(ctx.run_id, {"retried": n})
        return {"retry_round": state.get("retry_round", 0) + 1, **_counts(ctx, stage, wave_size(ctx))}

    g = StateGraph(state_type)
    g.add_node("load", load)
    g.add_node("wave", wave)
    g.add_node("retry", retry)
    g.add_node("ray", on_ray)
    names = [n for n, _ in after] + ["finalize"]
    for name, fn in after:
        g.add_node(name, fn)
    g.add_node("finalize", lambda state: {})
    targets = {"load": "load", "wave": "wave", "retry": "retry", "after": names[0]}
    g.add_conditional_edges(START, lambda s: "ray" if s.get("engine") == "ray" else "load", ["ray", "load"])
    g.add_edge("ray", names[0])
    for node in ("load", "wave", "retry"):
        g.add_conditional_edges(node, route, targets)
    for (name, _), nxt in zip(after, names[1:]):
        g.add_conditional_edges(name, lambda s, name=name, nxt=nxt: nxt if s.get(f"{name}_done") else name,
                                [name, nxt])
    g.add_edge("finalize", END)
    return g
