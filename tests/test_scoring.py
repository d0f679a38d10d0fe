"""Ask-LLM scoring: logprob scores (with missing tokens), the vote fallback for providers
without logprobs, the scoring graph, selection from the CLI, and SIGKILL + resume."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tagsmith.agents import scorer
from tagsmith.agents.fake import FakeLLM, FakeReply
from tagsmith.agents.gateway import Gateway, TokenLogprob, register_backend
from tagsmith.cli import main
from tagsmith.core.config import LLMConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policies  # noqa: E402
from crash import kill_when, no_call_paid_twice  # noqa: E402

DOCS = [{"id": str(i), "text": (f"junk junk {i} asdf" if i % 3 == 0 else f"Fact {i}: water boils at 100 C.")}
        for i in range(30)]


async def test_logprob_score_sums_variants_and_normalises(store):
    lp = [TokenLogprob("Yes", math.log(0.5), [("Yes", math.log(0.5)), (" yes", math.log(0.1)),
                                               ("No", math.log(0.2)), ("The", math.log(0.1))])]
    fake = FakeLLM([FakeReply("Yes", logprobs=lp)])
    r = await scorer.ask(Gateway(LLMConfig(model="fake/x"), store=store, backend=fake), "some text")
    assert r.method == "logprobs" and r.score == pytest.approx(0.6 / 0.8)
    req = fake.requests[0]
    assert req["max_tokens"] == 1 and req["top_logprobs"] == 10 and "###\nsome text\n###" in req["messages"][-1]["content"]


async def test_only_no_in_top_k_scores_zero(store):
    lp = [TokenLogprob("no", -0.01, [("no", -0.01), ("The", -5.0)])]
    r = await scorer.ask(Gateway(LLMConfig(model="fake/x"), store=store, backend=FakeLLM([FakeReply("no", logprobs=lp)])),
                         "x")
    assert r.score == 0.0 and r.method == "logprobs"


async def test_no_yes_no_in_top_k_falls_back_to_votes(store):
    lp = [TokenLogprob("The", -0.1, [("The", -0.1), ("A", -2.0)])]
    fake = FakeLLM([FakeReply("The", logprobs=lp), "yes", "no", "Yes", "maybe"])
    r = await scorer.ask(Gateway(LLMConfig(model="fake/x"), store=store, backend=fake), "x", samples=4)
    assert r.method == "votes" and r.score == pytest.approx(2 / 3)
    assert [q["temperature"] for q in fake.requests[1:]] == [1.0] * 4
    assert "logprobs" not in fake.requests[1]


async def test_provider_without_logprobs_uses_votes_and_records_it(store):
    fake = FakeLLM(["yes", "yes", "no", "yes", "no"])  # first reply carries no logprobs at all
    r = await scorer.ask(Gateway(LLMConfig(model="fake/x"), store=store, backend=fake), "x", samples=4)
    assert r.method == "votes" and r.score == pytest.approx(0.5) and r.details["logprobs"] == "none returned"
    r2 = await scorer.ask(Gateway(LLMConfig(model="fake/x"), store=store, backend=FakeLLM(["meh"])), "y", samples=0)
    assert r2.method == "none" and r2.score is None


def test_long_documents_are_cut_to_the_token_budget(store):
    import asyncio
    fake = FakeLLM([FakeReply("yes", logprobs=[TokenLogprob("yes", -0.1, [("yes", -0.1)])])])
    asyncio.run(scorer.ask(Gateway(LLMConfig(model="fake/x"), store=store, backend=fake), "word " * 5000,
                           max_doc_tokens=100))
    assert len(fake.requests[0]["messages"][-1]["content"]) < 1500


def _write(tmp_path: Path) -> Path:
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return f


def test_score_select_export_cli(tmp_path, db_path, capsys):
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda cfg: fake)
    common = ["--db", db_path, "--model", "fake/x", "--no-progress"]
    assert main(["score", str(_write(tmp_path)), *common]) == 0
    out = capsys.readouterr().out
    run = out.split("score run ")[1].split(":")[0]
    assert "30/30 documents scored" in out and "logprobs" in out and fake.calls == 30
    for method in ("askllm", "density", "random", "combined"):
        target = tmp_path / f"{method}.txt"
        assert main(["select", run, "--method", method, "--rate", "0.2", "-o", str(target), *common]) == 0
        chosen = target.read_text().split()
        assert len(chosen) == 6 and len(set(chosen)) == 6
        if method == "askllm":  # the clean documents outrank the junk
            assert all(int(i) % 3 != 0 for i in chosen)
        assert json.loads(target.with_suffix(".report.json").read_text())
    assert main(["export", run, "--format", "csv", "-o", str(tmp_path / "s.csv"), *common]) == 0
    import csv
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 30 and all(r["method"] == "logprobs" and r["density"] for r in rows)
    assert main(["score", str(_write(tmp_path)), *common]) == 0  # again: every call from the cache
    assert fake.calls == 30


def test_select_needs_a_score_run(tmp_path, db_path, capsys):
    from tagsmith.store.db import Store
    run = Store(db_path).create_run("probe", config={})
    assert main(["select", run.id, "--method", "askllm", "--rate", "0.1", "--db", db_path]) == 2
    assert "is a probe run; this needs a score run" in capsys.readouterr().err


def test_sigkill_scoring_then_resume(tmp_path, db_path):
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"id": str(i), "text": f"Fact number {i} about the world."}) + "\n"
                            for i in range(80)))
    common = ["--db", db_path, "--model", "fake/x", "--no-progress", "--concurrency", "2"]
    env = dict(os.environ, FAKE_LATENCY="0.05", PYTHONPATH=str(HERE))
    child = subprocess.Popen([sys.executable, str(HERE / "fake_cli.py"), str(tmp_path / "served.log"), "score",
                              str(many), "--no-density", *common], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = kill_when(db_path, "SELECT COUNT(*) FROM run_record WHERE kind = 'doc' AND result_json IS NOT NULL", 20, child)
    assert 20 <= seen < 80, f"kill landed at the wrong time ({seen})"
    con = sqlite3.connect(db_path)
    run = con.execute("SELECT id FROM run").fetchone()[0]
    con.close()
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda cfg: fake)
    assert main(["resume", run, *common]) == 0
    con = sqlite3.connect(db_path)
    keys = [k for (k,) in con.execute("SELECT key FROM run_record WHERE kind = 'doc' AND result_json IS NOT NULL")]
    con.close()
    assert sorted(int(k) for k in keys) == list(range(80))  # nothing lost, nothing twice
    assert no_call_paid_twice(db_path) == 80  # no document scored twice
    assert fake.calls <= 80 - seen
