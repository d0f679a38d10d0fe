"""CLI behaviour and crash safety: SIGKILL a run mid-graph, resume it, nothing repeated."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import register_backend
from tagsmith.cli import main

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fake_cli  # noqa: E402
from crash import kill_when, paid_calls_per_key  # noqa: E402


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("quickstart", "serve", "runs", "resume", "export"):
        assert cmd in out


def test_bad_config_is_one_line_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm:\n  concurrency: -1\n")
    code = main(["runs", "list", "--config", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "bad.yaml: llm.concurrency" in err and "Traceback" not in err


def test_missing_key_is_one_line(capsys, monkeypatch, db_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = main(["quickstart", "--probe", "--items", "1", "--model", "openai/gpt-4o-mini", "--db", db_path])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("tagsmith: error:") and "OPENAI_API_KEY" in err[-1]


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm:\n  concurrency: -1\n")
    from tagsmith.core.errors import ConfigError
    with pytest.raises(ConfigError):
        main(["runs", "list", "--config", str(bad), "--debug"])


def _fake_probe(monkeypatch):
    fake = FakeLLM(default=fake_cli.probe_policy)
    register_backend("fake", lambda cfg: fake)
    return fake


def test_quickstart_runs_list_show_export(monkeypatch, capsys, db_path, tmp_path):
    fake = _fake_probe(monkeypatch)
    assert main(["quickstart", "--probe", "--items", "3", "--model", "fake/x", "--db", db_path]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["id"] for r in rows] == ["1", "2", "3"] and fake.calls == 3
    run_id = out.split("run ")[-1].split(":")[0]
    assert main(["runs", "list", "--db", db_path]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["runs", "show", run_id, "--db", db_path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "done" and info["calls"] == 3 and info["nodes"]["describe"]["calls"] == 3
    for fmt in ("jsonl", "csv", "parquet"):
        target = tmp_path / f"out.{fmt}"
        assert main(["export", run_id, "--db", db_path, "--format", fmt, "-o", str(target)]) == 0
        assert target.stat().st_size > 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["genre"] == "drama"
    import pyarrow.parquet as pq
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 3
    # the same job again is served from the cache: no new model call
    assert main(["quickstart", "--probe", "--items", "3", "--model", "fake/x", "--db", db_path]) == 0
    assert fake.calls == 3


def test_sigkill_mid_graph_then_resume_repeats_nothing(tmp_path, db_path, monkeypatch):
    log = tmp_path / "served.log"
    env = dict(os.environ, FAKE_LATENCY="0.15", PYTHONPATH=str(HERE))
    child = subprocess.Popen([sys.executable, str(HERE / "fake_cli.py"), str(log), "quickstart", "--probe", "--items", "16",
                              "--model", "fake/x", "--db", db_path, "--concurrency", "2", "--no-progress"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cached = kill_when(db_path, "SELECT COUNT(*) FROM llm_cache", 5, child, timeout=60)
    assert 5 <= cached < 16, f"kill landed at the wrong time ({cached} cached)"
    con = sqlite3.connect(db_path)
    run_id, status = con.execute("SELECT id, status FROM run").fetchone()
    done_before = {k for (k,) in con.execute("SELECT key FROM llm_cache")}
    con.close()
    assert status == "running"  # killed: nobody marked it

    fake = FakeLLM(default=fake_cli.probe_policy)
    register_backend("fake", lambda cfg: fake)
    assert main(["resume", run_id, "--db", db_path, "--no-progress"]) == 0
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT status FROM run").fetchone()[0] == "done"
    cards = con.execute("SELECT key FROM run_record WHERE run_id = ? AND kind = 'card'", (run_id,)).fetchall()
    con.close()
    assert sorted(int(k) for (k,) in cards) == list(range(1, 17))  # nothing lost, nothing duplicated
    paid = paid_calls_per_key(db_path)
    assert len(paid) == 16 and set(paid.values()) == {1}  # no LLM call paid twice
    # the resumed process only asked for what had not been answered before the kill
    assert fake.calls == 16 - len(done_before)
    served_before = [line for line in log.read_text().split()]
    assert len(served_before) >= len(done_before)


def test_budget_stops_cleanly_and_resume_with_more_budget_finishes(monkeypatch, capsys, db_path):
    fake = _fake_probe(monkeypatch)
    code = main(["quickstart", "--probe", "--items", "6", "--model", "fake/x", "--db", db_path,
                 "--budget-tokens", "300", "--concurrency", "1"])
    err = capsys.readouterr().err
    assert code == 3 and "token budget spent" in err and "Traceback" not in err
    con = sqlite3.connect(db_path)
    run_id, status, calls = con.execute("SELECT id, status, calls FROM run").fetchone()
    con.close()
    assert status == "budget" and 0 < calls < 6
    assert main(["resume", run_id, "--db", db_path, "--budget-tokens", "100000"]) == 0
    con = sqlite3.connect(db_path)
    status, calls = con.execute("SELECT status, calls FROM run").fetchone()
    con.close()
    assert status == "done" and calls == 6 and fake.calls == 6  # nothing asked twice
