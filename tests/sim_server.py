"""A simulated OpenAI-compatible chat server for load and fault tests (127.0.0.1 only).

    python tests/sim_server.py --port 0 --latency 0.5 --fault rate_limit=0.2 --seed 1
    -> first stdout line: http://127.0.0.1:PORT/v1      (the --api-base for tagsmith)

    with SimServer(latency=0.5, max_concurrent=64, faults={"reset": 0.2}) as sim:
        main(["tag", ..., "--model", "openai/sim", "--api-base", sim.url])
        sim.stats()   # {"requests": 120, "ok": 100, "faults": {"reset": 20, ...}, "max_concurrency": 8, ...}

``SimServer`` runs the server in a child process, so its CPU time never counts against the
process being measured, and the child exits when the parent goes away (its stdin closes).

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /stats, POST /stats/reset,
POST /config (change options while running: {"faults": {...}, "latency": 0.1, ...}).

Replies come from tests/policies.py ``reply_for``: what a competent model answers,
derived from the request, in OpenAI's chat.completion shape with usage (about 4
characters a token) and, when ``logprobs``/``top_logprobs`` are asked for, OpenAI-shaped
logprobs. The gateway's re-ask turns ("That reply is not valid: ...") are stripped before
the policy sees the request, so a re-ask gets the answer the first ask should have had.

Options:
  latency, latency_sigma   seconds per request: fixed, or lognormal with this mean and sigma
  rps                      throughput cap (requests/s); requests over it wait for a slot
  max_concurrent           requests in flight at most; beyond it: 429 with Retry-After
  retry_after              the Retry-After header (seconds) of every 429
  faults                   {kind: probability}; kinds (checked in this order, first firing wins):
      reset          the connection is aborted (no HTTP response)
      timeout        the server hangs for ``hang_s`` (longer than the client's timeout)
      rate_limit     429 with Retry-After
      server_error   500
      malformed      200 whose body is cut JSON
      truncated      the reply is cut in half, finish_reason "length"
      schema         valid JSON that violates the requested schema (structured requests only)
  hang_s                   how long a ``timeout`` fault hangs (the handler is cancelled when
                           the client disconnects)
  seed                     faults and latencies are drawn from hash(seed, request, attempt):
                           a run is reproducible, and the retry of a request (attempt 2, 3,
                           ...) gets a fresh draw, so it can succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAULT_KINDS = ("reset", "timeout", "rate_limit", "server_error", "malformed", "truncated", "schema")
REASK_PREFIX = "That reply is not valid"
_VOLATILE = ("timeout", "stream", "user", "extra_headers", "n")


def _unit(*parts: Any) -> float:
    """A uniform draw in [0, 1) from a hash of the parts (deterministic, order-free)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def request_hash(body: dict) -> str:
    payload = {k: v for k, v in body.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def strip_reasks(messages: list[dict]) -> list[dict]:
    """Drop trailing (assistant reply, user "That reply is not valid ...") pairs."""
    msgs = list(messages)
    while (len(msgs) >= 2 and msgs[-1].get("role") == "user" and msgs[-2].get("role") == "assistant"
           and str(msgs[-1].get("content", "")).startswith(REASK_PREFIX)):
        msgs = msgs[:-2]
    return msgs


def rough_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _chunks(text: str, size: int = 4) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def violate(obj: Any) -> Any:
    """Valid JSON of the wrong shape: every top-level value gets a type the schema rejects."""
    if not isinstance(obj, dict) or not obj:
        return {"unexpected": ["schema", "violation"]}
    out = {}
    for k, v in obj.items():
        if isinstance(v, list):
            out[k] = "not-a-list"
        elif isinstance(v, dict):
            out[k] = 12345
        elif isinstance(v, str):
            out[k] = [1, 2, 3]
        else:
            out[k] = "not-a-number"
    return out


class Options:
    """Server options; ``update`` validates a (partial) dict of them."""

    def __init__(self, **kw: Any):
        self.latency = 0.0
        self.latency_sigma = 0.0
        self.rps: float | None = None
        self.max_concurrent: int | None = None
        self.retry_after = 0.05
        self.faults: dict[str, float] = {}
        self.hang_s = 30.0
        self.seed = 0
        self.honor_max_tokens = True
        self.update(kw)

    def update(self, kw: dict[str, Any]) -> None:
        for key, value in kw.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown option {key!r}")
            if key == "faults":
                value = dict(value or {})
                for kind, p in value.items():
                    if kind not in FAULT_KINDS:
                        raise ValueError(f"unknown fault kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
                    if not 0.0 <= float(p) <= 1.0:
                        raise ValueError(f"fault {kind}: probability {p} not in [0, 1]")
                value = {k: float(p) for k, p in value.items()}
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Simulator:
    """The request handling, independent of the web framework (unit-testable)."""

    def __init__(self, options: Options):
        self.opt = options
        self.attempts: dict[str, int] = {}
        self.next_slot = 0.0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = 0
        self.ok = 0
        self.ok_keys: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.faults = {k: 0 for k in FAULT_KINDS}
        self.structured_content_faults = 0  # truncated/schema on a structured request: one re-ask each
        self.rejected_concurrency = 0
        self.cut_by_max_tokens = 0
        self.in_flight = 0
        self.max_concurrency = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.policy_errors = 0
        self.started = time.time()
        self.first_request_at: float | None = None  # wall clock of the first request since the reset

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "ok_unique": len(self.ok_keys),
                "ok_repeated": self.ok - len(self.ok_keys), "statuses": dict(self.statuses),
                "faults": dict(self.faults), "faults_total": sum(self.faults.values()),
                "structured_content_faults": self.structured_content_faults,
                "rejected_concurrency": self.rejected_concurrency, "cut_by_max_tokens": self.cut_by_max_tokens,
                "in_flight": self.in_flight, "max_concurrency": self.max_concurrency,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "policy_errors": self.policy_errors, "uptime_s": round(time.time() - self.started, 3),
                "first_request_at": self.first_request_at,
                "options": self.opt.as_dict()}

    # -- decisions ---------------------------------------------------------------------
    def decide_fault(self, key: str, attempt: int, structured: bool) -> str | None:
        for kind in FAULT_KINDS:
            p = self.opt.faults.get(kind, 0.0)
            if kind == "schema" and not structured:
                continue
            if p > 0 and _unit(self.opt.seed, key, attempt, kind) < p:
                return kind
        return None

    def latency_for(self, key: str, attempt: int) -> float:
        mean, sigma = self.opt.latency, self.opt.latency_sigma
        if mean <= 0:
            return 0.0
        if sigma <= 0:
            return mean
        u = min(max(_unit(self.opt.seed, key, attempt, "latency"), 1e-12), 1 - 1e-12)
        z = _inv_normal(u)
        mu = math.log(mean) - sigma * sigma / 2  # so that E[latency] == mean
        return math.exp(mu + sigma * z)

    def slot_delay(self) -> float:
        """Seconds to wait for a throughput slot (rps cap); reserves the slot."""
        if not self.opt.rps:
            return 0.0
        now = time.monotonic()
        slot = max(now, self.next_slot)
        self.next_slot = slot + 1.0 / self.opt.rps
        return slot - now

    # -- content -----------------------------------------------------------------------
    def completion(self, body: dict, key: str, fault: str | None) -> dict:
        from policies import reply_for  # noqa: PLC0415 - tests/ is on sys.path in the child

        base = dict(body, messages=strip_reasks(body.get("messages", [])))
        reply = reply_for(base)
        lps = None
        if isinstance(reply, (dict, list)):
            obj, text = reply, json.dumps(reply)
        elif isinstance(reply, str):
            obj, text = None, reply
        else:  # FakeReply
            obj, text, lps = None, reply.text, reply.logprobs
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
        finish = "stop"
        if fault == "schema":
            text = json.dumps(violate(obj if obj is not None else {}))
            lps = None
        tokens = _chunks(text)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if fault == "truncated":
            keep = max(1, len(tokens) // 2)
            tokens, finish = tokens[:keep], "length"
        if self.opt.honor_max_tokens and isinstance(max_tokens, int) and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
            self.cut_by_max_tokens += fault != "truncated"
        text = "".join(tokens)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": finish}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            if lps is not None:
                entries = [(t.token, t.logprob, list(t.top)) for t in lps][: len(tokens)]
            else:
                entries = [(t, 0.0, [(t, 0.0)]) for t in tokens]
            choice["logprobs"] = {"content": [
                {"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                 "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in top[:k]]}
                for tok, lp, top in entries]}
        prompt_tokens = sum(4 + rough_tokens(str(m.get("content") or "")) for m in body.get("messages", [])) + 3
        completion_tokens = len(tokens) if text else 0
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        return {"id": f"chatcmpl-sim-{key[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "sim"), "system_fingerprint": "sim",
                "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


def _inv_normal(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - lo:
        return -_inv_normal(1 - p)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


# -- the aiohttp app ------------------------------------------------------------------------
def make_app(sim: Simulator):
    from aiohttp import web

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
        sim.statuses[str(status)] = sim.statuses.get(str(status), 0) + 1
        return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                                 status=status, headers=headers)

    async def chat(request: web.Request) -> web.StreamResponse:
        sim.requests += 1
        if sim.first_request_at is None:
            sim.first_request_at = time.time()
        try:
            body = await request.json()
        except ValueError:
            return error(400, "request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error(400, "messages: required list", "invalid_request_error")
        retry = {"Retry-After": f"{sim.opt.retry_after:g}"}
        if sim.opt.max_concurrent is not None and sim.in_flight >= sim.opt.max_concurrent:
            sim.rejected_concurrency += 1
            return error(429, "too many concurrent requests", "rate_limit_error", retry)
        key = request_hash(body)
        attempt = sim.attempts[key] = sim.attempts.get(key, 0) + 1
        fault = sim.decide_fault(key, attempt, structured=bool(body.get("response_format")))
        if fault == "rate_limit":
            sim.faults[fault] += 1
            return error(429, "rate limit (injected)", "rate_limit_error", retry)
        sim.in_flight += 1
        sim.max_concurrency = max(sim.max_concurrency, sim.in_flight)
        try:
            wait = sim.slot_delay() + sim.latency_for(key, attempt)
            if wait > 0:
                await asyncio.sleep(wait)
            if fault == "timeout":
                sim.faults[fault] += 1
                await asyncio.sleep(sim.opt.hang_s)  # cancelled when the client gives up
                return error(504, "gateway timeout (injected)", "timeout")
            if fault == "reset":
                sim.faults[fault] += 1
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # nothing more to send on a dead connection
            if fault == "server_error":
                sim.faults[fault] += 1
                return error(500, "internal error (injected)", "server_error")
            try:
                payload = sim.completion(body, key, fault)
            except Exception as exc:  # a request no policy understands: a 400 the client reports
                sim.policy_errors += 1
                return error(400, f"sim policy failed: {type(exc).__name__}: {exc}", "invalid_request_error")
            if fault is not None:
                sim.faults[fault] += 1
                if fault in ("truncated", "schema") and body.get("response_format"):
                    sim.structured_content_faults += 1
            sim.statuses["200"] = sim.statuses.get("200", 0) + 1
            if fault == "malformed":
                text = json.dumps(payload)
                return web.Response(text=text[: len(text) // 2], content_type="application/json")
            if fault is None:
                sim.ok += 1
                sim.ok_keys[key] = sim.ok_keys.get(key, 0) + 1
            return web.json_response(payload)
        finally:
            sim.in_flight -= 1

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "sim", "object": "model", "created": 0, "owned_by": "tagsmith-tests"}]})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats())

    async def reset(request: web.Request) -> web.Response:
        sim.reset_stats()
        if request.query.get("attempts"):
            sim.attempts.clear()
        return web.json_response(sim.stats())

    async def configure(request: web.Request) -> web.Response:
        try:
            sim.opt.update(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(sim.opt.as_dict())

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/stats/reset", reset)
    app.router.add_post("/config", configure)
    return app


async def serve(options: Options, port: int, exit_on_stdin_eof: bool) -> None:
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # injected resets are not news
    import policies  # noqa: F401 - import the policies and what they import lazily now: an import
    import tagsmith.agents.fake  # noqa: F401 - inside the first request would stall every client
    sim = Simulator(options)
    runner = web.AppRunner(make_app(sim), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)  # loopback only, always
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port picked for --port 0
    print(f"http://127.0.0.1:{bound}/v1", flush=True)
    stop = asyncio.Event()
    if exit_on_stdin_eof:
        loop = asyncio.get_running_loop()

        def watch() -> None:
            while sys.stdin.buffer.read(1):  # blocks; b"" when the parent closes or dies
                pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch, daemon=True).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> tuple[dict[str, Any], int, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    ap.add_argument("--latency", type=float, default=0.0, help="mean seconds per request")
    ap.add_argument("--latency-sigma", type=float, default=0.0, help=">0: lognormal latency with this sigma")
    ap.add_argument("--rps", type=float, help="throughput cap, requests per second")
    ap.add_argument("--max-concurrent", type=int, help="beyond this many in flight: 429 + Retry-After")
    ap.add_argument("--retry-after", type=float, default=0.05, help="Retry-After seconds on 429")
    ap.add_argument("--fault", action="append", default=[], metavar="KIND=P",
                    help=f"inject a fault with probability P; kinds: {', '.join(FAULT_KINDS)}")
    ap.add_argument("--faults", type=float, metavar="P", help="every fault kind with probability P")
    ap.add_argument("--hang-s", type=float, default=30.0, help="how long a timeout fault hangs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (SimServer)")
    a = ap.parse_args(argv)
    faults = {k: a.faults for k in FAULT_KINDS} if a.faults is not None else {}
    for spec in a.fault:
        kind, _, p = spec.partition("=")
        try:
            faults[kind] = float(p)
        except ValueError:
            ap.error(f"--fault {spec}: expected KIND=PROBABILITY")
    opts = {"latency": a.latency, "latency_sigma": a.latency_sigma, "rps": a.rps,
            "max_concurrent": a.max_concurrent, "retry_after": a.retry_after, "faults": faults,
            "hang_s": a.hang_s, "seed": a.seed}
    return opts, a.port, a.exit_on_stdin_eof


# -- the context manager ----------------------------------------------------------------------
class SimServer:
    """Start the simulated server in a child process; ``url`` is the api_base.

        with SimServer(latency=0.05, faults={"server_error": 0.2}, seed=3) as sim:
            ... --model openai/sim --api-base {sim.url} ...
            assert sim.stats()["faults"]["server_error"] > 0
    """

    def __init__(self, startup_timeout_s: float = 30.0, **options: Any):
        Options(**options)  # fail here, in the caller, on a bad option
        self.options = options
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def _argv(self) -> list[str]:
        o = self.options
        argv = [sys.executable, str(Path(__file__).resolve()), "--port", "0", "--exit-on-stdin-eof"]
        for flag, key in (("--latency", "latency"), ("--latency-sigma", "latency_sigma"), ("--rps", "rps"),
                          ("--max-concurrent", "max_concurrent"), ("--retry-after", "retry_after"),
                          ("--hang-s", "hang_s"), ("--seed", "seed")):
            if o.get(key) is not None:
                argv += [flag, str(o[key])]
        for kind, p in (o.get("faults") or {}).items():
            argv += ["--fault", f"{kind}={p}"]
        return argv

    def start(self) -> "SimServer":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout_s)
        if not line or not line[0].startswith(b"http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"sim server did not start within {self.startup_timeout_s}s: {line!r}")
        self.url = line[0].decode().strip()
        return self

    @property
    def root(self) -> str:
        return self.url.rsplit("/v1", 1)[0]

    def _request(self, path: str, data: dict | None = None, method: str = "GET") -> dict:
        req = urllib.request.Request(self.root + path, method=method,
                                     data=None if data is None else json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self._request("/stats")

    def reset_stats(self, attempts: bool = False) -> dict:
        return self._request("/stats/reset" + ("?attempts=1" if attempts else ""), {}, "POST")

    def configure(self, **options: Any) -> dict:
        Options().update(options)
        self.options.update(options)
        return self._request("/config", options, "POST")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    opts, port, watch_stdin = parse_args()
    try:
        asyncio.run(serve(Options(**opts), port, watch_stdin))
    except KeyboardInterrupt:
        pass
