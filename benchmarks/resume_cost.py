"""What a crash costs: SIGKILL a tagging run at about 50%, resume it, and count the extra
LLM calls (at the provider) and the extra wall time against an uninterrupted run.

    python benchmarks/resume_cost.py [--items 320] [--batch-size 4] [--concurrency 8] [--latency 0.2] [--kill-at 0.5]

The provider is tests/sim_server.py in its own process; its /stats count every request
it answered, paid or not. Both runs are `python -m tagsmith tag ...` child processes on
copies of one database that holds the vocabulary run:

- baseline: tag all items uninterrupted;
- crash: tag, SIGKILL the process once ``--kill-at`` of the items are stored, then
  `python -m tagsmith resume RUN`.

extra_calls = requests(crash + resume) - requests(baseline); calls in flight at the kill
are paid and asked again, so extra_calls must not exceed the requests that were in
flight or answered-but-not-yet-stored at the kill (``lost_at_kill``). extra_wall_s =
wall(crash + resume) - wall(baseline), which includes starting a second process
(``s_to_first_request``: process start, imports, checkpoint load, planning). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sim_server import SimServer  # noqa: E402

from tagsmith.core.config import load_config  # noqa: E402
from tagsmith.runtime import execute  # noqa: E402


def count(db: str, query: str, *args) -> int:
    con = sqlite3.connect(db, timeout=5)
    try:
        return con.execute(query, args).fetchone()[0]
    finally:
        con.close()


def copy_db(src: str, dst: str) -> None:
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    a.backup(b)
    a.close()
    b.close()


def tagsmith(*args: str) -> subprocess.Popen:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    return subprocess.Popen([sys.executable, "-m", "tagsmith", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")


async def setup(db: str, url: str, items_file: Path, n: int) -> str:
    from tagsmith.core.datasets import movielens_items

    movies = movielens_items(limit=n)
    items_file.write_text("".join(json.dumps({"id": m["id"], "text": m["text"]}) + "\n" for m in movies))
    cfg = load_config(overrides={"llm": {"model": "openai/sim", "api_base": url}, "store": {"db": db},
                                 "progress": False,
                                 "pipeline": {"vocab": {"dedup": False, "max_rounds": 0, "annotators": 2}}},
                      environ={})
    run, _ = await execute("vocab", cfg, {"items": [{"id": m["id"], "text": m["text"]} for m in movies[:24]]})
    return run.id


def main(a) -> dict:
    out: dict = {"items": a.items, "batch_size": a.batch_size, "concurrency": a.concurrency, "latency_s": a.latency,
                 "kill_at": a.kill_at, "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp, SimServer(latency=0.0) as sim:
        tmp = Path(tmp)
        base = str(tmp / "base.db")
        vrun = asyncio.run(setup(base, sim.url, tmp / "items.jsonl", a.items))
        (tmp / "c.yaml").write_text("pipeline:\n  assign: {repair_by_embedding: false}\n")
        sim.configure(latency=a.latency)

        def args(db: str) -> list[str]:
            return ["--db", db, "--model", "openai/sim", "--api-base", sim.url, "--concurrency", str(a.concurrency),
                    "--no-progress", "--config", str(tmp / "c.yaml")]

        tag = ["tag", str(tmp / "items.jsonl"), "--text-field", "text", "--vocab", vrun, "--batch-size",
               str(a.batch_size)]
        # baseline: uninterrupted
        db1 = str(tmp / "baseline.db")
        copy_db(base, db1)
        sim.reset_stats()
        t = time.perf_counter()
        finish(tagsmith(*tag, *args(db1)), "baseline run")
        baseline_wall = time.perf_counter() - t
        baseline = sim.stats()
        out["baseline"] = {"wall_s": round(baseline_wall, 2), "requests": baseline["requests"]}

        # crash at kill_at, then resume
        db2 = str(tmp / "crash.db")
        copy_db(base, db2)
        sim.reset_stats()
        target = int(a.items * a.kill_at)
        t = time.perf_counter()
        child = tagsmith(*tag, *args(db2))
        stored = 0
        deadline = time.time() + 600
        while time.time() < deadline and child.poll() is None:
            time.sleep(0.01)
            try:
                stored = count(db2, "SELECT COUNT(*) FROM run_record WHERE kind = 'item' AND result_json IS NOT NULL")
            except sqlite3.OperationalError:
                continue
            if stored >= target:
                break
        at_kill = sim.stats()
        child.send_signal(signal.SIGKILL)
        child.wait()
        crash_wall = time.perf_counter() - t
        trun = [r for (r,) in sqlite3.connect(db2).execute("SELECT id FROM run WHERE kind = 'tag'")][0]
        kept = count(db2, "SELECT COUNT(*) FROM llm_call WHERE run_id = ? AND cache_hit = 0 AND error IS NULL", trun)
        stored = count(db2, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND kind = 'item' AND result_json IS NOT NULL", trun)
        time.sleep(a.latency + 0.2)  # let the server finish the requests the dead process left
        after_kill = sim.stats()
        sim.reset_stats()
        t = time.perf_counter()
        proc = tagsmith("resume", trun, *args(db2))
        first_request = None
        while proc.poll() is None and first_request is None:
            time.sleep(0.05)
            if sim.stats()["requests"]:
                first_request = time.perf_counter() - t
        finish(proc, "resume")
        resume_wall = time.perf_counter() - t
        resumed = sim.stats()
        tags = count(db2, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND kind = 'item' AND result_json IS NOT NULL", trun)
        status = sqlite3.connect(db2).execute("SELECT status FROM run WHERE id = ?", (trun,)).fetchone()[0]
        dupes = count(db2, "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) n FROM llm_call WHERE cache_hit = 0 "
                           "AND error IS NULL GROUP BY cache_key)")
        assert status == "done" and tags == a.items and dupes == 1, (status, tags, dupes)
        extra = after_kill["requests"] + resumed["requests"] - baseline["requests"]
        out["crash"] = {"items_stored_at_kill": stored, "wall_s_to_kill": round(crash_wall, 2),
                        "requests_before_kill": after_kill["requests"],
                        "in_flight_at_kill": at_kill["in_flight"],
                        "answered_but_not_stored_at_kill": max(0, at_kill["ok"] - kept),
                        "calls_kept_in_store": kept}
        out["resume"] = {"wall_s": round(resume_wall, 2), "requests": resumed["requests"],
                         "s_to_first_request": None if first_request is None else round(first_request, 2),
                         "cache_hits": count(db2, "SELECT cache_hits FROM run WHERE id = ?", trun)}
        lost = out["crash"]["in_flight_at_kill"] + out["crash"]["answered_but_not_stored_at_kill"]
        out["extra_calls"] = extra
        out["lost_at_kill"] = lost
        out["extra_calls_beyond_in_flight"] = max(0, extra - lost)
        out["extra_wall_s"] = round(crash_wall + resume_wall - baseline_wall, 2)
        out["extra_wall_share"] = round((crash_wall + resume_wall) / baseline_wall - 1, 3)
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--kill-at", type=float, default=0.5)
    print(json.dumps(main(ap.parse_args()), indent=2))
