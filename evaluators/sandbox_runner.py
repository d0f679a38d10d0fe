"""The sandbox's supervisor and worker: the trusted script that runs one evaluation.

``evaluators/sandbox.py`` starts it as a file, never as an import of the package::

    python -I .../tagsmith/evaluators/sandbox_runner.py BOX

``BOX`` is the evaluation's private folder: ``spec.json`` (entry, args, limits) and
``candidate.py`` go in; ``result.json``, ``worker.pid`` and ``supervisor.json`` come out.
The working directory is the folder above it, which holds the candidate's files.

This file uses the standard library only and must import nothing from tagsmith: it runs
in a fresh interpreter whose only packages are the venv's (numpy and scipy import in the
candidate as usual). The process tree, the limits and why each step is there are in
``sandbox.py``'s module docstring. The pure parts can be imported and tested:

    >>> encode({"x": (1, float("nan")), 2: None})
    {'x': [1, {'__float__': 'nan'}], '2': None}
    >>> parse_stat(b"42 (a name (with) spaces) S 1 42 7 0 -1")
    (1, 42, 7)
    >>> clamp(100, 200, hard_cap=150)
    (100, 150)
    >>> one_line(ValueError("bad\\n   input"))
    'bad input'
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import signal
import sys
import time
import traceback

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
SIGS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
MEMORY_RESULT = b'{"kind": "memory", "type": "MemoryError", "message": ""}'
MAX_REASON = 500  # characters of an exception message kept in the result


def prctl(option, arg):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 - no libc or no prctl: run without, as before
        return False


def parse_stat(data):
    """(ppid, pgrp, session) from the text of a /proc/PID/stat file; ValueError if it is
    malformed. The command name in parentheses may hold spaces and parentheses, so the
    fields are counted from the last ``)``."""
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[1]), int(rest[2]), int(rest[3])
    except IndexError:
        raise ValueError("truncated stat line") from None


def proc_stats():
    """Yield (pid, ppid, pgrp, session) for every process we can see in /proc (lazily,
    so that callers can stop early: under a fork bomb /proc holds tens of thousands)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        try:
            yield (int(name), *parse_stat(data))
        except ValueError:
            continue


def clamp(soft, hard, hard_cap):
    """The (soft, hard) pair to set when the inherited hard limit is ``hard_cap``: asking
    for more than it raises ValueError (``None`` or RLIM_INFINITY: no cap)."""
    if hard_cap is not None and hard_cap != resource.RLIM_INFINITY:
        soft, hard = min(soft, hard_cap), min(hard, hard_cap)
    return soft, hard


def limit(which, soft, hard):
    resource.setrlimit(which, clamp(soft, hard, resource.getrlimit(which)[1]))


def set_limits(lim):
    mb = 1024 * 1024
    limit(resource.RLIMIT_CORE, 0, 0)
    limit(resource.RLIMIT_AS, lim["memory_mb"] * mb, lim["memory_mb"] * mb)
    # Soft limit -> SIGXCPU (reported as a timeout); hard limit one second later -> SIGKILL.
    limit(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)
    limit(resource.RLIMIT_FSIZE, lim["max_file_mb"] * mb, lim["max_file_mb"] * mb)


def set_nproc(max_processes):
    if max_processes is None or os.getuid() == 0:
        return  # root is exempt from RLIMIT_NPROC; the supervisor's count still applies
    uid = os.getuid()
    threads = 0
    for pid, *_ in proc_stats():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("Threads:"):
                            threads += int(line.split()[1])
        except (OSError, ValueError):
            continue
    try:
        n = threads + max_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    except (ValueError, OSError):
        pass


