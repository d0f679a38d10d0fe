"""Tag features: item id -> ordered (coarse-to-fine) descriptor sequence.

Sources:

- a tagsmith assignment run in the store (``from_run``): the run's ``tag`` records; their
  ``semantic_id`` (first descriptor per facet) is kept for generative retrieval;
- a file (``from_file``): JSONL or CSV with ``id`` and ``descriptors`` (a JSON list or "a|b|c");
- baselines: MovieLens genres, random tags with the same cardinality as another source,
  TF-IDF keywords of the MovieLens titles.

Items without tags get an empty sequence (``TagSet.get``).

    >>> t = TagSet("demo", {"1": ["comedy", "family"], "2": ["drama"]})
    >>> t.get("1"), t.get("3"), t.vocabulary()
    (['comedy', 'family'], [], ['comedy', 'drama', 'family'])
    >>> random_like(t, seed=0).counts() == t.counts()   # same per-item counts, same descriptors
    True
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tagsmith.core.datasets import movielens_table
from tagsmith.core.errors import ConfigError, InputError
from tagsmith.core.records import checked, detect_format, read_records

TFIDF_TOP = 3      # keywords per title
TFIDF_MIN_DF = 2   # a word in one title only cannot link two items: it is an item ID, not a tag

# English function words plus title debris ("the" of "Usual Suspects, The", roman numerals of sequels)
STOP_WORDS = frozenset("""
a an and are as at be but by for from has have he her his i in is it its la le les de del der die das
el of on or our she so than that the their them then there these they this to too was we were what
when where which who why will with you your my me not no do does did all any can just into out over
up down off about after before again ii iii iv v vi vii 2 3 4 5 s t
""".split())


@dataclass
class TagSet:
    """Descriptors per item id (ordered coarse to fine), and optionally a semantic ID per
    item (one slot per facet, '' when the facet has none) as a tagsmith run provides."""

    name: str
    descriptors: dict[str, list[str]]
    semantic_ids: dict[str, list[str]] | None = None
    info: dict = field(default_factory=dict)

    def get(self, item_id: str) -> list[str]:
        return self.descriptors.get(item_id, [])

    def vocabulary(self) -> list[str]:
        return sorted({d for ds in self.descriptors.values() for d in ds})

    def counts(self) -> dict[str, int]:
        """Descriptors per item (the cardinality random_like preserves)."""
        return {k: len(v) for k, v in self.descriptors.items()}

    def stats(self, item_ids: list[str] | None = None) -> dict:
        """Coverage and size over ``item_ids`` (default: the tagged items)."""
        ids = item_ids if item_ids is not None else list(self.descriptors)
        seqs = [self.get(i) for i in ids]
        used = Counter(d for s in seqs for d in set(s))
        n = max(1, len(ids))
        return {"items": len(ids), "coverage": round(sum(1 for s in seqs if s) / n, 4),
                "distinct_descriptors": len(used), "descriptors_per_item": round(sum(map(len, seqs)) / n, 3),
                "distinct_sequences": len({tuple(s) for s in seqs if s})}


def _clean(seq) -> list[str]:
    """Strip, drop empties and repeats, keep order."""
    out: list[str] = []
    for d in seq:
        d = str(d).strip()
        if d and d not in out:
            out.append(d)
    return out


# ------------------------------------------------------------------------------ sources

def from_run(db: str, run_id: str) -> TagSet:
    """The tags of a tagsmith assignment run (the results of its items)."""
    from tagsmith.store.db import Store

    if "://" not in db and not Path(db).expanduser().is_file():  # do not create an empty store by accident
        raise ConfigError(f"--tags {run_id}: not a built-in source ({', '.join(BUILTIN)}), not a file, and "
                          f"there is no store at {db} to find a run in")
    store = Store(db)
    try:
        run = store.require_run(run_id)
        # results on the run's items; runs made before results moved there kept "tag" records
        records = store.results(run.id, "item") or store.records(run.id, "tag")
    finally:
        store.close()
    if not records:
        raise ConfigError(f"run {run.id} ({run.kind}) has no item tags; pass the run of `tagsmith tag`")
    desc = {str(k): _clean(v.get("descriptors") or []) for k, v in records.items()}
    sids = {str(k): [str(x or "") for x in v.get("semantic_id") or []] for k, v in records.items()}
    return TagSet(f"run:{run.id}", desc, semantic_ids=sids if any(any(s) for s in sids.values()) else None,
                  info={"source": "run", "run": run.id, "db": db})


def _parse_descriptors(value, at: str) -> list[str]:
    if isinstance(value, list):
        return _clean(value)
    if value is None:
        return []
    if not isinstance(value, str):
        raise InputError(f"{at}: descriptors must be a list or a string, not {type(value).__name__}")
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{at}: descriptors look like JSON but do not parse: {e.msg}") from None
        if not isinstance(parsed, list):
            raise InputError(f"{at}: descriptors must be a JSON list")
        return _clean(parsed)
    return _clean(text.split("|")) if text else []


def from_file(path: str | Path) -> TagSet:
    """JSONL ({"id": .., "descriptors": [..]}) or CSV/TSV/Parquet (id, descriptors as a list,
    JSON or a|b|c), read by the project's one reader (core.records): same FILE:LINE errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        kind = detect_format(str(p), None)
    except ConfigError:
        raise ConfigError(f"{p}: tags file must be .jsonl, .csv, .tsv or .parquet") from None
    desc: dict[str, list[str]] = {}
    sids: dict[str, list[str]] = {}
    for where, rec in checked(str(p), read_records(str(p), kind)):
        at = f"{p}:{where}"
        if kind in ("csv", "tsv") and not ({"id", "descriptors"} <= set(rec)):
            raise InputError(f"{p}:1: header needs 'id' and 'descriptors' columns")
        if rec.get("id") is None or not str(rec["id"]).strip():
            raise InputError(f"{at}: expected a record with an 'id'")
        if "descriptors" not in rec:
            raise InputError(f"{at}: no 'descriptors' field")
        desc[str(rec["id"]).strip()] = _parse_descriptors(rec["descriptors"], at)
        if isinstance(rec.get("semantic_id"), list):
            sids[str(rec["id"]).strip()] = [str(x or "") for x in rec["semantic_id"]]
    if not desc:
        raise InputError(f"{p}: no tagged items")
    return TagSet(f"file:{p.name}", desc, semantic_ids=sids if len(sids) == len(desc) else None,
                  info={"source": "file", "path": str(p)})


