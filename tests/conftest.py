"""Shared fixtures: a store in tmp_path, a fake model, a gateway wired to both.

Unit tests never touch the network: the fake backend answers every call, and the
autouse fixture below fails any test that tries to open a non-loopback connection."""

from __future__ import annotations

import os
import socket
from pathlib import Path

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


# -- PostgreSQL ---------------------------------------------------------------------------------
def _answers(url: str) -> str | None:
    """None if a PostgreSQL server answers at url, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'tagsmith[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=5):
            return None
    except Exception as exc:  # noqa: BLE001 - any reason is a reason to skip
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _throwaway_server(tmp: Path) -> tuple[str, callable]:
    """A PostgreSQL server of our own (the system's initdb/pg_ctl, run as the postgres user
    when we are root: initdb refuses root). Returns (url, stop)."""
    import glob
    import pwd
    import shutil
    import subprocess

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = shutil.which("initdb") or (bins[-1] if bins else None)
    if initdb is None:
        raise RuntimeError("no initdb on this machine")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    data, sock = tmp / "pgdata", tmp / "pgsock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for p in (tmp, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(prefix + [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run(prefix + [pg_ctl, "-D", str(data), "-w", "-l", str(tmp / "pg.log"), "-o",
                             f"-p {port} -k {sock} -h 127.0.0.1", "start"], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server: $TAGSMITH_TEST_POSTGRES_URL (CI sets it when the machine's
    server answers), else one started for the session; the tests skip, saying why, only
    where neither can be had."""
    url = os.environ.get("TAGSMITH_TEST_POSTGRES_URL")
    if url:
        why = _answers(url)
        if why is not None:
            pytest.skip(f"TAGSMITH_TEST_POSTGRES_URL={url} does not answer: {why}")
        yield url
        return
    import shutil
    import tempfile

    # not under pytest's tmp folder: it is private to root, and the server runs as postgres
    home = Path(tempfile.mkdtemp(prefix="tagsmith-pg-"))
    try:
        url, stop = _throwaway_server(home)
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: TAGSMITH_TEST_POSTGRES_URL is not set and none could be started ({exc})")
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server):
    """A database of its own on the server, dropped afterwards."""
    import secrets

    import psycopg

    name = f"tagsmith_t_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_server.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """The store's database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "t.db")
    return request.getfixturevalue("pg_url")
