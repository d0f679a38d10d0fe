"""The store: engine factory (SQLite in WAL mode by default, any SQLAlchemy URL), run
registry, LLM call log, response cache and idempotent run records.

    >>> s = Store("sqlite://")            # in memory
    >>> run = s.create_run("probe", config={}, model="fake/x")
    >>> s.get_run(run.id).status
    'running'
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import operator
import os
import queue
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, create_engine, event, func, insert, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from tagsmith.core.errors import ConfigError, TagsmithError
from tagsmith.store.migrations import migrate
from tagsmith.store.models import LLMCache, LLMCall, Run, RunBlob, RunRecord, RunStat, utcnow


class StoreError(TagsmithError):
    """The database cannot be used (locked, read-only, disk full); nothing was corrupted."""


def to_url(db: str) -> str:
    """A bare path becomes a SQLite URL; a PostgreSQL URL gets the psycopg (3) driver;
    other URLs pass through.

        >>> to_url("x.db"), to_url("postgresql://u@h:5432/d"), to_url("postgres://h/d")
        ('sqlite:///x.db', 'postgresql+psycopg://u@h:5432/d', 'postgresql+psycopg://h/d')
    """
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser()}"
    scheme, rest = db.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if scheme.startswith("postgresql+") and scheme != "postgresql+psycopg":
        raise ConfigError(f"store.db: {scheme}:// is not supported; use postgresql:// (tagsmith uses psycopg 3)")
    return db


def safe_url(url: str) -> str:
    """The URL as it may be shown: no password.  'postgresql://u:pw@h/d' -> 'postgresql://u:***@h/d'"""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}{':***' if ':' in creds else ''}@{host}"


def conninfo(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the libpq connection string psycopg takes."""
    return "postgresql://" + url.split("://", 1)[1]


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or None (not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path.startswith("file:"):  # sqlite:///file:PATH?mode=ro&uri=true
        path = path[len("file:"):].split("?", 1)[0]
    return path or None


def _dumps(value: Any) -> str:
    """JSON for the store's hot paths (records, results, cache entries): orjson, several
    times faster than json; NaN becomes null; unknown types become their str()."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_loads = orjson.loads


_DRIVING: set[str] = set()  # the leases this process holds for runs it is driving now


def lease_owner() -> str:
    """Who this process is, as a lease holder: host:pid:token (one token per drive)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def lease_done(owner: str) -> None:
    """This process stopped driving under ``owner`` (whether or not the release reached
    the database): its old lease is stale for a new drive in this process."""
    _DRIVING.discard(owner)


def _gone(holder: str) -> bool:
    """A holder that was a process of this machine which no longer exists, or a drive of
    this very process that has ended."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return holder not in _DRIVING
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def describe_db_error(exc: Exception, url: str) -> str:
    msg = str(getattr(exc, "orig", exc)).lower()
    where = sqlite_path(url) or safe_url(url)
    if url.startswith("postgresql") and ("connection" in msg or "could not" in msg or "server" in msg
                                         or "password authentication" in msg or "does not exist" in msg):
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return f"{where}: cannot use the PostgreSQL server: {first} (is it running, and is the URL right?)"
    if "readonly" in msg or "read-only" in msg:
        return f"{where}: database is read-only"
    if "locked" in msg or "busy" in msg:
        return f"{where}: database is locked by another process (try again, or raise store.busy_timeout_ms)"
    if "disk" in msg and ("full" in msg or "i/o" in msg):
        return f"{where}: disk full or I/O error; nothing written in this transaction was kept"
    if "unable to open" in msg:
        return f"{where}: cannot open database file"
    return f"{where}: database error: {str(getattr(exc, 'orig', exc)).splitlines()[0]}"


SUPPORTED = ("sqlite", "postgresql")
# The writer waits this long after the first write of a group for the others in flight: a
# transaction's fixed cost (begin, commit, the WAL's bookkeeping) is then shared by more
# calls, at the price of 2 ms on a write that waited for an LLM call of seconds ...
WRITE_GATHER_S = 0.002  # ... only while the last group was shared: one write at a time never waits  # INSERT ... ON CONFLICT, and a LangGraph checkpointer
_RUN_DELTAS = ("cache_hits", "calls", "prompt_tokens", "completion_tokens", "cost_usd")
_CALL_COLUMNS = tuple(c.name for c in LLMCall.__table__.columns if c.name != "id")
_CALL_DEFAULTS = {"node": "", "model": "", "cache_key": "", "messages_json": "[]", "prompt_tokens": 0,
                  "completion_tokens": 0, "cost_usd": 0.0, "latency_s": 0.0, "cache_hit": False, "attempts": 1,
                  "reasks": 0}


@dataclass
class Write:
    """A write as parameter rows for the store's prepared statements (``llm_call``,
    ``llm_cache``, ``run_record``, ``record_done``) plus deltas to a run's totals and
    counters, so that the writer can merge a group of writes into one executemany per
    statement. ``result`` is what the caller gets back."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    run_id: str | None = None
    deltas: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)  # run_stat counters to add to (run_id's)
    result: Any = None