def movielens_genres() -> TagSet:
    """MovieLens-100k genres (the item file's ``class`` field), in the file's order;
    'unknown' is a placeholder, not a genre.  '1' -> ['Animation', "Children's", 'Comedy']"""
    rows = list(movielens_table("item"))
    desc = {r["item_id"]: _clean(g for g in r.get("class", "").split() if g.lower() != "unknown") for r in rows}
    return TagSet("genres", desc, info={"source": "movielens genres"})


def _words(title: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", title.lower())
            if w not in STOP_WORDS and len(w) > 1 and not w.isdigit()]


def tfidf_keywords(titles: dict[str, str], top: int = TFIDF_TOP, min_df: int = TFIDF_MIN_DF) -> TagSet:
    """The ``top`` title words of each item by TF-IDF over the catalogue, stop-words and
    words in fewer than ``min_df`` titles removed; ties keep the title's word order.

        {"1": "Star Wars", "2": "Star Trek", "3": "Trek Home"} -> {"1": ["star"], "2": ["star", "trek"], "3": ["trek"]}
    """
    words = {k: _words(t) for k, t in titles.items()}
    df = Counter(w for ws in words.values() for w in set(ws))
    n = len(titles)
    out = {}
    for k, ws in words.items():
        tf = Counter(ws)
        cand = [w for w in dict.fromkeys(ws) if df[w] >= min_df]
        # stable sort: among equal scores the earlier word in the title wins
        cand.sort(key=lambda w: -tf[w] * math.log(n / df[w]))
        out[k] = cand[:top]
    return TagSet("tfidf", out, info={"source": "tf-idf title keywords", "top": top, "min_df": min_df})