def encode(obj):
    """JSON-ready copy of a return value; non-finite floats become {"__float__": "nan"}."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"__float__": repr(float(obj))}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"result has a dict key of type {type(k).__name__}; "
                                "JSON keys must be strings")
            out[k if isinstance(k, str) else str(k)] = encode(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if type(obj).__module__.split(".")[0] == "numpy" and hasattr(obj, "tolist"):
        return encode(obj.tolist())  # arrays and numpy scalars
    raise TypeError(f"result contains a value of type {type(obj).__name__}, which is not "
                    "JSON-serialisable")


WORKER = None  # the worker's pid; forked copies of it must not write a result


def write_result(box, payload):
    if os.getpid() != WORKER:
        return  # a candidate's fork() child that returned from the entry function too
    tmp = os.path.join(box, "result.json.tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, os.path.join(box, "result.json"))  # atomic: the parent never reads half


def one_line(exc):
    msg = " ".join(str(exc).split())
    if len(msg) > MAX_REASON:
        msg = msg[:MAX_REASON - 3] + "..."
    return msg


def worker(box, spec, supervisor_pid):
    global WORKER
    WORKER = os.getpid()
    code = 0
    try:
        os.setpgid(0, 0)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor_pid:  # the supervisor died before prctl took effect
            os._exit(70)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGS)
        set_nproc(spec["limits"]["max_processes"])
        sys.path.insert(0, os.getcwd())  # -I leaves the script dir off sys.path; user files live in cwd
        try:
            import importlib.util
            modspec = importlib.util.spec_from_file_location("candidate", os.path.join(box, "candidate.py"))
            module = importlib.util.module_from_spec(modspec)
            sys.modules["candidate"] = module  # dataclasses and pickling look the module up
            modspec.loader.exec_module(module)
            fn = getattr(module, spec["entry"], None)
            if fn is None or not callable(fn):
                raise AttributeError(f"the program defines no function {spec['entry']!r}")
            value = fn(**spec["args"])
            payload = json.dumps({"kind": "ok", "value": encode(value)}, allow_nan=False).encode()
            write_result(box, payload)
        except MemoryError:
            write_result(box, MEMORY_RESULT)  # pre-built: formatting anything now may fail again
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from the candidate too
            try:  # the candidate's frames only: the runner's own are noise in a repair prompt
                tb = exc.__traceback__
                while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
                    tb = tb.tb_next
                traceback.print_exception(type(exc), exc, tb)
            except BaseException:  # noqa: BLE001, S110 - a traceback that cannot print is no reason to lose the result
                pass
            write_result(box, json.dumps({"kind": "error", "type": type(exc).__name__,
                                          "message": one_line(exc)}).encode())
    except MemoryError:
        try:
            write_result(box, MEMORY_RESULT)
        except BaseException:  # noqa: BLE001 - the exit code tells the parent
            code = 72
    except BaseException:  # noqa: BLE001 - the exit code tells the parent
        code = 71
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110 - a closed stream must not block the exit
                pass
        os._exit(code)  # never run interpreter shutdown: candidate threads could hang it


def sweep(worker_pgid, deadline):
    """Kill the worker's group and every child (orphans are re-parented to us), reap all.

    killpg first: it reaches the whole group in one atomic step, which is what stops a
    fork bomb (a process with a pending SIGKILL cannot fork); /proc scans come after,
    only for processes that left the group (setpgid/setsid) and got re-parented to us."""
    me = os.getpid()
    while True:
        try:
            os.killpg(worker_pgid, signal.SIGKILL)
        except OSError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True  # no child left at all
        if time.monotonic() > deadline:
            return False
        for pid, ppid, _, _ in proc_stats():
            if ppid == me:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.005)


def too_many(session, me, limit, deadline):
    """True once more than `limit` processes of our session exist (stops counting early)."""
    n = 0
    for pid, _, _, sid in proc_stats():
        if sid == session and pid != me:
            n += 1
            if n > limit:
                return True
        if time.monotonic() > deadline:
            return False  # the wall clock wins; the caller kills anyway
    return False


def main(box):
    with open(os.path.join(box, "spec.json")) as f:
        spec = json.load(f)
    lim = spec["limits"]
    parent = os.getppid()
    set_limits(lim)
    subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
    me = os.getpid()
    session = os.getsid(0)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        worker(box, spec, me)
    try:
        os.setpgid(pid, pid)  # also done in the child: whichever runs first wins the race
    except OSError:
        pass
    with open(os.path.join(box, "worker.pid"), "w") as f:
        f.write(str(pid))  # for the parent's forced kill, should we ever stop responding
    deadline = t0 + lim["timeout_s"]
    poll = 0.1 if lim["max_processes"] is not None else None
    wait_status, ended, note = None, "exited", ""
    while wait_status is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            ended = "timeout"
            break
        info = signal.sigtimedwait(SIGS, remaining if poll is None else min(remaining, poll))
        if info is None:
            if poll is not None and too_many(session, me, lim["max_processes"], deadline):
                ended, note = "processes", f"spawned more than {lim['max_processes']} processes"
                break
            continue
        if info.si_signo != signal.SIGCHLD:
            ended = "stopped"
            break
        try:  # reap whatever ended (re-parented orphans too); note the worker's status
            while True:
                got, status = os.waitpid(-1, os.WNOHANG)
                if not got:
                    break
                if got == pid:
                    wait_status = status
        except ChildProcessError:
            pass
    wall = time.monotonic() - t0
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if wait_status is None:
        try:
            wait_status = os.waitpid(pid, 0)[1]
        except ChildProcessError:
            pass
    clean = sweep(pid, time.monotonic() + 2.0)
    rc = None
    if wait_status is not None:
        rc = -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)
    info = {"ended": ended, "note": note, "returncode": rc, "wall_s": wall,
            "clean": clean, "subreaper": subreaper}
    with open(os.path.join(box, "supervisor.json"), "w") as f:
        json.dump(info, f)
    if os.getppid() != parent:  # whoever started us is gone: nobody else will delete the dir
        import shutil
        shutil.rmtree(os.path.dirname(box), ignore_errors=True)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
