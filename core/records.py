"""Item loaders: catalog files (JSONL, CSV, TSV, Parquet, gzip), Amazon Reviews metadata
and the bundled MovieLens-100k, all turned into ``Item(id, text, fields)``.

Every bad record is reported as one line ``FILE:LINE: reason`` (Parquet: ``FILE:row N``,
N the 0-based row index); ``on_error="raise"`` stops at the first, ``"skip"`` counts it.

    >>> from pathlib import Path
    >>> _ = Path("c.jsonl").write_text('{"id": 1, "title": "Tutu", "year": 2014}\\n')
    >>> items, report = load_items("c.jsonl", template="{title} ({year})")
    >>> items[0], report.loaded
    (Item(id='1', text='Tutu (2014)', fields={'title': 'Tutu', 'year': 2014}), 1)
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import re
import string
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from tagsmith.core.errors import ConfigError, InputError

MAX_LINE_BYTES = 1 << 20  # a longer line is rejected (and drained in chunks, never held whole)
MAX_ERRORS_KEPT = 50
_FORMATS = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv", "tsv": "tsv", "parquet": "parquet",
            "amazon": "amazon"}  # amazon: JSON or Python-literal lines (never guessed from a name)

# One record from a reader: (where, record, reason). `where` is "12" (a line) or "row 3";
# reason is None for a good record, else the record is None.
_Rec = tuple[str, Any, "str | None"]


@dataclass
class Item:
    id: str
    text: str
    fields: dict  # the other fields of the record


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # "FILE:LINE: reason", the first 50
    reasons: dict[str, int] = field(default_factory=dict)  # skip counts per kind of reason

    def skip(self, message: str, reason: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)
        kind = reason_kind(reason)
        self.reasons[kind] = self.reasons.get(kind, 0) + 1


def reason_kind(reason: str) -> str:
    """A reason without its particulars, to count skips by kind:
    "duplicate id '7' (first seen at line 2)" -> "duplicate id '…'"."""
    kind = re.sub(r"\([^)]*\)", "", reason)
    kind = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", kind)
    return " ".join(re.sub(r"(?<![\w-])\d+", "N", kind).split())


class _Bad(Exception):
    """A reason to reject one record (becomes "FILE:LINE: reason")."""


# ---------------------------------------------------------------- text helpers

def _squash(s: str) -> str:
    return " ".join(s.split())


def _normalise(text: str) -> str:
    """Collapse whitespace within each line, drop blank lines: keeps "key: value" lines apart."""
    return "\n".join(line for line in map(_squash, text.splitlines()) if line)


def _display(v: Any) -> str:
    """A field value as flat text: None -> "", lists joined with ", ", dicts as "k: v; ..."."""
    if v is None or (isinstance(v, float) and v != v):  # None / NaN: no value
        return ""
    if isinstance(v, (list, tuple)):
        return ", ".join(s for s in map(_display, v) if s)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {s}" for k, s in ((k, _display(x)) for k, x in v.items()) if s)
    return _squash(str(v))


def _cut(s: str, n: int = 600) -> str:
    """Cut at a word boundary near n characters: descriptions can run to many kilobytes."""
    return s if len(s) <= n else s[:n].rsplit(" ", 1)[0] + " …"


def _dedup(values) -> list[str]:
    seen, out = set(), []
    for v in values:
        s = _display(v)
        if s and s.casefold() not in seen:
            seen.add(s.casefold())
            out.append(s)
    return out


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


# ---------------------------------------------------------------- readers

def _byte_lines(path: str) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, content without line ending, None) or (n, None, reason) for a huge line.
    Gzip is detected by its magic bytes, so a misnamed file still reads."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below, also when the generator is closed
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e.strerror or e}") from None
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        n = 0
        try:
            while chunk := f.readline(MAX_LINE_BYTES + 1):
                n += 1
                if n == 1 and chunk.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM from spreadsheet exports
                    chunk = chunk[3:]
                if not chunk.endswith(b"\n") and len(chunk) > MAX_LINE_BYTES:
                    while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                        pass  # drain the rest of the huge line without keeping it
                    yield n, None, f"line longer than {MAX_LINE_BYTES} bytes"
                    continue
                content = chunk.rstrip(b"\r\n")
                if len(content) > MAX_LINE_BYTES:
                    yield n, None, f"line longer than {MAX_LINE_BYTES} bytes"
                else:
                    yield n, content, None
        except (OSError, EOFError, zlib.error) as e:  # corrupt or truncated gzip: cannot go on
            raise InputError(f"{path}:{n + 1}: cannot read: {e}") from None


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"invalid UTF-8 at byte offset {e.start}") from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Bad(f"malformed JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise _Bad("malformed JSON: nested too deeply") from None


def _parse_json_or_literal(text: str) -> Any:
    """The 2014 Amazon dumps hold Python dict literals ({'asin': ...}): literal_eval, never eval."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        json_error = e
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        why = getattr(json_error, "msg", "nested too deeply")
        raise _Bad(f"neither JSON nor a Python literal: {why}") from None


