"""Run untrusted (LLM-written) Python in a separate, resource-limited process.

Every evaluation gets a fresh interpreter (``sys.executable -I``: no user site, no
``PYTHON*`` variables, but the venv's packages such as numpy and scipy still import), a
temporary directory as working directory (deleted afterwards), a scrubbed environment and
hard limits on wall clock, CPU time, address space, file size and captured output.

    >>> r = run_in_sandbox("def f(a, b):\\n    return a + b\\n", "f", {"a": 1, "b": 2},
    ...                    SandboxLimits(timeout_s=5))
    >>> r.ok, r.status, r.value
    (True, 'ok', 3)
    >>> run_in_sandbox("def f():\\n    return 1 / 0\\n", "f", {}, SandboxLimits(timeout_s=5)).reason
    'ZeroDivisionError: division by zero'

How one evaluation runs (process tree)::

    this process ── supervisor (new session, pid S, limits set, child subreaper)
                        └── worker (own process group W; runs the candidate)
                              └── whatever the candidate spawns

* The **supervisor** is a small trusted script (``sandbox_runner.py``, run as a file
  with the sandbox's folder as argument). It sets the resource limits on itself
  (the worker inherits them), marks itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``)
  so that every orphaned descendant of the candidate is re-parented to it rather than to
  PID 1, forks the worker and enforces the wall-clock timeout with ``sigtimedwait``. When
  the worker ends (or the time is up, or we ask it to stop with SIGTERM) it kills the
  worker's process group with SIGKILL, then kills and *reaps* every remaining child until
  none is left. Reaping matters: in containers whose PID 1 does not reap (this one), a
  killed grandchild would otherwise stay a zombie and keep its process group alive.
* The **worker** puts itself in its own process group, asks to be SIGKILLed if the
  supervisor dies (``PR_SET_PDEATHSIG``), imports the candidate from a file, calls
  ``entry(**args)`` and writes the JSON-encoded return value to a result file (not
  stdout, so prints cannot corrupt it). It leaves with ``os._exit`` so that threads the
  candidate started cannot hang interpreter shutdown (OpenEvolve #297).
* **This process** only reads stdout/stderr (capped while reading, never buffered beyond
  ``max_output_bytes`` per stream) and keeps a backstop deadline of ``timeout_s`` + a few
  seconds: if the supervisor has not finished by then, the supervisor and every process
  of its session are SIGKILLed. Nothing here uses a thread to time out, so a stuck
  candidate cannot outlive its limit (OpenEvolve #79 ran 11 h past a 600 s timeout).

Limits are applied by the supervisor right after ``exec`` instead of in ``preexec_fn``:
``preexec_fn`` is documented as unsafe in programs with threads (the asyncio variant runs
inside such programs), and no candidate code runs before the limits are in place either way.

Return values travel as JSON: tuples become lists, numpy arrays and scalars become lists
and numbers, dict keys become strings. Non-finite floats, which JSON cannot hold, are
written as ``{"__float__": "nan"}`` / ``"inf"`` / ``"-inf"`` and decoded back to Python
floats here, so ``value`` holds ``float("nan")`` etc. (a dict whose only key is
``"__float__"`` is therefore reserved). ``args`` must be JSON-serialisable.

Scope: this bounds resources and cleans up reliably; it is not a security boundary. The
candidate runs as the same user, can read files and open sockets; run the whole search in
a container or VM when the code may be hostile.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SandboxLimits", "SandboxResult", "SandboxPool", "run_in_sandbox", "arun_in_sandbox",
           "STATUSES"]

STATUSES = ("ok", "timeout", "crash", "memory", "error", "output_limit", "killed")

# Seconds the supervisor may take beyond timeout_s (interpreter start, kill, reap) before
# this process kills it by force. Also how long a stop request (cancel, output cap) waits.
_GRACE_S = 3.0
_READ_CHUNK = 65536
_BOX = "_sandbox"  # internal folder inside the temp dir (candidate, spec, result files)
# The supervisor + worker, run as a file (stdlib only, imports nothing from tagsmith).
RUNNER = Path(__file__).with_name("sandbox_runner.py")


@dataclass
class SandboxLimits:
    """Limits for one evaluation.

    >>> SandboxLimits(timeout_s=2.5).effective_cpu_s()
    4
    """

    timeout_s: float = 30.0  # hard wall clock; the whole process group is killed
    memory_mb: int = 1024  # RLIMIT_AS of supervisor and worker (address space, not RSS)
    cpu_s: int | None = None  # RLIMIT_CPU (default: ceil(timeout_s)+1)
    max_output_bytes: int = 1_000_000  # per stream; beyond -> stopped, status "output_limit"
    # RLIMIT_NPROC where it is effective (not for root, and it counts all of the user's
    # processes and threads, so it is set to "current count + max_processes"); in every
    # case the supervisor also counts the candidate's processes every 0.1 s and kills the
    # evaluation ("killed") when there are more.
    max_processes: int | None = None
    max_file_mb: int = 64  # RLIMIT_FSIZE: largest file the candidate (or its result) may write

    def effective_cpu_s(self) -> int:
        return int(self.cpu_s) if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass
class SandboxResult:
    """What one evaluation produced. ``status`` is one of :data:`STATUSES`."""

    ok: bool
    status: str  # "ok" | "timeout" | "crash" | "memory" | "error" | "output_limit" | "killed"
    value: Any  # the JSON-decoded return value (None if failed)
    reason: str  # one line for failures, "" when ok
    stdout: str  # truncated to the cap
    stderr: str
    wall_s: float
    returncode: int | None  # the worker's: exit code, or -signal number


# --------------------------------------------------------------------------------------
# Preparation and interpretation, shared by the sync and async versions.

def _decode_hook(d: dict) -> Any:
    if len(d) == 1 and "__float__" in d and isinstance(d["__float__"], str):
        return float(d["__float__"])
    return d


def _env(tmpdir: str) -> dict[str, str]:
    # Only what a numeric program needs. Secrets (*_API_KEY, tokens) never reach candidates;
    # single-threaded BLAS keeps CPU use (and RLIMIT_CPU accounting) predictable.
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": tmpdir, "TMPDIR": tmpdir,
           "LANG": os.environ.get("LANG", "C.UTF-8")}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = "1"
    return env


def _check_name(name: str) -> Path:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] == _BOX:
        raise ValueError(f"sandbox file name {name!r} must be a relative path inside the "
                         f"sandbox (no '..', not under {_BOX}/)")
    return p


def _prepare(code: str, entry: str, args: dict, limits: SandboxLimits,
             files: dict[str, bytes | str] | None) -> tuple[str, list[str], dict[str, str]]:
    """Create the temp dir with the candidate, its files and the spec.
    Returns (tmpdir, argv, env). The caller deletes tmpdir."""
    if limits.timeout_s <= 0 or limits.memory_mb <= 0 or limits.max_output_bytes <= 0:
        raise ValueError(f"sandbox limits must be positive: {limits}")
    try:
        spec_json = json.dumps({"entry": entry, "args": dict(args), "limits": {
            "timeout_s": float(limits.timeout_s), "memory_mb": int(limits.memory_mb),
            "cpu_s": limits.effective_cpu_s(), "max_file_mb": int(limits.max_file_mb),
            "max_processes": limits.max_processes}})
    except TypeError as exc:
        raise ValueError(f"sandbox args must be JSON-serialisable: {exc}") from exc
    checked = {_check_name(n): data for n, data in (files or {}).items()}
    tmpdir = tempfile.mkdtemp(prefix="tagsmith-sandbox-")
    try:
        box = Path(tmpdir, _BOX)
        box.mkdir()
        (box / "candidate.py").write_text(code)
        (box / "spec.json").write_text(spec_json)
        for rel, data in checked.items():
            dest = Path(tmpdir, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                dest.write_text(data)
            else:
                dest.write_bytes(data)
    except BaseException:
        _rmtree(tmpdir)
        raise
    argv = [sys.executable, "-I", str(RUNNER), str(box)]
    return tmpdir, argv, _env(tmpdir)


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):  # a candidate may have made something read-only
        try:
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


_MEMORY_HINTS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory",
                 "Unable to allocate", "failed to allocate", "mmap failed")


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _interpret(tmpdir: str, limits: SandboxLimits, out: bytes, err: bytes, wall: float,
               overflow: str | None, backstop: bool, cancelled: bool) -> SandboxResult:
    """Turn what the supervisor and worker left behind into a SandboxResult."""
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    box = Path(tmpdir, _BOX)
    sup: dict = {}
    try:
        sup = json.loads((box / "supervisor.json").read_text())
    except (OSError, ValueError):
        pass
    rc = sup.get("returncode")

    def fail(status: str, reason: str) -> SandboxResult:
        return SandboxResult(False, status, None, reason, stdout, stderr, wall, rc)

    if cancelled:
        return fail("killed", "cancelled by the caller")
    if overflow:
        return fail("output_limit", f"{overflow} exceeded {limits.max_output_bytes} bytes")
    if backstop and not sup:
        return fail("timeout", f"timed out after {limits.timeout_s:g}s (supervisor killed by force)")
    result = None
    rpath = box / "result.json"
    try:
        if rpath.stat().st_size > limits.max_file_mb * 1024 * 1024:
            return fail("output_limit", f"result larger than {limits.max_file_mb} MB")
        result = json.loads(rpath.read_text(), object_hook=_decode_hook)
    except FileNotFoundError:
        pass
    except ValueError as exc:
        return fail("error", f"unreadable result file: {exc}")
    if result is not None:  # the entry finished in time: its outcome wins over later kills
        kind = result.get("kind")
        if kind == "ok":
            return SandboxResult(True, "ok", result.get("value"), "", stdout, stderr, wall, rc)
        if kind == "memory":
            return fail("memory", f"exceeded {limits.memory_mb} MB")
        kind_name, message = result.get("type", "Error"), result.get("message", "")
        return fail("error", f"{kind_name}: {message}" if message else kind_name)
    ended = sup.get("ended")
    if ended == "timeout":
        return fail("timeout", f"timed out after {limits.timeout_s:g}s")
    if ended == "processes":
        return fail("killed", sup.get("note") or "too many processes")
    if ended == "stopped":
        return fail("killed", "stopped by a signal to the supervisor")
    memory_hint = any(h in stderr for h in _MEMORY_HINTS)
    if rc is None:
        return fail("crash", "the sandbox supervisor died before reporting")
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and not memory_hint and wall >= limits.effective_cpu_s()):
        return fail("timeout", f"used more than {limits.effective_cpu_s()} s of CPU time")
    if rc == -signal.SIGXFSZ:
        return fail("output_limit", f"wrote a file larger than {limits.max_file_mb} MB")
    if memory_hint:
        return fail("memory", f"exceeded {limits.memory_mb} MB")
    if rc < 0:
        if rc == -signal.SIGKILL:
            return fail("killed", "killed by SIGKILL (from outside, e.g. the system OOM killer)")
        return fail("crash", f"killed by {_signame(-rc)}")
    return fail("crash", f"exited with code {rc} before returning a result")


def _session_kill(sid: int, tmpdir: str | None = None, budget_s: float = 1.0) -> None:
    """SIGKILL everything of one evaluation when its supervisor does not respond: the
    worker's process group first (one atomic step, which also stops a fork bomb), the
    supervisor, then any process left in the supervisor's session (moved groups)."""
    try:
        wpgid = int(Path(tmpdir, _BOX, "worker.pid").read_text()) if tmpdir else 0
    except (OSError, ValueError):
        wpgid = 0
    for group in (wpgid, sid):
        if group > 1:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    stop = time.monotonic() + budget_s
    for name in names:
        if not name.isdigit():
            continue
        if time.monotonic() > stop:
            break
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2:].split()[3]) == sid:
                os.kill(int(name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def _request_stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)  # the supervisor kills and reaps the worker, then exits
    except OSError:
        pass


class _Capture:
    """Keeps at most ``cap`` bytes of a stream; notes when more arrived."""

    def __init__(self, cap: int):
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def add(self, data: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))
        if len(data) > room:
            self.overflow = True

    def value(self) -> bytes:
        return b"".join(self.chunks)


