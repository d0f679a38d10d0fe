"""The library (tagsmith.api) owns each job; the CLI only parses flags and calls it. So the
same inputs give the same run either way: same requests to the model, same results, same
metrics."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tagsmith import api
from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import register_backend
from tagsmith.cli import main
from tagsmith.core.config import load_config
from tagsmith.core.datasets import ItemSource
from tagsmith.core.errors import ConfigError
from tagsmith.runtime import execute

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policies  # noqa: E402

VOLATILE = {"llm_calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd", "wall_s"}


def write_items(path: Path, n: int = 30) -> Path:
    genres = ["Comedy", "Drama", "Horror"]
    with path.open("w") as f:
        for i in range(1, n + 1):
            f.write(json.dumps({"id": i, "text": f"Movie {i}: a story number {i}", "genres": [genres[i % 3]]}) + "\n")
    return path


def overrides(db: str) -> dict:
    return {"llm": {"model": "fake/x", "backoff_base_s": 0, "concurrency": 2}, "store": {"db": db},
            "progress": False,
            "pipeline": {"vocab": {"dedup": False, "sample_size": 12, "max_rounds": 1, "annotators": 2,
                                   "batch_size": 4},
                         "assign": {"batch_size": 5, "repair_by_embedding": False}}}


def requests_of(fake: FakeLLM) -> list[str]:
    return sorted(json.dumps(r["messages"], sort_keys=True) for r in fake.requests)


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def test_cli_and_library_give_the_same_vocabulary_and_tags(tmp_path):
    items = write_items(tmp_path / "items.jsonl")
    # the library
    lib_fake = FakeLLM(default=policies.reply_for)
    config = load_config(overrides=overrides(str(tmp_path / "lib.db")), environ={})
    source = ItemSource(path=str(items), text_field="text")
    vocab = api.build_vocabulary(source, config, seed_field="genres", backend=lib_fake)
    tagged = api.tag(source, config, vocab_run=vocab.id, backend=lib_fake)
    # the CLI, with the same settings as flags
    cli_fake = FakeLLM(default=policies.reply_for)
    register_backend("fake", lambda cfg: cli_fake)
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump({k: v for k, v in overrides("unused").items() if k in ("llm", "pipeline")}))
    db = str(tmp_path / "cli.db")
    common = ["--config", str(cfg_file), "--db", db, "--no-progress"]
    assert main(["vocab", "build", str(items), "--text-field", "text", "--seed-field", "genres", *common]) == 0
    store = api.open_store(load_config(overrides={"store": {"db": db}}, environ={}))
    cli_vocab = store.list_runs(kind="vocab")[0]
    assert main(["tag", str(items), "--text-field", "text", "--vocab", cli_vocab.id, *common]) == 0
    cli_tag = store.list_runs(kind="tag")[0]
    # same requests, same vocabulary, same tags, same metrics
    assert requests_of(cli_fake) == requests_of(lib_fake) and len(lib_fake.requests) > 5
    lib_store = api.open_store(config)
    assert (store.records(cli_vocab.id, "vocabulary")["final"]["vocabulary"]
            == lib_store.records(vocab.id, "vocabulary")["final"]["vocabulary"])
    assert store.results(cli_tag.id, "item") == lib_store.results(tagged.id, "item")
    assert stable(json.loads(cli_vocab.metrics_json)) == stable(vocab.metrics)
    assert stable(json.loads(cli_tag.metrics_json)) == stable(tagged.metrics)
    assert vocab.metrics["sample_items"] == 12 and vocab.metrics["catalog_items"] == 30


def test_the_vocabulary_pipeline_samples_by_itself(tmp_path):
    """sample_size is the pipeline's: a bare runtime call on 30 items builds on 5."""
    items = [{"id": str(i), "text": f"Movie {i}: a story number {i}"} for i in range(30)]
    over = overrides(str(tmp_path / "t.db"))
    over["pipeline"]["vocab"].update(sample_size=5, max_rounds=0)
    config = load_config(overrides=over, environ={})
    run, state = asyncio.run(execute("vocab", config, {"items": items}, backend=FakeLLM(default=policies.reply_for)))
    metrics = json.loads(run.metrics_json)
    assert metrics["sample_items"] == 5 and metrics["catalog_items"] == 30 and len(state["items"]) == 5
    again, _ = asyncio.run(execute("vocab", config, {"items": list(reversed(items))},
                                   backend=FakeLLM(default=policies.reply_for)))
    assert json.loads(again.metrics_json)["sample_items"] == 5


def test_runs_of_the_wrong_kind_are_refused_with_one_line(tmp_path):
    config = load_config(overrides=overrides(str(tmp_path / "t.db")), environ={})
    items = write_items(tmp_path / "i.jsonl", 6)
    probe = api.probe(ItemSource(path=str(items), text_field="text"), config,
                      backend=FakeLLM(default=policies.reply_for))
    assert probe.run.status == "done" and probe.metrics["described"] == 6
    with pytest.raises(ConfigError, match=rf"run {probe.id} is a probe run; this needs a vocab run"):
        api.tag(ItemSource(path=str(items), text_field="text"), config, vocab_run=probe.id)
    with pytest.raises(ConfigError, match="this needs a score run"):
        api.select(probe.id, config, method="random", rate=0.5)


def test_export_streams_every_format(tmp_path):
    import pyarrow.parquet as pq

    config = load_config(overrides=overrides(str(tmp_path / "t.db")), environ={})
    items = write_items(tmp_path / "i.jsonl", 7)
    run = api.probe(ItemSource(path=str(items), text_field="text"), config, backend=FakeLLM(default=policies.reply_for))
    assert api.export(run.id, config, fmt="jsonl", output=tmp_path / "o.jsonl") == 7
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 7
    assert api.export(run.id, config, fmt="csv", output=tmp_path / "o.csv") == 7
    assert (tmp_path / "o.csv").read_text().splitlines()[0].startswith("id,")
    assert api.export(run.id, config, fmt="parquet", output=tmp_path / "o.parquet") == 7
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 7
    assert not list(tmp_path.glob("*.part"))  # written whole, then renamed
