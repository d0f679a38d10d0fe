"""Shared fixtures: a store in tmp_path, a fake model, a gateway wired to both.

Unit tests never touch the network: the fake backend answers every call, and the
autouse fixture below fails any test that tries to open a non-loopback connection."""

from __future__ import annotations

import socket

import pytest

from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import Gateway
from tagsmith.core.config import LLMConfig, load_config
from tagsmith.store.db import Store


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")
                                          or self.family == socket.AF_UNIX):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    for var in ("TAGSMITH_LLM__MODEL", "TAGSMITH_STORE__DB", "TAGSMITH_PROMPTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "t.db")


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture
def fake():
    return FakeLLM()


@pytest.fixture
def llm_config():
    return LLMConfig(model="fake/test", backoff_base_s=0.0, backoff_max_s=0.05, max_retries=3)


@pytest.fixture
def gateway(llm_config, store, fake):
    run = store.create_run("probe", config={}, model=llm_config.model)
    return Gateway(llm_config, store=store, run_id=run.id, backend=fake)


@pytest.fixture
def config(db_path):
    return load_config(overrides={"llm": {"model": "fake/test", "backoff_base_s": 0.0, "backoff_max_s": 0.05},
                                  "store": {"db": db_path}, "progress": False}, environ={})