# --------------------------------------------------------------------------------------
# Synchronous version.

def run_in_sandbox(code: str, entry: str, args: dict, limits: SandboxLimits, *,
                   files: dict[str, bytes | str] | None = None) -> SandboxResult:
    """Run ``entry(**args)`` from ``code`` in a fresh, limited process; see the module doc.

    ``files`` are written into the sandbox's working directory first (``{"data.csv": b"..."}``);
    Python files among them can be imported by the candidate.

        >>> run_in_sandbox("while True: pass", "f", {}, SandboxLimits(timeout_s=1)).status
        'timeout'
    """
    tmpdir, argv, env = _prepare(code, entry, args, limits, files)
    t0 = time.monotonic()
    proc = None
    out, err = _Capture(limits.max_output_bytes), _Capture(limits.max_output_bytes)
    overflow: str | None = None
    backstop = False
    try:
        proc = subprocess.Popen(argv, cwd=tmpdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
        sel = selectors.DefaultSelector()
        caps = {proc.stdout.fileno(): (out, "stdout"), proc.stderr.fileno(): (err, "stderr")}
        for fd in caps:
            sel.register(fd, selectors.EVENT_READ)
        deadline = t0 + limits.timeout_s + _GRACE_S
        stop_deadline = None  # set once we asked the supervisor to stop
        exited_at = None
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (not sel.get_map() or now - exited_at > 0.5):
                break  # the supervisor is gone; pipes still open after 0.5 s are not ours to wait on
            if exited_at is None:
                if now > deadline or (stop_deadline is not None and now > stop_deadline):
                    backstop = True
                    _session_kill(proc.pid, tmpdir)
                    proc.wait()
                    continue
            if sel.get_map():
                for key, _ in sel.select(timeout=0.05):
                    data = os.read(key.fd, _READ_CHUNK)
                    cap, name = caps[key.fd]
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    cap.add(data)
                    if cap.overflow and overflow is None:
                        overflow = name
                        _request_stop(proc.pid)
                        stop_deadline = time.monotonic() + _GRACE_S
            else:
                time.sleep(0.02)  # the candidate closed both pipes; just watch the process
        sel.close()
        wall = time.monotonic() - t0
        return _interpret(tmpdir, limits, out.value(), err.value(), wall, overflow, backstop, False)
    finally:
        if proc is not None:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt...): stop, then force
                _request_stop(proc.pid)
                try:
                    proc.wait(timeout=_GRACE_S)
                except subprocess.TimeoutExpired:
                    _session_kill(proc.pid, tmpdir)
                    proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
        _rmtree(tmpdir)


