"""Vocabulary building and assignment: nodes and whole graphs on a scripted fake model,
including malformed and out-of-vocabulary replies, and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagsmith.agents import assigner
from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import Gateway, register_backend
from tagsmith.cli import main
from tagsmith.core.config import LLMConfig, VocabConfig, load_config
from tagsmith.core.vocabulary import Descriptor, Facet, Vocabulary, seed_facet_from_field
from tagsmith.evaluators.vocab_metrics import aggregate_reports, feedback_text
from tagsmith.pipelines.vocabulary import dedup, round_batches
from tagsmith.runtime import execute, resume

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policies  # noqa: E402
from crash import kill_when, no_call_paid_twice  # noqa: E402

ITEMS = [{"id": str(i), "text": f"Movie {i}: a story number {i}"} for i in range(1, 25)]


def vocab() -> Vocabulary:
    return Vocabulary.model_validate(policies.DRAFT)


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic 'embeddings': texts sharing their first word are identical vectors."""
    out = []
    for t in texts:
        rng = np.random.default_rng(abs(hash(t.split()[0].strip(":").lower())) % 2**32)
        v = rng.normal(size=16)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def make_config(db_path: str, **vocab) -> object:
    return load_config(overrides={"llm": {"model": "fake/x", "backoff_base_s": 0, "concurrency": 4},
                                  "store": {"db": db_path}, "progress": False,
                                  "pipeline": {"vocab": {"dedup": False, "annotators": 3, "batch_size": 4,
                                                         "overlap": 1, "sample_size": 24, **vocab},
                                               "assign": {"batch_size": 5, "repair_by_embedding": False}}},
                       environ={})


# -- pure pieces --------------------------------------------------------------------------------
def test_round_batches_overlap_and_move_on():
    cfg = VocabConfig(annotators=3, batch_size=4, overlap=1, seed=0)
    r0, r1 = round_batches(ITEMS, 0, cfg), round_batches(ITEMS, 1, cfg)
    assert [len(b) for b in r0] == [4, 4, 4]
    assert r0[0][-1] == r0[1][0] and r0[1][-1] == r0[2][0]  # neighbours share an item
    assert {i["id"] for b in r0 for i in b} != {i["id"] for b in r1 for i in b}  # fresh items next round


def test_aggregate_counts_coverage_oov_proposals_and_agreement():
    v = vocab()
    reports = [
        {"round": 0, "batch": 0, "item_ids": ["1", "2"], "report": {
            "tags": [{"item_id": "1", "descriptors": ["comedy", "Light"]}, {"item_id": "2", "descriptors": ["bogus"]},
                     {"item_id": "99", "descriptors": ["drama"]}],
            "uncovered": [{"proposed_name": "Space Opera", "proposed_facet": "genre", "evidence": "stars"}],
            "overlapping": [{"a": "dark", "b": "drama"}], "too_broad": ["comedy"], "too_narrow": []}},
        {"round": 0, "batch": 1, "item_ids": ["2", "3"], "report": {
            "tags": [{"item_id": "2", "descriptors": ["drama"]}, {"item_id": "3", "descriptors": []}],
            "uncovered": [{"proposed_name": "space-opera", "proposed_facet": "genre"}],
            "overlapping": [], "too_broad": [], "too_narrow": ["thriller"]}},
        {"round": 0, "batch": 2, "item_ids": ["4"], "error": "malformed"},
    ]
    s = aggregate_reports(v, reports, broad_share=0.9)
    assert s["items_seen"] == 3 and s["coverage"] == pytest.approx(2 / 3)  # items 1, 2 covered; 3 not
    assert s["oov_answers"] == 1 and s["oov_rate"] == pytest.approx(1 / 4)
    assert s["usage"]["comedy"] == 1 and s["usage"]["drama"] == 1 and s["usage"]["light"] == 1
    assert s["proposals"]["space-opera"]["count"] == 2 and s["proposals"]["space-opera"]["facet"] == "genre"
    assert s["overlaps"] == [["dark", "drama", 1]] and s["too_narrow"] == {"thriller": 1}
    assert s["failed_batches"] == 1
    assert s["agreement"] == pytest.approx(0.0)  # item 2: {} vs {drama}
    text = feedback_text(s)
    assert "space-opera x2 (genre)" in text and "dark ~ drama x1" in text


