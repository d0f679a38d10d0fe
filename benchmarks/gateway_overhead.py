"""Gateway overhead per call against a zero-latency fake model, next to the bare backend.

    python benchmarks/gateway_overhead.py [--calls 2000]

Prints JSON: calls/s and CPU ms per call at concurrency 1 and 32, for (a) the bare fake
backend, (b) the gateway with a real SQLite store (log row + cache entry per call), and
(c) the same calls again, all cache hits. Ratios are measured side by side in one run."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import Gateway
from tagsmith.core.config import LLMConfig
from tagsmith.store.db import Store


async def timed(coro_factory, n: int, concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await coro_factory(i)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"calls_per_s": round(n / wall, 1), "cpu_ms_per_call": round(1000 * cpu / n, 3)}


async def bench(n: int) -> dict:
    out: dict = {"calls": n}
    with tempfile.TemporaryDirectory() as tmp:
        for c in (1, 32):
            fake = FakeLLM(default=lambda r: "ok")
            request = {"model": "fake/x", "messages": [{"role": "user", "content": "q"}]}
            bare = await timed(lambda i: fake.complete(dict(request)), n, c)
            store = Store(str(Path(tmp) / f"b{c}.db"))
            run = store.create_run("bench", config={})
            gw = Gateway(LLMConfig(model="fake/x", concurrency=c), store=store, run_id=run.id,
                         backend=FakeLLM(default=lambda r: "ok"))
            miss = await timed(lambda i: gw.call(f"question {i}"), n, c)
            hit = await timed(lambda i: gw.call(f"question {i}"), n, c)
            store.close()
            out[f"concurrency_{c}"] = {"bare_backend": bare, "gateway_uncached": miss, "gateway_cached": hit,
                                       "overhead_ms_per_call": round(miss["cpu_ms_per_call"]
                                                                     - bare["cpu_ms_per_call"], 3)}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    print(json.dumps(asyncio.run(bench(ap.parse_args().calls)), indent=2))