# --------------------------------------------------------------------------------------
# Asynchronous version and pool.

async def _pump(stream: asyncio.StreamReader, cap: _Capture, on_overflow) -> None:
    while True:
        data = await stream.read(_READ_CHUNK)
        if not data:
            return
        cap.add(data)
        if cap.overflow:
            on_overflow()


async def arun_in_sandbox(code: str, entry: str, args: dict, limits: SandboxLimits, *,
                          files: dict[str, bytes | str] | None = None) -> SandboxResult:
    """Asyncio version of :func:`run_in_sandbox`. Cancelling the awaiting task stops the
    evaluation: the supervisor kills and reaps everything (forced after a few seconds), the
    temp dir is removed, and CancelledError propagates.

        >>> asyncio.run(arun_in_sandbox("def f():\\n    return [1.5, float('nan')]\\n", "f", {},
        ...                             SandboxLimits(timeout_s=5))).value
        [1.5, nan]
    """
    tmpdir, argv, env = _prepare(code, entry, args, limits, files)
    t0 = time.monotonic()
    proc = None
    pumps: list[asyncio.Task] = []
    out, err = _Capture(limits.max_output_bytes), _Capture(limits.max_output_bytes)
    state: dict[str, Any] = {"overflow": None, "backstop": False}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=tmpdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        stop_event = asyncio.Event()

        def overflowed(name: str):
            def cb() -> None:
                if state["overflow"] is None:
                    state["overflow"] = name
                    _request_stop(proc.pid)
                    stop_event.set()
            return cb

        pumps = [asyncio.create_task(_pump(proc.stdout, out, overflowed("stdout"))),
                 asyncio.create_task(_pump(proc.stderr, err, overflowed("stderr")))]
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(stop_event.wait())
        try:
            deadline = limits.timeout_s + _GRACE_S
            done, _ = await asyncio.wait({waiter, stopper}, timeout=deadline,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                if stopper in done:  # output cap hit: the supervisor has _GRACE_S to finish
                    remaining = max(0.0, deadline - (time.monotonic() - t0))
                    done, _ = await asyncio.wait({waiter}, timeout=max(_GRACE_S, remaining))
                if waiter not in done:
                    state["backstop"] = True
                    _session_kill(proc.pid, tmpdir)
                    await waiter
        finally:
            stopper.cancel()
        # Output pipes close when the last holder dies; do not wait on stray holders.
        await asyncio.wait(pumps, timeout=0.5)
        wall = time.monotonic() - t0
        return _interpret(tmpdir, limits, out.value(), err.value(), wall, state["overflow"],
                          state["backstop"], False)
    except asyncio.CancelledError:
        if proc is not None and proc.returncode is None:
            _request_stop(proc.pid)
            try:
                await asyncio.wait_for(proc.wait(), _GRACE_S)
            except BaseException:  # timed out, or cancelled again: no more politeness
                _session_kill(proc.pid, tmpdir)
        raise
    finally:
        if proc is not None and proc.returncode is None:
            _session_kill(proc.pid, tmpdir)  # any other way out must not leave the process behind
        for t in pumps:
            t.cancel()
        if proc is not None:
            # Close the pipes of the finished process now, so that no transport outlives the
            # call (a stray pipe holder would otherwise keep it open).
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        _rmtree(tmpdir)


class SandboxPool:
    """At most ``workers`` sandboxed evaluations at once (the rest wait their turn).

        >>> pool = SandboxPool(workers=2)
        >>> async def main():
        ...     return await asyncio.gather(*(pool.run("def f(i):\\n    return i * i\\n", "f",
        ...                                            {"i": i}, SandboxLimits(timeout_s=5))
        ...                                   for i in range(4)))
        >>> [r.value for r in asyncio.run(main())]
        [0, 1, 4, 9]
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError("SandboxPool needs at least one worker")
        self.workers = workers
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.active = 0
        self.peak = 0  # most evaluations seen running at once (for tests and logs)

    def _semaphore(self) -> asyncio.Semaphore:
        # One semaphore per event loop: a pool reused across asyncio.run() calls keeps working.
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:
            self._sem, self._loop = asyncio.Semaphore(self.workers), loop
        return self._sem

    async def run(self, code: str, entry: str, args: dict, limits: SandboxLimits, *,
                  files: dict[str, bytes | str] | None = None) -> SandboxResult:
        async with self._semaphore():
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                return await arun_in_sandbox(code, entry, args, limits, files=files)
            finally:
                self.active -= 1
