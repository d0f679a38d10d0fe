"""Rows out: JSONL, CSV or Parquet, streamed (a run's export never sits in memory whole).

    >>> import io, contextlib
    >>> buf = io.StringIO()
    >>> with contextlib.redirect_stdout(buf):
    ...     n = write_rows(iter([{"id": "1", "tags": ["a", "b"]}]), "csv", "-")
    >>> n, buf.getvalue().splitlines()
    (1, ['id,tags', '1,"[""a"", ""b""]"'])
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tagsmith.core.errors import ConfigError

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_ROW_GROUP = 10_000


@contextmanager
def _text_out(output: str) -> Iterator[IO[str]]:
    if output == "-":
        yield sys.stdout
        return
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{output}.part")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        yield f
    tmp.replace(output)  # a reader never sees half a file


def write_rows(rows: Iterable[dict[str, Any]], fmt: str, output: str) -> int:
    """Write rows to a path or '-' (stdout); returns how many. CSV: the first row's keys are
    the columns, nested values become JSON. Parquet: row groups of 10,000."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        return _parquet(rows, output)
    n = 0
    with _text_out(output) as f:
        if fmt == "jsonl":
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                n += 1
            return n
        writer: csv.DictWriter | None = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            extra = [k for k in row if k not in writer.fieldnames]
            if extra:
                raise ConfigError(f"{output}: row {n + 1} has columns the first row lacks: {', '.join(extra)}")
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                             for k, v in row.items()})
            n += 1
    return n


def _parquet(rows: Iterable[dict[str, Any]], output: str) -> int:
    if output == "-":
        raise ConfigError("--format parquet needs a file (-o PATH), not stdout")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("--format parquet needs pyarrow: pip install pyarrow") from exc
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{output}.part"
    writer = None
    schema = None
    n = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal writer, schema
        if not batch:
            return
        if schema is None:
            inferred = pa.Table.from_pylist(batch).schema
            # a column empty in the first group would be typed null: text is the safe guess
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in inferred])
            writer = pq.ParquetWriter(tmp, schema)
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        batch.clear()

    try:
        for row in rows:
            batch.append(row)
            n += 1
            if len(batch) >= PARQUET_ROW_GROUP:
                flush()
        flush()
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows: an empty file with no columns
        pq.write_table(pa.table({}), tmp)
    Path(tmp).replace(output)
    return n
