"""Vocabulary and tagging metrics: coverage, size per level, descriptors per item, usage
entropy, redundancy, annotator agreement, OOV and repair rates.

    >>> m = tag_metrics(vocab, {"1": ["comedy"], "2": []})
    >>> m["coverage"], m["descriptors_per_item"]
    (0.5, 0.5)
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations

from tagsmith.vocabulary import Vocabulary


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


def redundancy(tags: dict[str, list[str]], min_support: int = 3, threshold: float = 0.8) -> dict:
    """Pairs of descriptors that (nearly) always co-occur carry one signal, not two.
    Returns the share of used descriptor pairs with item-set Jaccard >= threshold, the mean
    Jaccard over co-occurring pairs, and the top pairs."""
    sets: dict[str, set[str]] = {}
    for item, names in tags.items():
        for n in set(names):
            sets.setdefault(n, set()).add(item)
    used = sorted(n for n, s in sets.items() if len(s) >= min_support)
    pairs = []
    for a, b in combinations(used, 2):
        inter = len(sets[a] & sets[b])
        if inter:
            pairs.append((inter / len(sets[a] | sets[b]), a, b))
    n_pairs = len(used) * (len(used) - 1) // 2
    high = [p for p in pairs if p[0] >= threshold]
    return {"redundant_pair_share": len(high) / n_pairs if n_pairs else 0.0,
            "mean_cooccurrence_jaccard": sum(p[0] for p in pairs) / len(pairs) if pairs else 0.0,
            "top_redundant_pairs": [[a, b, round(j, 3)] for j, a, b in sorted(pairs, reverse=True)[:5]]}


def agreement(annotations: dict[str, list[list[str]]]) -> float | None:
    """Mean pairwise Jaccard between annotators on items that more than one annotator tagged
    (batches overlap on purpose). None when no item was tagged twice."""
    scores = []
    for sets in annotations.values():
        for a, b in combinations([set(s) for s in sets], 2):
            union = a | b
            scores.append(len(a & b) / len(union) if union else 1.0)
    return sum(scores) / len(scores) if scores else None


def tag_metrics(vocab: Vocabulary, tags: dict[str, list[str]]) -> dict:
    n = len(tags)
    usage = usage_counts(vocab, tags)
    h, h_norm = entropy(list(usage.values()))
    per_item = [len(v) for v in tags.values()]
    covered = sum(1 for v in tags.values() if v)
    facet_cov = {}
    for f in vocab.facets:
        names = {d.name for d in f.descriptors}
        facet_cov[f.name] = sum(1 for v in tags.values() if names & set(v)) / n if n else 0.0
    return {
        "items": n,
        "coverage": covered / n if n else 0.0,
        "coverage_per_facet": facet_cov,
        "facets": len(vocab.facets),
        "descriptors": vocab.size(),
        "size_per_level": {"facets": len(vocab.facets), "descriptors": vocab.size(),
                           "per_facet": {f.name: len(f.descriptors) for f in vocab.facets}},
        "descriptors_per_item": sum(per_item) / n if n else 0.0,
        "usage_entropy_bits": h,
        "usage_entropy_norm": h_norm,
        "unused_descriptors": sorted(k for k, v in usage.items() if v == 0),
        "distinct_descriptors_used": sum(1 for v in usage.values() if v),
        **redundancy(tags),
    }
