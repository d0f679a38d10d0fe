"""The descriptor vocabulary and the edit operations the architect may apply to it.

A vocabulary is an ordered list of facets (coarse first), each with a bounded list of
descriptors; each facet and descriptor has a one-line definition. Descriptor names are
unique across the whole vocabulary, so an item's tags are unambiguous. The architect never
rewrites the vocabulary as free text: it sends edit operations that code validates and
applies, one by one, keeping the cardinality bounds.

    >>> v = Vocabulary(facets=[Facet(name="genre", definition="kind of story",
    ...     descriptors=[Descriptor(name="comedy", definition="meant to amuse")])])
    >>> diff = apply_edits(v, [Edit(op="add", name="drama", facet="genre", definition="serious")],
    ...                    Bounds(max_per_facet=5, max_total=20))
    >>> [d.name for d in diff.vocabulary.facets[0].descriptors], diff.applied[0].op
    (['comedy', 'drama'], 'add')
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

NAME_MAX = 40
# Words of the schema, not of the catalog: small models echo them as names.
RESERVED = {"name", "names", "definition", "descriptor", "descriptors", "facet", "facets", "vocabulary",
            "draftvocabulary", "item", "items", "none", "null", "unknown", "other", "misc", "n-a"}


def usable(name: str) -> bool:
    """A name a descriptor or facet may have: not empty, not a schema word, and with a
    letter in it (small models copy ids, years and counts from items: '1606', '207')."""
    return bool(name) and name not in RESERVED and re.search(r"[a-z]", name) is not None


@functools.lru_cache(maxsize=65536)  # model answers repeat the same few names
def slug(text: str) -> str:
    """Canonical descriptor name: lower case words joined by '-'.  'Film Noir ' -> 'film-noir'"""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:NAME_MAX].strip("-")


class Descriptor(BaseModel):
    name: str
    definition: str = ""


class Facet(BaseModel):
    name: str
    definition: str = ""
    descriptors: list[Descriptor] = Field(default_factory=list)


class Vocabulary(BaseModel):
    facets: list[Facet] = Field(default_factory=list)

    def names(self) -> list[str]:
        return [d.name for f in self.facets for d in f.descriptors]

    def facet_of(self) -> dict[str, str]:
        return {d.name: f.name for f in self.facets for d in f.descriptors}

    def facet(self, name: str) -> Facet | None:
        return next((f for f in self.facets if f.name == name), None)

    def size(self) -> int:
        return sum(len(f.descriptors) for f in self.facets)

    def render(self, usage: dict[str, int] | None = None, definitions: bool = True) -> str:
        """Compact text for prompts and `vocab show`: one facet a line, its descriptors below."""
        lines = []
        for f in self.facets:
            lines.append(f"{f.name}: {f.definition}" if definitions and f.definition else f.name)
            for d in f.descriptors:
                count = f" [{usage.get(d.name, 0)}]" if usage is not None else ""
                desc = f": {d.definition}" if definitions and d.definition else ""
                lines.append(f"  - {d.name}{count}{desc}")
        return "\n".join(lines)


@dataclass
class Bounds:
    max_facets: int = 6
    max_per_facet: int = 12
    max_total: int = 48


class Edit(BaseModel):
    """One architect operation. Fields used per op:
    add: name, facet, definition | add_facet: name, definition | remove: name |
    rename: name -> new_name (definition optional) | merge: sources -> name (definition) |
    split: name -> into [{name, definition}] | move: name -> facet."""

    op: Literal["add", "add_facet", "remove", "rename", "merge", "split", "move"]
    name: str = ""
    facet: str = ""
    definition: str = ""
    new_name: str = ""
    sources: list[str] = Field(default_factory=list)
    into: list[Descriptor] = Field(default_factory=list)
    reason: str = ""


@dataclass
class EditResult:
    vocabulary: Vocabulary
    applied: list[Edit] = field(default_factory=list)
    rejected: list[tuple[Edit, str]] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)  # old name -> surviving name

    def summary(self) -> dict:
        return {"applied": [e.model_dump(exclude_defaults=True) for e in self.applied],
                "rejected": [{**e.model_dump(exclude_defaults=True), "why": why} for e, why in self.rejected],
                "renames": self.renames}


class EditError(ValueError):
    pass


def _find(v: Vocabulary, name: str) -> tuple[Facet, Descriptor]:
    for f in v.facets:
        for d in f.descriptors:
            if d.name == name:
                return f, d
    raise EditError(f"no descriptor named {name!r}")


def _check_new(v: Vocabulary, name: str, bounds: Bounds, facet: Facet, adding: int = 1,
               freed: int = 0) -> None:
    if not usable(name):
        raise EditError(f"{name!r} is not a usable name")
    if name in v.names() or any(f.name == name for f in v.facets):
        raise EditError(f"{name!r} already exists")
    if len(facet.descriptors) + adding - freed > bounds.max_per_facet:
        raise EditError(f"facet {facet.name!r} would exceed {bounds.max_per_facet} descriptors")
    if v.size() + adding - freed > bounds.max_total:
        raise EditError(f"vocabulary would exceed {bounds.max_total} descriptors")


def _apply_one(v: Vocabulary, e: Edit, bounds: Bounds, renames: dict[str, str]) -> None:
    if e.op == "add_facet":
        name = slug(e.name)
        if not usable(name) or any(f.name == name for f in v.facets) or name in v.names():
            raise EditError(f"facet {name!r} exists or is not a usable name")
        if len(v.facets) >= bounds.max_facets:
            raise EditError(f"vocabulary would exceed {bounds.max_facets} facets")
        v.facets.append(Facet(name=name, definition=e.definition.strip()))
    elif e.op == "add":
        facet = v.facet(slug(e.facet))
        if facet is None:
            raise EditError(f"no facet named {e.facet!r}")
        name = slug(e.name)
        _check_new(v, name, bounds, facet)
        facet.descriptors.append(Descriptor(name=name, definition=e.definition.strip()))
    elif e.op == "remove":
        facet, d = _find(v, slug(e.name))
        facet.descriptors.remove(d)
    elif e.op == "rename":
        facet, d = _find(v, slug(e.name))
        new = slug(e.new_name)
        if new != d.name:
            _check_new(v, new, bounds, facet, adding=1, freed=1)
            renames[d.name] = new
            d.name = new
        if e.definition.strip():
            d.definition = e.definition.strip()
    elif e.op == "merge":
        sources = [slug(s) for s in e.sources]
        if len(set(sources)) < 2:
            raise EditError("merge needs at least two distinct sources")
        found = [_find(v, s) for s in sources]
        target = slug(e.name) or sources[0]
        facet = found[0][0]
        keep = next((d for f, d in found if d.name == target), None)
        for f, d in found:
            if d is not keep:
                f.descriptors.remove(d)
                renames[d.name] = target
        if keep is None:
            if target in v.names():
                raise EditError(f"merge target {target!r} already exists outside the sources")
            facet.descriptors.append(Descriptor(name=target, definition=e.definition.strip() or found[0][1].definition))
        elif e.definition.strip():
            keep.definition = e.definition.strip()
    elif e.op == "split":
        facet, d = _find(v, slug(e.name))
        parts = [Descriptor(name=slug(p.name), definition=p.definition.strip()) for p in e.into]
        if len(parts) < 2:
            raise EditError("split needs at least two parts")
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise EditError("split parts must have distinct names")
        for p in parts:
            if p.name != d.name:
                _check_new(v, p.name, bounds, facet, adding=len(parts), freed=1)
        idx = facet.descriptors.index(d)
        facet.descriptors[idx:idx + 1] = parts
    elif e.op == "move":
        facet, d = _find(v, slug(e.name))
        target = v.facet(slug(e.facet))
        if target is None:
            raise EditError(f"no facet named {e.facet!r}")
        if target is facet:
            raise EditError("already in that facet")
        if len(target.descriptors) >= bounds.max_per_facet:
            raise EditError(f"facet {target.name!r} is full")
        facet.descriptors.remove(d)
        target.descriptors.append(d)


def apply_edits(vocab: Vocabulary, edits: list[Edit], bounds: Bounds) -> EditResult:
    """Validate and apply edits in order; an invalid edit is rejected with its reason and the
    others still apply (each edit is all-or-nothing). The input vocabulary is not changed."""
    result = EditResult(vocabulary=vocab.model_copy(deep=True))
    for e in edits:
        trial = result.vocabulary.model_copy(deep=True)
        renames = dict(result.renames)
        try:
            _apply_one(trial, e, bounds, renames)
        except EditError as exc:
            result.rejected.append((e, str(exc)))
            continue
        result.vocabulary, result.renames = trial, renames
        result.applied.append(e)
    result.vocabulary.facets = [f for f in result.vocabulary.facets if f.descriptors or f.name]
    return result


def normalise(vocab: Vocabulary, bounds: Bounds) -> Vocabulary:
    """Slug names, drop duplicates (first wins) and enforce the bounds on a drafted vocabulary."""
    seen: set[str] = set()
    facets = []
    for f in vocab.facets:
        fname = slug(f.name)
        if not usable(fname) or fname in seen or len(facets) >= bounds.max_facets:
            continue
        seen.add(fname)
        descs = []
        for d in f.descriptors:
            name = slug(d.name)
            if not usable(name) or name in seen or len(descs) >= bounds.max_per_facet:
                continue
            if sum(len(x.descriptors) for x in facets) + len(descs) >= bounds.max_total:
                break
            seen.add(name)
            descs.append(Descriptor(name=name, definition=" ".join(d.definition.split())[:200]))
        if descs:
            facets.append(Facet(name=fname, definition=" ".join(f.definition.split())[:200], descriptors=descs))
    return Vocabulary(facets=facets)


def diff(old: Vocabulary, new: Vocabulary) -> dict[str, list[str]]:
    """Names added and removed between two versions (after renames, merges and splits)."""
    a, b = set(old.names()), set(new.names())
    moved = sorted(n for n in a & b if old.facet_of()[n] != new.facet_of()[n])
    return {"added": sorted(b - a), "removed": sorted(a - b), "moved": moved}


def change_rate(old: Vocabulary, new: Vocabulary) -> float:
    """Share of descriptors touched: (added + removed + moved) / size of the old vocabulary."""
    d = diff(old, new)
    return (len(d["added"]) + len(d["removed"]) + len(d["moved"])) / max(1, old.size())


SEPARATORS = ("|", ";", ",")  # how list values are written in CSV cells: Comedy|Drama|Romance


class FieldValues:
    """Counts the values of a metadata field over a stream of items, for a seed facet.

    A list counts each value; a string that holds a list (``Comedy|Drama``) is split on the
    separator given, or else on the one of ``| ; ,`` that most distinct values contain
    (detected at the end, when every value has been seen). Memory is bounded: past
    ``max_distinct`` distinct raw values, values seen once are dropped (the seed facet
    wants the frequent ones).

        >>> fv = FieldValues("genres")
        >>> for v in ("Comedy|Drama", "Drama", "Comedy|Romance", ["Drama", "Horror"]):
        ...     fv.add(v)
        >>> fv.separator(), fv.counts().most_common(2)
        ('|', [('drama', 3), ('comedy', 2)])
    """

    def __init__(self, field: str, separator: str | None = None, max_distinct: int = 200_000):
        self.field, self.given, self.max_distinct = field, separator, max_distinct
        self.raw: Counter = Counter()  # raw string values
        self.listed: Counter = Counter()  # values that came as list elements

    def add(self, value: object) -> None:
        if isinstance(value, (list, tuple)):
            self.listed.update(str(v) for v in value if v not in (None, ""))
        elif value not in (None, ""):
            self.raw[str(value)] += 1
            if len(self.raw) > self.max_distinct:
                self.raw = Counter({k: c for k, c in self.raw.items() if c > 1})

    def separator(self) -> str | None:
        if self.given is not None or not self.raw:
            return self.given
        share = {sep: sum(1 for v in self.raw if sep in v) / len(self.raw) for sep in SEPARATORS}
        best = max(SEPARATORS, key=lambda sep: share[sep])
        return best if share[best] >= 0.2 else None

    def counts(self) -> Counter:
        sep = self.separator()
        out: Counter = Counter()
        for value, n in list(self.raw.items()) + list(self.listed.items()):
            for part in (value.split(sep) if sep else [value]):
                name = slug(part)
                if name and name != "unknown":
                    out[name] += n
        return out

    def facet(self, max_values: int, min_count: int = 2) -> Facet:
        top = [(v, n) for v, n in self.counts().most_common(max_values) if n >= min_count]
        field = self.field
        return Facet(name=slug(field), definition=f"the item's {field.replace('_', ' ')}",
                     descriptors=[Descriptor(name=v, definition=f"{field.replace('_', ' ')} is {v.replace('-', ' ')}")
                                  for v, _ in top])


def seed_facet_from_field(items: list[dict], field: str, max_values: int, min_count: int = 2,
                          separator: str | None = None) -> Facet:
    """A facet from the most frequent values of a metadata field (``FieldValues``).

    [{"fields": {"genres": ["Comedy", "Drama"]}}, ...] -> Facet(name="genres", descriptors=[comedy, drama])"""
    values = FieldValues(field, separator)
    for it in items:
        values.add((it.get("fields") or {}).get(field))
    return values.facet(max_values, min_count)
