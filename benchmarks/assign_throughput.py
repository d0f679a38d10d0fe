"""Assignment throughput against the ideal bound C / L x items per call, next to a bare
litellm loop at the same concurrency, in one run.

    python benchmarks/assign_throughput.py [--latency 0.5] [--concurrency 8,32,128] [--batch-size 8] [--waves 4]

The provider is tests/sim_server.py in its own process (fixed latency L, no faults), so
only this process's CPU is measured. For each concurrency C:

- pipeline: the real tagging pipeline, ``tagsmith.runtime.execute("tag", ...)`` after a
  vocab run, model ``openai/sim`` through litellm, a SQLite store, ``--concurrency C``
  and the default ``pipeline.assign`` settings (a superstep holds at least 4 x C
  batches); ``waves x C`` calls of ``batch_size`` MovieLens items each;
- pipeline_http: the same with ``llm.transport: http`` (the gateway POSTs to the
  endpoint itself instead of going through litellm);
- bare: ``litellm.acompletion`` on exactly the same requests as the pipeline's, C at a
  time, no graph, gateway or store; bare_http: the http transport alone on the http
  pipeline's requests. ``pipeline_own_cpu_ms_per_call_*`` is the difference: what the
  graph, the batch stage, the gateway and the store add to a call.

Each reports calls/s, items/s, efficiency = achieved / ideal (ideal = C / L calls/s) and
CPU milliseconds per call (``time.process_time`` of this process: graph, gateway, store
and litellm for the pipeline; litellm alone for the bare loop); ``server_max_concurrency``
shows what reached the provider, ``store_writes_per_transaction`` how many writes the
store's group commit put in one transaction. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price list
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sim_server import SimServer  # noqa: E402

from tagsmith.agents.gateway import HTTPBackend, LiteLLMBackend, _litellm  # noqa: E402
from tagsmith.core.config import load_config  # noqa: E402
from tagsmith.runtime import execute, open_store  # noqa: E402


class Recording:
    """A production backend that keeps each request, so the bare loop can replay it."""

    def __init__(self, config):
        super().__init__(config)
        self.requests: list[dict] = []

    async def complete(self, request):
        self.requests.append(dict(request))
        return await super().complete(request)


class RecordingBackend(Recording, LiteLLMBackend):
    pass


class RecordingHTTPBackend(Recording, HTTPBackend):
    pass


def catalog(n: int, prefix: str) -> list[dict]:
    """n MovieLens items (repeated with fresh ids beyond the 1682 movies)."""
    from tagsmith.core.datasets import movielens_items

    movies = movielens_items()
    return [{"id": f"{prefix}-{i}", "text": movies[i % len(movies)]["text"]} for i in range(n)]


def config(db: str, url: str, concurrency: int, batch_size: int, transport: str = "litellm"):
    assign = {"batch_size": batch_size, "repair_by_embedding": False, "domain": "movies"}
    return load_config(overrides={
        "llm": {"model": "openai/sim", "api_base": url, "transport": transport, "concurrency": concurrency,
                "timeout_s": 60,
                "max_retries": 2, "backoff_base_s": 0.05},
        "store": {"db": db}, "progress": False,
        "pipeline": {"vocab": {"dedup": False, "max_rounds": 0, "annotators": 2, "batch_size": 6, "domain": "movies"},
                     "assign": assign}}, environ={})


async def pipeline_row(sim: SimServer, db: str, vrun: str, c: int, args,
                       transport: str = "litellm") -> tuple[dict, list]:
    cfg = config(db, sim.url, c, args.batch_size, transport)
    n_calls = args.waves * c
    items = catalog(n_calls * args.batch_size, f"c{c}{transport}")
    backend = (RecordingHTTPBackend if transport == "http" else RecordingBackend)(cfg.llm)
    store = open_store(cfg)
    sim.reset_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    run, _ = await execute("tag", cfg, {"vocab_run": vrun, "items": items}, store=store, backend=backend,
                           parent_run=vrun)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    writer = store._writer
    await backend.aclose() if hasattr(backend, "aclose") else None
    store.close()
    stats = sim.stats()
    assert run.status == "done" and run.calls == n_calls, (run.status, run.calls, n_calls)
    metrics = json.loads(run.metrics_json)
    assert metrics["items"] == len(items) and metrics["coverage"] == 1.0
    row = _row(n_calls, len(items), wall, cpu, c, args.latency, stats)
    row["store_writes_per_transaction"] = round(writer.requests / max(1, writer.groups), 1)
    return row, backend.requests


async def bare_row(sim: SimServer, requests: list[dict], c: int, args) -> dict:
    litellm = _litellm()
    sem = asyncio.Semaphore(c)
    kwargs = {"model": "openai/sim", "api_base": sim.url, "api_key": "sk-no-key", "timeout": 60, "num_retries": 0}

    async def one(req: dict) -> None:
        async with sem:
            resp = await litellm.acompletion(**dict(req, **kwargs))
            assert resp.choices[0].message.content

    sim.reset_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(r) for r in requests))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return _row(len(requests), len(requests) * args.batch_size, wall, cpu, c, args.latency, sim.stats())


async def bare_http_row(sim: SimServer, requests: list[dict], c: int, args) -> dict:
    """The http transport alone (HTTPBackend.complete: one POST, parse), C at a time."""
    backend = HTTPBackend(config("unused.db", sim.url, c, args.batch_size, "http").llm)
    sem = asyncio.Semaphore(c)

    async def one(req: dict) -> None:
        async with sem:
            assert (await backend.complete(dict(req))).text

    await one(requests[0])  # the session opens outside the measurement
    sim.reset_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(r) for r in requests))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await backend.aclose()
    return _row(len(requests), len(requests) * args.batch_size, wall, cpu, c, args.latency, sim.stats())


def _row(calls: int, items: int, wall: float, cpu: float, c: int, latency: float, stats: dict) -> dict:
    ideal = c / latency
    return {"calls": calls, "items": items, "wall_s": round(wall, 2), "calls_per_s": round(calls / wall, 1),
            "items_per_s": round(items / wall, 1), "ideal_calls_per_s": round(ideal, 1),
            "efficiency": round(calls / wall / ideal, 3), "cpu_ms_per_call": round(1000 * cpu / calls, 2),
            "cpu_share_of_one_core": round(cpu / wall, 2), "server_max_concurrency": stats["max_concurrency"]}


async def bench(args) -> dict:
    out: dict = {"latency_s": args.latency, "batch_size": args.batch_size, "waves": args.waves,
                 "cores": os.cpu_count(), "python": sys.version.split()[0],
                 "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "rows": []}
    with tempfile.TemporaryDirectory() as tmp, SimServer(latency=0.0) as sim:
        db = str(Path(tmp) / "bench.db")
        cfg = config(db, sim.url, 8, args.batch_size)
        vrun, _ = await execute("vocab", cfg, {"items": catalog(24, "vocab")})
        assert vrun.status == "done"
        # warm up litellm's client and the store before measuring anything
        await execute("tag", cfg, {"vocab_run": vrun.id, "items": catalog(16, "warm")}, parent_run=vrun.id)
        await execute("tag", config(db, sim.url, 8, args.batch_size, "http"),
                      {"vocab_run": vrun.id, "items": catalog(16, "warm-http")}, parent_run=vrun.id)
        sim.configure(latency=args.latency)
        for c in args.concurrency:
            pipe, requests = await pipeline_row(sim, db, vrun.id, c, args)
            bare = await bare_row(sim, requests, c, args)
            http, http_requests = await pipeline_row(sim, db, vrun.id, c, args, transport="http")
            bare_http = await bare_http_row(sim, http_requests, c, args)
            out["rows"].append({"concurrency": c, "ideal_items_per_s": round(c / args.latency * args.batch_size, 1),
                                "pipeline": pipe, "pipeline_http": http, "bare_litellm": bare, "bare_http": bare_http,
                                # what the pipeline (graph, batch stage, gateway, store) adds per call to its transport
                                "pipeline_own_cpu_ms_per_call_litellm": round(pipe["cpu_ms_per_call"]
                                                                              - bare["cpu_ms_per_call"], 2),
                                "pipeline_own_cpu_ms_per_call_http": round(http["cpu_ms_per_call"]
                                                                           - bare_http["cpu_ms_per_call"], 2),
                                "cpu_ratio_pipeline_to_bare": round(pipe["cpu_ms_per_call"] / bare["cpu_ms_per_call"], 2),
                                "cpu_ratio_pipeline_http_to_bare": round(http["cpu_ms_per_call"]
                                                                         / bare["cpu_ms_per_call"], 2),
                                "throughput_ratio_pipeline_to_bare": round(pipe["calls_per_s"] / bare["calls_per_s"], 2),
                                "throughput_ratio_pipeline_http_to_bare": round(http["calls_per_s"]
                                                                                / bare["calls_per_s"], 2)})
            print(json.dumps(out["rows"][-1]), file=sys.stderr)
        store = open_store(cfg)
        out["store_bytes"] = Path(db).stat().st_size + sum(
            p.stat().st_size for p in Path(tmp).glob("bench.db-*"))
        store.close()
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.5, help="provider latency L in seconds")
    ap.add_argument("--concurrency", default="8,32,128", help="comma-separated list of C")
    ap.add_argument("--batch-size", type=int, default=8, help="items per call")
    ap.add_argument("--waves", type=int, default=8, help="calls per run = waves x C")
    a = ap.parse_args()
    a.concurrency = [int(x) for x in a.concurrency.split(",")]
    print(json.dumps(asyncio.run(bench(a)), indent=2))
