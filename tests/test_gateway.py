"""Gateway behaviour against the fake backend: cache, retries, re-asks, concurrency, budgets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from pydantic import BaseModel

from tagsmith.agents.fake import FakeLLM, FakeReply
from tagsmith.agents.gateway import (Gateway, LiteLLMBackend, TokenLogprob, TransientError, is_transient,
                                     retry_after_seconds)
from tagsmith.core.config import LLMConfig
from tagsmith.core.errors import BudgetExceeded, ConfigError, LLMError, StructuredOutputError


class Pet(BaseModel):
    name: str
    legs: int


async def test_text_call_logs_tokens_and_latency(gateway, fake, store):
    fake.enqueue(FakeReply("hello", prompt_tokens=7, completion_tokens=2, cost_usd=0.001))
    result = await gateway.call("say hello", node="greet")
    assert result.text == "hello" and not result.cached
    assert (result.prompt_tokens, result.completion_tokens, result.cost_usd) == (7, 2, 0.001)
    [row] = store.calls(gateway.run_id)
    assert (row.node, row.prompt_tokens, row.completion_tokens, row.cache_hit) == ("greet", 7, 2, False)
    assert row.cost_usd == pytest.approx(0.001) and row.latency_s >= 0 and row.error is None
    assert "say hello" in row.messages_json and row.response_text == "hello"
    run = store.get_run(gateway.run_id)
    assert (run.calls, run.prompt_tokens, run.completion_tokens) == (1, 7, 2)
    assert run.cost_usd == pytest.approx(0.001)


async def test_structured_call_validates(gateway, fake):
    fake.enqueue({"name": "Rex", "legs": 4})
    result = await gateway.call("describe a dog", schema=Pet)
    assert result.parsed == Pet(name="Rex", legs=4)
    request = fake.requests[0]
    assert request["response_format"]["type"] == "json_schema"
    assert '"legs"' in request["messages"][0]["content"]  # the schema is also in the system message


async def test_cache_hit_makes_no_new_call(gateway, fake, store):
    fake.enqueue({"name": "Rex", "legs": 4})
    first = await gateway.call("describe a dog", schema=Pet)
    second = await gateway.call("describe a dog", schema=Pet)
    assert fake.calls == 1
    assert second.cached and second.parsed == first.parsed and second.prompt_tokens == 0
    run = store.get_run(gateway.run_id)
    assert (run.calls, run.cache_hits) == (1, 1)
    # a new gateway on the same store (a resumed process) also hits the cache
    other = Gateway(gateway.config, store=store, run_id=gateway.run_id, backend=FakeLLM())
    assert (await other.call("describe a dog", schema=Pet)).cached


async def test_cache_key_covers_sample_schema_and_params(gateway, fake):
    fake.enqueue("a", "b", "c", "d")
    await gateway.call("x")
    await gateway.call("x", sample=1)
    await gateway.call("x", temperature=0.7)
    await gateway.call("x", max_tokens=5)
    await gateway.call("x")  # cached
    assert fake.calls == 4


async def test_no_cache_flag_calls_again(store, fake, llm_config):
    cfg = llm_config.model_copy(update={"cache": False})
    gw = Gateway(cfg, store=store, backend=fake.enqueue("a", "b"))
    assert (await gw.call("x")).text == "a"
    assert (await gw.call("x")).text == "b"


async def test_transient_errors_are_retried_and_counted(gateway, fake, store):
    fake.enqueue(TransientError("429 slow down"), TransientError("503"), "ok")
    result = await gateway.call("x")
    assert result.text == "ok" and result.attempts == 3 and fake.calls == 3
    assert store.calls(gateway.run_id)[0].attempts == 3


async def test_retry_after_is_honoured(store, fake):
    cfg = LLMConfig(model="fake/t", backoff_base_s=0.0, backoff_max_s=5.0, max_retries=2)
    gw = Gateway(cfg, store=store, backend=fake.enqueue(TransientError("429", retry_after=0.4), "ok"))
    started = time.perf_counter()
    assert (await gw.call("x")).text == "ok"
    assert time.perf_counter() - started >= 0.4


async def test_retries_give_up_and_log_the_error(gateway, fake, store):
    fake.enqueue(*[TransientError("500")] * 4)  # max_retries=3 -> 4 attempts
    with pytest.raises(TransientError):
        await gateway.call("x", node="n")
    assert fake.calls == 4
    [row] = store.calls(gateway.run_id)
    assert row.error.startswith("TransientError") and row.attempts == 4 and row.response_text is None
    assert store.cache_get(row.cache_key) is None


async def test_permanent_errors_are_not_retried(gateway, fake):
    fake.enqueue(LLMError("400 bad request"))
    with pytest.raises(LLMError):
        await gateway.call("x")
    assert fake.calls == 1


async def test_malformed_output_is_reasked_with_the_error(gateway, fake, store):
    fake.enqueue('{"name": "Rex"}', '{"name": "Rex", "legs": 4}')
    result = await gateway.call("describe", schema=Pet, node="pets")
    assert result.parsed.legs == 4 and result.reasks == 1 and fake.calls == 2
    reask = fake.requests[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": '{"name": "Rex"}'}
    assert "legs" in reask[-1]["content"] and "Field required" in reask[-1]["content"]
    # the corrected answer is cached under the original request
    assert (await gateway.call("describe", schema=Pet, node="pets")).cached
    assert store.calls(gateway.run_id)[0].reasks == 1


async def test_reask_is_bounded_then_typed_error(gateway, fake):
    fake.enqueue(FakeReply("not json", prompt_tokens=10, completion_tokens=3),
                 FakeReply("{still not", prompt_tokens=10, completion_tokens=3),
                 FakeReply('{"name": 1}', prompt_tokens=10, completion_tokens=3))
    with pytest.raises(StructuredOutputError) as info:
        await gateway.call("describe", schema=Pet)
    err = info.value
    assert err.attempts == 3 and fake.calls == 3  # max_reasks=2
    assert err.last_output == '{"name": 1}'
    assert err.usage["prompt_tokens"] == 30 and err.usage["completion_tokens"] == 9
    assert "legs" in err.last_error


async def test_concurrency_never_exceeds_the_limit(store):
    fake = FakeLLM(default=lambda r: "ok", latency_s=0.02)
    gw = Gateway(LLMConfig(model="fake/t", concurrency=4), store=store, backend=fake)
    await asyncio.gather(*(gw.call(f"q{i}") for i in range(40)))
    assert fake.calls == 40
    assert fake.max_in_flight == 4 and gw.max_in_flight == 4


async def test_token_budget_stops_cleanly(store):
    fake = FakeLLM(default=lambda r: FakeReply("ok", prompt_tokens=60, completion_tokens=10))
    run = store.create_run("probe", config={}, model="fake/t")
    gw = Gateway(LLMConfig(model="fake/t", budget_tokens=100), store=store, run_id=run.id, backend=fake)
    await gw.call("a")
    await gw.call("b")  # 70 < 100: allowed, spends to 140
    with pytest.raises(BudgetExceeded) as info:
        await gw.call("c")
    assert info.value.spent_tokens == 140 and fake.calls == 2
    # cached answers stay free even past the budget
    assert (await gw.call("a")).cached
    # a resumed gateway counts from the stored totals
    gw2 = Gateway(LLMConfig(model="fake/t", budget_tokens=100), store=store, run_id=run.id, backend=fake)
    with pytest.raises(BudgetExceeded):
        await gw2.call("d")


async def test_cost_budget(store):
    fake = FakeLLM(default=lambda r: FakeReply("ok", cost_usd=0.6))
    gw = Gateway(LLMConfig(model="fake/t", budget_usd=1.0), store=store, backend=fake)
    await gw.call("a")
    await gw.call("b")
    with pytest.raises(BudgetExceeded, match="cost budget"):
        await gw.call("c")
    assert gw.spent_usd == pytest.approx(1.2)


async def test_logprobs_requested_returned_and_cached(gateway, fake):
    lps = [TokenLogprob("yes", -0.1, [("yes", -0.1), ("no", -2.3)])]
    fake.enqueue(FakeReply("yes", logprobs=lps))
    result = await gateway.call("q", logprobs=5, max_tokens=1)
    assert fake.requests[0]["logprobs"] is True and fake.requests[0]["top_logprobs"] == 5
    assert result.logprobs == lps
    again = await gateway.call("q", logprobs=5, max_tokens=1)
    assert again.cached and again.logprobs == lps


def test_transient_classification():
    import httpx
    import litellm

    resp = httpx.Response(429, headers={"retry-after": "7"}, request=httpx.Request("POST", "http://x"))
    rate = litellm.RateLimitError("slow", llm_provider="openai", model="m", response=resp)
    assert is_transient(rate) and retry_after_seconds(rate) == 7.0
    assert is_transient(litellm.Timeout("t", model="m", llm_provider="openai"))
    assert is_transient(litellm.InternalServerError("boom", llm_provider="openai", model="m"))
    assert not is_transient(litellm.BadRequestError("bad", model="m", llm_provider="openai"))
    assert not is_transient(litellm.AuthenticationError("no", llm_provider="openai", model="m"))
    assert not is_transient(ValueError("x"))


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LiteLLMBackend(LLMConfig(model="openai/gpt-4o-mini"))
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY"):
        LiteLLMBackend(LLMConfig(model="openai/gpt-4o-mini", api_key_env="MY_KEY"))
    # a self-hosted endpoint needs no key
    LiteLLMBackend(LLMConfig(model="openai/qwen", api_base="http://127.0.0.1:9/v1"))


def test_import_never_touches_the_network():
    code = ("import socket\n"
            "def deny(*a, **k): raise SystemExit('network touched')\n"
            "socket.socket.connect = deny\nsocket.create_connection = deny\nsocket.getaddrinfo = deny\n"
            "import tagsmith.agents.gateway as g\ng._litellm()\nimport tagsmith.cli\nprint('clean')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("clean")


async def test_local_structured_mode_uses_json_object_with_schema(store):
    from tagsmith.agents.gateway import response_format, structured_mode

    mode = structured_mode(LLMConfig(model="local/smollm2"))
    fmt = response_format(mode, Pet, Pet.model_json_schema())
    assert fmt == {"type": "json_object", "schema": Pet.model_json_schema()}


async def test_starting_the_bundled_server_does_not_block_the_event_loop(monkeypatch):
    """Loading the bundled model takes seconds: the start runs in a thread, so the run's
    other tasks (progress, store writes, other calls) keep going meanwhile."""
    import asyncio
    import time

    from tagsmith.agents import gateway as gw_mod
    from tagsmith.agents import local_model

    class SlowServer:
        base_url = None
        proc = None

        def start(self):
            time.sleep(0.5)  # what llama.cpp's model load looks like to the caller
            self.base_url = "http://127.0.0.1:9/v1"
            return self.base_url

    server = SlowServer()
    monkeypatch.setattr(local_model, "shared_server", lambda cfg: server)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    t = asyncio.create_task(ticker())
    url = await gw_mod.local_api_base(LLMConfig(model="local/smollm2"))
    t.cancel()
    assert url == "http://127.0.0.1:9/v1" and ticks >= 10
