"""Store (WAL, migrations, idempotent records, clear errors) and configuration precedence."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tagsmith.config import load_config
from tagsmith.errors import ConfigError
from tagsmith.store import migrations
from tagsmith.store.db import Store, StoreError


def test_sqlite_store_uses_wal_and_applies_migrations_once(db_path):
    s = Store(db_path)
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in con.execute("SELECT name FROM schema_migration ORDER BY name")]
    assert names == [n for n, _ in migrations.MIGRATIONS]
    s.close()
    assert migrations.migrate(Store(db_path).engine) == []  # nothing pending the second time


def test_new_migration_is_applied_in_order(db_path, monkeypatch):
    Store(db_path).close()
    seen = []
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [
        ("900_extra", lambda conn: seen.append("900")), ("901_more", lambda conn: seen.append("901"))])
    Store(db_path).close()
    assert seen == ["900", "901"]
    Store(db_path).close()
    assert seen == ["900", "901"]


def test_records_upsert_is_idempotent(store):
    run = store.create_run("probe", config={})
    store.put_records(run.id, "item", [("a", {"v": 1}), ("b", {"v": 2})])
    store.put_records(run.id, "item", [("a", {"v": 3})])
    assert store.records(run.id, "item") == {"a": {"v": 3}, "b": {"v": 2}}
    assert store.record_keys(run.id, "item") == {"a", "b"}


def test_run_prefix_lookup_and_missing_run(store):
    run = store.create_run("probe", config={"x": 1})
    assert store.get_run(run.id[:8]).id == run.id
    with pytest.raises(ConfigError, match="not found"):
        store.require_run("nope")


def test_read_only_database_gives_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        # root ignores file permissions; open the file read-only through SQLite instead
        path = tmp_path / "ro.db"
        Store(str(path)).close()
        s = Store(f"sqlite:///file:{path}?mode=ro&uri=true")
        with pytest.raises(StoreError, match="read-only"):
            s.create_run("probe", config={})
        return
    path = tmp_path / "ro.db"
    Store(str(path)).close()
    path.chmod(0o444)
    with pytest.raises(StoreError, match="read-only"):
        Store(str(path)).create_run("probe", config={})


def test_locked_database_gives_a_clear_error_and_keeps_data(tmp_path):
    path = tmp_path / "locked.db"
    s = Store(str(path), busy_timeout_ms=100)
    run = s.create_run("probe", config={})
    blocker = sqlite3.connect(str(path))
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match="locked"):
        s.update_run(run.id, status="done")
    blocker.rollback()
    blocker.close()
    assert s.get_run(run.id).status == "running"


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Store(str(tmp_path / "nope" / "x.db"))


def test_config_precedence_file_env_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("llm:\n  model: ollama/qwen2.5\n  concurrency: 3\n  max_tokens: 100\n")
    env = {"TAGSMITH_LLM__CONCURRENCY": "5", "TAGSMITH_LLM__MAX_TOKENS": "200"}
    cfg = load_config(f, overrides={"llm": {"max_tokens": 300}}, environ=env)
    assert (cfg.llm.model, cfg.llm.concurrency, cfg.llm.max_tokens) == ("ollama/qwen2.5", 5, 300)


def test_toml_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[llm]\nmodel = "openai/gpt-4o-mini"\n[store]\ndb = "x.db"\n')
    cfg = load_config(f, environ={})
    assert cfg.llm.model == "openai/gpt-4o-mini" and cfg.store.db == "x.db"


@pytest.mark.parametrize("text,match", [
    ("llm:\n  concurency: 3\n", r"c\.yaml: llm\.concurency: Extra inputs"),
    ("llm:\n  concurrency: zero\n", r"llm\.concurrency"),
    ("llm: [1, 2\n", r"c\.yaml:\d+: cannot parse"),
    ("llm:\n  api_key: sk-123\n", "secrets are read from the environment"),
])
def test_bad_config_names_file_and_field(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, environ={})