def test_dedup_merges_near_duplicates_in_a_facet():
    v = Vocabulary(facets=[Facet(name="genre", descriptors=[Descriptor(name="comedy", definition="x"),
                                                            Descriptor(name="comedy-film", definition="y"),
                                                            Descriptor(name="drama", definition="z")])])
    embed = lambda texts: fake_embed([t.replace("comedy film", "comedy") for t in texts])  # noqa: E731
    new, merges = dedup(v, 0.95, embed)
    assert [d.name for d in new.facets[0].descriptors] == ["comedy", "drama"]
    assert merges[0].sources == ["comedy", "comedy-film"]


def test_seed_facet_from_field():
    items = [{"fields": {"genres": ["Comedy", "Drama"]}}, {"fields": {"genres": ["Comedy"]}},
             {"fields": {"genres": ["unknown", "Drama"]}}, {"fields": {"genres": ["Horror"]}}]
    f = seed_facet_from_field(items, "genres", 5)
    assert [d.name for d in f.descriptors] == ["comedy", "drama"]  # horror occurs once


async def test_assigner_repairs_oov_by_embedding_then_reasks(store):
    v = vocab()
    nearest_table = {"comedic": ("comedy", 0.9), "zzz": ("dark", 0.1)}
    nearest = lambda names: [nearest_table.get(n, ("drama", 0.0)) for n in names]  # noqa: E731
    fake = FakeLLM().enqueue(
        "not json at all",  # malformed: the gateway re-asks
        {"items": [{"id": "1", "genre": ["comedic", "drama", "action"], "mood": ["light"]},
                   {"id": "1", "genre": ["thriller"]},  # a second entry for an id is ignored
                   {"id": "2", "genre": ["zzz"]},  # OOV, not repairable -> item 2 re-asked alone
                   {"id": "77", "genre": ["comedy"]}]},  # unknown id ignored; item 3 missing -> re-asked
        {"items": [{"id": "2", "genre": ["thriller"], "mood": []}]},
        {"items": [{"id": "3", "mood": ["dark"]}]})
    gw = Gateway(LLMConfig(model="fake/x", max_reasks=1), store=store, backend=fake)
    items = [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}, {"id": "3", "text": "c"}]
    tags, stats = await assigner.assign(gw, v, items, domain="movies", per_facet=2, nearest=nearest)
    assert tags["1"].descriptors == ["comedy", "drama", "light"]  # coarse facet first
    assert tags["1"].by_facet["genre"] == ["comedy", "drama"]  # the model's order, repaired in place, capped at 2
    assert tags["1"].oov == 1 and tags["1"].repaired == 1
    assert tags["1"].semantic_id == ["comedy", "light"]
    assert tags["2"].descriptors == ["thriller"] and tags["2"].oov == 1 and tags["2"].repaired == 0
    assert tags["3"].descriptors == ["dark"] and tags["3"].semantic_id == ["", "dark"]
    assert stats.reasked_items == 2 and stats.missing_items == 1 and fake.calls == 4
    schema = fake.requests[0]["response_format"]["json_schema"]["schema"]
    per_item = schema["properties"]["items"]["properties"]
    assert list(per_item) == ["1", "2", "3"] and schema["properties"]["items"]["required"] == ["1", "2", "3"]
    assert per_item["1"] == per_item["3"] == {"$ref": "#/$defs/tags"}  # the vocabulary once, not once per item
    tags_schema = schema["$defs"]["tags"]
    assert tags_schema["properties"]["genre"]["items"]["enum"] == ["comedy", "drama", "action", "thriller"]
    assert tags_schema["properties"]["genre"]["minItems"] == 1  # the coarsest facet is required
    assert json.dumps(schema).count('"thriller"') == 1


async def test_assigner_reads_replies_keyed_by_id(store):
    fake = FakeLLM().enqueue({"items": {"1": {"genre": ["drama"], "mood": ["dark"]}, "2": {"genre": ["comedy"]}}})
    gw = Gateway(LLMConfig(model="fake/x"), store=store, backend=fake)
    tags, stats = await assigner.assign(gw, vocab(), [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}],
                                        domain="movies")
    assert tags["1"].descriptors == ["drama", "dark"] and tags["2"].semantic_id == ["comedy", ""]
    assert stats.reasked_items == 0 and fake.calls == 1


