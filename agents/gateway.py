"""The LLM gateway: the only place in tagsmith that talks to a model.

One async call, ``Gateway.call(messages, schema=...)``, returns an ``LLMResult`` with the
text, the validated pydantic object (when a schema is given), usage, cost, latency, top-k
logprobs and whether it came from the cache. The gateway owns:

- retries with exponential backoff and jitter on transient errors (rate limit, timeout,
  connection, 5xx), honouring Retry-After;
- re-asking with the validation error when structured output is malformed (bounded), then
  a ``StructuredOutputError`` carrying attempts, last output and usage;
- a concurrency limit; per-run token and cost budgets (``BudgetExceeded``);
- a response cache in the store keyed by hash(model, messages, schema, params, sample), so
  a repeated or resumed call costs nothing; a log row per call.

Backends are the seam: ``LiteLLMBackend`` for real models (any litellm model string; the
bundled model as ``local/smollm2``), ``FakeLLM`` (agents/fake.py) for tests.

    >>> from pydantic import BaseModel
    >>> from tagsmith.agents.fake import FakeLLM
    >>> class A(BaseModel):
    ...     a: int
    >>> gw = Gateway(LLMConfig(model="fake/x"), store=Store("sqlite://"), backend=FakeLLM(['{"a": 1}']))
    >>> asyncio.run(gw.call("hi", schema=A)).parsed
    A(a=1)
    >>> asyncio.run(gw.call("hi", schema=A)).cached       # the same call again: from the cache
    True
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from tagsmith.core.config import LLMConfig
from tagsmith.core.llm import TokenLogprob
from tagsmith.core.errors import BudgetExceeded, ConfigError, LLMError, StructuredOutputError
from tagsmith.store.db import Store

# litellm fetches a model cost map from the network at import unless told otherwise
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Messages = list[dict[str, Any]]


# -- what backends return -----------------------------------------------------------------
@dataclass
class RawResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


class TransientError(LLMError):
    """A failure worth retrying (backends and fakes raise it; litellm errors are mapped)."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Backend(Protocol):
    async def complete(self, request: dict[str, Any]) -> RawResponse: ...


@dataclass
class LLMResult:
    text: str
    parsed: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    attempts: int = 1
    reasks: int = 0
    logprobs: list[TokenLogprob] | None = None
    model: str = ""
    cache_key: str = ""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# -- error classification -------------------------------------------------------------------
_TRANSIENT_NAMES = {"RateLimitError", "Timeout", "APITimeoutError", "APIConnectionError",
                    "InternalServerError", "ServiceUnavailableError", "BadGatewayError",
                    "TimeoutError", "ConnectionError", "ConnectionResetError", "ServerDisconnectedError",
                    "RemoteProtocolError", "ReadTimeout", "ConnectTimeout", "ReadError"}


def is_transient(exc: BaseException) -> bool:
    """Rate limits, timeouts, dropped connections and 5xx are worth a retry; 4xx are not."""
    if isinstance(exc, TransientError):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status == 429 or status == 408 or status >= 500
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


def retry_after_seconds(exc: BaseException) -> float | None:
    """Read Retry-After (seconds) from our error or from the provider's HTTP response."""
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        return exc.retry_after
    for holder in (getattr(exc, "response", None), exc):
        headers = getattr(holder, "headers", None)
        if headers is None:
            continue
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except AttributeError:
            continue
        if value is not None:
            return _seconds(value)
    return None


