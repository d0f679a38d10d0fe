"""Shared pieces of the SIGKILL tests: kill a child run once its progress in the database
reaches a threshold, and check that no LLM call was paid twice."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time


def kill_when(db_path: str, sql: str, threshold: int, child: subprocess.Popen, timeout: float = 90) -> int:
    """Poll ``sql`` (a COUNT) until it reaches ``threshold``, then SIGKILL the child.
    Returns the last count seen, so the caller can check where the kill landed."""
    deadline = time.time() + timeout
    seen = 0
    while time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
        try:  # mode=rw: never create the database before the child does
            con = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True)
            seen = con.execute(sql).fetchone()[0]
            con.close()
        except sqlite3.OperationalError:  # not there yet, no tables yet, or busy
            continue
        if seen >= threshold:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    return seen


def paid_calls_per_key(db_path: str) -> dict[str, int]:
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT cache_key, COUNT(*) FROM llm_call WHERE cache_hit = 0 AND error IS NULL "
                       "GROUP BY cache_key").fetchall()
    con.close()
    return dict(rows)


def no_call_paid_twice(db_path: str) -> int:
    """Every answered request was paid for once; returns how many distinct requests were paid."""
    paid = paid_calls_per_key(db_path)
    assert paid and max(paid.values()) == 1, "an LLM call was paid twice"
    return len(paid)
