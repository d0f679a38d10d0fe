"""What a batch stage is, for the engines that run it (pipelines/batch.py in this process,
pipelines/batch_ray.py on Ray Data): the stage protocol, a batch's result, and how bad
input records are counted or stop a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tagsmith.core.errors import InputError
from tagsmith.core.records import MAX_ERRORS_KEPT, reason_kind
from tagsmith.store.db import Write

Record = tuple[str, dict[str, Any]]  # (key, data)


@dataclass
class BatchResult:
    """What a stage made of one batch: output records of the items it handled (``done``),
    output records of items it could not handle (``failed``, kept for export and retried
    once), and counters to add to the run's (``stats``)."""

    done: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


class Stage(Protocol):
    """The per-run part of a batch pipeline. ``input_kind`` records are the work (loaded
    from the source, keyed by the record's id); each keeps its result once processed."""

    input_kind: str
    batch_size: int

    async def process(self, batch: list[Record]) -> BatchResult: ...

    def failure(self, key: str, reason: str) -> dict[str, Any]:
        """The output record of an item whose whole batch failed (the model kept failing)."""
        ...


class Skips:
    """Bad records met while reading a source: with ``on_error: raise`` the first one stops
    the run (FILE:LINE: reason); with ``skip`` they are counted per kind of reason, and the
    first ``MAX_ERRORS_KEPT`` lines of a run are kept (numbered after ``already``)."""

    def __init__(self, on_error: str, already: int = 0):
        self.on_error, self.already = on_error, already
        self.stats: dict[str, float] = {}
        self.errors: list[tuple[int, str]] = []

    def add(self, where: str, reason: str) -> None:
        msg = f"{where}: {' '.join(reason.split())}"
        if self.on_error == "raise":
            raise InputError(msg)
        kind = f"skipped: {reason_kind(reason)}"
        self.stats["skipped"] = self.stats.get("skipped", 0) + 1
        self.stats[kind] = self.stats.get(kind, 0) + 1
        n = self.already + int(self.stats["skipped"]) - 1
        if n < MAX_ERRORS_KEPT:
            self.errors.append((n, msg))

    def write(self, store, run_id: str) -> Write:
        """The counters and kept lines as one write (for a reader that stores no chunk)."""
        rows = store._records_write(run_id, "load_error", [(f"{n:03d}", e) for n, e in self.errors]).rows
        return Write(rows=rows, run_id=run_id, stats=self.stats)
