"""Tagging throughput with the in-process engine and with Ray Data (1 and 2 local workers),
against the ideal bound, on the same input and the simulated provider. Prints JSON.

    python benchmarks/ray_engine.py [--items 4000] [--latency 0.1] [--concurrency 16] [--batch-size 4]

Each row is one `tagsmith tag` process on a fresh copy of a store that holds the
vocabulary run (the response cache is per database, so no row answers from another's):

- asyncio: the default engine, ``--concurrency C``;
- ray-1, ray-2: ``--engine ray --workers N``, a local Ray instance started by the command
  (its start-up counts: that is what a user waits for), each actor with ``--concurrency C``.

Reported: wall seconds; seconds from the command's start to the provider's first request
(start-up: imports, Ray, actors); items/s over the whole run and after the first request;
the ideal items/s, N x C / L x items per call; efficiency = (items/s after the first
request) / ideal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sim_server import SimServer  # noqa: E402

TAGSMITH = [sys.executable, "-m", "tagsmith"]


def catalog(path: Path, n: int) -> None:
    rng = random.Random(0)
    words = "red blue green warm cold old new small large quiet loud bright dark soft hard".split()
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "text": f"Item {i}: " + " ".join(rng.choice(words) for _ in range(30))})
                    + "\n")


def run(argv: list[str], sim: SimServer, env: dict) -> dict:
    sim.reset_stats()
    started = time.time()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.time() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:4])} failed: {out.stderr[-2000:]}")
    stats = sim.stats()
    first = (stats["first_request_at"] or started) - started
    return {"wall_s": round(wall, 2), "first_request_s": round(first, 2), "provider_answers": stats["ok"],
            "max_concurrency_at_provider": stats["max_concurrency"]}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out")
    a = ap.parse_args()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT / "tests"))
    result: dict = {"items": a.items, "latency_s": a.latency, "concurrency_per_worker": a.concurrency,
                    "batch_size": a.batch_size, "cores": os.cpu_count(),
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "rows": []}
    with tempfile.TemporaryDirectory() as tmp_s, SimServer(latency=a.latency) as sim:
        tmp = Path(tmp_s)
        items = tmp / "items.jsonl"
        catalog(items, a.items)
        base = tmp / "base.db"
        common = ["--model", "openai/sim", "--api-base", sim.url, "--transport", "http", "--no-progress"]
        subprocess.run(TAGSMITH + ["vocab", "build", str(items), "--text-field", "text", "--rounds", "0", "--sample",
                                   "40", "--db", str(base), *common], check=True, capture_output=True, env=env)
        import sqlite3

        vrun = sqlite3.connect(base).execute("SELECT id FROM run WHERE kind = 'vocab'").fetchone()[0]
        for name, extra, workers in (("asyncio", [], 1), ("ray-1", ["--engine", "ray", "--workers", "1"], 1),
                                     ("ray-2", ["--engine", "ray", "--workers", "2"], 2)):
            db = tmp / f"{name}.db"
            subprocess.run(["cp", str(base), str(db)], check=True)
            row = run(TAGSMITH + ["tag", str(items), "--text-field", "text", "--vocab", vrun, "--db", str(db),
                                  "--concurrency", str(a.concurrency), "--batch-size", str(a.batch_size), *common,
                                  *extra], sim, env)
            ideal = workers * a.concurrency / a.latency * a.batch_size
            working = max(1e-9, row["wall_s"] - row["first_request_s"])
            row.update(engine=name, workers=workers, ideal_items_per_s=round(ideal, 1),
                       items_per_s=round(a.items / row["wall_s"], 1),
                       items_per_s_after_first_request=round(a.items / working, 1),
                       efficiency=round(a.items / working / ideal, 3))
            result["rows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
