"""A queue-based fake model for tests and benchmarks: scripted replies, recorded requests.

    >>> from tagsmith.agents.gateway import Gateway, TransientError
    >>> from tagsmith.core.config import LLMConfig
    >>> fake = FakeLLM()
    >>> _ = fake.enqueue(TransientError("429", retry_after=0), '{"name": "x"}', "plain text")
    >>> gw = Gateway(LLMConfig(model="fake/m", backoff_base_s=0), backend=fake)
    >>> asyncio.run(gw.call("hello")).text          # the 429 is retried
    '{"name": "x"}'
    >>> asyncio.run(gw.call("again")).text
    'plain text'
    >>> [r["messages"][-1]["content"] for r in fake.requests]
    ['hello', 'hello', 'again']

Each queued item is one backend call: a string (the reply text), a dict or pydantic object
(sent as JSON), a ``FakeReply`` (text plus usage and logprobs), an exception instance
(raised), or a callable ``request -> any of these``. When the queue is empty the
``default`` callable answers, if set; otherwise the call fails loudly, so a test never
passes on replies it did not script.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tagsmith.agents.gateway import RawResponse, TokenLogprob


@dataclass
class FakeReply:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float = 0.0
    logprobs: list[TokenLogprob] | None = None


class FakeLLM:
    def __init__(self, replies: list[Any] | None = None, *, default: Callable[[dict], Any] | None = None,
                 latency_s: float = 0.0, cost_per_token: float = 0.0):
        self.queue: deque[Any] = deque(replies or [])
        self.default = default
        self.latency_s = latency_s
        self.cost_per_token = cost_per_token
        self.requests: list[dict[str, Any]] = []  # every request, in arrival order
        self.in_flight = 0
        self.max_in_flight = 0

    def enqueue(self, *replies: Any) -> FakeLLM:
        self.queue.extend(replies)
        return self

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def prompts(self) -> list[str]:
        """The last user message of each request (what tests usually assert on)."""
        return [next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
                for r in self.requests]

    async def complete(self, request: dict[str, Any]) -> RawResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.queue:
                item = self.queue.popleft()
            elif self.default is not None:
                item = self.default
            else:
                raise AssertionError(f"FakeLLM: no reply queued for request #{len(self.requests)}")
            if callable(item) and not isinstance(item, (BaseModel, type)):
                item = item(request)
            if isinstance(item, BaseException):
                raise item
            return self._to_raw(item, request)
        finally:
            self.in_flight -= 1

    def _to_raw(self, item: Any, request: dict[str, Any]) -> RawResponse:
        if isinstance(item, BaseModel):
            item = FakeReply(item.model_dump_json())
        elif isinstance(item, (dict, list)):
            item = FakeReply(json.dumps(item))
        elif isinstance(item, str):
            item = FakeReply(item)
        if not isinstance(item, FakeReply):
            raise TypeError(f"FakeLLM: cannot reply with {type(item).__name__}")
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request["messages"])
        pt = item.prompt_tokens if item.prompt_tokens is not None else max(1, prompt_chars // 4)
        ct = item.completion_tokens if item.completion_tokens is not None else max(1, len(item.text) // 4)
        cost = item.cost_usd or (pt + ct) * self.cost_per_token
        return RawResponse(text=item.text, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost,
                           logprobs=item.logprobs, finish_reason="stop")
