"""Catalogs of 10k to 1M records through ``tagsmith tag`` and ``tagsmith score``: is the
cost per item flat? Prints JSON.

    python benchmarks/scale_catalog.py [--sizes 10000,100000,1000000] [--jobs tag,score]
                                       [--latency 0.05] [--concurrency 64] [--out FILE]

Each catalog is a synthetic JSONL file of records of ~300 bytes (id, title, text). The
provider is tests/sim_server.py in its own process (fixed latency, no faults), reached
with ``--transport http --concurrency 64``. Every (job, size) is ONE run of the real CLI
in a child process, killed with SIGKILL once half its records are done, then finished
with ``tagsmith resume RUN`` in a second process, so one pass measures both the run and
its resume:

- peak_rss_mb: the larger of the two processes' peak resident memory;
- cpu_ms_per_item: user + system CPU of both processes, per record;
- db_bytes_per_item: the database (with its WAL) at the end, per record, next to
  inherent_bytes_per_item: the records, their results and their share of the call log
  (messages and responses), what any store of this run would hold;
- checkpoint_bytes: the largest a run's checkpoints and pending writes were while it ran
  (sampled every second) and at the end;
- inputs_json_bytes: what the run row keeps of its input;
- first_request_s: start of the command to the provider's first request, and the same
  for the resume;
- plan_cpu_ms_per_wave: CPU spent finding each wave's pending records (the indexed query);
- extra_calls_after_kill: answers the provider served twice (the calls in flight at the
  kill), and in_flight_at_kill.

Scoring runs with ``--no-density``: MiniLM embeds ~200 documents/s on this 2-core machine
(an hour and a half for a million); the density pass streams in chunks and is measured by
the tests, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sim_server import SimServer  # noqa: E402

TAGSMITH = [sys.executable, "-m", "tagsmith"]
WORDS = ("ceramic mug glazed linen scarf wool knitted oak table walnut desk lamp brass copper kettle "
         "stoneware bowl cotton towel leather wallet canvas tote bamboo tray steel knife cast iron pan "
         "handmade vintage modern rustic minimalist bright dark warm cool blue green red ochre studio "
         "gift kitchen office garden travel everyday durable light heavy small large set pair").split()


def make_catalog(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            title = " ".join(rng.choice(WORDS) for _ in range(4)).title()
            text = " ".join(rng.choice(WORDS) for _ in range(38))
            f.write(json.dumps({"id": f"p{i}", "title": title, "text": f"{title}. {text}"}) + "\n")


def sql(db: str, query: str, *args):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def checkpoint_bytes(db: str, run_id: str | None) -> int:
    if run_id is None:
        return 0
    try:
        a = sql(db, "SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM checkpoints "
                    "WHERE thread_id = ?", run_id)[0][0]
        b = sql(db, "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes WHERE thread_id = ?", run_id)[0][0]
        return int(a) + int(b)
    except sqlite3.OperationalError:
        return 0


def db_bytes(db: str) -> int:
    return sum(Path(db + suffix).stat().st_size for suffix in ("", "-wal", "-shm") if Path(db + suffix).exists())


class Child:
    """A CLI process whose rusage (CPU, peak RSS) is read when it ends (os.wait4: Popen's
    own poll would reap it without the usage)."""

    def __init__(self, argv: list[str], env: dict):
        self.started = time.time()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.cpu = self.rss_mb = 0.0
        self.code: int | None = None

    def _reap(self, flags: int) -> bool:
        pid, status, usage = os.wait4(self.proc.pid, flags)
        if pid == 0:
            return False
        self.code = self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu = usage.ru_utime + usage.ru_stime
        self.rss_mb = usage.ru_maxrss / 1024
        return True

    def alive(self) -> bool:
        return self.code is None and not self._reap(os.WNOHANG)

    def wait(self) -> int:
        if self.code is None:
            self._reap(0)
        return self.code


def run_one(job: str, n: int, catalog: Path, sim: SimServer, tmp: Path, base_db: Path, vocab_run: str,
            args) -> dict:
    db = str(tmp / f"{job}-{n}.db")
    subprocess.run(["cp", str(base_db), db], check=True)
    common = ["--db", db, "--model", "openai/sim", "--api-base", sim.url, "--transport", "http",
              "--concurrency", str(args.concurrency), "--no-progress"]
    argv = TAGSMITH + ([job, str(catalog), "--text-field", "text", "--vocab", vocab_run] if job == "tag"
                       else [job, str(catalog), "--text-field", "text", "--no-density"])
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    kind = "item" if job == "tag" else "doc"
    sim.reset_stats()
    first = Child(argv + common, env)
    run_id = None
    peak_ckpt = 0
    done = 0
    while first.alive():
        time.sleep(1.0)
        try:
            if run_id is None:
                rows = sql(db, "SELECT id FROM run WHERE kind = ?", job)
                run_id = rows[0][0] if rows else None
            if run_id is not None:
                peak_ckpt = max(peak_ckpt, checkpoint_bytes(db, run_id))
                done = sql(db, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND kind = ? AND state = 'done'",
                           run_id, kind)[0][0]
        except sqlite3.OperationalError:
            continue
        if done >= n // 2:
            first.proc.send_signal(signal.SIGKILL)
            break
    else:
        raise SystemExit(f"{job} {n}: the run ended before half its records were done")
    first.wait()
    killed_at = sql(db, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND kind = ? AND state = 'done'",
                    run_id, kind)[0][0]
    at_kill = sim.stats()
    t_first = (at_kill["first_request_at"] or first.started) - first.started
    time.sleep(1.0)  # what the dead process had in flight is answered (to nobody) before the resume
    before = sim.stats()
    before_resume = before["requests"]
    stored = sql(db, "SELECT COUNT(*) FROM llm_call WHERE run_id = ? AND cache_hit = 0 AND error IS NULL",
                 run_id)[0][0]
    in_flight = before["ok"] - stored  # answered by the provider, never stored by the killed process
    second = Child(TAGSMITH + ["resume", run_id] + common, env)
    t_resume = None
    while second.alive():
        if t_resume is None:
            time.sleep(0.05)
            if sim.stats()["requests"] > before_resume:
                t_resume = time.time() - second.started
            continue
        time.sleep(1.0)
        peak_ckpt = max(peak_ckpt, checkpoint_bytes(db, run_id))
    code = second.wait()
    if code != 0:
        raise SystemExit(f"resume of {run_id} failed ({code}): {second.proc.stderr.read()[-2000:]}")
    after = sim.stats()
    status, metrics_json, inputs_json = sql(db, "SELECT status, metrics_json, inputs_json FROM run WHERE id = ?",
                                            run_id)[0]
    metrics = json.loads(metrics_json)
    stats = dict(sql(db, "SELECT name, value FROM run_stat WHERE run_id = ?", run_id))
    records = sql(db, "SELECT COUNT(*), SUM(LENGTH(key) + LENGTH(data_json) + COALESCE(LENGTH(result_json), 0)) "
                      "FROM run_record WHERE run_id = ? AND kind = ?", run_id, kind)[0]
    log = sql(db, "SELECT COUNT(*), SUM(LENGTH(messages_json) + COALESCE(LENGTH(response_text), 0)) FROM llm_call "
                  "WHERE run_id = ?", run_id)[0]
    cache = sql(db, "SELECT SUM(LENGTH(key) + LENGTH(response_json)) FROM llm_cache")[0][0] or 0
    items = records[0]
    inherent = (records[1] + (log[1] or 0) + cache) / items
    waves = stats.get("waves", 0) or 1
    return {"job": job, "records": n, "status": status, "items_done": items,
            "peak_rss_mb": round(max(first.rss_mb, second.rss_mb), 1),
            "cpu_ms_per_item": round(1000 * (first.cpu + second.cpu) / n, 3),
            "wall_s": round(time.time() - first.started, 1),
            "db_bytes_per_item": round(db_bytes(db) / n, 1), "wal_bytes": db_bytes(db) - Path(db).stat().st_size,
            "inherent_bytes_per_item": round(inherent, 1),
            "db_to_inherent": round(db_bytes(db) / n / inherent, 2),
            "checkpoint_bytes_max": peak_ckpt, "checkpoint_bytes_end": checkpoint_bytes(db, run_id),
            "inputs_json_bytes": len(inputs_json),
            "first_request_s": round(t_first, 2),
            "resume_first_request_s": None if t_resume is None else round(t_resume, 2),
            "plan_cpu_ms_per_wave": round(1000 * stats.get("plan_cpu_s", 0) / waves, 2), "waves": int(waves),
            "killed_at_done": killed_at, "in_flight_at_kill": in_flight,
            # answers the provider gave twice: a request answered to the dead process, asked again
            "extra_calls_after_kill": after["ok_repeated"],
            "provider_answers": after["ok"], "calls_paid": metrics.get("llm_calls"),
            "items_per_s": round(n / (time.time() - first.started), 1)}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--jobs", default="tag,score")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    out: dict = {"latency_s": args.latency, "concurrency": args.concurrency, "cores": os.cpu_count(),
                 "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "rows": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp_s, SimServer(latency=args.latency) as sim:
        tmp = Path(tmp_s)
        base_db = tmp / "base.db"
        sample = tmp / "sample.jsonl"
        make_catalog(sample, 60, seed=99)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
        subprocess.run(TAGSMITH + ["vocab", "build", str(sample), "--text-field", "text", "--rounds", "0",
                                   "--db", str(base_db), "--model", "openai/sim", "--api-base", sim.url,
                                   "--transport", "http", "--no-progress"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        vocab_run = sql(str(base_db), "SELECT id FROM run WHERE kind = 'vocab'")[0][0]
        for n in sizes:
            catalog = tmp / f"catalog-{n}.jsonl"
            make_catalog(catalog, n)
            for job in args.jobs.split(","):
                row = run_one(job, n, catalog, sim, tmp, base_db, vocab_run, args)
                out["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                Path(tmp / f"{job}-{n}.db").unlink(missing_ok=True)
            catalog.unlink()
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