def _seconds(value: str | None) -> float | None:
    """A Retry-After value in seconds ('2', '0.5'); None when absent or an HTTP date."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# -- the gateway ----------------------------------------------------------------------------
def request_key(request: dict[str, Any], schema_json: dict | None, sample: int) -> str:
    """Cache key: everything that changes the answer, nothing that does not (timeouts)."""
    payload = {k: v for k, v in request.items() if k not in ("timeout", "api_key", "api_base")}
    payload["__schema"] = schema_json
    payload["__sample"] = sample
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def structured_mode(config: LLMConfig) -> str:
    if config.structured != "auto":
        return config.structured
    if config.model.startswith("local/"):
        return "json_object_schema"  # llama.cpp's server: json_object + schema (grammar)
    return "json_schema"  # OpenAI, vLLM, Ollama; litellm translates for other providers


def response_format(mode: str, schema: type[BaseModel], schema_json: dict) -> dict | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema_json}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema_json}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def as_messages(prompt: str | Messages, system: str | None = None) -> Messages:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system:
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def strip_titles(schema: Any) -> Any:
    """Drop pydantic's auto-generated "title" keys (class and field names): they add tokens
    and small models echo them as content. Properties named "title" are kept."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "title" and isinstance(v, str):
                continue
            if k == "properties" and isinstance(v, dict):
                out[k] = {name: strip_titles(sub) for name, sub in v.items()}
            else:
                out[k] = strip_titles(v)
        return out
    if isinstance(schema, list):
        return [strip_titles(x) for x in schema]
    return schema


@functools.lru_cache(maxsize=512)
def _model_schema_cached(schema: type[BaseModel]) -> str:
    return json.dumps(strip_titles(schema.model_json_schema()))


def _model_schema(schema: type[BaseModel]) -> dict:
    """The class's JSON schema without titles (a fresh copy: callers may change it)."""
    return json.loads(_model_schema_cached(schema))


def _schema_instruction(schema_json: dict) -> str:
    return ("Reply with one JSON object, and nothing else, that validates against this JSON schema:\n"
            + json.dumps(schema_json, separators=(",", ":")))


def _validation_message(err: Exception) -> str:
    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors()[:5]:
            loc = ".".join(str(x) for x in e["loc"]) or "(root)"
            parts.append(f"{loc}: {e['msg']}")
        return "; ".join(parts)
    return str(err).splitlines()[0]