def movielens_tfidf(top: int = TFIDF_TOP, min_df: int = TFIDF_MIN_DF) -> TagSet:
    rows = list(movielens_table("item"))
    titles = {r["item_id"]: r["movie_title"] if r["movie_title"] != "unkonwn" else "" for r in rows}
    return tfidf_keywords(titles, top=top, min_df=min_df)


def random_like(base: TagSet, seed: int = 0, name: str | None = None) -> TagSet:
    """Random tags with the same cardinality as ``base``: every item keeps its number of
    descriptors and every descriptor its number of items (so the same distinct count), but
    which item gets which is shuffled. A shuffle that puts a descriptor twice on one item
    is repaired by swapping with a random other slot."""
    rng = random.Random(seed)
    keys = sorted(base.descriptors)
    slots = [(k, j) for k in keys for j in range(len(base.descriptors[k]))]
    pool = [base.descriptors[k][j] for k, j in slots]
    rng.shuffle(pool)
    owner = [k for k, _ in slots]
    for _ in range(3):  # a few repair sweeps; with many descriptors one is almost always enough
        seen: dict[str, set[str]] = {}
        bad = []
        for s, (k, d) in enumerate(zip(owner, pool)):
            if d in seen.setdefault(k, set()):
                bad.append(s)
            seen[k].add(d)
        if not bad:
            break
        for s in bad:
            for _ in range(50):
                t = rng.randrange(len(pool))
                ks, kt = owner[s], owner[t]
                if pool[t] not in seen[ks] and pool[s] not in seen[kt]:
                    seen[ks].discard(pool[s]); seen[kt].discard(pool[t])  # noqa: E702
                    pool[s], pool[t] = pool[t], pool[s]
                    seen[ks].add(pool[s]); seen[kt].add(pool[t])  # noqa: E702
                    break
    desc: dict[str, list[str]] = {k: [] for k in keys}
    for k, d in zip(owner, pool):
        if d not in desc[k]:  # an unrepairable duplicate is dropped (never happens with real vocabularies)
            desc[k].append(d)
    return TagSet(name or f"random({base.name})", desc, info={"source": "random", "like": base.name, "seed": seed})


# ------------------------------------------------------------------------------ by name

BUILTIN = ("genres", "random", "tfidf", "none")


def resolve(spec: str, seed: int = 0, db: str | None = None) -> TagSet:
    """A tag source by name: 'genres', 'tfidf', 'none' (no tags), 'random' (random like
    the genres), 'random:SPEC' (random like SPEC), a JSONL/CSV file, or a run id in ``db``."""
    if spec == "genres":
        return movielens_genres()
    if spec == "tfidf":
        return movielens_tfidf()
    if spec == "none":
        return TagSet("none", {})
    if spec == "random" or spec.startswith("random:"):
        base = resolve(spec.split(":", 1)[1] if ":" in spec else "genres", seed=seed, db=db)
        return random_like(base, seed=seed, name=spec)
    if Path(spec).is_file():
        return from_file(spec)
    if Path(spec).suffix.lower() in (".jsonl", ".csv", ".tsv", ".json"):
        raise InputError(f"{spec}: file not found")
    if db is None:
        raise ConfigError(f"--tags {spec}: not a built-in source ({', '.join(BUILTIN)}), not a file, and no store")
    return from_run(db, spec)


def seed_dependent(spec: str) -> bool:
    """Whether the source differs across seeds (random tags are redrawn per seed)."""
    return spec == "random" or spec.startswith("random:")


def encode(tags: TagSet, item_ids: list[str]) -> tuple[list[str], list[list[int]]]:
    """Descriptor vocabulary (sorted) and each item's descriptor indices, in the item order
    of a split.  items ['2', '1'] with {'1': ['b', 'a']} -> (['a', 'b'], [[], [1, 0]])"""
    vocab = sorted({d for i in item_ids for d in tags.get(i)})
    index = {d: n for n, d in enumerate(vocab)}
    return vocab, [[index[d] for d in tags.get(i)] for i in item_ids]