class _Batcher:
    """A thread that serves requests in groups: whatever queued up while the last group ran
    is handled together by ``handle(group) -> results`` (one transaction, one query). Each
    caller gets its own result or exception through a Future."""

    MAX_GROUP = 512

    def __init__(self, name: str, handle: Callable[[list[Any]], list[Any]],
                 single: Callable[[Any], Any] | None = None, gather_s: float = 0.0):
        self.name = name
        self.gather_s = gather_s
        self.busy = False  # the last group held more than one request: writes come in parallel
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
            if self.gather_s and self.busy:  # the last group was shared: let those in flight join
                time.sleep(self.gather_s)
            while len(group) < self.MAX_GROUP:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self.busy = len(group) > 1
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
        backend = self.url.split(":", 1)[0].split("+", 1)[0]
        if backend not in SUPPORTED:
            raise ConfigError(f"store.db: {backend} is not supported; use a SQLite path or a "
                              f"postgresql:// URL (the store and LangGraph's checkpoints live in it)")
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
            if self.path is None:  # in-memory: one shared connection
                kwargs["poolclass"] = StaticPool
            elif not Path(self.path).parent.exists():
                raise ConfigError(f"{self.path}: directory does not exist")
        else:
            if importlib.util.find_spec("psycopg") is None:
                raise ConfigError("store.db: a PostgreSQL store needs the postgres extra: "
                                  "pip install 'tagsmith[postgres]' (psycopg, psycopg-pool, langgraph-checkpoint-postgres)")
            # a lock wait or a dead connection fails within the busy timeout, like SQLite's
            kwargs["connect_args"] = {"connect_timeout": 10,
                                      "options": f"-c lock_timeout={int(busy_timeout_ms)}"}
            kwargs["pool_pre_ping"] = True
        self.label = self.path or safe_url(self.url)
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
        self._compiled: dict[tuple[str, tuple[str, ...]], tuple] = {}
        self._writer = _Batcher("tagsmith-store-writer", self.transact_many, single=self.transact,
                                gather_s=WRITE_GATHER_S)
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
        driver_error = getattr(self.engine.dialect.dbapi, "OperationalError", OperationalError)
        try:
            yield
        except (OperationalError, driver_error) as exc:  # the hot write path uses the driver's cursor
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
            stats: dict[tuple[str, str], float] = {}
            for w in writes:
                if not isinstance(w, Write):
                    results.append(w(conn))
                    continue
                for name, rows in w.rows.items():
                    merged.setdefault(name, []).extend(rows)
                if w.run_id is not None and w.deltas:
                    t = totals.setdefault(w.run_id, dict.fromkeys(_RUN_DELTAS, 0))
                    for k in _RUN_DELTAS:
                        t[k] += w.deltas.get(k, 0)
                for name, value in w.stats.items():
                    stats[(w.run_id, name)] = stats.get((w.run_id, name), 0.0) + value
                results.append(w.result)
            for name in ("llm_call", "llm_cache", "run_record", "record_upsert", "record_done"):  # records, then states
                if name in merged:
                    self._execute_prepared(conn, name, merged.pop(name))
            for name, rows in merged.items():
                self._execute_prepared(conn, name, rows)
            if stats:
                self._execute_prepared(conn, "run_stat",
                                       [{"run_id": r, "name": n, "value": v} for (r, n), v in stats.items()])
            if totals:
                now = utcnow()
                self._execute_prepared(conn, "run_totals", [{"rid": rid, "now": now, **{f"d_{k}": v for k, v in t.items()}}
                                                            for rid, t in totals.items()])
            return results

    def _execute_prepared(self, conn: Connection, name: str, rows: list[dict[str, Any]]) -> None:
        """One executemany of a write-path statement, compiled once to the driver's SQL and
        run on the driver's cursor inside the transaction: a group of LLM calls and batch
        results skips SQLAlchemy's per-statement and per-row work, which cost more CPU than
        the database's own."""
        keys = tuple(rows[0])
        key = (name, keys)
        prepared = self._compiled.get(key)
        if prepared is None:
            prepared = self._compiled[key] = self._prepare(name, keys)
        sql, getter, defaults, converters = prepared
        if defaults:
            rows = [{**defaults, **r} for r in rows]
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            if getter is None:  # named parameters (psycopg): the rows as they are
                cursor.executemany(sql, rows)
            elif not converters:
                cursor.executemany(sql, [getter(r) for r in rows])
            else:
                params = []
                for r in rows:
                    t = list(getter(r))
                    for i, process in converters:
                        t[i] = process(t[i])
                    params.append(t)
                cursor.executemany(sql, params)
        finally:
            cursor.close()

    def _prepare(self, name: str, keys: tuple[str, ...]):
        stmt = self._statement(name)
        compiled = stmt.compile(dialect=self.engine.dialect, column_keys=list(keys))
        # parameters the rows leave out: literals of the statement (attempts + 1) and columns
        # with a default, filled as SQLAlchemy would
        table = getattr(stmt, "table", None)
        defaults: dict[str, Any] = {}
        for p, bind in compiled.binds.items():
            if p in keys:
                continue
            col = table.c.get(p) if table is not None else None
            if col is not None and col.default is not None and col.default.is_scalar:
                defaults[p] = col.default.arg
            elif bind.value is not None:
                defaults[p] = bind.value
        order = compiled.positiontup
        if order is None:
            return compiled.string, None, defaults, ()
        getter = (lambda r, k=order[0]: (r[k],)) if len(order) == 1 else operator.itemgetter(*order)
        dialect = self.engine.dialect
        converters = []  # what SQLAlchemy would do to a value on the way in (datetimes to text)
        for i, p in enumerate(order):
            process = compiled.binds[p].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                converters.append((i, process))
        return compiled.string, getter, defaults, tuple(converters)

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
        elif name == "record_done":  # a work record done or failed, with its result; one more try counted
            c = RunRecord.__table__.c
            stmt = (update(RunRecord.__table__)
                    .where(c.run_id == bindparam("r"), c.kind == bindparam("k"), c.key == bindparam("b_key"))
                    .values(state=bindparam("b_state"), attempts=c.attempts + 1, result_json=bindparam("b_result")))
        elif name == "record_upsert":  # a work record with its result, made or updated
            ins = self._dialect_insert(RunRecord.__table__)
            c = RunRecord.__table__.c
            stmt = ins.on_conflict_do_update(index_elements=["run_id", "kind", "key"], set_={
                "state": ins.excluded.state, "result_json": ins.excluded.result_json, "attempts": c.attempts + 1})
        elif name == "run_stat":  # counters add up
            ins = self._dialect_insert(RunStat.__table__)
            stmt = ins.on_conflict_do_update(index_elements=["run_id", "name"],
                                             set_={"value": RunStat.__table__.c.value + ins.excluded.value})
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
            raise ConfigError(f"run {run_id!r} not found in {self.label}")
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

    # -- leases: one process drives a run at a time --------------------------------------
    def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> str | None:
        """Take the run's lease for ``owner``: free, expired, already ours, or held by a
        process of this machine that is gone. Returns None when taken, else who holds it
        and until when (one line)."""
        now = utcnow()
        t = Run.__table__
        with self._db_errors(), self.engine.begin() as conn:
            q = select(t.c.lease_owner, t.c.lease_until).where(t.c.id == run_id)
            if self.engine.dialect.name == "postgresql":
                q = q.with_for_update()  # SQLite: the compare-and-set below does the same
            row = conn.execute(q).first()
            if row is None:
                raise ConfigError(f"run {run_id!r} not found in {self.label}")
            holder, until = row
            if until is not None and until.tzinfo is None:
                until = until.replace(tzinfo=timezone.utc)
            live = holder is not None and holder != owner and until is not None and until > now
            if live and not _gone(holder):
                return f"{holder} (lease until {until:%Y-%m-%d %H:%M:%S} UTC)"
            # compare-and-set: a second process taking it at the same moment finds it changed
            guard = t.c.lease_owner.is_(None) if holder is None else t.c.lease_owner == holder
            taken = conn.execute(update(t).where(t.c.id == run_id, guard).values(
                lease_owner=owner, lease_until=now + timedelta(seconds=ttl_s))).rowcount
            if taken != 1:
                return "another process (it took the lease just now)"
            _DRIVING.add(owner)
            return None

    def lease_holder(self, run_id: str) -> str | None:
        """Who drives the run now (a live lease), or None."""
        run = self.require_run(run_id)
        until = run.lease_until
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=timezone.utc)
        if run.lease_owner is None or until is None or until <= utcnow() or _gone(run.lease_owner):
            return None
        return f"{run.lease_owner} (lease until {until:%Y-%m-%d %H:%M:%S} UTC)"

    def renew_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        """Extend our lease; False if it is no longer ours."""
        t = Run.__table__
        with self._db_errors(), self.engine.begin() as conn:
            return conn.execute(update(t).where(t.c.id == run_id, t.c.lease_owner == owner).values(
                lease_until=utcnow() + timedelta(seconds=ttl_s))).rowcount == 1

    def release_lease(self, run_id: str, owner: str) -> None:
        t = Run.__table__
        with self._db_errors(), self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == run_id, t.c.lease_owner == owner).values(
                lease_owner=None, lease_until=None))

    # -- LLM log and cache ------------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        return self._cache_get_many([key])[0]

    async def acache_get(self, key: str) -> dict[str, Any] | None:
        """``cache_get`` from async code; concurrent lookups share one query."""
        return await asyncio.wrap_future(self._reader.submit(key))

    def _cache_get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        found: dict[str, str] = {}
        uniq = list(dict.fromkeys(keys))
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        with self._db_errors(), self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # a hot path: the driver's cursor
            try:
                for i in range(0, len(uniq), 500):  # SQLite's bound-parameter limit
                    part = uniq[i:i + 500]
                    cursor.execute(f"SELECT key, response_json FROM llm_cache WHERE key IN "
                                   f"({', '.join([mark] * len(part))})", part)
                    found.update(cursor.fetchall())
            finally:
                cursor.close()
        return [_loads(found[k]) if k in found else None for k in keys]

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
            w.rows["llm_cache"] = [{"key": key, "model": row["model"], "response_json": _dumps(payload),
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
        rows = [{"run_id": run_id, "kind": kind, "key": str(k), "data_json": _dumps(v),
                 "created_at": now} for k, v in items]
        return Write(rows={"run_record": rows} if rows else {}, result=len(rows))

    # -- work records of a batch stage -----------------------------------------------
    def load_work(self, run_id: str, kind: str, rows: list[tuple[str, Any]], *, cursor: dict[str, Any],
                  stats: dict[str, float] | None = None, errors: list[tuple[int, str]] | None = None,
                  duplicates: str = "skip") -> list[str]:
        """Insert a chunk of work records (state pending) with the loader's cursor, counters
        and first error lines in ONE transaction: a crash keeps both or neither, so a resumed
        load starts exactly after the last chunk kept. Returns the keys the run already had
        (duplicates: not inserted; with ``duplicates="raise"`` nothing is written then)."""
        t = RunRecord.__table__
        now = utcnow()
        with self._db_errors(), self.engine.begin() as conn:
            keys = [k for k, _ in rows]
            existing: set[str] = set()
            for i in range(0, len(keys), 500):  # the unique (run_id, kind, key) index answers
                existing.update(conn.execute(select(t.c.key).where(
                    t.c.run_id == run_id, t.c.kind == kind, t.c.key.in_(keys[i:i + 500]))).scalars())
            if existing and duplicates == "raise":
                return sorted(existing)
            fresh = [{"run_id": run_id, "kind": kind, "key": k, "data_json": _dumps(d),
                      "created_at": now, "state": "pending", "attempts": 0} for k, d in rows if k not in existing]
            if fresh:
                conn.execute(insert(t), fresh)
            marks = [{"run_id": run_id, "kind": "cursor", "key": kind, "data_json": _dumps(cursor),
                      "created_at": now}]
            marks += [{"run_id": run_id, "kind": "load_error", "key": f"{n:03d}", "data_json": _dumps(e),
                       "created_at": now} for n, e in errors or []]
            conn.execute(self._statement("run_record"), marks)
            if stats:
                conn.execute(self._statement("run_stat"),
                             [{"run_id": run_id, "name": k, "value": v} for k, v in stats.items()])
        return sorted(existing)

    def cursor(self, run_id: str, kind: str) -> dict[str, Any] | None:
        """The loader's cursor for ``kind`` (None before the first chunk)."""
        t = RunRecord.__table__
        with self._db_errors(), self.engine.connect() as conn:
            data = conn.execute(select(t.c.data_json).where(t.c.run_id == run_id, t.c.kind == "cursor",
                                                            t.c.key == kind)).scalar()
        return None if data is None else _loads(data)

    @staticmethod
    def next_work_query(run_id: str, kind: str, limit: int, state: str = "pending", after: int = 0):
        t = RunRecord.__table__
        return (select(t.c.id, t.c.key, t.c.data_json)
                .where(t.c.run_id == run_id, t.c.kind == kind, t.c.state == state, t.c.id > after)
                .order_by(t.c.id).limit(limit))

    def next_work(self, run_id: str, kind: str, limit: int, state: str = "pending",
                  after: int = 0) -> list[tuple[int, str, Any]]:
        """Up to ``limit`` work records in ``state`` after row id ``after``, in load order, as
        (row id, key, data): an indexed range scan of (run_id, kind, state, id), whose cost
        does not grow with what is done."""
        q = self.next_work_query(run_id, kind, limit, state, after)
        with self._db_errors(), self.engine.connect() as conn:
            return [(i, k, _loads(d)) for i, k, d in conn.execute(q).all()]

    def count_work(self, run_id: str, kind: str, state: str, cap: int | None = None) -> int:
        """How many work records are in ``state`` (counting stops at ``cap``: O(cap))."""
        t = RunRecord.__table__
        inner = select(t.c.id).where(t.c.run_id == run_id, t.c.kind == kind, t.c.state == state)
        if cap is not None:
            inner = inner.limit(cap)
        with self._db_errors(), self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one()

    def work_write(self, run_id: str, kind: str, done: list[tuple[str, Any]], failed: list[tuple[str, Any]],
                   stats: dict[str, float]) -> Write:
        """The outcome of one batch as ONE write: each work record's new state and result,
        and the counters (group-committed with the calls that paid for them)."""
        rows = ([{"r": run_id, "k": kind, "b_key": k, "b_state": "done", "b_result": _dumps(d)}
                 for k, d in done]
                + [{"r": run_id, "k": kind, "b_key": k, "b_state": "failed", "b_result": _dumps(d)}
                   for k, d in failed])
        return Write(rows={"record_done": rows} if rows else {}, run_id=run_id, stats=stats, result=len(rows))

    def work_upsert(self, run_id: str, kind: str, done: list[tuple[str, Any, Any]],
                    failed: list[tuple[str, Any, Any]], stats: dict[str, float]) -> Write:
        """``work_write`` for records the store has not seen yet (an engine that reads the
        input itself): (key, data, result) rows become work records with their result."""
        now = utcnow()
        rows = ([{"run_id": run_id, "kind": kind, "key": k, "data_json": _dumps(d), "created_at": now,
                  "state": "done", "attempts": 1, "result_json": _dumps(r)} for k, d, r in done]
                + [{"run_id": run_id, "kind": kind, "key": k, "data_json": _dumps(d), "created_at": now,
                    "state": "failed", "attempts": 1, "result_json": _dumps(r)} for k, d, r in failed])
        return Write(rows={"record_upsert": rows} if rows else {}, run_id=run_id, stats=stats, result=len(rows))

    def done_keys(self, run_id: str, kind: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` the run has done (the unique (run_id, kind, key) index answers)."""
        t = RunRecord.__table__
        found: set[str] = set()
        with self._db_errors(), self.engine.connect() as conn:
            for i in range(0, len(keys), 500):
                found.update(conn.execute(select(t.c.key).where(
                    t.c.run_id == run_id, t.c.kind == kind, t.c.state == "done", t.c.key.in_(keys[i:i + 500]))).scalars())
        return found

    def retry_failed(self, run_id: str, kind: str, max_attempts: int) -> int:
        """Failed work records tried fewer than ``max_attempts`` times go back to pending."""
        t = RunRecord.__table__
        with self._db_errors(), self.engine.begin() as conn:
            return conn.execute(update(t).where(t.c.run_id == run_id, t.c.kind == kind, t.c.state == "failed",
                                                t.c.attempts < max_attempts).values(state="pending")).rowcount

    def stats(self, run_id: str) -> dict[str, float]:
        t = RunStat.__table__
        with self._db_errors(), self.engine.connect() as conn:
            return dict(conn.execute(select(t.c.name, t.c.value).where(t.c.run_id == run_id)).all())

    async def add_stats(self, run_id: str, stats: dict[str, float]) -> None:
        await self.write(Write(run_id=run_id, stats=stats))

    def records_after(self, run_id: str, kind: str, after: int, limit: int) -> list[tuple[int, str, Any]]:
        """Up to ``limit`` records of ``kind`` whose row id is above ``after``, in load
        order, as (row id, key, data): a chunk of a pass that keeps its place by row id."""
        t = RunRecord.__table__
        q = (select(t.c.id, t.c.key, t.c.data_json).where(t.c.run_id == run_id, t.c.kind == kind, t.c.id > after)
             .order_by(t.c.id).limit(limit))
        with self._db_errors(), self.engine.connect() as conn:
            return [(i, k, _loads(d)) for i, k, d in conn.execute(q).all()]

    def iter_records(self, run_id: str, kind: str, chunk: int = 5000) -> Iterator[tuple[str, Any]]:
        """Every record of ``kind`` in load order, read ``chunk`` rows at a time (keyset
        pagination on id): a million records never sit in memory at once."""
        last = 0
        while rows := self.records_after(run_id, kind, last, chunk):
            for _, key, data in rows:
                yield key, data
            last = rows[-1][0]

    def put_chunk(self, run_id: str, kind: str, rows: list[tuple[str, Any]], *, cursor: tuple[str, Any],
                  blob: tuple[str, bytes] | None = None) -> None:
        """A pass's chunk of records, its cursor and (optionally) a blob in ONE transaction:
        a resumed pass starts exactly after the last chunk kept."""
        w = self._records_write(run_id, kind, rows)
        w.rows.setdefault("run_record", []).extend(self._records_write(run_id, "cursor", [cursor]).rows["run_record"])
        writes: list[Write | Callable[[Connection], Any]] = [w]
        if blob is not None:
            writes.append(lambda conn: self._put_blob(conn, run_id, *blob))
        self.transact_many(writes)

    def iter_results(self, run_id: str, kind: str, chunk: int = 5000) -> Iterator[tuple[str, Any, Any]]:
        """(key, data, result) of every work record of ``kind`` in load order (result None
        while it is pending), ``chunk`` rows at a time: exports and metrics stream."""
        t = RunRecord.__table__
        last = 0
        while True:
            q = (select(t.c.id, t.c.key, t.c.data_json, t.c.result_json)
                 .where(t.c.run_id == run_id, t.c.kind == kind, t.c.id > last).order_by(t.c.id).limit(chunk))
            with self._db_errors(), self.engine.connect() as conn:
                rows = conn.execute(q).all()
            for _, key, data, result in rows:
                yield key, _loads(data), None if result is None else _loads(result)
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    def results(self, run_id: str, kind: str) -> dict[str, Any]:
        """key -> result of the work records that have one (a small run's, at once)."""
        return {k: r for k, _, r in self.iter_results(run_id, kind) if r is not None}

    def iter_joined(self, run_id: str, kind: str, other: str, chunk: int = 5000) -> Iterator[tuple[str, Any, Any]]:
        """(key, record of ``kind``, record of ``other`` with the same key or None), in the
        load order of ``kind``, ``chunk`` rows at a time."""
        a, b = RunRecord.__table__.alias("a"), RunRecord.__table__.alias("b")
        last = 0
        while True:
            q = (select(a.c.id, a.c.key, a.c.data_json, b.c.data_json)
                 .select_from(a.outerjoin(b, (b.c.run_id == a.c.run_id) & (b.c.kind == other) & (b.c.key == a.c.key)))
                 .where(a.c.run_id == run_id, a.c.kind == kind, a.c.id > last).order_by(a.c.id).limit(chunk))
            with self._db_errors(), self.engine.connect() as conn:
                rows = conn.execute(q).all()
            for _, key, data, joined in rows:
                yield key, _loads(data), None if joined is None else _loads(joined)
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    def put_blob(self, run_id: str, name: str, data: bytes) -> None:
        self.transact(lambda conn: self._put_blob(conn, run_id, name, data))

    @staticmethod
    def _put_blob(conn: Connection, run_id: str, name: str, data: bytes) -> None:
        t = RunBlob.__table__
        conn.execute(t.delete().where(t.c.run_id == run_id, t.c.name == name))
        conn.execute(insert(t), [{"run_id": run_id, "name": name, "data": data, "created_at": utcnow()}])

    def get_blob(self, run_id: str, name: str) -> bytes | None:
        t = RunBlob.__table__
        with self._db_errors(), self.engine.connect() as conn:
            return conn.execute(select(t.c.data).where(t.c.run_id == run_id, t.c.name == name)).scalar()

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
            return {k: _loads(d) for k, d in rows}

    def record_keys(self, run_id: str, kind: str) -> set[str]:
        with self.session() as s:
            return {k for (k,) in s.execute(select(RunRecord.key).where(
                RunRecord.run_id == run_id, RunRecord.kind == kind)).all()}
