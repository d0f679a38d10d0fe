"""Schema migrations: an ordered list of named functions, each applied once, in order.

Never edit a migration that has shipped; append a new one. A migration receives an open
SQLAlchemy connection inside a transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

from tagsmith.store import models


def _create(conn: Connection, *tables) -> None:
    SQLModel.metadata.create_all(conn, tables=[t.__table__ for t in tables])


def m001_runs_calls_cache(conn: Connection) -> None:
    _create(conn, models.Run, models.LLMCall, models.LLMCache, models.RunRecord)


def m002_work_states_stats_blobs(conn: Connection) -> None:
    """Batch stages: a state and attempt count on work records with an index for the next
    wave, exact run counters, binary run state."""
    # 001 creates tables from today's models: on a new database the columns exist already
    have = {c["name"] for c in inspect(conn).get_columns("run_record")}
    if "state" not in have:
        conn.execute(text("ALTER TABLE run_record ADD COLUMN state VARCHAR(8)"))
    if "attempts" not in have:
        conn.execute(text("ALTER TABLE run_record ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_run_record_work ON run_record (run_id, kind, state, id)"))
    _create(conn, models.RunStat, models.RunBlob)


def m003_results_in_work_records(conn: Connection) -> None:
    """A work record keeps its result (one row write per item, not two), and indexes no
    query uses go: each was one more B-tree write per row."""
    if "result_json" not in {c["name"] for c in inspect(conn).get_columns("run_record")}:
        conn.execute(text("ALTER TABLE run_record ADD COLUMN result_json TEXT"))
    for index in ("ix_run_record_run_id", "ix_llm_call_run_id", "ix_llm_call_cache_key"):
        conn.execute(text(f"DROP INDEX IF EXISTS {index}"))


def m004_run_lease(conn: Connection) -> None:
    """A lease on the run row: which process drives the run, until when."""
    have = {c["name"] for c in inspect(conn).get_columns("run")}
    if "lease_owner" not in have:
        conn.execute(text("ALTER TABLE run ADD COLUMN lease_owner VARCHAR"))
    if "lease_until" not in have:
        conn.execute(text("ALTER TABLE run ADD COLUMN lease_until TIMESTAMP"))


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_runs_calls_cache", m001_runs_calls_cache),
    ("002_work_states_stats_blobs", m002_work_states_stats_blobs),
    ("003_results_in_work_records", m003_results_in_work_records),
    ("004_run_lease", m004_run_lease),
]


MIGRATION_LOCK = 0x7461_6773  # "tags": the advisory lock key on PostgreSQL


def migrate(engine) -> list[str]:
    """Apply pending migrations in order; returns the names applied now.

    Safe when several processes start at once: the check and the migrations run under one
    lock (PostgreSQL: a transaction-level advisory lock; SQLite: the write lock, taken
    first), so a migration is applied by exactly one of them and the others find it done."""
    with engine.connect() as conn:  # up to date already: no lock, no write
        have = inspect(conn).has_table("schema_migration")
        done = {row[0] for row in conn.execute(text("SELECT name FROM schema_migration"))} if have else set()
    if all(name in done for name, _ in MIGRATIONS):
        return []
    applied_now: list[str] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            _create(conn, models.SchemaMigration)
        else:  # SQLite's write lock first, held to the commit
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            _create(conn, models.SchemaMigration)
        done = {row[0] for row in conn.execute(text("SELECT name FROM schema_migration"))}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(conn)
            conn.execute(text("INSERT INTO schema_migration (name, applied_at) VALUES (:n, CURRENT_TIMESTAMP)"),
                         {"n": name})
            applied_now.append(name)
    return applied_now
