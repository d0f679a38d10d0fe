"""The batch stage (pipelines/batch.py) under assignment and scoring: streaming input from
files and shards, the source kept instead of the records, resume from the stored cursor,
a changed source refused, bounded checkpoints, retries of failed batches, skip counts,
density in chunks and against a stored sketch, and SIGINT / SIGTERM."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tagsmith import api
from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import register_backend
from tagsmith.cli import main
from tagsmith.core.config import load_config
from tagsmith.core.datasets import ItemSource
from tagsmith.core.errors import BudgetExceeded, ConfigError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policies  # noqa: E402
from crash import no_call_paid_twice  # noqa: E402


def items(n: int, start: int = 1) -> list[dict]:
    return [{"id": str(i), "text": f"Movie {i}: a story number {i}"} for i in range(start, start + n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(db: str, **assign) -> object:
    return load_config(overrides={
        "llm": {"model": "fake/x", "backoff_base_s": 0, "concurrency": 1},
        "store": {"db": db}, "progress": False,
        "pipeline": {"vocab": {"dedup": False, "max_rounds": 0, "annotators": 2, "batch_size": 4},
                     "assign": {"batch_size": 5, "wave_batches": 1, "load_chunk": 1, "repair_by_embedding": False,
                                **assign},
                     "score": {"batch_size": 4, "wave_batches": 1, "load_chunk": 1, "density": False}}},
        environ={})


def vocab_run(cfg, tmp_path: Path) -> str:
    src = write_jsonl(tmp_path / "v.jsonl", items(8))
    return api.build_vocabulary(ItemSource(path=str(src), text_field="text"), cfg,
                                backend=FakeLLM(default=policies.reply_for)).id


def sql(db: str, q: str, *args):
    con = sqlite3.connect(db)
    try:
        return con.execute(q, args).fetchall()
    finally:
        con.close()


def test_shards_of_three_formats_stream_in_and_the_run_keeps_its_source(tmp_path, db_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = config(db_path)
    vrun = vocab_run(cfg, tmp_path)
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", items(30))
    (shards / "b.csv.gz").write_bytes(gzip.compress(
        ("id,text\n" + "".join(f'{r["id"]},"{r["text"]}"\n' for r in items(30, 31))).encode()))
    pq.write_table(pa.Table.from_pylist(items(30, 61)), shards / "c.parquet")
    (shards / "notes.txt").write_text("not data")
    fake = FakeLLM(default=policies.reply_for)
    result = api.tag(ItemSource(path=str(shards), text_field="text"), cfg, vocab_run=vrun, backend=fake)
    assert result.run.status == "done" and result.metrics["items"] == 90 and result.metrics["loaded"] == 90
    assert result.metrics["waves"] >= 90 // 20 and fake.calls == 90 // 5
    inputs = json.loads(result.run.inputs_json)
    assert [Path(f["path"]).name for f in inputs["source"]["files"]] == ["a.jsonl", "b.csv.gz", "c.parquet"]
    assert all(f["size"] > 0 and f["mtime_ns"] > 0 for f in inputs["source"]["files"])
    assert len(result.run.inputs_json) < 2000 and "story number" not in result.run.inputs_json
    # a glob reads the same shards
    again = api.tag(ItemSource(path=str(shards / "[ab].*"), text_field="text"), cfg, vocab_run=vrun,
                    backend=FakeLLM(default=policies.reply_for))
    assert again.metrics["items"] == 60 and again.run.calls == 0  # every answer from the cache


def test_checkpoints_stay_few_and_small_and_state_holds_no_records(tmp_path, db_path):
    cfg = config(db_path)
    vrun = vocab_run(cfg, tmp_path)
    src = write_jsonl(tmp_path / "many.jsonl", items(200))
    result = api.tag(ItemSource(path=str(src), text_field="text"), cfg, vocab_run=vrun,
                     backend=FakeLLM(default=policies.reply_for))
    assert result.metrics["waves"] >= 10
    rows = sql(db_path, "SELECT COUNT(*), SUM(LENGTH(checkpoint) + LENGTH(metadata)) FROM checkpoints "
                        "WHERE thread_id = ?", result.id)
    assert rows[0][0] == 1 and rows[0][1] < 20_000  # a finished run keeps its last checkpoint only
    assert sql(db_path, "SELECT COUNT(*) FROM writes WHERE thread_id = ?", result.id)[0][0] < 10
    blob = sql(db_path, "SELECT checkpoint FROM checkpoints WHERE thread_id = ?", result.id)[0][0]
    assert b"story number" not in blob


def test_resume_loads_on_from_the_cursor_and_refuses_a_changed_source(tmp_path, db_path):
    cfg = config(db_path)
    vrun = vocab_run(cfg, tmp_path)
    src = write_jsonl(tmp_path / "items.jsonl", items(60))
    tight = load_config(overrides={**json.loads(cfg.model_dump_json()), "llm": {
        **cfg.llm.model_dump(), "budget_tokens": 1}}, environ={})
    with pytest.raises(BudgetExceeded):
        api.tag(ItemSource(path=str(src), text_field="text"), tight, vocab_run=vrun,
                backend=FakeLLM(default=policies.reply_for))
    run_id, status = sql(db_path, "SELECT id, status FROM run WHERE kind = 'tag'")[0]
    assert status == "budget"
    cursor = json.loads(sql(db_path, "SELECT data_json FROM run_record WHERE run_id = ? AND kind = 'cursor'",
                            run_id)[0][0])
    assert cursor["records"] == 20 and not cursor["exhausted"]  # one chunk in when the budget stopped it
    # the input changes under the stopped run: resume refuses, with one line, and keeps what it has
    stat = src.stat()
    src.write_text(src.read_text() + json.dumps({"id": "61", "text": "late"}) + "\n")
    with pytest.raises(ConfigError, match=r"items\.jsonl: changed since the run started"):
        api.resume(run_id, cfg, backend=FakeLLM(default=policies.reply_for))
    # restored, the run goes on from its cursor; nothing is asked twice
    src.write_text("".join(json.dumps(r) + "\n" for r in items(60)))
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fake = FakeLLM(default=policies.reply_for)
    done = api.resume(run_id, cfg, overrides={"llm": {"budget_tokens": None}}, backend=fake)
    assert done.run.status == "done" and done.metrics["items"] == 60
    assert sql(db_path, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND kind = 'item'", run_id)[0][0] == 60
    no_call_paid_twice(db_path)


def test_skips_are_counted_per_reason_and_shown(tmp_path, db_path, capsys):
    cfg = config(db_path)
    vrun = vocab_run(cfg, tmp_path)
    rows = [json.dumps(r) for r in items(30)]
    rows[4] = '{"id": "5", "text": "cut'                   # malformed JSON
    rows[9] = json.dumps({"id": "10", "title": "no text"})  # missing text field
    rows[25] = json.dumps({"id": "3", "text": "again"})     # duplicate id, in a later chunk
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(rows) + "\n")
    result = api.tag(ItemSource(path=str(src), text_field="text", on_error="skip"), cfg, vocab_run=vrun,
                     backend=FakeLLM(default=policies.reply_for))
    m = result.metrics
    assert (m["loaded"], m["skipped"], m["items"]) == (27, 3, 27)
    assert m["skipped_by_reason"] == {"malformed JSON: Unterminated string starting at": 1,
                                      "missing text field '…'": 1, "duplicate id '…'": 1}
    assert result.report.errors[0].startswith(f"{src}:5: malformed JSON")
    assert main(["runs", "show", result.id, "--db", db_path]) == 0
    shown = capsys.readouterr().out
    assert "skipped                      3" in shown and "missing text field" in shown
    assert "27 done, 0 failed, 0 pending of 27 loaded; 3 bad records skipped" in shown


def test_a_failed_batch_is_retried_one_item_at_a_time(tmp_path, db_path):
    cfg = config(db_path)
    vrun = vocab_run(cfg, tmp_path)
    src = write_jsonl(tmp_path / "i.jsonl", items(10))
    broken = {"n": 0}

    def reply(request):
        asked = json.dumps(request["messages"])
        if "Movie 3:" in asked and "Movie 4:" in asked:  # the batch of 1..5, every time (and its re-asks)
            broken["n"] += 1
            return "{not json"
        return policies.reply_for(request)

    result = api.tag(ItemSource(path=str(src), text_field="text"), cfg, vocab_run=vrun, backend=FakeLLM(default=reply))
    m = result.metrics
    assert broken["n"] == 3  # the first ask and its two re-asks
    assert m["failed_items"] == 0 and m["items"] == 10 and m["coverage"] == 1.0
    assert result.run.status == "done"
    tags = dict(sql(db_path, "SELECT key, result_json FROM run_record WHERE run_id = ? AND kind = 'item' AND result_json IS NOT NULL", result.id))
    assert json.loads(tags["3"])["status"] == "ok"
    assert sql(db_path, "SELECT value FROM run_stat WHERE run_id = ? AND name = 'retried'", result.id) == [(5.0,)]


def test_density_in_chunks_equals_one_pass_and_scores_new_data_against_a_stored_sketch(tmp_path, db_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    docs = [{"id": str(i), "text": f"doc {i}"} for i in range(60)]
    vec = {d["text"]: centres[i % 3] + 0.05 * rng.normal(size=16) for i, d in enumerate(docs)}

    def embed(texts):
        v = np.array([vec.get(t, centres[0]) for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    src = write_jsonl(tmp_path / "d.jsonl", docs)
    base = json.loads(config(db_path).model_dump_json())

    def score_cfg(**over):
        base["pipeline"]["score"].update({"density": True, "density_rows": 32, "density_buckets": 256, **over})
        return load_config(overrides=base, environ={})

    one = api.score(ItemSource(path=str(src)), score_cfg(exact_check_max=100), backend=FakeLLM(default=policies.reply_for),
                    embed=embed)
    chunked = api.score(ItemSource(path=str(src)), score_cfg(exact_check_max=0, density_chunk=7),
                        backend=FakeLLM(default=policies.reply_for), embed=embed)
    assert one.metrics["density_check"]["n"] == 60 and not chunked.metrics["density_check"]
    store = api.open_store(score_cfg())
    d1 = dict(store.iter_records(one.id, "density"))
    d2 = dict(store.iter_records(chunked.id, "density"))
    assert d1.keys() == d2.keys() == {d["id"] for d in docs}
    assert all(abs(d1[k]["density"] - d2[k]["density"]) < 1e-12 for k in d1)
    assert store.get_blob(chunked.id, "density_sketch") is not None
    # new documents against the stored sketch: the old corpus's densities, not their own
    new = write_jsonl(tmp_path / "new.jsonl", [{"id": "n1", "text": "doc 0"}, {"id": "n2", "text": "doc 1"}])
    later = api.score(ItemSource(path=str(new)), score_cfg(density_from=chunked.id, exact_check_max=0),
                      backend=FakeLLM(default=policies.reply_for), embed=embed)
    d3 = dict(store.iter_records(later.id, "density"))
    assert d3["n1"]["density"] == pytest.approx(d2["0"]["density"]) and d3["n2"]["density"] == pytest.approx(
        d2["1"]["density"])
    rows = list(api.export_rows(chunked.id, score_cfg()))
    assert len(rows) == 60 and rows[0]["density"] == d2["0"]["density"]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_marks_the_run_interrupted_releases_the_store_and_resume_finishes(tmp_path, db_path, sig, code):
    cfg = config(db_path)
    vrun = vocab_run(cfg, tmp_path)
    src = write_jsonl(tmp_path / "i.jsonl", items(80))
    env = dict(os.environ, FAKE_LATENCY="0.1", PYTHONPATH=str(HERE))
    child = subprocess.Popen([sys.executable, str(HERE / "fake_cli.py"), str(tmp_path / "served.log"), "tag", str(src),
                              "--text-field", "text", "--vocab", vrun, "--db", db_path, "--model", "fake/x",
                              "--no-progress", "--concurrency", "2", "--batch-size", "2"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            if sql(db_path, "SELECT COUNT(*) FROM run_record WHERE kind = 'item' AND result_json IS NOT NULL")[0][0] >= 6:
                break
        except sqlite3.OperationalError:
            continue
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    run_id, status, error = sql(db_path, "SELECT id, status, error FROM run WHERE kind = 'tag'")[0]
    assert status == "interrupted" and f"tagsmith resume {run_id}" in err, (status, err)
    con = sqlite3.connect(db_path, timeout=0.5)  # released: a write goes through at once
    con.execute("BEGIN IMMEDIATE")
    con.rollback()
    con.close()
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda c: fake)
    assert main(["resume", run_id, "--db", db_path, "--no-progress"]) == 0
    assert sql(db_path, "SELECT status FROM run WHERE id = ?", run_id) == [("done",)]
    assert sql(db_path, "SELECT COUNT(*) FROM run_record WHERE run_id = ? AND kind = 'item' AND result_json IS NOT NULL", run_id) == [(80,)]
    no_call_paid_twice(db_path)
