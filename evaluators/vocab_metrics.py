"""Vocabulary and tagging metrics: coverage, size per level, descriptors per item, usage
entropy, redundancy, annotator agreement, OOV and repair rates.

    >>> from tagsmith.core.vocabulary import Descriptor, Facet
    >>> vocab = Vocabulary(facets=[Facet(name="genre", descriptors=[Descriptor(name="comedy"),
    ...                                                            Descriptor(name="drama")])])
    >>> m = tag_metrics(vocab, {"1": ["comedy"], "2": []})
    >>> m["coverage"], m["descriptors_per_item"]
    (0.5, 0.5)
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from tagsmith.core.vocabulary import Vocabulary, slug


def usage_counts(vocab: Vocabulary, tags: dict[str, list[str]]) -> dict[str, int]:
    counts = Counter(n for names in tags.values() for n in set(names))
    return {n: counts.get(n, 0) for n in vocab.names()}


def entropy(counts: list[int]) -> tuple[float, float]:
    """Shannon entropy (bits) of a usage distribution, and the same normalised to [0, 1]
    by log2 of the number of descriptors (1 = every descriptor used equally)."""
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return 0.0, 0.0
    h = -sum(c / total * math.log2(c / total) for c in counts if c)
    return h, h / math.log2(len(counts))


def agreement(annotations: dict[str, list[list[str]]]) -> float | None:
    """Mean pairwise Jaccard between annotators on items that more than one annotator tagged
    (batches overlap on purpose). None when no item was tagged twice."""
    scores = []
    for sets in annotations.values():
        for a, b in combinations([set(s) for s in sets], 2):
            union = a | b
            scores.append(len(a & b) / len(union) if union else 1.0)
    return sum(scores) / len(scores) if scores else None


class TagMetrics:
    """Tagging metrics accumulated one item at a time (a million items never sit in memory):
    coverage (overall and per facet), descriptors per item, usage entropy, unused
    descriptors, and redundancy: pairs of descriptors that (nearly) always co-occur carry
    one signal, not two (item-set Jaccard from co-occurrence counts).

        >>> from tagsmith.core.vocabulary import Descriptor, Facet
        >>> vocab = Vocabulary(facets=[Facet(name="genre", descriptors=[Descriptor(name="comedy"),
        ...                                                            Descriptor(name="drama")])])
        >>> m = TagMetrics(vocab)
        >>> for names in (["comedy"], ["comedy", "drama"], []):
        ...     m.add(names)
        >>> r = m.result()
        >>> r["coverage"], r["descriptors_per_item"], r["usage_entropy_norm"] < 1
        (0.6666666666666666, 1.0, True)
    """

    def __init__(self, vocab: Vocabulary, min_support: int = 3, threshold: float = 0.8):
        self.vocab = vocab
        self.facet_of = vocab.facet_of()
        self.min_support, self.threshold = min_support, threshold
        self.n = self.covered = self.assigned = 0
        self.usage: Counter = Counter()
        self.facets: Counter = Counter()
        self.pairs: Counter = Counter()

    def add(self, names: list[str]) -> None:
        distinct = sorted(set(names))
        self.n += 1
        self.assigned += len(names)
        self.covered += 1 if distinct else 0
        self.usage.update(distinct)
        self.facets.update({self.facet_of[d] for d in distinct if d in self.facet_of})
        self.pairs.update(combinations(distinct, 2))

    def redundancy(self) -> dict:
        used = sorted(d for d, c in self.usage.items() if c >= self.min_support)
        ok = set(used)
        pairs = sorted(((inter / (self.usage[a] + self.usage[b] - inter), a, b)
                        for (a, b), inter in self.pairs.items() if a in ok and b in ok), reverse=True)
        n_pairs = len(used) * (len(used) - 1) // 2
        high = [p for p in pairs if p[0] >= self.threshold]
        return {"redundant_pair_share": len(high) / n_pairs if n_pairs else 0.0,
                "mean_cooccurrence_jaccard": sum(p[0] for p in pairs) / len(pairs) if pairs else 0.0,
                "top_redundant_pairs": [[a, b, round(j, 3)] for j, a, b in pairs[:5]]}

    def result(self) -> dict:
        vocab, n = self.vocab, self.n
        usage = {d: self.usage.get(d, 0) for d in vocab.names()}
        h, h_norm = entropy(list(usage.values()))
        return {
            "items": n,
            "coverage": self.covered / n if n else 0.0,
            "coverage_per_facet": {f.name: self.facets.get(f.name, 0) / n if n else 0.0 for f in vocab.facets},
            "facets": len(vocab.facets),
            "descriptors": vocab.size(),
            "size_per_level": {"facets": len(vocab.facets), "descriptors": vocab.size(),
                               "per_facet": {f.name: len(f.descriptors) for f in vocab.facets}},
            "descriptors_per_item": self.assigned / n if n else 0.0,
            "usage_entropy_bits": h,
            "usage_entropy_norm": h_norm,
            "unused_descriptors": sorted(k for k, v in usage.items() if v == 0),
            "distinct_descriptors_used": sum(1 for v in usage.values() if v),
            **self.redundancy(),
        }


def tag_metrics(vocab: Vocabulary, tags: dict[str, list[str]]) -> dict:
    """``TagMetrics`` over a dict of item -> descriptors."""
    m = TagMetrics(vocab)
    for names in tags.values():
        m.add(names)
    return m.result()


def aggregate_reports(vocab: Vocabulary, reports: list[dict], broad_share: float) -> dict:
    """Feedback statistics for one round: coverage, usage, OOV, proposals, overlaps,
    breadth, unused descriptors and agreement on items seen by two annotators."""
    names = set(vocab.names())
    per_item: dict[str, list[list[str]]] = defaultdict(list)
    oov = total_answers = failed = 0
    proposals: dict[str, dict[str, Any]] = {}
    overlaps: Counter = Counter()
    broad: Counter = Counter()
    narrow: Counter = Counter()
    for rep in reports:
        if rep.get("error"):
            failed += 1
            continue
        batch_ids = set(rep["item_ids"])
        r = rep["report"]
        for t in r.get("tags", []):
            item = str(t.get("item_id", ""))
            if item not in batch_ids:
                continue
            valid = []
            for n in t.get("descriptors", []):
                total_answers += 1
                if slug(n) in names:
                    valid.append(slug(n))
                else:
                    oov += 1
            per_item[item].append(sorted(set(valid)))
        for u in r.get("uncovered", []):
            key = slug(u.get("proposed_name", ""))
            if not key or key in names:
                continue
            p = proposals.setdefault(key, {"count": 0, "facets": Counter(), "evidence": []})
            p["count"] += 1
            p["facets"][slug(u.get("proposed_facet", ""))] += 1
            if len(p["evidence"]) < 2 and (u.get("evidence") or u.get("aspect")):
                p["evidence"].append((u.get("evidence") or u.get("aspect"))[:100])
        for pair in r.get("overlapping", []):
            a, b = slug(pair.get("a", "")), slug(pair.get("b", ""))
            if a in names and b in names and a != b:
                overlaps[tuple(sorted((a, b)))] += 1
        broad.update(slug(n) for n in r.get("too_broad", []) if slug(n) in names)
        narrow.update(slug(n) for n in r.get("too_narrow", []) if slug(n) in names)
    # one tag set per item for coverage and usage: the union of what annotators gave
    merged = {item: sorted(set().union(*map(set, sets))) for item, sets in per_item.items()}
    items_seen = len({i for rep in reports if not rep.get("error") for i in rep["item_ids"]})
    usage = usage_counts(vocab, merged)
    for name, count in usage.items():  # breadth from usage, not only from opinions
        if items_seen and count / items_seen > broad_share:
            broad[name] += 1
    covered = sum(1 for v in merged.values() if v)
    return {
        "items_seen": items_seen,
        "coverage": covered / items_seen if items_seen else 0.0,
        "usage": usage,
        "oov_answers": oov,
        "oov_rate": oov / total_answers if total_answers else 0.0,
        "failed_batches": failed,
        "agreement": agreement({k: v for k, v in per_item.items() if len(v) > 1}),
        "proposals": {k: {"count": v["count"], "facet": (v["facets"].most_common(1)[0][0] if v["facets"] else ""),
                          "evidence": v["evidence"]}
                      for k, v in sorted(proposals.items(), key=lambda kv: -kv[1]["count"])[:15]},
        "overlaps": [[a, b, n] for (a, b), n in overlaps.most_common(8)],
        "too_broad": dict(broad.most_common(8)),
        "too_narrow": dict(narrow.most_common(8)),
        "unused": sorted(k for k, v in usage.items() if v == 0),
        "tags": merged,
    }


def feedback_text(stats: dict) -> str:
    """The architect's view of the statistics: short, ranked, with evidence."""
    lines = [f"coverage {stats['coverage']:.2f} of {stats['items_seen']} items; out-of-vocabulary answers "
             f"{stats['oov_answers']}; annotator agreement "
             + ("n/a" if stats["agreement"] is None else f"{stats['agreement']:.2f}")]
    if stats["proposals"]:
        lines.append("uncovered aspects (proposed descriptor, times proposed, facet, evidence):")
        for name, p in list(stats["proposals"].items())[:8]:
            ev = f' "{p["evidence"][0]}"' if p["evidence"] else ""
            lines.append(f"- {name} x{p['count']} ({p['facet'] or '?'}){ev}")
    if stats["overlaps"]:
        lines.append("overlapping pairs: " + ", ".join(f"{a} ~ {b} x{n}" for a, b, n in stats["overlaps"]))
    if stats["too_broad"]:
        lines.append("too broad: " + ", ".join(f"{k} x{v}" for k, v in stats["too_broad"].items()))
    if stats["too_narrow"]:
        lines.append("too narrow: " + ", ".join(f"{k} x{v}" for k, v in stats["too_narrow"].items()))
    if stats["unused"]:
        lines.append("unused this round: " + ", ".join(stats["unused"][:15]))
    return "\n".join(lines)
