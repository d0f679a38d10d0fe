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
import os
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, bindparam, create_engine, event, func, insert, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from tagsmith.core.errors import ConfigError, TagsmithError
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


_RUN_DELTAS = ("cache_hits", "calls", "prompt_tokens", "completion_tokens", "cost_usd")
_CALL_COLUMNS = tuple(c.name for c in LLMCall.__table__.columns if c.name != "id")
_CALL_DEFAULTS = {"node": "", "model": "", "cache_key": "", "messages_json": "[]", "prompt_tokens": 0,
                  "completion_tokens": 0, "cost_usd": 0.0, "latency_s": 0.0, "cache_hit": False, "attempts": 1,
                  "reasks": 0}


@dataclass
class Write:
    """A write as parameter rows for the store's prepared statements (``llm_call``,
    ``llm_cache``, ``run_record``) plus deltas to a run's totals, so that the writer can
    merge a group of writes into one executemany per statement. ``result`` is what the
    caller gets back."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    run_id: str | None = None
    deltas: dict[str, Any] = field(default_factory=dict)
    result: Any = None


class _Batcher:
    """A thread that serves requests in groups: whatever queued up while the last group ran
    is handled together by ``handle(group) -> results`` (one transaction, one query). Each
    caller gets its own result or exception through a Future."""

    MAX_GROUP = 512

    def __init__(self, name: str, handle: Callable[[list[Any]], list[Any]],
                 single: Callable[[Any], Any] | None = None):
        self.name = name
        self.handle = handle
        self.single = single  # when a group fails: serve each request alone, so one bad one fails alone
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.groups = 0  # groups served and requests in them (benchmarks report the ratio)
        self.requests = 0

    def submit(self, request: Any) -> Future:
        fut: Future = Future()
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self.thread.start()
            self.queue.put((request, fut))
        return fut

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
            if thread is not None and thread.is_alive():
                self.queue.put(None)
        if thread is not None:
            thread.join(timeout=30)

    IDLE_EXIT_S = 10.0  # an idle thread ends; the next request starts a new one

    def _loop(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=self.IDLE_EXIT_S)
            except queue.Empty:
                with self.lock:  # submit() checks the thread under the same lock
                    if self.queue.empty():
                        if self.thread is threading.current_thread():
                            self.thread = None
                        return
                continue
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < self.MAX_GROUP:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._serve(group)
            if stop:
                return

    def _serve(self, group: list[tuple[Any, Future]]) -> None:
        live = [(req, fut) for req, fut in group if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.handle([req for req, _ in live])
        except BaseException as exc:  # noqa: BLE001 - every caller must hear about it
            if len(live) == 1 or self.single is None:
                for _, fut in live:
                    fut.set_exception(exc)
                return
            for req, fut in live:
                try:
                    fut.set_result(self.single(req))
                except BaseException as one:  # noqa: BLE001
                    fut.set_exception(one)
            return
        self.groups += 1
        self.requests += len(live)
        for (_, fut), res in zip(live, results):
            fut.set_result(res)


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
        self.engine = self._engine(self.url, kwargs, busy_timeout_ms)
        try:
            with self._db_errors():
                migrate(self.engine)
        except StoreError:
            # A WAL database on a read-only file system cannot be opened for writing (its
            # -wal/-shm files cannot be made) but can be read: open it read-only, so that
            # `runs list` works and a write fails with "database is read-only". Without its
            # -shm file SQLite reads a WAL database only as immutable, which a read-only file
            # system is.
            if not (self.path and Path(self.path).is_file() and not os.access(Path(self.path).parent, os.W_OK)):
                raise
            self.engine.dispose()
            self.url = f"sqlite:///file:{self.path}?mode=ro&immutable=1&uri=true"
            self.engine = self._engine(self.url, kwargs, busy_timeout_ms)
            with self._db_errors():
                migrate(self.engine)
        # Async code writes through one thread that group-commits: writes that arrive while a
        # transaction is open commit together in the next one, and each caller resumes only
        # once its own write is durable. Our writes never wait on each other's locks
        # (SQLite's busy handler sleeps in steps of up to 100 ms), and one transaction per
        # group instead of per LLM call is most of the store's CPU per call. Cache lookups
        # are grouped the same way (one SELECT ... IN for a wave of calls).
        self._statements: dict[str, Any] = {}
        self._has_upsert = self.engine.dialect.name in ("sqlite", "postgresql")  # INSERT ... ON CONFLICT
        self._writer = _Batcher("tagsmith-store-writer", self.transact_many, single=self.transact)
        self._reader = _Batcher("tagsmith-cache-reader", self._cache_get_many, single=self.cache_get)

    def _engine(self, url: str, kwargs: dict[str, Any], busy_timeout_ms: int):
        try:
            engine = create_engine(url, **kwargs)
        except Exception as exc:  # bad URL, missing driver
            raise ConfigError(f"store.db: cannot use {url!r}: {exc}") from exc
        if url.startswith("sqlite"):
            path = self.path

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: sqlite3.Connection, _record) -> None:
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                if path is not None:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        return engine

    # -- sessions ---------------------------------------------------------------------
    @contextmanager
    def _db_errors(self) -> Iterator[None]:
        """SQLite's locked / read-only / full errors become one-line StoreErrors."""
        try:
            yield
        except OperationalError as exc:
            raise StoreError(describe_db_error(exc, self.url)) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._db_errors(), Session(self.engine, expire_on_commit=False) as s:
            yield s
            s.commit()

    def transact(self, op: Write | Callable[[Connection], Any]) -> Any:
        """Run one write in its own transaction (committed on success)."""
        return self.transact_many([op])[0]

    def transact_many(self, writes: list[Write | Callable[[Connection], Any]]) -> list[Any]:
        """Run the writes in ONE transaction: all are kept or none is. ``Write`` rows for
        the same prepared statement go in one executemany, and the run-total deltas are
        summed per run, so a group of N LLM calls costs a handful of statements, not 3N."""
        with self._db_errors(), self.engine.begin() as conn:
            results: list[Any] = []
            merged: dict[str, list[dict[str, Any]]] = {}
            totals: dict[str, dict[str, Any]] = {}
            for w in writes:
                if not isinstance(w, Write):
                    results.append(w(conn))
                    continue
                for name, rows in w.rows.items():
                    merged.setdefault(name, []).extend(rows)
                if w.run_id is not None:
                    t = totals.setdefault(w.run_id, dict.fromkeys(_RUN_DELTAS, 0))
                    for k in _RUN_DELTAS:
                        t[k] += w.deltas.get(k, 0)
                results.append(w.result)
            for name, rows in merged.items():
                self._execute_rows(conn, name, rows)
            if totals:
                now = utcnow()
                conn.execute(self._statement("run_totals"),
                             [{"rid": rid, "now": now, **{f"d_{k}": v for k, v in t.items()}}
                              for rid, t in totals.items()])
            return results

    def _execute_rows(self, conn: Connection, name: str, rows: list[dict[str, Any]]) -> None:
        if self._has_upsert or name not in ("llm_cache", "run_record"):
            conn.execute(self._statement(name), rows)
            return
        # dialects without INSERT ... ON CONFLICT: the same semantics by hand
        table = LLMCache.__table__ if name == "llm_cache" else RunRecord.__table__
        for r in rows:
            if name == "llm_cache":  # first answer wins
                if conn.execute(select(table.c.key).where(table.c.key == r["key"])).first() is None:
                    conn.execute(insert(table), [r])
            else:  # re-writing a key replaces its data
                conn.execute(table.delete().where((table.c.run_id == r["run_id"]) & (table.c.kind == r["kind"])
                                                  & (table.c.key == r["key"])))
                conn.execute(insert(table), [r])

    def _statement(self, name: str):
        """Prepared statements of the write path, built once per store."""
        stmt = self._statements.get(name)
        if stmt is not None:
            return stmt
        if name == "llm_call":
            stmt = insert(LLMCall.__table__)
        elif name == "llm_cache":  # first answer wins
            stmt = self._dialect_insert(LLMCache.__table__).on_conflict_do_nothing()
        elif name == "run_record":  # re-writing a key replaces its data
            ins = self._dialect_insert(RunRecord.__table__)
            stmt = ins.on_conflict_do_update(index_elements=["run_id", "kind", "key"],
                                             set_={"data_json": ins.excluded.data_json})
        elif name == "run_totals":
            c = Run.__table__.c
            stmt = (update(Run.__table__).where(c.id == bindparam("rid"))
                    .values(updated_at=bindparam("now"),
                            **{k: getattr(c, k) + bindparam(f"d_{k}") for k in _RUN_DELTAS}))
        else:
            raise KeyError(name)
        self._statements[name] = stmt
        return stmt

    def _dialect_insert(self, table):
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        return dialect_insert(table)

    def close(self) -> None:
        self._writer.stop()
        self._reader.stop()
        self.engine.dispose()

    async def run(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run a store method off the event loop. Async code must not block on SQLite on
        the loop thread: a write there can deadlock with the async checkpointer, whose
        transaction only commits when the loop gets to run again. Writes go through
        ``write`` (or ``alog_call`` / ``aput_records``) instead, which group-commit."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def write(self, op: Write | Callable[[Connection], Any]) -> Any:
        """Run a write (``Write`` rows, or ``op(connection)``) in the writer thread; returns
        once it is committed, possibly in one transaction with other concurrent writes."""
        return await asyncio.wrap_future(self._writer.submit(op))

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

    def require_run(self, run_id: str, kind: str | None = None) -> Run:
        """The run with this id (or unique id prefix); with ``kind``, it must be of that kind."""
        run = self.get_run(run_id)
        if run is None:
            raise ConfigError(f"run {run_id!r} not found in {self.path or self.url}")
        if kind is not None and run.kind != kind:
            raise ConfigError(f"run {run.id} is a {run.kind} run; this needs a {kind} run")
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

    # -- LLM log and cache ------------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        return self._cache_get_many([key])[0]

    async def acache_get(self, key: str) -> dict[str, Any] | None:
        """``cache_get`` from async code; concurrent lookups share one query."""
        return await asyncio.wrap_future(self._reader.submit(key))

    def _cache_get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        table = LLMCache.__table__
        found: dict[str, str] = {}
        uniq = list(dict.fromkeys(keys))
        with self._db_errors(), self.engine.connect() as conn:
            for i in range(0, len(uniq), 500):  # SQLite's bound-parameter limit
                q = select(table.c.key, table.c.response_json).where(table.c.key.in_(uniq[i:i + 500]))
                found.update(conn.execute(q).all())
        return [json.loads(found[k]) if k in found else None for k in keys]

    async def alog_call(self, call: LLMCall | dict[str, Any], *,
                        cache_put: tuple[str, dict[str, Any]] | None = None) -> None:
        """Write the call's log row, its cache entry and the run's totals in ONE transaction
        (through the group-committing writer), so a crash never leaves a paid call without
        its cache entry."""
        await self.write(self._log_call_write(call, cache_put))

    def _log_call_write(self, call: LLMCall | dict[str, Any], cache_put: tuple[str, dict[str, Any]] | None) -> Write:
        """``call`` is an LLMCall or a dict of its columns (the gateway's hot path)."""
        row = dict.fromkeys(_CALL_COLUMNS)
        row.update(_CALL_DEFAULTS)
        row.update(call if isinstance(call, dict) else {k: getattr(call, k) for k in _CALL_COLUMNS})
        row["created_at"] = row["created_at"] or utcnow()
        w = Write(rows={"llm_call": [row]})
        if cache_put is not None:
            key, payload = cache_put
            w.rows["llm_cache"] = [{"key": key, "model": row["model"], "response_json": json.dumps(payload),
                                    "created_at": row["created_at"]}]
        if row["run_id"]:
            hit = bool(row["cache_hit"])
            paid = not hit and (row["error"] is None or bool(row["prompt_tokens"]))
            w.run_id = row["run_id"]
            w.deltas = {"cache_hits": int(hit), "calls": int(paid), "prompt_tokens": row["prompt_tokens"],
                        "completion_tokens": row["completion_tokens"], "cost_usd": row["cost_usd"]}
        return w

    def calls(self, run_id: str | None = None) -> list[LLMCall]:
        with self.session() as s:
            q = select(LLMCall).order_by(LLMCall.id)
            if run_id:
                q = q.where(LLMCall.run_id == run_id)
            return [r[0] for r in s.exec(q).all()]

    # -- run records ------------------------------------------------------------------
    def put_records(self, run_id: str, kind: str, items: Iterable[tuple[str, Any]]) -> int:
        """Upsert (key -> data) rows for a run; re-writing a key replaces it. Returns count."""
        w = self._records_write(run_id, kind, items)
        return self.transact(w) if w.result else 0

    async def aput_records(self, run_id: str, kind: str, items: Iterable[tuple[str, Any]]) -> int:
        """``put_records`` from async code, through the group-committing writer."""
        w = self._records_write(run_id, kind, items)
        return await self.write(w) if w.result else 0

    def _records_write(self, run_id: str, kind: str, items: Iterable[tuple[str, Any]]) -> Write:
        now = utcnow()
        rows = [{"run_id": run_id, "kind": kind, "key": str(k), "data_json": json.dumps(v, default=str),
                 "created_at": now} for k, v in items]
        return Write(rows={"run_record": rows} if rows else {}, result=len(rows))

    def pending_records(self, run_id: str, kind: str, done_kind: str, limit: int) -> list[tuple[str, Any]]:
        """Up to ``limit`` records of ``kind`` (in insertion order) that have no record of
        ``done_kind`` with the same key yet: the next wave of work, without reading all."""
        t = RunRecord.__table__
        done = t.alias("done")
        q = (select(t.c.key, t.c.data_json)
             .where(t.c.run_id == run_id, t.c.kind == kind,
                    ~select(done.c.id).where(and_(done.c.run_id == run_id, done.c.kind == done_kind,
                                                  done.c.key == t.c.key)).exists())
             .order_by(t.c.id).limit(limit))
        with self.session() as s:
            return [(k, json.loads(d)) for k, d in s.execute(q).all()]

    def count_records(self, run_id: str, kind: str) -> int:
        t = RunRecord.__table__
        with self.session() as s:
            return s.execute(select(func.count()).select_from(t).where(t.c.run_id == run_id,
                                                                         t.c.kind == kind)).scalar_one()

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