# -- whole graphs ---------------------------------------------------------------------------------
async def test_vocab_graph_revises_with_edits_and_stores_versions(db_path):
    fake = FakeLLM(default=policies.reply_for)
    config = make_config(db_path, max_rounds=3, coverage_target=0.5, change_threshold=0.1)
    run, state = await execute("vocab", config, {"items": ITEMS}, backend=fake)
    assert run.status == "done"
    from tagsmith.runtime import open_store
    store = open_store(config)
    versions = store.records(run.id, "vocab_version")
    assert list(versions) == ["000", "001", "002"]  # draft, revision 1 (adds), revision 2 (no change)
    v1 = versions["001"]
    assert v1["diff"]["added"] == ["space-opera"]
    assert v1["edits"]["rejected"][0]["why"] == "no descriptor named 'no-such-descriptor'"
    assert v1["feedback"]["proposals"]["space-opera"]["count"] >= 1
    final = Vocabulary.model_validate(store.records(run.id, "vocabulary")["final"]["vocabulary"])
    assert "space-opera" in final.names()
    assert state["stop_reason"].startswith("converged")
    metrics = json.loads(run.metrics_json)
    assert metrics["rounds"] == 2 and metrics["vocab_size"] == 7 and metrics["agreement"] is not None
    # 1 draft + 3 annotators x 3 rounds + 2 revisions
    assert fake.calls == 1 + 9 + 2
    roles = [r["messages"][0]["content"][:40] for r in fake.requests]
    assert sum("architect" in r for r in roles) == 3


async def test_vocab_graph_round_limit_zero_is_draft_only(db_path):
    fake = FakeLLM(default=policies.reply_for)
    run, state = await execute("vocab", make_config(db_path, max_rounds=0), {"items": ITEMS}, backend=fake)
    assert state["stop_reason"].startswith("round limit") and fake.calls == 1 + 3


async def test_a_malformed_annotator_does_not_sink_the_round(db_path):
    calls = {"n": 0}

    def flaky(request):
        if "annotator" in request["messages"][0]["content"]:
            calls["n"] += 1
            if calls["n"] <= 3:  # the first annotator always answers garbage (1 + 2 re-asks)
                return "{broken"
        return policies.reply_for(request)

    fake = FakeLLM(default=flaky)
    config = make_config(db_path, max_rounds=0)
    config.llm.concurrency = 1
    run, state = await execute("vocab", config, {"items": ITEMS}, backend=fake)
    assert run.status == "done"
    assert sum(1 for r in state["reports"] if r.get("error")) == 1
    assert state["stats"]["failed_batches"] == 1


async def test_tag_graph_tags_every_item_once_and_resume_is_free(db_path):
    fake = FakeLLM(default=policies.reply_for)
    config = make_config(db_path, max_rounds=0)
    vrun, _ = await execute("vocab", config, {"items": ITEMS}, backend=fake)
    before = fake.calls
    trun, state = await execute("tag", config, {"vocab_run": vrun.id, "items": ITEMS}, backend=fake,
                                parent_run=vrun.id)
    assert fake.calls - before == 5  # 24 items in batches of 5
    from tagsmith.runtime import open_store
    store = open_store(config)
    tags = store.results(trun.id, "item")
    assert sorted(tags, key=int) == [i["id"] for i in ITEMS]
    assert all(t["status"] == "ok" and len(t["semantic_id"]) == 2 for t in tags.values())
    m = json.loads(store.require_run(trun.id).metrics_json)
    assert m["coverage"] == 1.0 and m["items"] == 24 and m["oov_rate"] == 0.0
    # resuming a finished run calls nothing; a new run over the same items is all cache hits
    await resume(trun.id, config, backend=fake)
    trun2, _ = await execute("tag", config, {"vocab_run": vrun.id, "items": ITEMS}, backend=fake)
    assert fake.calls - before == 5
    assert store.require_run(trun2.id).cache_hits == 5


