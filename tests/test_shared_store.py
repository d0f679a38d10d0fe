"""The store as a team shares it: every test here runs on SQLite and on PostgreSQL
(``store_url``; CI points $TAGSMITH_TEST_POSTGRES_URL at the machine's server, and a
throwaway server is started where none is configured). Each PostgreSQL test has a
database of its own, dropped afterwards.

Covered: the store's records, counters, cache and leases; the three pipelines with their
checkpoints in the same database (a finished run resumes without replaying anything); a
SIGKILLed run resumed with nothing lost and nothing paid twice; provider faults; one
process driving a run at a time; two runs at once with `runs list` while they run;
migrations when several processes start at once; one-line errors for an unreachable
server and a missing extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tagsmith import api
from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import TransientError, register_backend
from tagsmith.cli import main
from tagsmith.core.config import load_config
from tagsmith.core.datasets import ItemSource
from tagsmith.core.errors import ConfigError
from tagsmith.store.db import Store, StoreError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policies  # noqa: E402


def items(n: int) -> list[dict]:
    return [{"id": str(i), "text": f"Movie {i}: a story number {i}"} for i in range(1, n + 1)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(db: str, **llm) -> object:
    return load_config(overrides={
        "llm": {"model": "fake/x", "backoff_base_s": 0, "backoff_max_s": 0.01, "concurrency": 2, **llm},
        "store": {"db": db}, "progress": False,
        "pipeline": {"vocab": {"dedup": False, "max_rounds": 1, "annotators": 2, "batch_size": 4},
                     "assign": {"batch_size": 3, "repair_by_embedding": False},
                     "score": {"density": False, "batch_size": 4}}}, environ={})


def q(db: str, sql: str, **args):
    store = Store(db)
    try:
        with store.engine.connect() as conn:
            return conn.execute(text(sql), args).all()
    finally:
        store.close()


def paid_twice(db: str) -> int:
    rows = q(db, "SELECT cache_key, COUNT(*) FROM llm_call WHERE cache_hit = :f AND error IS NULL "
                 "GROUP BY cache_key HAVING COUNT(*) > 1", f=False)
    return len(rows)


# -- the store ------------------------------------------------------------------------------------
def test_records_counters_cache_blobs_and_leases(store_url):
    store = Store(store_url)
    try:
        run = store.create_run("tag", config={"x": 1})
        assert store.load_work(run.id, "item", [("a", {"text": "é"}), ("b", {"text": "y"})],
                               cursor={"file": 0, "records": 2, "exhausted": True}, stats={"loaded": 2}) == []
        store.transact(store.work_write(run.id, "item", [("a", {"d": [1, 2]})], [("b", {"e": "x"})], {"n": 3}))
        store.transact(store.work_write(run.id, "item", [], [], {"n": 2}))
        assert store.results(run.id, "item") == {"a": {"d": [1, 2]}, "b": {"e": "x"}}
        assert store.stats(run.id) == {"loaded": 2, "n": 5} and store.count_work(run.id, "item", "failed") == 1
        assert store.load_work(run.id, "item", [("a", {"text": "again"})], cursor={"file": 0, "records": 3}) == ["a"]
        store.put_blob(run.id, "sketch", b"\x00\x01" * 1000)
        assert store.get_blob(run.id, "sketch") == b"\x00\x01" * 1000
        store.transact(store._log_call_write({"run_id": run.id, "cache_key": "k", "prompt_tokens": 5,
                                              "completion_tokens": 1, "error": None}, ("k", {"text": "hi"})))
        assert store.cache_get("k") == {"text": "hi"} and store.get_run(run.id).calls == 1
        # leases: ours, refused to another live holder, taken over once expired
        assert store.acquire_lease(run.id, "hostA:1:x", 30) is None
        held = store.acquire_lease(run.id, "hostB:2:y", 30)
        assert held is not None and held.startswith("hostA:1:x (lease until ")
        assert store.renew_lease(run.id, "hostA:1:x", 0.001) and not store.renew_lease(run.id, "hostB:2:y", 30)
        time.sleep(0.01)
        assert store.acquire_lease(run.id, "hostB:2:y", 30) is None  # expired: a crashed owner's run goes on
        assert not store.renew_lease(run.id, "hostA:1:x", 30)
        store.release_lease(run.id, "hostB:2:y")
        assert store.get_run(run.id).lease_owner is None
    finally:
        store.close()


def test_the_three_pipelines_keep_their_checkpoints_in_the_same_database(store_url, tmp_path):
    cfg = config(store_url)
    src = ItemSource(path=str(write_jsonl(tmp_path / "i.jsonl", items(20))), text_field="text")
    fake = FakeLLM(default=policies.reply_for)
    vocab = api.build_vocabulary(src, cfg, backend=fake)
    tagged = api.tag(src, cfg, vocab_run=vocab.id, backend=fake)
    scored = api.score(src, cfg, backend=fake)
    assert (vocab.run.status, tagged.run.status, scored.run.status) == ("done", "done", "done")
    assert tagged.metrics["items"] == 20 and scored.metrics["scored"] == 20
    table = "checkpoints"
    for run in (vocab, tagged, scored):  # LangGraph's saver wrote into the store's own database
        assert q(store_url, f"SELECT COUNT(*) FROM {table} WHERE thread_id = :t", t=run.id)[0][0] == 1
    # a finished run resumed replays nothing: no call, not even a cached one
    again = FakeLLM(default=policies.reply_for)
    for run in (vocab, tagged, scored):
        store = api.open_store(cfg)
        store.update_run(run.id, status="interrupted")  # as if the bookkeeping had been lost
        store.close()
        r = api.resume(run.id, cfg, backend=again)
        assert r.run.status == "done" and r.run.calls == run.run.calls and r.run.cache_hits == run.run.cache_hits
    assert again.calls == 0
    assert len(list(api.export_rows(tagged.id, cfg))) == 20


def test_provider_faults_end_with_the_fault_free_results(store_url, tmp_path):
    src = ItemSource(path=str(write_jsonl(tmp_path / "i.jsonl", items(24))), text_field="text")
    clean = FakeLLM(default=policies.reply_for)
    cfg = config(store_url)
    vocab = api.build_vocabulary(src, cfg, backend=clean)
    calm = api.tag(src, cfg, vocab_run=vocab.id, backend=FakeLLM(default=policies.reply_for))
    n = {"i": 0}

    def flaky(request):
        n["i"] += 1
        if n["i"] % 4 == 0:  # every fourth request: a rate limit
            raise TransientError("429 (injected)", retry_after=0, status=429)
        return policies.reply_for(request)

    stormy = api.tag(src, config(store_url, cache=False), vocab_run=vocab.id, backend=FakeLLM(default=flaky))
    store = api.open_store(cfg)
    assert store.results(stormy.id, "item") == store.results(calm.id, "item")
    assert stormy.metrics["failed_items"] == 0 and n["i"] > 8
    store.close()


def _child(tmp_path: Path, args: list[str], latency: str = "0.1") -> subprocess.Popen:
    env = dict(os.environ, FAKE_LATENCY=latency, PYTHONPATH=str(HERE))
    return subprocess.Popen([sys.executable, str(HERE / "fake_cli.py"), str(tmp_path / "served.log"), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_done(db: str, kind: str, at_least: int, child: subprocess.Popen, timeout: float = 90) -> int:
    deadline = time.time() + timeout
    seen = 0
    while time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
        try:
            seen = q(db, "SELECT COUNT(*) FROM run_record WHERE kind = :k AND state = 'done'", k=kind)[0][0]
        except (StoreError, Exception):  # noqa: BLE001 - the tables may not be there yet
            continue
        if seen >= at_least:
            break
    return seen


@pytest.mark.parametrize("job", ["tag", "score"])
def test_sigkill_mid_run_then_resume_loses_nothing_and_pays_nothing_twice(store_url, tmp_path, job):
    src = write_jsonl(tmp_path / "i.jsonl", items(60))
    cfg = config(store_url)
    args = [job, str(src), "--text-field", "text", "--db", store_url, "--model", "fake/x", "--no-progress",
            "--concurrency", "2"]
    if job == "tag":
        vrun = api.build_vocabulary(ItemSource(path=str(src), text_field="text"), cfg,
                                    backend=FakeLLM(default=policies.reply_for)).id
        args += ["--vocab", vrun, "--batch-size", "3"]
    else:
        args += ["--no-density"]
    kind = "item" if job == "tag" else "doc"
    child = _child(tmp_path, args)
    seen = _wait_done(store_url, kind, 12, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 12 <= seen < 60, f"the kill landed at the wrong time ({seen} done)"
    run_id, status = q(store_url, "SELECT id, status FROM run WHERE kind = :k", k=job)[0]
    assert status == "running"  # killed: nobody could say otherwise
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda c: fake)
    assert main(["resume", run_id, "--db", store_url, "--no-progress"]) == 0  # the dead owner's lease is no bar
    assert q(store_url, "SELECT status FROM run WHERE id = :r", r=run_id) == [("done",)]
    assert q(store_url, "SELECT COUNT(*) FROM run_record WHERE run_id = :r AND kind = :k AND state = 'done'",
             r=run_id, k=kind) == [(60,)]
    assert paid_twice(store_url) == 0


def test_one_process_drives_a_run_at_a_time(store_url, tmp_path, capsys):
    src = write_jsonl(tmp_path / "i.jsonl", items(60))
    cfg = config(store_url)
    vrun = api.build_vocabulary(ItemSource(path=str(src), text_field="text"), cfg,
                                backend=FakeLLM(default=policies.reply_for)).id
    child = _child(tmp_path, ["tag", str(src), "--text-field", "text", "--vocab", vrun, "--db", store_url,
                              "--model", "fake/x", "--no-progress", "--concurrency", "1", "--batch-size", "2"], "0.2")
    try:
        _wait_done(store_url, "item", 2, child)
        run_id = q(store_url, "SELECT id FROM run WHERE kind = 'tag'")[0][0]
        register_backend("fake", lambda c: FakeLLM(default=policies.reply_for))
        capsys.readouterr()
        assert main(["resume", run_id, "--db", store_url, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tagsmith: error: run {run_id} is being driven by ") and "lease until" in err
        assert err.count("\n") == 0
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    assert q(store_url, "SELECT status FROM run WHERE id = :r", r=run_id) == [("interrupted",)]
    # a lease held by a process on another machine bars a resume until it expires
    store = Store(store_url)
    store.acquire_lease(run_id, "elsewhere:1:zz", 0.5)
    store.close()
    assert main(["resume", run_id, "--db", store_url, "--no-progress"]) == 2
    time.sleep(0.6)
    assert main(["resume", run_id, "--db", store_url, "--no-progress"]) == 0
    assert q(store_url, "SELECT status, lease_owner FROM run WHERE id = :r", r=run_id) == [("done", None)]


def test_two_runs_at_once_and_runs_list_while_they_run(store_url, tmp_path, capsys):
    src = write_jsonl(tmp_path / "i.jsonl", items(40))
    cfg = config(store_url)
    vrun = api.build_vocabulary(ItemSource(path=str(src), text_field="text"), cfg,
                                backend=FakeLLM(default=policies.reply_for)).id
    common = ["--text-field", "text", "--db", store_url, "--model", "fake/x", "--no-progress", "--concurrency", "2"]
    a = _child(tmp_path, ["tag", str(src), "--vocab", vrun, "--batch-size", "2", *common], "0.05")
    b = _child(tmp_path, ["score", str(src), "--no-density", *common], "0.05")
    try:
        deadline = time.time() + 60
        listed = ""
        while time.time() < deadline:
            time.sleep(0.2)
            capsys.readouterr()
            if main(["runs", "list", "--db", store_url]) == 0:
                listed = capsys.readouterr().out
                if listed.count(" running ") >= 2:
                    break
        assert listed.count(" running ") >= 2, listed
        assert a.wait(timeout=120) == 0 and b.wait(timeout=120) == 0, (a.stderr.read(), b.stderr.read())
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    statuses = dict(q(store_url, "SELECT kind, status FROM run WHERE kind IN ('tag', 'score')"))
    assert statuses == {"tag": "done", "score": "done"}
    assert paid_twice(store_url) == 0


def test_migrations_are_safe_when_several_processes_start_at_once(store_url):
    code = ("import sys; from tagsmith.store.db import Store; s = Store(sys.argv[1]); "
            "print(len(s.list_runs())); s.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, store_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    names = [r[0] for r in q(store_url, "SELECT name FROM schema_migration")]
    assert len(names) == len(set(names)) and "004_run_lease" in names


# -- one-line errors ------------------------------------------------------------------------------
def test_an_unreachable_server_is_one_line(capsys):
    assert main(["runs", "list", "--db", "postgresql://postgres@127.0.0.1:1/nowhere"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "127.0.0.1:1/nowhere: cannot use the PostgreSQL server" in err
    assert "is it running" in err


def test_a_missing_extra_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'tagsmith\[postgres\]'"):
        Store("postgresql://postgres@127.0.0.1:5432/test")


def test_passwords_stay_out_of_messages():
    from tagsmith.store.db import safe_url

    assert safe_url("postgresql+psycopg://u:s3cret@h:5432/d") == "postgresql+psycopg://u:***@h:5432/d"
    with pytest.raises((StoreError, ConfigError)) as info:
        Store("postgresql://u:s3cret@127.0.0.1:1/d")
    assert "s3cret" not in str(info.value)