def _jsonl_records(path: str, parse: Callable[[str], Any] = _parse_json, skip: int = 0) -> Iterator[_Rec]:
    for n, content, reason in _byte_lines(path):
        if reason is None and not content.strip():
            continue  # blank lines separate nothing in JSONL; not an error
        if skip:  # resuming: records read before are passed over without parsing
            skip -= 1
            continue
        try:
            if reason is not None:
                raise _Bad(reason)
            obj = parse(_decode(content))
            if not isinstance(obj, dict):
                raise _Bad(f"expected a JSON object per line, got {type(obj).__name__}")
            yield str(n), obj, None
        except _Bad as e:
            yield str(n), None, str(e)


def _csv_records(path: str, delimiter: str, skip: int = 0) -> Iterator[_Rec]:
    # Bad physical lines are fed to csv as empty lines and remembered, so a record spanning
    # lines (quoted newlines) still reports the exact line that was bad.
    bad: dict[int, str] = {}

    def text_lines() -> Iterator[str]:
        for n, content, reason in _byte_lines(path):
            try:
                if reason is not None:
                    raise _Bad(reason)
                yield _decode(content) + "\n"
            except _Bad as e:
                bad[n] = str(e)
                yield "\n"

    reader = csv.reader(text_lines(), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise InputError(f"{path}:1: bad header: {e}") from None
    if header is None:
        return  # empty file: the caller reports it
    if bad:
        n = min(bad)
        raise InputError(f"{path}:{n}: bad header: {bad[n]}")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or not all(header):
        raise InputError(f"{path}:1: header has {'duplicate columns ' + str(dupes) if dupes else 'an empty column name'}")
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            if skip:
                skip -= 1
                continue
            yield str(start), None, f"CSV error: {e}"
            continue
        end = reader.line_num
        hit = next((n for n in range(start, end + 1) if n in bad), None)
        if hit is None and not any(c.strip() for c in row):
            continue  # blank line
        if skip:  # resuming: records read before are passed over
            skip -= 1
            bad.pop(hit, None)
            continue
        if hit is not None:
            yield str(hit), None, bad.pop(hit)
        elif len(row) != len(header):
            yield str(start), None, f"expected {len(header)} fields, got {len(row)}"
        else:
            yield str(start), dict(zip(header, row)), None


def _parquet_records(path: str, skip: int = 0) -> Iterator[_Rec]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable Parquet file: {e}") from None
    i = 0
    for batch in pf.iter_batches(batch_size=4096):  # batches: never the whole table in memory
        if i + batch.num_rows <= skip:  # resuming: whole batches read before are passed over
            i += batch.num_rows
            continue
        for rec in batch.to_pylist()[max(0, skip - i):]:
            yield f"row {max(i, skip)}", rec, None
            i = max(i, skip) + 1


# ---------------------------------------------------------------- items from records

def _id_of(rec: dict, id_field: str) -> str:
    v = rec.get(id_field)
    if isinstance(v, (bool, dict, list)):
        raise _Bad(f"id field {id_field!r} must be a string or a number, got {_short(v)}")
    if v is None or not str(v).strip():
        raise _Bad(f"missing id field {id_field!r}")
    return str(v).strip()


def checked(path: str, records: Iterator[_Rec], on_error: str = "raise",
            report: LoadReport | None = None) -> Iterator[tuple[str, dict]]:
    """The good records of a reader as (where, record); a bad one raises
    ``InputError("FILE:WHERE: reason")`` or, with ``on_error="skip"``, is counted in
    ``report`` (per reason) and passed over. The reader is closed when this generator is."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    try:
        for where, rec, reason in records:
            if reason is None:
                yield where, rec
                continue
            msg = f"{path}:{where}: {' '.join(reason.split())}"  # always one line
            if on_error == "raise":
                raise InputError(msg)
            if report is not None:
                report.skip(msg, reason)
    finally:
        records.close()  # close the file now, also when the consumer stops early


def _collect(path: str, records: Iterator[_Rec], make: Callable[[dict], Item],
             on_error: str, limit: int | None) -> tuple[list[Item], LoadReport]:
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, not {limit}")
    report = LoadReport(path=path, loaded=0, skipped=0, errors=[])
    items: list[Item] = []
    first_seen: dict[str, str] = {}
    any_record = False

    def made() -> Iterator[_Rec]:  # records turned into items; a bad item is a bad record
        nonlocal any_record
        for where, rec, reason in records:
            any_record = True
            if reason is None:
                try:
                    item = make(rec)
                    if item.id in first_seen:
                        raise _Bad(f"duplicate id {item.id!r} (first seen at {first_seen[item.id]})")
                    first_seen[item.id] = where if where.startswith("row") else f"line {where}"
                    yield where, item, None
                    continue
                except _Bad as e:
                    reason = str(e)
            yield where, None, reason

    stream = made()
    try:
        for _, item in checked(path, stream, on_error, report):
            if limit is not None and len(items) >= limit:
                break
            items.append(item)
    finally:
        stream.close()
        records.close()
    if not any_record:
        raise InputError(f"{path}: empty file (no records)")
    report.loaded = len(items)
    return items, report


def read_records(path: str, fmt: str | None = None, skip: int = 0) -> Iterator[_Rec]:
    """Every record of a JSONL/CSV/TSV/Parquet file (JSONL and CSV/TSV may be gzipped) as
    ``(where, record, reason)``: ``where`` is a line number ("12") or a Parquet row ("row
    3"); a bad record comes with its ``reason`` and no record. Nothing is held whole: lines
    and row groups stream. ``checked`` turns the reasons into errors or skip counts.
    ``skip`` passes over the first records (good or bad) cheaply: a resumed load.

        >>> from pathlib import Path
        >>> _ = Path("r.csv").write_text("id,title\\n1,Up\\n2\\n")
        >>> list(read_records("r.csv"))
        [('2', {'id': '1', 'title': 'Up'}, None), ('3', None, 'expected 2 fields, got 1')]
    """
    kind = detect_format(str(path), fmt)
    if kind == "jsonl":
        return _jsonl_records(str(path), skip=skip)
    if kind == "amazon":
        return _jsonl_records(str(path), _parse_json_or_literal, skip=skip)
    if kind == "parquet":
        return _parquet_records(str(path), skip=skip)
    return _csv_records(str(path), "," if kind == "csv" else "\t", skip=skip)


def detect_format(path: str, fmt: str | None) -> str:
    if fmt is not None:
        if fmt.lower().lstrip(".") not in _FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; use one of: jsonl, json, csv, tsv, parquet")
        return _FORMATS[fmt.lower().lstrip(".")]
    name = path.lower().removesuffix(".gz")
    ext = name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
    if ext not in _FORMATS:
        raise ConfigError(f"{path}: cannot tell the format from the name; pass fmt= jsonl, csv, tsv or parquet")
    return _FORMATS[ext]


def item_maker(*, id_field: str = "id", text_field: str | None = None,
               template: str | None = None) -> Callable[[dict], Item]:
    """record -> Item, or ``_Bad(reason)``. Text comes from ``template`` (str.format over the
    fields; lists joined with ", ", null as ""), else ``text_field``, else every field but
    the id as "key: value" lines.

        >>> item_maker(text_field="title")({"id": 7, "title": " Up "})
        Item(id='7', text='Up', fields={'title': ' Up '})
    """
    if template is not None:
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            raise ConfigError(f"bad template {template!r}: {e}") from None
        if any(f == "" or f.isdigit() for f in names):
            raise ConfigError(f"template {template!r}: fields must be named, e.g. {{title}}")

    def make(rec: dict) -> Item:
        item_id = _id_of(rec, id_field)
        fields = {k: v for k, v in rec.items() if k != id_field}
        if template is not None:
            view = {k: _display(v) if v is None or isinstance(v, (list, tuple)) else v for k, v in rec.items()}
            try:
                text = template.format_map(view)
            except KeyError as e:
                raise _Bad(f"missing field {e.args[0]!r} (needed by the template)") from None
            except (AttributeError, IndexError, TypeError, ValueError) as e:
                raise _Bad(f"template failed: {e}") from None
        elif text_field is not None:
            if text_field not in rec:
                raise _Bad(f"missing text field {text_field!r}")
            v = rec[text_field]
            text = v if isinstance(v, str) else _display(v)  # a string keeps its line breaks
        else:
            text = "\n".join(f"{k}: {s}" for k, s in ((k, _display(v)) for k, v in fields.items()) if s)
        text = _normalise(text)
        if not text:
            raise _Bad("empty text")
        return Item(item_id, text, fields)

    return make


def items_of(records: Iterator[_Rec], make: Callable[[dict], Item]) -> Iterator[tuple[str, Item | None, str | None]]:
    """(where, item, None) or (where, None, reason) for each record: a record that does not
    make an item is a bad record."""
    try:
        for where, rec, reason in records:
            if reason is None:
                try:
                    yield where, make(rec), None
                    continue
                except _Bad as e:
                    reason = str(e)
            yield where, None, reason
    finally:
        records.close()


def load_items(path: str, *, id_field: str = "id", text_field: str | None = None,
               template: str | None = None, on_error: Literal["raise", "skip"] = "raise",
               limit: int | None = None, fmt: str | None = None) -> tuple[list[Item], LoadReport]:
    """Load items from a JSONL/CSV/TSV/Parquet file (JSONL and CSV may be gzipped).

    Text comes from `template` (str.format over the fields; lists joined with ", ", null as
    ""), else `text_field`, else every field but the id as "key: value" lines.

        >>> from pathlib import Path
        >>> _ = Path("m.csv").write_text("id,title,tags\\n7, Up ,kids\\n")
        >>> load_items("m.csv")[0][0].text
        'title: Up\\ntags: kids'
    """
    path = str(path)
    kind = detect_format(path, fmt)
    make = item_maker(id_field=id_field, text_field=text_field, template=template)
    return _collect(path, read_records(path, kind), make, on_error, limit)


# ---------------------------------------------------------------- Amazon Reviews metadata

_NOISY_DETAILS = {"best sellers rank", "customer reviews", "date first available", "asin", "upc",
                  "item model number", "is discontinued by manufacturer", "manufacturer part number"}


def _strip_html(s: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", s))


def _paragraphs(v: Any) -> str:
    """Description paragraphs (a list in 2023, a string in 2014) run together as prose."""
    return " ".join(map(_display, v)) if isinstance(v, (list, tuple)) else _display(v)


def _amazon_text(rec: dict) -> str:
    if "parent_asin" in rec:  # 2023 (Hou et al.)
        details = [f"{k}: {_display(v)}" for k, v in (rec.get("details") or {}).items()
                   if k.strip().lower() not in _NOISY_DETAILS and 0 < len(_display(v)) <= 80][:5]
        parts = [("Title", rec.get("title")), ("Store", rec.get("store")),
                 ("Main category", rec.get("main_category")), ("Categories", ", ".join(_dedup(rec.get("categories") or []))),
                 ("Features", "; ".join(_dedup(rec.get("features") or [])[:8])),
                 ("Description", _cut(_strip_html(_paragraphs(rec.get("description"))))),
                 ("Details", "; ".join(details))]
    else:  # 2014 (McAuley): categories are paths that all repeat the top-level domain
        paths = rec.get("categories") or []
        cats = _dedup(c for p in paths for c in (p if isinstance(p, (list, tuple)) else [p]))
        parts = [("Title", rec.get("title")), ("Brand", rec.get("brand")), ("Categories", ", ".join(cats)),
                 ("Description", _cut(_strip_html(_paragraphs(rec.get("description")))))]
    return _normalise("\n".join(f"{k}: {s}" for k, s in ((k, _display(v)) for k, v in parts) if s))


def load_amazon(path: str, *, on_error: Literal["raise", "skip"] = "raise",
                limit: int | None = None) -> tuple[list[Item], LoadReport]:
    """Amazon Reviews metadata, 2014 (asin; JSON or Python-literal lines) or 2023 (parent_asin),
    told apart per record; plain or gzipped.

        >>> from pathlib import Path
        >>> _ = Path("a.json").write_text("{'asin': 'B1', 'title': 'Tutu', 'categories': [['Toys', 'Dance']]}\\n")
        >>> load_amazon("a.json")[0][0].text
        'Title: Tutu\\nCategories: Toys, Dance'
    """
    path = str(path)
    return _collect(path, read_records(path, "amazon"), amazon_item, on_error, limit)


def amazon_item(rec: dict) -> Item:
    """An Amazon metadata record (2014: asin, 2023: parent_asin) -> Item, or ``_Bad``."""
    id_field = "parent_asin" if "parent_asin" in rec else "asin"
    item_id = _id_of(rec, id_field)
    text = _amazon_text(rec)
    if not text:
        raise _Bad("empty text")
    return Item(item_id, text, {k: v for k, v in rec.items() if k != id_field})
