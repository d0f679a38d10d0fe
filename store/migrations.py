"""Schema migrations: an ordered list of named functions, each applied once, in order.

Never edit a migration that has shipped; append a new one. A migration receives an open
SQLAlchemy connection inside a transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text
from sqlmodel import SQLModel

from tagsmith.store import models


def _create(conn: Connection, *tables) -> None:
    SQLModel.metadata.create_all(conn, tables=[t.__table__ for t in tables])


def m001_runs_calls_cache(conn: Connection) -> None:
    _create(conn, models.Run, models.LLMCall, models.LLMCache, models.RunRecord)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_runs_calls_cache", m001_runs_calls_cache),
]


def migrate(engine) -> list[str]:
    """Apply pending migrations in order; returns the names applied now."""
    applied_now: list[str] = []
    with engine.begin() as conn:
        _create(conn, models.SchemaMigration)
    with engine.begin() as conn:
        done = {row[0] for row in conn.execute(text("SELECT name FROM schema_migration"))}
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with engine.begin() as conn:
            fn(conn)
            conn.execute(text("INSERT INTO schema_migration (name, applied_at) VALUES (:n, CURRENT_TIMESTAMP)"),
                         {"n": name})
        applied_now.append(name)
    return applied_now