class Gateway:
    """See the module docstring. One gateway per run; cheap to create."""

    def __init__(self, config: LLMConfig, store: Store | None = None, run_id: str | None = None,
                 backend: Backend | None = None):
        self.config = config
        self.store = store
        self.run_id = run_id
        self._own_backend = backend is None
        self.backend = backend or make_backend(config)
        self._sem = asyncio.Semaphore(config.concurrency)
        self.in_flight = 0
        self.max_in_flight = 0
        self.spent_tokens = 0
        self.spent_usd = 0.0
        if store is not None and run_id is not None:
            run = store.get_run(run_id)
            if run is not None:  # a resumed run keeps counting from where it stopped
                self.spent_tokens = run.prompt_tokens + run.completion_tokens
                self.spent_usd = run.cost_usd

    # the public call ------------------------------------------------------------------------
    async def call(self, prompt: str | Messages, *, schema: type[BaseModel] | None = None,
                   system: str | None = None, node: str = "", sample: int = 0,
                   logprobs: int | None = None, temperature: float | None = None,
                   max_tokens: int | None = None, extra: dict[str, Any] | None = None,
                   wire_schema: dict[str, Any] | None = None) -> LLMResult:
        """``wire_schema`` overrides the JSON schema sent to the provider (e.g. enums of a
        vocabulary) while ``schema`` stays the validator, so out-of-vocabulary answers from
        providers that ignore enums reach code that can repair and count them."""
        messages = as_messages(prompt, system)
        # a wire schema is written by hand (no titles); pydantic's is generated once per class
        schema_json = wire_schema or (_model_schema(schema) if schema is not None else None)
        mode = structured_mode(self.config)
        if schema_json is not None:
            # Under grammar-constrained decoding the server enforces the schema; restating it
            # in the prompt only costs prompt tokens (and tiny models copy its words).
            instruction = ("Reply with one JSON object." if mode == "json_object_schema"
                           else _schema_instruction(schema_json))
            if messages and messages[0]["role"] == "system":
                messages[0]["content"] = f"{messages[0]['content']}\n\n{instruction}"
            else:
                messages.insert(0, {"role": "system", "content": instruction})
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
        }
        if schema_json is not None and (fmt := response_format(mode, schema, schema_json)) is not None:
            request["response_format"] = fmt
        if logprobs:
            request["logprobs"] = True
            request["top_logprobs"] = int(logprobs)
        if extra:
            request.update(extra)
        key = request_key(request, schema_json, sample)

        if self.config.cache and self.store is not None:
            hit = await self.store.acache_get(key)
            if hit is not None:
                return await self._from_cache(hit, key, request, schema, node)

        async with self._sem:
            # checked once a slot is free, so calls queued behind the limit see what the
            # calls before them spent (checking before queueing let a burst overrun it)
            self._check_budget()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._call_uncached(request, schema, key, node)
            finally:
                self.in_flight -= 1

    async def aclose(self) -> None:
        """Release the backend's connections (when the gateway made the backend)."""
        close = getattr(self.backend, "aclose", None)
        if self._own_backend and close is not None:
            await close()

    # internals ------------------------------------------------------------------------------
    def _check_budget(self) -> None:
        c = self.config
        if c.budget_tokens is not None and self.spent_tokens >= c.budget_tokens:
            raise BudgetExceeded(f"token budget spent: {self.spent_tokens} of {c.budget_tokens} tokens "
                                 f"(resume with a larger --budget-tokens)", self.spent_tokens, self.spent_usd)
        if c.budget_usd is not None and self.spent_usd >= c.budget_usd:
            raise BudgetExceeded(f"cost budget spent: ${self.spent_usd:.4f} of ${c.budget_usd:.4f} "
                                 f"(resume with a larger --budget-usd)", self.spent_tokens, self.spent_usd)

    async def _transport(self, request: dict[str, Any], tries: list[int]) -> RawResponse:
        """One completion with retries on transient errors; counts attempts in ``tries[0]``."""
        c = self.config

        def wait(exc: BaseException | None, failed: int) -> float:
            """Before the next try, after ``failed`` failed ones."""
            expo = min(c.backoff_max_s, c.backoff_base_s * (2 ** (failed - 1)))
            delay = random.uniform(0, expo)  # full jitter: retries from many tasks spread out
            hinted = retry_after_seconds(exc) if exc is not None else None
            return min(c.backoff_max_s, max(delay, hinted)) if hinted is not None else delay

        async def once() -> RawResponse:
            tries[0] += 1
            try:
                async with asyncio.timeout(c.timeout_s + 5):
                    return await self.backend.complete(dict(request))
            except TimeoutError as exc:  # a hung connection the client did not time out
                raise TransientError(f"no answer within {c.timeout_s:.0f}s") from exc

        try:  # most calls succeed at once: tenacity's machinery only for those that do not
            return await once()
        except Exception as exc:
            if not is_transient(exc) or c.max_retries < 1:
                raise
            first = exc
        # the first try happened above: tenacity's attempt n is the (n + 1)-th
        retrying = AsyncRetrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(c.max_retries),
                                 wait=lambda st: wait(st.outcome.exception(), st.attempt_number + 1), reraise=True)
        await asyncio.sleep(wait(first, 1))
        async for attempt in retrying:
            with attempt:
                response = await once()
        return response

    async def _call_uncached(self, request: dict[str, Any], schema: type[BaseModel] | None,
                             key: str, node: str) -> LLMResult:
        started = time.perf_counter()
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        tries = [0]
        reasks = 0
        req = dict(request)
        parsed = None
        try:
            while True:
                response = await self._transport(req, tries)
                self._account(usage, response)
                if schema is None:
                    break
                try:
                    parsed = schema.model_validate_json(response.text)
                    break
                except ValidationError as err:
                    if reasks >= self.config.max_reasks:
                        raise StructuredOutputError(
                            f"{node or 'call'}: output does not match {schema.__name__} after "
                            f"{reasks + 1} tries: {_validation_message(err)}",
                            attempts=reasks + 1, last_output=response.text, usage=dict(usage),
                            last_error=_validation_message(err)) from err
                    reasks += 1  # re-ask, showing the model its reply and what is wrong with it
                    req["messages"] = list(req["messages"]) + [
                        {"role": "assistant", "content": response.text},
                        {"role": "user", "content": "That reply is not valid: " + _validation_message(err)
                         + ". Reply again with only the corrected JSON object."}]
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                await self._log(request, key, node, None, usage, time.perf_counter() - started, tries[0],
                                reasks, error=exc)
            raise
        latency = time.perf_counter() - started
        payload = {"text": response.text, "prompt_tokens": usage["prompt_tokens"],
                   "completion_tokens": usage["completion_tokens"], "cost_usd": usage["cost_usd"],
                   "logprobs": _lp_to_json(response.logprobs), "reasks": reasks}
        await self._log(request, key, node, response.text, usage, latency, tries[0], reasks,
                        cache_put=(key, payload) if self.config.cache else None)
        return LLMResult(text=response.text, parsed=parsed, latency_s=latency, cached=False,
                         attempts=tries[0], reasks=reasks, logprobs=response.logprobs,
                         model=request["model"], cache_key=key, **usage)

    def _account(self, usage: dict[str, Any], response: RawResponse) -> None:
        usage["prompt_tokens"] += response.prompt_tokens
        usage["completion_tokens"] += response.completion_tokens
        usage["cost_usd"] += response.cost_usd
        self.spent_tokens += response.prompt_tokens + response.completion_tokens
        self.spent_usd += response.cost_usd

    async def _from_cache(self, hit: dict[str, Any], key: str, request: dict[str, Any],
                    schema: type[BaseModel] | None, node: str) -> LLMResult:
        parsed = schema.model_validate_json(hit["text"]) if schema is not None else None
        await self._log(request, key, node, hit["text"],
                        {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}, 0.0, 0, 0, cache_hit=True)
        return LLMResult(text=hit["text"], parsed=parsed, cached=True, attempts=0,
                         logprobs=_lp_from_json(hit.get("logprobs")), model=request["model"],
                         cache_key=key, reasks=hit.get("reasks", 0))

    async def _log(self, request, key, node, text, usage, latency, attempts, reasks, *, error=None,
             cache_hit=False, cache_put=None) -> None:
        if self.store is None:
            return
        err = None if error is None else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        await self.store.alog_call({
            "run_id": self.run_id, "node": node, "model": request["model"], "cache_key": key,
            "messages_json": orjson.dumps(request["messages"]).decode(), "response_text": text,
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
            "cost_usd": usage["cost_usd"], "latency_s": latency, "cache_hit": cache_hit,
            "attempts": attempts, "reasks": reasks, "error": err}, cache_put=cache_put)


