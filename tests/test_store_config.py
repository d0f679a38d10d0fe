"""Store (WAL, migrations, idempotent records, clear errors) and configuration precedence."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tagsmith.core.config import load_config
from tagsmith.core.errors import ConfigError
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


def test_group_commit_keeps_every_write_and_sums_run_totals(store):
    """200 concurrent writers: every log row, cache entry and record lands, the run's
    totals are the sums, and the writer needed fewer transactions than writes."""
    import asyncio

    run = store.create_run("probe", config={})

    async def one(i: int) -> None:
        await store.alog_call({"run_id": run.id, "node": "n", "model": "fake/x", "cache_key": f"k{i % 150}",
                               "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.5,
                               "cache_hit": i % 10 == 0, "error": None},
                              cache_put=(f"k{i % 150}", {"text": f"answer {i}"}))
        assert await store.aput_records(run.id, "tag", [(str(i % 120), {"v": i})]) == 1

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(200)))

    asyncio.run(main())
    r = store.get_run(run.id)
    assert (r.calls, r.cache_hits, r.prompt_tokens, r.completion_tokens) == (180, 20, 2000, 400)
    assert r.cost_usd == pytest.approx(100.0)
    assert len(store.calls(run.id)) == 200
    assert store.cache_get("k7") == {"text": "answer 7"}  # first answer per key wins
    records = store.records(run.id, "tag")
    assert len(records) == 120 and records["7"] == {"v": 127}  # last write per key wins
    assert store._writer.requests == 400 and store._writer.groups < 400


def test_a_failing_write_fails_alone_in_its_group(store):
    import asyncio

    run = store.create_run("probe", config={})

    def bad(conn):
        raise ValueError("this write is broken")

    async def main():
        return await asyncio.gather(*(store.aput_records(run.id, "item", [(str(i), {"v": i})]) for i in range(30)),
                                    store.write(bad), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:30] == [1] * 30 and isinstance(results[30], ValueError)
    assert len(store.records(run.id, "item")) == 30


def test_other_databases_are_refused_at_start_with_one_line(tmp_path):
    """The store needs INSERT ... ON CONFLICT and a LangGraph checkpointer: SQLite or
    PostgreSQL. Anything else is refused before any connection is made."""
    for url in ("mysql+pymysql://root@127.0.0.1/test", "mssql://x", "oracle://y"):
        with pytest.raises(ConfigError, match=r"store\.db: (mysql|mssql|oracle) is not supported; use a SQLite path or a "
                                              r"postgresql:// URL"):
            Store(url)


def test_the_next_wave_is_an_indexed_query_that_skips_what_is_done(store):
    run = store.create_run("tag", config={})
    assert store.load_work(run.id, "item", [(str(i), {"text": f"t{i}"}) for i in range(10)],
                           cursor={"file": 0, "records": 10, "exhausted": True}, stats={"loaded": 10}) == []
    store.transact(store.work_write(run.id, "item", [("0", {}), ("2", {}), ("3", {})], [("5", {"x": 1})],
                                    {"answers": 4}))
    assert [k for _, k, _ in store.next_work(run.id, "item", 4)] == ["1", "4", "6", "7"]
    (row, key, data), = store.next_work(run.id, "item", 1)
    assert (key, data) == ("1", {"text": "t1"})
    assert [k for _, k, _ in store.next_work(run.id, "item", 2, after=row)] == ["4", "6"]
    assert store.count_work(run.id, "item", "pending") == 6 and store.count_work(run.id, "item", "pending", cap=2) == 2
    assert store.count_work(run.id, "item", "failed") == 1 and store.stats(run.id) == {"loaded": 10, "answers": 4}
    assert store.retry_failed(run.id, "item", max_attempts=2) == 1 and store.count_work(run.id, "item", "failed") == 0
    # a second load of the same keys adds nothing and says which were there
    assert store.load_work(run.id, "item", [("3", {"text": "again"}), ("10", {"text": "t10"})],
                           cursor={"file": 0, "records": 12, "exhausted": True}) == ["3"]
    assert store.cursor(run.id, "item")["records"] == 12
    # SQLite answers the wave from the (run_id, kind, state, id) index: no scan of the run's records
    q = store.next_work_query(run.id, "item", 64).compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        plan = " | ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {q}").all())
    assert "ix_run_record_work" in plan and "TEMP B-TREE" not in plan, plan


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
    ("llm:\n  concurency: 3\n", r"c\.yaml: llm\.concurency: unknown key"),
    ("pipeline:\n  vocabb:\n    sample_size: 5\n", r"c\.yaml: pipeline\.vocabb: unknown key"),
    ("pipeline:\n  evolve:\n    islandz: 2\n", r"c\.yaml: pipeline\.evolve\.islandz: unknown key"),
    ("pipeline:\n  score:\n    batch_size: -1\n", r"c\.yaml: pipeline\.score\.batch_size"),
    ("llm:\n  concurrency: zero\n", r"llm\.concurrency"),
    ("llm: [1, 2\n", r"c\.yaml:\d+: cannot parse"),
    ("llm:\n  api_key: sk-123\n", "secrets are read from the environment"),
])
def test_bad_config_names_file_and_field(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, environ={})


def test_a_typo_in_the_environment_names_the_environment(tmp_path):
    with pytest.raises(ConfigError, match=r"environment \(TAGSMITH_\.\.\.\): pipeline\.vocab\.sampel: unknown key"):
        load_config(environ={"TAGSMITH_PIPELINE__VOCAB__SAMPEL": "3"})


def test_the_cli_refuses_a_misspelled_pipeline_section(tmp_path, capsys):
    from tagsmith.cli import main

    f = tmp_path / "t.yaml"
    f.write_text("pipeline:\n  vocabb:\n    sample_size: 5\n")
    assert main(["runs", "list", "--config", str(f), "--db", str(tmp_path / "x.db")]) == 2
    assert capsys.readouterr().err.strip() == f"tagsmith: error: {f}: pipeline.vocabb: unknown key (a typo?)"
