"""LangGraph's checkpointer in the store's database, with the run id as thread id, and the
pruning that keeps a run's checkpoints from growing with its length.

LangGraph keeps every checkpoint of a thread (one per superstep) and the pending writes of
each. tagsmith needs only the latest to resume, so batch waves prune the older ones as the
run goes and the runtime keeps only the last one of a finished run.

    >>> import asyncio
    >>> async def demo():
    ...     async with open_checkpointer(":memory:", busy_timeout_ms=1000) as cp:
    ...         return await cp.prune("no-such-run", keep=1)
    >>> asyncio.run(demo())
    0
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Checkpoints:
    """A checkpointer (``saver``, handed to LangGraph) and what tagsmith does with it."""

    saver: Any

    async def prune(self, run_id: str, keep: int) -> int:
        """Drop all but the ``keep`` newest checkpoints of a run, with their pending writes;
        returns how many checkpoints went."""
        conn = self.saver.conn
        newest = ("SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' "
                  "ORDER BY checkpoint_id DESC LIMIT ?")
        async with self.saver.lock:
            await conn.execute(f"DELETE FROM writes WHERE thread_id = ? AND checkpoint_id NOT IN ({newest})",
                               (run_id, run_id, keep))
            cur = await conn.execute(f"DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id NOT IN ({newest})",
                                     (run_id, run_id, keep))
            await conn.commit()
            return cur.rowcount or 0

    async def size(self, run_id: str) -> int:
        """Bytes of a run's checkpoints and pending writes (what the benchmarks report)."""
        conn = self.saver.conn
        async with self.saver.lock:
            a = await (await conn.execute("SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM "
                                          "checkpoints WHERE thread_id = ?", (run_id,))).fetchone()
            b = await (await conn.execute("SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes WHERE thread_id = ?",
                                          (run_id,))).fetchone()
        return int(a[0]) + int(b[0])


class PostgresCheckpoints(Checkpoints):
    """The same over LangGraph's PostgreSQL saver (tables checkpoints, checkpoint_blobs,
    checkpoint_writes in the store's database)."""

    async def prune(self, run_id: str, keep: int) -> int:
        # LangGraph's own pruning keeps the latest checkpoint with what it references
        # (blobs are shared between checkpoints); that is all a resume reads.
        await self.saver.aprune([run_id], strategy="keep_latest")
        return 0

    async def size(self, run_id: str) -> int:
        async with self.saver._cursor() as cur:
            await cur.execute(
                "SELECT (SELECT COALESCE(SUM(pg_column_size(checkpoint) + pg_column_size(metadata)), 0) "
                "FROM checkpoints WHERE thread_id = %s) + (SELECT COALESCE(SUM(pg_column_size(blob)), 0) "
                "FROM checkpoint_blobs WHERE thread_id = %s) + (SELECT COALESCE(SUM(pg_column_size(blob)), 0) "
                "FROM checkpoint_writes WHERE thread_id = %s) AS n", (run_id, run_id, run_id))
            row = await cur.fetchone()
        return int(row["n"])


@asynccontextmanager
async def open_checkpointer(target: str, *, busy_timeout_ms: int) -> AsyncIterator[Checkpoints]:
    """LangGraph's async saver: on a PostgreSQL URL (the store's database), or on a SQLite
    file (the store's own file by default) in WAL mode with the store's busy timeout."""
    if target.startswith("postgresql"):
        from tagsmith.store.db import conninfo

        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError as exc:
            from tagsmith.core.errors import ConfigError

            raise ConfigError("checkpoints on PostgreSQL need the postgres extra: pip install 'tagsmith[postgres]'") from exc
        async with AsyncPostgresSaver.from_conn_string(conninfo(target)) as saver:
            async with saver._cursor() as cur:  # several processes may set up at once
                await cur.execute("SELECT pg_advisory_lock(%s)", (CHECKPOINT_SETUP_LOCK,))
            try:
                await saver.setup()
            finally:
                async with saver._cursor() as cur:
                    await cur.execute("SELECT pg_advisory_unlock(%s)", (CHECKPOINT_SETUP_LOCK,))
            yield PostgresCheckpoints(saver)
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(target) as saver:
        await saver.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if target != ":memory:":
            await saver.conn.execute("PRAGMA journal_mode=WAL")
        await saver.setup()
        yield Checkpoints(saver)


CHECKPOINT_SETUP_LOCK = 0x7461_6763  # "tagc": LangGraph's table set-up, one process at a time