def _lp_to_json(lps: list[TokenLogprob] | None) -> list | None:
    if lps is None:
        return None
    return [[t.token, t.logprob, [[a, b] for a, b in t.top]] for t in lps]


def _lp_from_json(data: list | None) -> list[TokenLogprob] | None:
    if data is None:
        return None
    return [TokenLogprob(token=t, logprob=lp, top=[(a, b) for a, b in top]) for t, lp, top in data]


# -- backends -------------------------------------------------------------------------------
_BACKENDS: dict[str, Callable[[LLMConfig], Backend]] = {}


def register_backend(prefix: str, factory: Callable[[LLMConfig], Backend]) -> None:
    """Route model strings ``<prefix>/...`` to a backend (plugins, tests' fake models)."""
    _BACKENDS[prefix] = factory


def make_backend(config: LLMConfig) -> Backend:
    prefix = config.model.split("/", 1)[0]
    if prefix in _BACKENDS:
        return _BACKENDS[prefix](config)
    if config.transport == "http":
        return HTTPBackend(config)
    return LiteLLMBackend(config)


def _api_key_from_env(config: LLMConfig) -> str | None:
    if config.api_key_env:
        key = os.environ.get(config.api_key_env)
        if not key:
            raise ConfigError(f"llm.api_key_env: environment variable {config.api_key_env} is not set")
        return key
    return None


