"""The batch stage on Ray Data: the same stage (``process(batch)``), past one machine.

    files --read (a task per shard, the project's reader: FILE:LINE, gzip, Parquet)-->
    records --keep (a worker drops what the store already has done; counts bad records)-->
    --map_batches (an actor pool; each actor its own gateway and store)--> results in the store

The LangGraph run stays the control flow: its ``ray`` node hands the whole remaining work
to Ray and records completion, so the run row, status, ``resume`` and the metrics are the
same as with the in-process engine. Every actor writes each batch's results (the work
record, created with its result, and the run's counters) the moment they are answered, so
a driver killed mid-run loses at most the batches in flight: ``tagsmith resume RUN`` reads
the input again, drops what is done and sends only the rest (answers already paid for come
from the response cache). Failed records are kept and tried again by a resume.

The store must be one that every actor reaches: PostgreSQL for a cluster; a SQLite file
only for a local, single-node run. Nothing here is imported unless ``engine.kind: ray``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

from tagsmith.core.config import Config
from tagsmith.core.datasets import ItemSource
from tagsmith.core.errors import ConfigError, InputError, LLMError, TagsmithError

INSTALL = "the ray engine needs the ray extra: pip install 'tagsmith[ray]'"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both
    except ImportError as exc:
        raise ConfigError(INSTALL) from exc
    return ray


def start(config: Config):
    """Connect to the configured Ray cluster, or start a local instance on this machine."""
    ray = require_ray()
    if not ray.is_initialized():
        engine = config.engine
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if engine.ray_address:
            kwargs["address"] = engine.ray_address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"engine.ray_address {engine.ray_address}: cannot reach the Ray cluster: {exc}") from exc
    return ray


# -- the pieces that run in Ray workers ----------------------------------------------------------
def read_shard(row: dict[str, Any], source: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One shard (file) of the source as records: {"key", "text", "where", "bad"}. The same
    reader and rules as the in-process engine; a bad record carries its reason."""
    spec = ItemSource.model_validate({k: v for k, v in source.items() if k != "files"})
    for entry in spec.model_copy(update={"path": row["path"], "limit": None}).read():
        if entry.item is None:
            yield {"key": "", "text": "", "where": entry.where, "bad": entry.reason or "bad record"}
        else:
            yield {"key": entry.item.id, "text": entry.item.text, "where": entry.where, "bad": ""}


class Keep:
    """Drops records the store already has done (a resumed run sends only the rest), and
    counts bad ones (``on_error: skip``) or stops the run at the first (``raise``)."""

    def __init__(self, config: dict[str, Any], run_id: str, kind: str, on_error: str):
        from tagsmith.pipelines.stage import Skips
        from tagsmith.store.db import Store

        cfg = Config.model_validate(config)
        self.store = Store(cfg.store.db, busy_timeout_ms=cfg.store.busy_timeout_ms)
        self.run_id, self.kind, self.on_error = run_id, kind, on_error
        self.skips_type = Skips

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        skips = self.skips_type(self.on_error, already=int(self.store.stats(self.run_id).get("skipped", 0)))
        keep = []
        for i, (key, bad, where) in enumerate(zip(batch["key"], batch["bad"], batch["where"])):
            if bad:
                skips.add(where, bad)  # raises InputError("FILE:LINE: reason") with on_error: raise
            else:
                keep.append(i)
        if skips.stats:
            self.store.transact(skips.write(self.store, self.run_id))
        keys = [batch["key"][i] for i in keep]
        done = self.store.done_keys(self.run_id, self.kind, keys)
        keep = [i for i in keep if batch["key"][i] not in done]
        return {"key": [batch["key"][i] for i in keep], "text": [batch["text"][i] for i in keep]}


