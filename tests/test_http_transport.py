"""``llm.transport: http``: the gateway POSTs to an OpenAI-compatible endpoint itself.

Against the simulated provider on loopback (tests/sim_server.py): replies, usage and
logprobs come back as through litellm; every fault kind maps to a retryable error or to
content the gateway re-asks about; a 4xx is final; and the whole pipelines end with the
fault-free results under 20% mixed faults.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import Gateway, HTTPBackend, TransientError, register_backend
from tagsmith.core.config import LLMConfig
from tagsmith.core.errors import ConfigError, LLMError
from tagsmith.store.db import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
import policies  # noqa: E402
from sim_server import FAULT_KINDS, SimServer  # noqa: E402

SCORE = [{"role": "system", "content": "You rate training data."},
         {"role": "user", "content": "###\nFact 1: water boils.\n###\nIs it informative?"}]
DRAFT = [{"role": "system", "content": "You are the architect."}, {"role": "user", "content": "Draft a vocabulary."}]


class Draft(BaseModel):
    facets: list


def cfg(url: str, **kw) -> LLMConfig:
    return LLMConfig(model="openai/sim", api_base=url, transport="http", backoff_base_s=0.01,
                     backoff_max_s=0.05, **kw)


def test_reply_usage_logprobs_and_a_logged_cached_call(tmp_path):
    async def main(url: str):
        store = Store(str(tmp_path / "h.db"))
        run = store.create_run("probe", config={})
        gw = Gateway(cfg(url), store=store, run_id=run.id)
        try:
            first = await gw.call(SCORE, logprobs=3, max_tokens=1)
            again = await gw.call(SCORE, logprobs=3, max_tokens=1)
            draft = await gw.call(DRAFT, schema=Draft)
        finally:
            await gw.aclose()
        r = store.get_run(run.id)
        store.close()
        return first, again, draft, r

    with SimServer() as sim:
        first, again, draft, run = asyncio.run(main(sim.url))
        assert sim.stats()["requests"] == 2  # the repeat came from the cache
    assert first.text == "yes" and first.prompt_tokens > 10 and first.completion_tokens == 1
    assert first.logprobs[0].token == "yes" and len(first.logprobs[0].top) == 3
    assert first.logprobs[0].top[0][1] == pytest.approx(-0.2231, abs=1e-3)
    assert again.cached and again.text == "yes" and again.logprobs[0].top == first.logprobs[0].top
    assert isinstance(draft.parsed, Draft) and draft.parsed.facets
    assert (run.calls, run.cache_hits) == (2, 1)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_is_retryable_or_returned_as_content(kind):
    async def main(url: str):
        backend = HTTPBackend(cfg(url, timeout_s=0.3))
        try:
            return await backend.complete({"model": "openai/sim", "messages": DRAFT, "max_tokens": 500,
                                           "response_format": {"type": "json_schema",
                                                               "json_schema": {"name": "D", "schema": {}}}})
        finally:
            await backend.aclose()

    with SimServer(faults={kind: 1.0}, hang_s=2, retry_after=0.25) as sim:
        if kind in ("truncated", "schema"):  # a 200 with bad content: the gateway re-asks
            raw = asyncio.run(main(sim.url))
            assert raw.text and (raw.finish_reason == "length") == (kind == "truncated")
            return
        with pytest.raises(TransientError) as err:
            asyncio.run(main(sim.url))
    if kind == "rate_limit":
        assert err.value.status == 429 and err.value.retry_after == pytest.approx(0.25)
    if kind == "server_error":
        assert err.value.status == 500
    if kind == "malformed":
        assert "malformed response body" in str(err.value)


def test_gateway_retries_through_faults_to_the_right_answer():
    async def main(url: str):
        gw = Gateway(cfg(url, max_retries=12, max_reasks=6, timeout_s=1.0))
        try:
            return await asyncio.gather(*(gw.call([DRAFT[0], {"role": "user", "content": f"Draft a vocabulary. ({i})"}],
                                                  schema=Draft) for i in range(12)))
        finally:
            await gw.aclose()

    faults = {k: 0.1 for k in ("reset", "rate_limit", "server_error", "malformed", "truncated", "schema")}
    with SimServer(faults=faults, seed=5, retry_after=0.01) as sim:
        results = asyncio.run(main(sim.url))
        stats = sim.stats()
    assert all(isinstance(r.parsed, Draft) and r.parsed.facets for r in results)
    assert stats["faults_total"] >= 6
    assert sum(r.attempts - 1 for r in results) + sum(r.reasks for r in results) >= stats["faults_total"]


def test_client_errors_are_final_and_missing_endpoints_are_config_errors():
    async def call(url: str):
        backend = HTTPBackend(cfg(url))
        try:
            return await backend.complete({"model": "openai/sim", "messages": SCORE})
        finally:
            await backend.aclose()

    with SimServer() as sim:
        with pytest.raises(LLMError) as err:  # 404: wrong path, not worth a retry
            asyncio.run(call(sim.url + "/nope"))
        assert not isinstance(err.value, TransientError) and "HTTP 404" in str(err.value)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError):
        asyncio.run(call(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(ConfigError, match="needs llm.api_base"):
        HTTPBackend(LLMConfig(model="openai/gpt-4o-mini", transport="http"))


def test_pipelines_finish_correctly_under_mixed_faults_over_http(tmp_path):
    """The fault test of test_faults.py, over this transport: 20% of requests fail with
    one of the seven kinds; vocabulary, tags and scores equal the fault-free run's."""
    import test_faults as tf

    (tmp_path / "c.yaml").write_text(tf.CONFIG.format(timeout=1.0, retries=8, reasks=4))
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "c.yaml").write_text(tf.CONFIG.format(timeout=30, retries=8, reasks=4))
    register_backend("fake", lambda c: FakeLLM(default=policies.reply_for))
    reference = tf.run_pipelines(ref_dir, ["--db", str(ref_dir / "r.db"), "--model", "fake/x", "--config",
                                           str(ref_dir / "c.yaml"), "--no-progress"])
    faults = {k: 0.2 / len(FAULT_KINDS) for k in FAULT_KINDS}
    with SimServer(faults=faults, seed=2, hang_s=20) as sim:
        got = tf.run_pipelines(tmp_path, ["--db", str(tmp_path / "f.db"), "--model", "openai/sim", "--api-base",
                                          sim.url, "--transport", "http", "--config", str(tmp_path / "c.yaml"),
                                          "--no-progress"])
        stats = sim.stats()
    assert stats["faults_total"] >= 3
    assert got["status"] == {"vocab": "done", "tag": "done", "score": "done"}
    for key in ("vocab", "versions", "tags", "tag_status", "scores"):
        assert got[key] == reference[key], f"{key} differs from the fault-free run"
    assert got["failed_calls"] == 0
    tf.no_call_paid_twice(str(tmp_path / "f.db"))
