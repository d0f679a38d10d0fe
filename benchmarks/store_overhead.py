"""Store overhead per LLM call: the gateway with a store against the gateway without one,
on a zero-latency fake backend, for each store given, side by side in one run.

    python benchmarks/store_overhead.py [--calls 1000] [--prompt-chars 3000]
                                        [--db sqlite] [--db postgresql://postgres@127.0.0.1:5432/test]

``--db sqlite`` (the default) is a SQLite file in a temporary folder; a PostgreSQL URL gets
a database of its own on that server for the run (created and dropped). The server's own
CPU is not this process's: for PostgreSQL, wall time per call says more than CPU.

Per call the store writes one transaction: the log row (with the messages), the cache row
and the run's totals; a cache hit reads the cache and writes a log row. Prompts are
distinct and about ``--prompt-chars`` long (an assigner call on 8 items is about 3 KB).
Rows, at concurrency 1 and 32: the bare fake backend; the gateway without a store; the
gateway with each store (uncached, then all cache hits). Prints JSON: calls/s and CPU ms per call
(``time.process_time``; the store's writes run in worker threads of this process and are
included) and the store's share = with store - without store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import Gateway
from tagsmith.core.config import LLMConfig
from tagsmith.store.db import Store


def prompt(i: int, chars: int) -> str:
    filler = "a movie about things that happen, with people in it. " * (chars // 54 + 1)
    return f"call {i}: " + filler[:chars]


async def timed(fn, n: int, concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"calls_per_s": round(n / wall, 1), "wall_ms_per_call": round(1000 * wall / n, 3),
            "cpu_ms_per_call": round(1000 * cpu / n, 3)}


class Target:
    """Where a store lives for the benchmark: a SQLite file, or a fresh PostgreSQL database."""

    def __init__(self, spec: str, tmp: str):
        self.spec, self.tmp = spec, tmp
        self.made: list[str] = []

    def url(self, tag: str) -> str:
        if self.spec == "sqlite":
            return str(Path(self.tmp) / f"{tag}.db")
        import psycopg

        name = f"tagsmith_bench_{tag}_{os.getpid()}"
        with psycopg.connect(self.spec, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return f"{self.spec.rsplit('/', 1)[0]}/{name}"

    def cleanup(self) -> None:
        if self.made:
            import psycopg

            with psycopg.connect(self.spec, autocommit=True) as conn:
                for name in self.made:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def bench(n: int, chars: int, targets: list[str]) -> dict:
    out: dict = {"calls": n, "prompt_chars": chars, "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    reply = '{"items": [{"id": "1", "genre": ["drama"], "mood": ["dark"]}]}'
    with tempfile.TemporaryDirectory() as tmp:
        for c in (1, 32):
            cfg = LLMConfig(model="fake/x", concurrency=c)
            fake = FakeLLM(default=lambda r: reply)
            req = {"model": "fake/x", "messages": [{"role": "user", "content": prompt(0, chars)}]}
            bare = await timed(lambda i: fake.complete(dict(req)), n, c)
            no_store = Gateway(cfg, store=None, backend=FakeLLM(default=lambda r: reply))
            without = await timed(lambda i: no_store.call(prompt(i, chars)), n, c)
            row: dict = {"bare_backend": bare, "gateway_without_store": without}
            for spec in targets:
                target = Target(spec, tmp)
                try:
                    store = Store(target.url(f"s{c}"))
                    run = store.create_run("bench", config={})
                    gw = Gateway(cfg, store=store, run_id=run.id, backend=FakeLLM(default=lambda r: reply))
                    uncached = await timed(lambda i: gw.call(prompt(i, chars)), n, c)
                    hits = await timed(lambda i: gw.call(prompt(i, chars)), n, c)
                    assert store.require_run(run.id).calls == n and store.require_run(run.id).cache_hits == n
                    store.close()
                finally:
                    target.cleanup()
                name = "sqlite" if spec == "sqlite" else "postgresql"
                row[name] = {"gateway_with_store": uncached, "gateway_with_store_cache_hits": hits,
                             "store_cpu_ms_per_call": round(uncached["cpu_ms_per_call"] - without["cpu_ms_per_call"], 3),
                             "store_wall_ms_per_call": round(uncached["wall_ms_per_call"]
                                                             - without["wall_ms_per_call"], 3)}
            out[f"concurrency_{c}"] = row
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--prompt-chars", type=int, default=3000)
    ap.add_argument("--db", action="append", help="sqlite (default) or a postgresql:// server URL; repeatable")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(bench(a.calls, a.prompt_chars, a.db or ["sqlite"])), indent=2))