def test_cli_vocab_build_show_tag_export(tmp_path, db_path, capsys):
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda cfg: fake)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i["id"], "title": i["text"], "genres": ["Comedy", "Drama"]}) + "\n"
                             for i in ITEMS))
    common = ["--db", db_path, "--model", "fake/x", "--no-progress"]
    assert main(["vocab", "build", str(items), "--rounds", "1", "--seed-field", "genres", *common]) == 0
    out = capsys.readouterr().out
    vrun = out.split("vocab show ")[1].split(";")[0]
    assert main(["vocab", "show", vrun, "--versions", *common]) == 0
    shown = capsys.readouterr().out
    assert "1. genres" in shown and "2. genre" in shown and "comedy" in shown and "v1 round 1" in shown
    assert main(["tag", str(items), "--vocab", vrun, *common]) == 0
    trun = capsys.readouterr().out.split("tagsmith export ")[1].split()[0]
    target = tmp_path / "tags.csv"
    assert main(["export", trun, "--format", "csv", "-o", str(target), *common]) == 0
    import csv
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 24 and json.loads(rows[0]["descriptors"])
    assert main(["export", vrun, "--format", "jsonl", "-o", str(tmp_path / "v.jsonl"), *common]) == 0
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert {r["facet"] for r in rows} >= {"genres", "genre", "mood"}


def test_cli_bad_items_name_file_and_line(tmp_path, db_path, capsys):
    items = tmp_path / "bad.jsonl"
    items.write_text('{"id": "1", "title": "a"}\n{"id": "1", "title": "b"}\n')
    assert main(["vocab", "build", str(items), "--db", db_path, "--model", "fake/x"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "duplicate" in err and err.count("\n") == 1


# -- crash safety ---------------------------------------------------------------------------------
def _child(tmp_path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, FAKE_LATENCY="0.12", PYTHONPATH=str(HERE))
    return subprocess.Popen([sys.executable, str(HERE / "fake_cli.py"), str(tmp_path / "served.log"), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_vocab_build_then_resume(tmp_path, db_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    common = ["--db", db_path, "--model", "fake/x", "--no-progress", "--concurrency", "2"]
    child = _child(tmp_path, ["vocab", "build", str(items), "--rounds", "3", "--annotators", "3",
                              "--annotator-batch", "4", *common])
    seen = kill_when(db_path, "SELECT COUNT(*) FROM llm_cache", 5, child)
    assert 5 <= seen < 12, f"kill landed at the wrong time ({seen} answers)"
    con = sqlite3.connect(db_path)
    run_id = con.execute("SELECT id FROM run").fetchone()[0]
    con.close()
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda cfg: fake)
    assert main(["resume", run_id, *common]) == 0
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT status FROM run").fetchone()[0] == "done"
    versions = [k for (k,) in con.execute("SELECT key FROM run_record WHERE kind = 'vocab_version'")]
    con.close()
    assert versions == sorted(set(versions)) and versions[0] == "000"  # each version stored once
    no_call_paid_twice(db_path)


def test_sigkill_tagging_then_resume(tmp_path, db_path):
    many = [{"id": str(i), "text": f"Movie {i}"} for i in range(1, 61)]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in many))
    fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda cfg: fake)
    common = ["--db", db_path, "--model", "fake/x", "--no-progress", "--concurrency", "2"]
    assert main(["vocab", "build", str(items), "--rounds", "0", *common]) == 0
    con = sqlite3.connect(db_path)
    vrun = con.execute("SELECT id FROM run").fetchone()[0]
    con.close()
    child = _child(tmp_path, ["tag", str(items), "--vocab", vrun, "--batch-size", "3", *common])
    seen = kill_when(db_path, "SELECT COUNT(*) FROM run_record WHERE kind = 'item' AND result_json IS NOT NULL", 15, child)
    assert 15 <= seen < 60, f"kill landed at the wrong time ({seen} tagged)"
    con = sqlite3.connect(db_path)
    trun = con.execute("SELECT id FROM run WHERE kind = 'tag'").fetchone()[0]
    con.close()
    before = fake.calls
    assert main(["resume", trun, *common]) == 0
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT key FROM run_record WHERE run_id = ? AND kind = 'item' AND result_json IS NOT NULL", (trun,)).fetchall()
    status = con.execute("SELECT status FROM run WHERE id = ?", (trun,)).fetchone()[0]
    con.close()
    assert status == "done"
    assert sorted(int(k) for (k,) in rows) == list(range(1, 61))  # no item lost, none duplicated
    assert fake.calls - before <= 20 - seen // 3 + 2  # only what was left (in-flight batches at most 2)
    no_call_paid_twice(db_path)
