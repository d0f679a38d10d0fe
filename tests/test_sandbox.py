"""The sandbox: values come back, failures are classified, limits hold, and nothing the
candidate started survives the evaluation. Short timeouts keep the file fast."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from tagsmith.evaluators.sandbox import (SandboxLimits, SandboxPool, arun_in_sandbox,
                                         run_in_sandbox)

FAST = SandboxLimits(timeout_s=5)


def group_gone(pgid: int, wait_s: float = 2.0) -> bool:
    """True when no process of the group exists (zombies count as existing)."""
    end = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_returns_value_with_numpy_and_non_finite_floats():
    code = ("import numpy as np\n"
            "def f(a, b):\n"
            "    print('chatter on stdout does not disturb the result')\n"
            "    return {'sum': a + b, 'arr': np.arange(3), 'vals': (1.5, float('nan'), -np.inf)}\n")
    r = run_in_sandbox(code, "f", {"a": 1, "b": 2}, FAST)
    assert r.ok and r.status == "ok" and r.reason == ""
    assert r.value["sum"] == 3 and r.value["arr"] == [0, 1, 2]
    one, nan, neginf = r.value["vals"]
    assert one == 1.5 and math.isnan(nan) and neginf == -math.inf
    assert "chatter" in r.stdout and r.returncode == 0 and r.wall_s > 0


def test_exception_is_an_error_with_the_exception_in_reason():
    r = run_in_sandbox("def f():\n    return {}['missing']\n", "f", {}, FAST)
    assert not r.ok and r.status == "error" and r.value is None
    assert r.reason == "KeyError: 'missing'"
    assert "candidate.py" in r.stderr and "runner.py" not in r.stderr  # only the candidate's frames


@pytest.mark.parametrize("code, status, reason", [
    ("def f():\n    import sys\n    sys.exit(3)\n", "error", "SystemExit: 3"),
    ("def f():\n    import os\n    os._exit(3)\n", "crash", "exited with code 3 before returning a result"),
    ("def f():\n    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n", "crash", "killed by SIGSEGV"),
    ("def f():\n    return object()\n", "error", "not JSON-serialisable"),
    ("x = 1\n", "error", "defines no function 'f'"),
    ("def f(:\n", "error", "SyntaxError"),
])
def test_failures_are_classified(code, status, reason):
    r = run_in_sandbox(code, "f", {}, FAST)
    assert (r.ok, r.status) == (False, status)
    assert reason in r.reason


def test_infinite_loop_times_out_on_time():
    t0 = time.monotonic()
    r = run_in_sandbox("def f():\n    while True:\n        pass\n", "f", {}, SandboxLimits(timeout_s=1))
    elapsed = time.monotonic() - t0
    assert r.status == "timeout" and r.reason == "timed out after 1s"
    assert 0.9 < elapsed < 2.0


def test_cpu_limit_counts_as_timeout():
    r = run_in_sandbox("def f():\n    while True:\n        pass\n", "f", {},
                       SandboxLimits(timeout_s=10, cpu_s=1))
    assert r.status == "timeout" and "CPU" in r.reason and r.wall_s < 5


def test_hanging_program_with_grandchildren_leaves_no_process(tmp_path):
    # A child (sleep), a forked grandchild that moved to its own session (escapes killpg),
    # then a hang. Everything must be gone, and reaped, once run_in_sandbox returns.
    code = ("import json, os, subprocess, time\n"
            "def f(out):\n"
            "    child = subprocess.Popen(['sleep', '60'])\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        os.setsid()\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n"
            "    with open(out, 'w') as fh:\n"
            "        json.dump({'pgid': os.getpgid(0), 'pids': [os.getpid(), child.pid, pid]}, fh)\n"
            "    while True:\n"
            "        time.sleep(0.05)\n")
    out = tmp_path / "pids.json"
    r = run_in_sandbox(code, "f", {"out": str(out)}, SandboxLimits(timeout_s=1.5))
    assert r.status == "timeout"
    info = json.loads(out.read_text())
    with pytest.raises(ProcessLookupError):
        os.killpg(info["pgid"], 0)
    assert all(pid_gone(p) for p in info["pids"])


def test_background_process_is_killed_after_a_normal_return():
    code = ("import os, subprocess\n"
            "def f():\n"
            "    p = subprocess.Popen(['sleep', '60'])\n"
            "    return [os.getpgid(0), p.pid]\n")
    r = run_in_sandbox(code, "f", {}, FAST)
    assert r.ok
    pgid, pid = r.value
    assert group_gone(pgid, wait_s=0) and pid_gone(pid)


def test_threads_left_running_do_not_hang_shutdown():
    code = ("import threading, time\n"
            "def f():\n"
            "    threading.Thread(target=time.sleep, args=(100,)).start()  # non-daemon\n"
            "    return 5\n")
    r = run_in_sandbox(code, "f", {}, FAST)
    assert r.ok and r.value == 5 and r.wall_s < 3


@pytest.mark.parametrize("code", [
    "def f():\n    x = bytearray(4 * 1024 ** 3)\n    return len(x)\n",
    "import numpy as np\ndef f():\n    return float(np.ones(512 * 1024 ** 2).sum())\n",  # 4 GB of float64
])
def test_memory_hog_is_a_memory_failure(code):
    r = run_in_sandbox(code, "f", {}, SandboxLimits(timeout_s=5, memory_mb=1024))
    assert r.status == "memory" and r.reason == "exceeded 1024 MB"


def test_big_output_is_capped_and_parent_memory_bounded():
    tracemalloc.start()
    try:
        r = run_in_sandbox("def f():\n    print('x' * 10_000_000)\n    return 1\n", "f", {},
                           SandboxLimits(timeout_s=5, max_output_bytes=100_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == "output_limit" and "stdout exceeded 100000 bytes" in r.reason
    assert len(r.stdout) <= 100_000
    assert peak < 4_000_000  # the 10 MB never sat in this process


def test_endless_output_is_stopped_quickly():
    r = run_in_sandbox("def f():\n    while True:\n        print('spam' * 100)\n", "f", {},
                       SandboxLimits(timeout_s=10))
    assert r.status == "output_limit" and r.wall_s < 5


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("TAGSMITH_SECRET_TOKEN", "secret")
    code = "import os\ndef f():\n    return {'env': dict(os.environ), 'cwd': os.getcwd()}\n"
    r = run_in_sandbox(code, "f", {}, FAST)
    env = r.value["env"]
    assert "OPENAI_API_KEY" not in env and "TAGSMITH_SECRET_TOKEN" not in env
    assert "secret" not in json.dumps(env)
    assert env["HOME"] == r.value["cwd"] and env["OPENBLAS_NUM_THREADS"] == "1"
    assert not os.path.exists(r.value["cwd"])  # the temp dir is gone afterwards


def test_files_are_written_into_the_working_directory():
    code = ("import helper\n"
            "def f():\n"
            "    return [open('data/x.bin', 'rb').read().hex(), helper.K]\n")
    r = run_in_sandbox(code, "f", {}, FAST, files={"data/x.bin": b"\x01\x02", "helper.py": "K = 7\n"})
    assert r.value == ["0102", 7]
    with pytest.raises(ValueError, match="relative path"):
        run_in_sandbox(code, "f", {}, FAST, files={"../escape.txt": "x"})


def test_too_many_processes_are_killed():
    # A bounded fork tree (2**7 = 128 processes) against a limit of 10.
    code = ("import os, time\n"
            "def f():\n"
            "    for _ in range(7):\n"
            "        os.fork()\n"
            "    time.sleep(30)\n")
    r = run_in_sandbox(code, "f", {}, SandboxLimits(timeout_s=5, max_processes=10))
    assert r.status == "killed" and "more than 10 processes" in r.reason and r.wall_s < 4


async def test_async_run_returns_value():
    r = await arun_in_sandbox("def f(n):\n    return list(range(n))\n", "f", {"n": 3}, FAST)
    assert r.ok and r.value == [0, 1, 2]
    r = await arun_in_sandbox("def f():\n    while True:\n        pass\n", "f", {}, SandboxLimits(timeout_s=1))
    assert r.status == "timeout" and r.wall_s < 2.0


async def test_pool_never_runs_more_than_its_workers(tmp_path):
    code = ("import os, time\n"
            "def f(out, i):\n"
            "    start = time.time()\n"
            "    time.sleep(0.4)\n"
            "    with open(os.path.join(out, f'{i}.txt'), 'w') as fh:\n"
            "        fh.write(f'{start} {time.time()}')\n"
            "    return i\n")
    pool = SandboxPool(workers=2)
    results = await asyncio.gather(*(pool.run(code, "f", {"out": str(tmp_path), "i": i}, FAST)
                                     for i in range(5)))
    assert [r.value for r in results] == list(range(5))
    spans = [tuple(map(float, (tmp_path / f"{i}.txt").read_text().split())) for i in range(5)]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in events:  # ends sort before starts at equal times
        running += step
        most = max(most, running)
    assert most == 2 and pool.peak == 2


async def test_cancelling_kills_the_process_group(tmp_path):
    code = ("import json, os, subprocess, time\n"
            "def f(out):\n"
            "    child = subprocess.Popen(['sleep', '60'])\n"
            "    with open(out, 'w') as fh:\n"
            "        json.dump({'pgid': os.getpgid(0), 'child': child.pid, 'cwd': os.getcwd()}, fh)\n"
            "    time.sleep(60)\n")
    out = tmp_path / "info.json"
    task = asyncio.create_task(arun_in_sandbox(code, "f", {"out": str(out)}, SandboxLimits(timeout_s=30)))
    for _ in range(100):
        if out.exists() and out.stat().st_size:
            break
        await asyncio.sleep(0.05)
    info = json.loads(out.read_text())
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 3
    assert group_gone(info["pgid"], wait_s=0) and pid_gone(info["child"])
    assert not os.path.exists(info["cwd"])


# -- the runner's pure parts (evaluators/sandbox_runner.py, imported here, run as a file there) --

def test_runner_is_a_module_file_that_imports_nothing_of_tagsmith():
    import ast

    from tagsmith.evaluators import sandbox, sandbox_runner

    assert sandbox.RUNNER == Path(sandbox_runner.__file__) and sandbox.RUNNER.is_file()
    tree = ast.parse(sandbox.RUNNER.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("tagsmith", "numpy", "scipy")}
    assert sandbox_runner.WORKER is None  # importing it started nothing


def test_runner_encode_round_trips_through_the_decoder():
    import numpy as np

    from tagsmith.evaluators.sandbox import _decode_hook
    from tagsmith.evaluators.sandbox_runner import encode

    value = {"a": (1, 2.5), 3: [np.float64("inf"), np.arange(2)], "n": None, "b": True,
             "s": np.int64(7), "m": float("-inf")}
    encoded = encode(value)
    assert encoded["3"][0] == {"__float__": "inf"} and encoded["a"] == [1, 2.5] and encoded["s"] == 7
    back = json.loads(json.dumps(encoded, allow_nan=False), object_hook=_decode_hook)
    assert back == {"a": [1, 2.5], "3": [math.inf, [0, 1]], "n": None, "b": True, "s": 7, "m": -math.inf}
    nan = json.loads(json.dumps(encode(float("nan"))), object_hook=_decode_hook)
    assert math.isnan(nan)
    with pytest.raises(TypeError, match="dict key of type tuple"):
        encode({(1, 2): 0})
    with pytest.raises(TypeError, match="type object, which is not JSON-serialisable"):
        encode([object()])


def test_runner_parse_stat_counts_fields_after_the_last_parenthesis():
    from tagsmith.evaluators.sandbox_runner import parse_stat

    assert parse_stat(b"9 (x) R 1 2 3 4") == (1, 2, 3)
    assert parse_stat(b"9 (evil) S 5 6 7 (name)) S 10 11 12 0") == (10, 11, 12)
    assert parse_stat(Path("/proc/self/stat").read_bytes()) == (os.getppid(), os.getpgrp(), os.getsid(0))
    for bad in (b"9 (x) R 1 2", b"9 (x) R a b c"):
        with pytest.raises(ValueError):
            parse_stat(bad)


def test_runner_clamps_limits_to_the_inherited_hard_limit():
    import resource

    from tagsmith.evaluators.sandbox_runner import clamp

    assert clamp(10, 20, hard_cap=resource.RLIM_INFINITY) == (10, 20)
    assert clamp(10, 20, hard_cap=None) == (10, 20)
    assert clamp(10, 20, hard_cap=15) == (10, 15)
    assert clamp(10, 20, hard_cap=5) == (5, 5)


def test_runner_one_line_reason():
    from tagsmith.evaluators.sandbox_runner import MAX_REASON, one_line

    assert one_line(ValueError("a\n\tb  c")) == "a b c"
    long = one_line(ValueError("x" * 2000))
    assert len(long) == MAX_REASON and long.endswith("...")
