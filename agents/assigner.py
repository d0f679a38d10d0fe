"""The assigner: tags several items per call with in-vocabulary descriptors, facet by facet.

The schema sent to the model lists each facet's descriptors as an enum (grammar-constrained
decoding on the local model; JSON-schema enums elsewhere), while the validator is lenient,
so a provider that ignores enums still gets its out-of-vocabulary answers repaired — by the
nearest descriptor in embedding space, else by re-asking — and counted.

    tags, stats = await assign(gateway, vocab, batch, domain="movies", nearest=nearest_fn)
    tags["1"].descriptors   -> ['comedy', 'family', 'lighthearted']   (coarse facet first)
    tags["1"].semantic_id   -> ['comedy', 'family', 'lighthearted']   (first per facet, '' if none)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from tagsmith.agents.common import render_items
from tagsmith.agents.gateway import Gateway
from tagsmith.prompts import render
from tagsmith.core.vocabulary import Vocabulary, slug

PROMPTS = ("assigner_system", "assigner")

# names -> [(nearest in-vocabulary name, cosine)], one per input name
Nearest = Callable[[list[str]], list[tuple[str, float]]]


class RawBatch(BaseModel):
    """Lenient validator: items keyed by id, or a list of objects. Code checks ids and names."""

    items: dict[str, Any] | list[Any] = Field(default_factory=list)


@dataclass
class ItemTags:
    id: str
    by_facet: dict[str, list[str]]
    descriptors: list[str]
    semantic_id: list[str]
    oov: int = 0
    repaired: int = 0
    status: str = "ok"  # ok | empty | failed

    def to_record(self) -> dict:
        return {"id": self.id, "by_facet": {f: list(v) for f, v in self.by_facet.items()},
                "descriptors": list(self.descriptors), "semantic_id": list(self.semantic_id),
                "oov": self.oov, "repaired": self.repaired, "status": self.status}


@dataclass
class BatchStats:
    calls: int = 0
    answers: int = 0  # descriptor names the model gave, in or out of vocabulary
    oov: int = 0
    repaired: int = 0
    reasked_items: int = 0
    missing_items: int = 0
    raw_outputs: list[str] = field(default_factory=list)


def wire_schema(vocab: Vocabulary, item_ids: list[str], per_facet: int, require_first: bool = True) -> dict:
    """Items keyed by id, so a constrained decoder writes each item exactly once, in order
    (a list of {"id": enum} objects let a small model repeat one id and skip another);
    per-facet enums. With ``require_first`` the coarsest facet needs one descriptor, so
    every item gets the first element of its semantic ID."""
    props: dict[str, Any] = {}
    for n, f in enumerate(vocab.facets):
        props[f.name] = {"type": "array", "maxItems": per_facet,
                         "items": {"type": "string", "enum": [d.name for d in f.descriptors]}}
        if n == 0 and require_first:
            props[f.name]["minItems"] = 1
    item = {"type": "object", "properties": props, "required": list(props)}
    # the enums are stated once and referenced per item: a batch of 16 items used to repeat
    # the whole vocabulary 16 times in the prompt (and in the decoder's grammar)
    ref = {"$ref": "#/$defs/tags"}
    return {"type": "object", "required": ["items"], "$defs": {"tags": item}, "properties": {"items": {
        "type": "object", "properties": {i: ref for i in item_ids}, "required": list(item_ids)}}}


def entries_of(items: Any) -> list[dict[str, Any]]:
    """Both reply shapes as a list of entries: {"7": {...}} (keyed) or [{"id": "7", ...}]."""
    if isinstance(items, dict):
        return [{"id": k, **v} if isinstance(v, dict) else {"id": k} for k, v in items.items()]
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def resolve(entries: list[dict[str, Any]], vocab: Vocabulary, item_ids: list[str], per_facet: int,
            nearest: Nearest | None, repair_threshold: float, stats: BatchStats) -> dict[str, ItemTags]:
    """Turn raw model entries into in-vocabulary tags; unknown ids are ignored, the first
    entry per id wins, OOV names are repaired by embedding when close enough."""
    facet_of = vocab.facet_of()
    facet_names = {f.name for f in vocab.facets}
    wanted = set(item_ids)
    out: dict[str, ItemTags] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        item_id = str(entry.get("id", entry.get("item_id", "")))
        if item_id not in wanted or item_id in out:
            continue
        chosen: dict[str, list[str]] = {f.name: [] for f in vocab.facets}
        values: list[tuple[str, str]] = []  # (facet hint, name)
        for key, val in entry.items():
            if key in ("id", "item_id"):
                continue
            names = val if isinstance(val, list) else [val]
            hint = slug(key) if slug(key) in facet_names else ""
            values += [(hint, str(n)) for n in names if isinstance(n, (str, int, float)) and str(n).strip()]
        stats.answers += len(values)
        oov_names = [name for _, name in values if slug(name) not in facet_of]
        # repair in place: a repaired name keeps the rank the model gave it
        repairs: dict[str, str] = {}
        if oov_names and nearest is not None:
            for name, (match, score) in zip(oov_names, nearest(oov_names)):
                if score >= repair_threshold and match in facet_of:
                    repairs[name] = match
        repaired = 0
        for _, name in values:
            s = slug(name)
            if s not in facet_of:
                if name not in repairs:
                    continue
                s = repairs[name]
                repaired += 1
            if s not in chosen[facet_of[s]]:
                chosen[facet_of[s]].append(s)
        chosen = {f: v[:per_facet] for f, v in chosen.items()}
        ordered = [n for f in vocab.facets for n in chosen[f.name]]
        out[item_id] = ItemTags(id=item_id, by_facet=chosen, descriptors=ordered,
                                semantic_id=[chosen[f.name][0] if chosen[f.name] else "" for f in vocab.facets],
                                oov=len(oov_names), repaired=repaired, status="ok" if ordered else "empty")
        stats.oov += len(oov_names)
        stats.repaired += repaired
    return out


async def _ask(gateway: Gateway, vocab: Vocabulary, items: list[dict], domain: str, per_facet: int,
               node: str, max_tokens: int, stats: BatchStats, sample: int = 0) -> list[dict[str, Any]]:
    ids = [str(i["id"]) for i in items]
    prompt = render("assigner", vocabulary=vocab.render(), items=render_items(items))
    result = await gateway.call(prompt, system=render("assigner_system", domain=domain), schema=RawBatch,
                                wire_schema=wire_schema(vocab, ids, per_facet), node=node,
                                max_tokens=max_tokens, sample=sample)
    stats.calls += 0 if result.cached else 1
    stats.raw_outputs.append(result.text)
    return entries_of(result.parsed.items)


async def assign(gateway: Gateway, vocab: Vocabulary, items: list[dict], *, domain: str, per_facet: int = 2,
                 nearest: Nearest | None = None, repair_threshold: float = 0.6, node: str = "assign",
                 max_tokens_per_item: int = 60) -> tuple[dict[str, ItemTags], BatchStats]:
    """Tag a batch. Items the model skipped, or whose every answer was out of vocabulary
    and unrepairable, are asked again once, on their own."""
    stats = BatchStats()
    ids = [str(i["id"]) for i in items]
    budget = 40 + max_tokens_per_item * len(items)
    entries = await _ask(gateway, vocab, items, domain, per_facet, node, budget, stats)
    tags = resolve(entries, vocab, ids, per_facet, nearest, repair_threshold, stats)
    retry = [i for i in items if str(i["id"]) not in tags
             or (tags[str(i["id"])].status == "empty" and tags[str(i["id"])].oov > 0)]
    stats.missing_items = sum(1 for i in items if str(i["id"]) not in tags)
    for item in retry:  # re-ask one item at a time: a small model keeps a single item straight
        stats.reasked_items += 1
        again = await _ask(gateway, vocab, [item], domain, per_facet, node, 40 + max_tokens_per_item, stats,
                           sample=1)
        fixed = resolve(again, vocab, [str(item["id"])], per_facet, nearest, repair_threshold, stats)
        if str(item["id"]) in fixed and (fixed[str(item["id"])].descriptors or str(item["id"]) not in tags):
            prev = tags.get(str(item["id"]))
            new = fixed[str(item["id"])]
            if prev is not None:
                new.oov += prev.oov
                new.repaired += prev.repaired
            tags[str(item["id"])] = new
    for item_id in ids:
        if item_id not in tags:
            tags[item_id] = ItemTags(id=item_id, by_facet={f.name: [] for f in vocab.facets}, descriptors=[],
                                     semantic_id=["" for _ in vocab.facets], status="failed")
    return tags, stats
