"""The batch stage on Ray Data (``--engine ray``), on a local Ray instance of 2 CPUs against
the simulated provider (tests/sim_server.py): the same tags, scores and cache keys as the
in-process engine on the same input; a driver killed mid-run resumes to the same result
with no answer paid twice; one line when the extra is missing. Slow (Ray starts in about
half a minute here), so one Ray head serves the module; CI runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tagsmith.cli import main

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sim_server import SimServer  # noqa: E402

# a test cluster on this machine: no token to hand around, no usage report
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                   reason="ray is not installed (pip install 'tagsmith[ray]')")]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """One local Ray head (2 CPUs) for the module; drivers connect with --ray-address."""
    ray_bin = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **RAY_ENV)
    subprocess.run([str(ray_bin), "start", "--head", "--num-cpus=2", f"--port={port}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env, timeout=180)
    yield f"127.0.0.1:{port}"
    subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def sim():
    with SimServer(latency=0.02) as s:
        yield s


def sql(db: str, q: str, *args):
    con = sqlite3.connect(db)
    try:
        return con.execute(q, args).fetchall()
    finally:
        con.close()


def write_items(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": str(i), "text": f"Movie {i}: a story number {i}"}) + "\n"
                            for i in range(1, n + 1)))
    return path


def cli(*args: str) -> None:
    """A tagsmith command in its own process: Ray drivers connect to the head through the
    machine's address, which the in-process tests' no-network guard would refuse."""
    out = subprocess.run([sys.executable, "-m", "tagsmith", *args], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, **RAY_ENV))
    assert out.returncode == 0, out.stderr[-3000:]


def common(db: str, sim) -> list[str]:
    return ["--db", db, "--model", "openai/sim", "--api-base", sim.url, "--transport", "http", "--no-progress",
            "--concurrency", "4"]


def test_the_ray_engine_gives_the_same_tags_scores_and_cache_keys(tmp_path, ray_head, sim):
    items = write_items(tmp_path / "items.jsonl", 48)
    a, b = str(tmp_path / "asyncio.db"), str(tmp_path / "ray.db")
    assert main(["vocab", "build", str(items), "--text-field", "text", "--rounds", "0", *common(a, sim)]) == 0
    subprocess.run(["cp", a, b], check=True)
    vrun = sql(a, "SELECT id FROM run WHERE kind = 'vocab'")[0][0]
    assert main(["tag", str(items), "--text-field", "text", "--vocab", vrun, *common(a, sim)]) == 0
    cli("tag", str(items), "--text-field", "text", "--vocab", vrun, *common(b, sim),
        "--engine", "ray", "--ray-address", ray_head, "--workers", "2")
    assert main(["score", str(items), "--text-field", "text", "--no-density", *common(a, sim)]) == 0
    cli("score", str(items), "--text-field", "text", "--no-density", *common(b, sim),
        "--engine", "ray", "--ray-address", ray_head)
    for kind in ("tag", "score"):
        ra, rb = (sql(db, "SELECT id, status, calls FROM run WHERE kind = ?", kind)[0] for db in (a, b))
        assert ra[1] == rb[1] == "done" and ra[2] == rb[2] > 0
        wa, wb = (dict(sql(db, "SELECT key, result_json FROM run_record WHERE run_id = ? AND state = 'done'", r[0]))
                  for db, r in ((a, ra), (b, rb)))
        assert len(wa) == 48 and wa == wb  # the same results, item by item
        ka, kb = ({k for (k,) in sql(db, "SELECT cache_key FROM llm_call WHERE run_id = ?", r[0])}
                  for db, r in ((a, ra), (b, rb)))
        assert ka == kb  # the same requests: the same batches, the same prompts


def test_a_killed_driver_resumes_to_the_same_result(tmp_path, ray_head, sim):
    items = write_items(tmp_path / "items.jsonl", 160)
    db = str(tmp_path / "k.db")
    assert main(["vocab", "build", str(items), "--text-field", "text", "--rounds", "0", *common(db, sim)]) == 0
    vrun = sql(db, "SELECT id FROM run WHERE kind = 'vocab'")[0][0]
    sim.configure(latency=0.3)
    sim.reset_stats()
    child = subprocess.Popen([sys.executable, "-m", "tagsmith", "tag", str(items), "--text-field", "text", "--vocab",
                              vrun, *common(db, sim), "--concurrency", "2", "--engine", "ray", "--ray-address",
                              ray_head], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, **RAY_ENV))
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and child.poll() is None:
        time.sleep(0.5)
        try:
            done = sql(db, "SELECT COUNT(*) FROM run_record WHERE kind = 'item' AND state = 'done'")[0][0]
        except sqlite3.OperationalError:
            continue
        if done >= 24:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 24 <= done < 160, f"the kill landed at the wrong time ({done} done)"
    sim.configure(latency=0.02)
    run_id = sql(db, "SELECT id FROM run WHERE kind = 'tag'")[0][0]
    cli("resume", run_id, "--db", db, "--no-progress")
    assert sql(db, "SELECT status FROM run WHERE id = ?", run_id) == [("done",)]
    assert sql(db, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND state = 'done'", run_id) == [(160,)]
    stats = sim.stats()
    # one actor: at most its llm.concurrency (2) calls in flight at the kill, and as many
    # answered but not yet written
    assert stats["ok_repeated"] <= 4, stats
    # the same tags as an uninterrupted in-process run
    other = str(tmp_path / "o.db")
    subprocess.run(["cp", db, other], check=True)
    sql(other, "DELETE FROM run WHERE kind = 'tag'")
    assert main(["tag", str(items), "--text-field", "text", "--vocab", vrun, *common(other, sim)]) == 0
    again = sql(other, "SELECT id FROM run WHERE kind = 'tag'")[0][0]
    mine = dict(sql(db, "SELECT key, result_json FROM run_record WHERE run_id = ? AND kind = 'item'", run_id))
    theirs = dict(sql(other, "SELECT key, result_json FROM run_record WHERE run_id = ? AND kind = 'item'", again))
    assert len(mine) == 160 and mine == theirs


def test_without_the_extra_the_flag_says_what_to_install(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    items = write_items(tmp_path / "i.jsonl", 3)
    assert main(["score", str(items), "--text-field", "text", "--engine", "ray", "--db", str(tmp_path / "x.db"),
                 "--model", "fake/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tagsmith: error: the ray engine needs the ray extra: pip install 'tagsmith[ray]'"
    assert not Path(tmp_path / "x.db").exists() or sql(str(tmp_path / "x.db"), "SELECT COUNT(*) FROM run") == [(0,)]


def test_nothing_imports_ray_unless_asked():
    out = subprocess.run([sys.executable, "-c", "import sys, tagsmith.api, tagsmith.pipelines.assignment, "
                          "tagsmith.pipelines.scoring, tagsmith.cli; print('ray' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
