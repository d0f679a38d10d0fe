"""The store: engine factory (SQLite in WAL mode by default, any SQLAlchemy URL), run
registry, LLM call log, response cache and idempotent run records.

    >>> s = Store("sqlite://")            # in memory
    >>> run = s.create_run("probe", config={}, model="fake/x")
    >>> s.get_run(run.id).status
    'running'
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from tagsmith.errors import ConfigError, TagsmithError
from tagsmith.store.migrations import migrate
from tagsmith.store.models import LLMCache, LLMCall, Run, RunRecord, utcnow


class StoreError(TagsmithError):
    """The database cannot be used (locked, read-only, disk full); nothing was corrupted."""


def to_url(db: str) -> str:
    """A bare path becomes a SQLite URL; URLs pass through.  'x.db' -> 'sqlite:///x.db'"""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser()}"


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or None (not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path.startswith("file:"):  # sqlite:///file:PATH?mode=ro&uri=true
        path = path[len("file:"):].split("?", 1)[0]
    return path or None


def describe_db_error(exc: Exception, url: str) -> str:
    msg = str(getattr(exc, "orig", exc)).lower()
    where = sqlite_path(url) or url
    if "readonly" in msg or "read-only" in msg:
        return f"{where}: database is read-only"
    if "locked" in msg or "busy" in msg:
        return f"{where}: database is locked by another process (try again, or raise store.busy_timeout_ms)"
    if "disk" in msg and ("full" in msg or "i/o" in msg):
        return f"{where}: disk full or I/O error; nothing written in this transaction was kept"
    if "unable to open" in msg:
        return f"{where}: cannot open database file"
    return f"{where}: database error: {str(getattr(exc, 'orig', exc)).splitlines()[0]}"


class Store:
    def __init__(self, db: str = "tagsmith.db", busy_timeout_ms: int = 30000):
        self.url = to_url(db)
        self.path = sqlite_path(self.url)
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
            if self.path is None:  # in-memory: one shared connection
                kwargs["poolclass"] = StaticPool
            elif not Path(self.path).parent.exists():
                raise ConfigError(f"{self.path}: directory does not exist")
        try:
            self.engine = create_engine(self.url, **kwargs)
        except Exception as exc:  # bad URL, missing driver
            raise ConfigError(f"store.db: cannot use {self.url!r}: {exc}") from exc
        if self.url.startswith("sqlite"):
            timeout = busy_timeout_ms

            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: sqlite3.Connection, _record) -> None:
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout={int(timeout)}")
                if self.path is not None:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        try:
            migrate(self.engine)
        except OperationalError as exc:
            raise StoreError(describe_db_error(exc, self.url)) from exc

    # -- sessions ---------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                yield s
                s.commit()
        except OperationalError as exc:
            raise StoreError(describe_db_error(exc, self.url)) from exc

    def close(self) -> None:
        self.engine.dispose()

    async def run(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run a store method off the event loop. Async code must write through this: a
        blocking SQLite write on the loop thread can deadlock with the async checkpointer,
        whose transaction only commits when the loop gets to run again."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- runs -------------------------------------------------------------------------
    def create_run(self, kind: str, *, config: dict[str, Any], model: str = "",
                   inputs: dict[str, Any] | None = None, parent_run: str | None = None,
                   prompt_hashes: dict[str, str] | None = None, run_id: str | None = None) -> Run:
        run = Run(id=run_id or f"{kind.split('.')[0][:6]}-{secrets.token_hex(3)}", kind=kind,
                  model=model, config_json=json.dumps(config, default=str),
                  inputs_json=json.dumps(inputs or {}, default=str), parent_run=parent_run,
                  prompt_hashes_json=json.dumps(prompt_hashes or {}))
        with self.session() as s:
            s.add(run)
        return run

    def get_run(self, run_id: str) -> Run | None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:  # accept a unique prefix, as git does
                rows = s.exec(select(Run).where(Run.id.startswith(run_id))).all()
                run = rows[0][0] if len(rows) == 1 else None
            return run

    def require_run(self, run_id: str) -> Run:
        run = self.get_run(run_id)
        if run is None:
            raise ConfigError(f"run {run_id!r} not found in {self.path or self.url}")
        return run

    def list_runs(self, kind: str | None = None, limit: int = 50) -> list[Run]:
        with self.session() as s:
            q = select(Run).order_by(Run.created_at.desc()).limit(limit)
            if kind:
                q = q.where(Run.kind == kind)
            return [r[0] for r in s.exec(q).all()]

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise ConfigError(f"run {run_id!r} not found")
            for k, v in fields.items():
                setattr(run, k, v)
            run.updated_at = utcnow()
            s.add(run)

    def set_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        self.update_run(run_id, metrics_json=json.dumps(metrics, default=float))

    # -- LLM log and cache ------------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(LLMCache, key)
            return json.loads(row.response_json) if row else None

    def log_call(self, call: LLMCall, *, cache_put: tuple[str, dict[str, Any]] | None = None) -> None:
        """Write the call's log row, its cache entry and the run's totals in ONE transaction,
        so a crash never leaves a paid call without its cache entry."""
        with self.session() as s:
            s.add(call)
            if cache_put is not None:
                key, payload = cache_put
                if s.get(LLMCache, key) is None:
                    s.add(LLMCache(key=key, model=call.model, response_json=json.dumps(payload)))
            if call.run_id:
                run = s.get(Run, call.run_id)
                if run is not None:
                    if call.cache_hit:
                        run.cache_hits += 1
                    elif call.error is None or call.prompt_tokens:
                        run.calls += 1
                    run.prompt_tokens += call.prompt_tokens
                    run.completion_tokens += call.completion_tokens
                    run.cost_usd += call.cost_usd
                    run.updated_at = utcnow()
                    s.add(run)

    def calls(self, run_id: str | None = None) -> list[LLMCall]:
        with self.session() as s:
            q = select(LLMCall).order_by(LLMCall.id)
            if run_id:
                q = q.where(LLMCall.run_id == run_id)
            return [r[0] for r in s.exec(q).all()]

    # -- run records ------------------------------------------------------------------
    def put_records(self, run_id: str, kind: str, items: Iterable[tuple[str, Any]]) -> int:
        """Upsert (key -> data) rows for a run; re-writing a key replaces it. Returns count."""
        rows = [{"run_id": run_id, "kind": kind, "key": str(k), "data_json": json.dumps(v, default=str),
                 "created_at": utcnow()} for k, v in items]
        if not rows:
            return 0
        table = RunRecord.__table__
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # pragma: no cover - other dialects: delete then insert
            insert = None
        with self.session() as s:
            if insert is not None:
                stmt = insert(table).values(rows)
                stmt = stmt.on_conflict_do_update(index_elements=["run_id", "kind", "key"],
                                                  set_={"data_json": stmt.excluded.data_json})
                s.execute(stmt)
            else:
                for r in rows:
                    s.execute(table.delete().where((table.c.run_id == run_id) & (table.c.kind == kind)
                                                   & (table.c.key == r["key"])))
                    s.execute(table.insert().values(r))
        return len(rows)

    def records(self, run_id: str, kind: str) -> dict[str, Any]:
        with self.session() as s:
            rows = s.exec(select(RunRecord.key, RunRecord.data_json)
                          .where(RunRecord.run_id == run_id, RunRecord.kind == kind)
                          .order_by(RunRecord.id)).all()
            return {k: json.loads(d) for k, d in rows}

    def record_keys(self, run_id: str, kind: str) -> set[str]:
        with self.session() as s:
            return {k for (k,) in s.execute(select(RunRecord.key).where(
                RunRecord.run_id == run_id, RunRecord.kind == kind)).all()}

    def integrity_check(self) -> str:
        if self.path is None:
            return "ok"
        with self.engine.connect() as conn:
            return conn.execute(text("PRAGMA integrity_check")).scalar_one()