async def local_api_base(config: LLMConfig) -> str:
    """The bundled model's endpoint, starting its server on first use. The start blocks for
    up to ``llm.local.startup_timeout_s`` (loading the model), so it runs in a thread: the
    event loop keeps serving the run's other tasks meanwhile."""
    from tagsmith.agents.local_model import shared_server

    server = shared_server(config.local)
    if server.base_url is not None and server.proc is not None and server.proc.poll() is None:
        return server.base_url
    return await asyncio.to_thread(server.start)


_JSON = {"Content-Type": "application/json"}


class HTTPBackend:
    """``llm.transport: http``: one POST per call to an OpenAI-compatible
    ``{api_base}/chat/completions`` over a pooled aiohttp session, without litellm's
    per-call work (provider mapping, logging objects, pricing): about half the client CPU
    per call, which is what bounds throughput at high concurrency. Needs ``llm.api_base``
    (or the bundled ``local/`` model); the model name is sent without its provider
    prefix (``openai/qwen2.5`` -> ``qwen2.5``). Self-hosted calls cost nothing."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.is_local = config.model.startswith("local/")
        if not self.is_local and not config.api_base:
            raise ConfigError("llm.transport http needs llm.api_base (an OpenAI-compatible endpoint, "
                              "e.g. --api-base http://localhost:8000/v1); use the litellm transport for "
                              "hosted providers")
        self.model = config.local.alias if self.is_local else config.model.split("/", 1)[-1]
        self.api_key = "sk-local" if self.is_local else (
            _api_key_from_env(config) or os.environ.get("OPENAI_API_KEY") or "sk-no-key")
        self._session = None
        self._loop = None

    async def _url(self) -> str:
        base = await local_api_base(self.config) if self.is_local else self.config.api_base
        return base.rstrip("/") + "/chat/completions"

    def _client(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # a session belongs to one event loop; each command runs its own
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                headers={"Authorization": f"Bearer {self.api_key}"})
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def complete(self, request: dict[str, Any]) -> RawResponse:
        import aiohttp

        body = dict(request, model=self.model)
        url = await self._url()
        try:
            async with self._client().post(url, data=orjson.dumps(body), headers=_JSON) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise TransientError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else url}") from exc
        if status != 200:
            detail = raw[:300].decode("utf-8", "replace")
            try:
                detail = json.loads(raw)["error"]["message"]
            except Exception:  # noqa: BLE001 - not an OpenAI-shaped error body
                pass
            if status in (408, 429) or status >= 500:
                raise TransientError(f"HTTP {status}: {detail}", retry_after=_seconds(retry_after), status=status)
            raise LLMError(f"{self.config.model}: HTTP {status} from {url}: {detail}")
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # a cut or garbled body: worth another try, like a dropped connection
            raise TransientError(f"malformed response body from {url}: {raw[:80]!r}") from exc
        usage = data.get("usage") or {}
        return RawResponse(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                           completion_tokens=int(usage.get("completion_tokens") or 0), cost_usd=0.0,
                           logprobs=_parse_logprobs(choice.get("logprobs")),
                           finish_reason=choice.get("finish_reason"))


class LiteLLMBackend:
    """Any litellm model string; ``local/<alias>`` starts and uses the bundled model."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.is_local = config.model.startswith("local/")
        self.api_base = config.api_base
        self.api_key: str | None = None
        self.model = config.model
        if self.is_local:
            self.model = f"openai/{config.local.alias}"
            self.api_key = "sk-local"
        else:
            self.api_key = self._api_key()
        self.priced = _price_or_zero(self.model)

    def _api_key(self) -> str | None:
        c = self.config
        if c.api_key_env:
            return _api_key_from_env(c)
        if c.api_base:  # self-hosted OpenAI-compatible servers (vLLM, llama.cpp) rarely need one
            return os.environ.get("OPENAI_API_KEY") or "sk-no-key"
        litellm = _litellm()
        try:
            env = litellm.validate_environment(model=c.model)
        except Exception:  # unknown provider: let the call itself say what is wrong
            return None
        missing = env.get("missing_keys") or []
        if missing:
            raise ConfigError(f"model {c.model} needs {' and '.join(missing)} in the environment "
                              f"(or --api-base for a self-hosted endpoint)")
        return None

    async def complete(self, request: dict[str, Any]) -> RawResponse:
        litellm = _litellm()
        api_base = await local_api_base(self.config) if self.is_local else self.api_base
        kwargs = dict(request, model=self.model, timeout=self.config.timeout_s, num_retries=0)
        if api_base:
            kwargs["api_base"] = api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        try:
            resp = await litellm.acompletion(**kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                     retry_after=retry_after_seconds(exc),
                                     status=getattr(exc, "status_code", None)) from exc
            raise LLMError(f"{self.config.model}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        choice = resp.choices[0]
        text = choice.message.content or ""
        usage = getattr(resp, "usage", None)
        cost = 0.0
        if self.priced:  # litellm priced the response as it logged it (unpriced models: zero, cheaply)
            cost = float((getattr(resp, "_hidden_params", None) or {}).get("response_cost") or 0.0)
        return RawResponse(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                           completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                           cost_usd=cost, logprobs=_parse_logprobs(getattr(choice, "logprobs", None)),
                           finish_reason=getattr(choice, "finish_reason", None))


def _parse_logprobs(lp: Any) -> list[TokenLogprob] | None:
    content = getattr(lp, "content", None) if lp is not None else None
    if content is None and isinstance(lp, dict):
        content = lp.get("content")
    if not content:
        return None
    out = []
    for tok in content:
        get = tok.get if isinstance(tok, dict) else lambda k, t=tok: getattr(t, k, None)
        tops = get("top_logprobs") or []
        top = [((t.get("token") if isinstance(t, dict) else t.token),
                float(t.get("logprob") if isinstance(t, dict) else t.logprob)) for t in tops]
        out.append(TokenLogprob(token=get("token"), logprob=float(get("logprob")), top=top))
    return out


_LITELLM = None
_PRICED: dict[str, bool] = {}


def _price_or_zero(model: str) -> bool:
    """Whether litellm knows a price for ``model``. A model it does not know (a self-hosted
    endpoint, the bundled model) gets a zero price in litellm's table, once per process:
    litellm prices every response as it logs it, and looking up an unknown model failed
    through ten lookups per call (a quarter of litellm's CPU per call)."""
    if model not in _PRICED:
        litellm = _litellm()
        try:
            info = litellm.get_model_info(model)
            _PRICED[model] = bool(info.get("input_cost_per_token") or info.get("output_cost_per_token"))
        except Exception:  # unknown to litellm
            import logging

            provider = model.split("/", 1)[0] if "/" in model else "openai"
            quiet = logging.getLogger("LiteLLM")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # it warns that a custom price has no cache prices
            try:
                litellm.register_model({model: {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                                                "litellm_provider": provider, "mode": "chat"}})
            finally:
                quiet.setLevel(level)
            _PRICED[model] = False
    return _PRICED[model]


def _litellm():
    """Import litellm lazily (2 s) and quietly; never touches the network."""
    global _LITELLM
    if _LITELLM is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        litellm.drop_params = True  # providers without logprobs: dropped, we fall back
        _LITELLM = litellm
    return _LITELLM