class StageWorker:
    """An actor: the stage, a gateway (its own concurrency limit, retries, re-asks, cache)
    and a store. Each call gets up to ``batches_per_call`` stage batches, in input order,
    processes them concurrently and writes each one's results as it is answered."""

    def __init__(self, config: dict[str, Any], run_id: str, make_stage, params: dict[str, Any]):
        from tagsmith.agents.gateway import Gateway
        from tagsmith.pipelines.context import RunContext
        from tagsmith.store.db import Store

        self.config = Config.model_validate(config)
        self.store = Store(self.config.store.db, busy_timeout_ms=self.config.store.busy_timeout_ms)
        self.run_id = run_id
        self.gateway = Gateway(self.config.llm, store=self.store, run_id=run_id)
        self.ctx = RunContext(run_id=run_id, store=self.store, gateway=self.gateway, config=self.config)
        self.stage = make_stage(self.ctx, params)

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        records = [(k, {"text": t}) for k, t in zip(batch["key"], batch["text"])]
        size = self.stage.batch_size
        counts = {"done": 0, "failed": 0}

        async def one(part: list[tuple[str, dict[str, Any]]]) -> None:
            from tagsmith.pipelines.stage import BatchResult

            try:
                result = await self.stage.process(part)
            except LLMError as exc:  # the model kept failing on this batch: record, go on
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                result = BatchResult(failed=[(k, self.stage.failure(k, reason)) for k, _ in part],
                                     stats={"failed_batches": 1})
            inputs = dict(part)
            await self.store.write(self.store.work_upsert(
                self.run_id, self.stage.input_kind, [(k, inputs[k], r) for k, r in result.done],
                [(k, inputs[k], r) for k, r in result.failed], {"batches": 1, "loaded": len(part), **result.stats}))
            counts["done"] += len(result.done)
            counts["failed"] += len(result.failed)

        await asyncio.gather(*(one(records[i:i + size]) for i in range(0, len(records), size)))
        return {"done": [counts["done"]], "failed": [counts["failed"]]}


def _local(address: str | None) -> bool:
    """A Ray instance on this machine (then a SQLite store is reachable by every actor)."""
    if address in (None, "local"):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1")


# -- the driver ----------------------------------------------------------------------------------
def run(ctx, stage_factory, kind: str, source: dict[str, Any], params: dict[str, Any], batch_size: int) -> dict:
    """Hand the run's remaining work to Ray; returns what was done now. Blocking: the
    runtime calls it in a thread, after ``start`` (on the main thread, where Ray installs
    its signal handlers)."""
    ray = require_ray()
    engine = ctx.config.engine
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.execution_options.preserve_order = True  # batches as the in-process engine forms them
    data_ctx.enable_progress_bars = bool(ctx.config.progress)
    if ctx.store.url.startswith("sqlite") and not _local(engine.ray_address):
        raise ConfigError("engine.ray_address: a Ray cluster needs a store every node reaches: "
                          "--db postgresql://... (SQLite serves a local, single-node run)")
    config = ctx.config.model_dump(mode="json")
    spec = ItemSource.model_validate({k: v for k, v in source.items() if k != "files"})
    if spec.limit is not None:
        raise ConfigError("--limit is for the in-process engine; with --engine ray give the input you want processed")
    ds = ray.data.from_items([{"path": str(f)} for f in spec.files()] or [{"path": spec.path}])
    ds = ds.flat_map(read_shard, fn_kwargs={"source": source}, num_cpus=0.25)
    per_call = batch_size * engine.batches_per_call
    # a block of what Keep lets through is one actor call: blocks are what Ray spreads over the actors
    ds = ds.map_batches(Keep, fn_constructor_args=(config, ctx.run_id, kind, spec.on_error), batch_size=per_call,
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
    ds = ds.map_batches(StageWorker, fn_constructor_args=(config, ctx.run_id, stage_factory, params),
                        batch_size=per_call,
                        compute=ray.data.ActorPoolStrategy(size=engine.workers), num_cpus=engine.worker_cpus)
    done = failed = 0
    try:
        for row in ds.iter_rows():
            done += row["done"]
            failed += row["failed"]
    except Exception as exc:  # a worker's error comes back wrapped: say the worker's own line
        cause = getattr(exc, "cause", None) or exc.__cause__ or exc
        if isinstance(cause, (InputError, ConfigError, TagsmithError)):
            raise cause from None
        text = str(cause).strip().splitlines()
        for line in text:  # a RayTaskError's text ends with the original exception's line
            if line.startswith(("tagsmith.core.errors.InputError: ", "InputError: ")):
                raise InputError(line.split(": ", 1)[1]) from None
            if "BudgetExceeded" in line:
                from tagsmith.core.errors import BudgetExceeded

                raise BudgetExceeded(line.split(": ", 1)[-1]) from None
        raise
    return {"done": done, "failed": failed, "workers": engine.workers}
