"""Choosing a training subset from Ask-LLM scores and/or density scores.

Methods (arXiv 2402.09668 and one combination of them):

- ``"askllm"``: the k best Ask-LLM scores (quality); documents without a score rank last.
- ``"density"``: k draws without replacement with weights ∝ 1/density (coverage); the
  paper found top- or bottom-k by density lose coverage, inverse propensity keeps it.
- ``"random"``: a uniform sample, the baseline every method must beat.
- ``"combined"``: quality within coverage: split the corpus into ``strata`` equal-count
  bins by density rank, give each bin a quota proportional to its size, and fill each
  quota with the bin's best Ask-LLM scores. Dense regions (near-duplicates, boilerplate
  families) cannot crowd out rare ones, and within each region the scorer decides.

k = round(rate * N), half rounding up, at least 1. Scores are given either as a sequence
aligned with ``ids`` or as a mapping from id to score; a missing score is None, NaN or
absent from the mapping. Ties are broken by a seeded random order, so results are
deterministic for a seed without favouring the input order.

    >>> ids = ["a", "b", "c", "d"]
    >>> select(ids, "askllm", 0.5, askllm={"a": 0.2, "b": 0.9, "c": 0.7})
    ['b', 'c']
    >>> select(ids, "combined", 0.5, askllm=[0.2, 0.9, 0.7, 0.1], density=[0.9, 0.8, 0.1, 0.2], strata=2)
    ['b', 'c']
    >>> len(select(ids, "random", 0.5, seed=1))
    2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tagsmith.evaluators.density import inverse_propensity_sample

__all__ = ["METHODS", "select", "selection_size", "selection_report"]

METHODS = ("askllm", "density", "random", "combined")

Scores = Mapping[str, Any] | Sequence[Any] | np.ndarray


def selection_size(n: int, rate: float) -> int:
    """k = round(rate * n) with halves rounded up (Python's round() would send 2.5 to 2),
    at least 1 for a non-empty corpus.

        >>> selection_size(10, 0.25), selection_size(1000, 0.0001), selection_size(0, 0.5)
        (3, 1, 0)
    """
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if n == 0:
        return 0
    return min(n, max(1, math.floor(rate * n + 0.5)))


def _aligned(ids: Sequence[str], scores: Scores | None, name: str) -> np.ndarray | None:
    """Scores as a float array aligned with ``ids``; NaN marks a missing score."""
    if scores is None:
        return None
    if isinstance(scores, Mapping):
        values = [scores.get(i) for i in ids]
    else:
        values = list(scores)
        if len(values) != len(ids):
            raise ValueError(f"{name}: {len(values)} scores for {len(ids)} ids")
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _rank_desc(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by score, best first, NaN last, ties in a seeded random order."""
    tiebreak = rng.permutation(len(scores))
    key = np.where(np.isnan(scores), -np.inf, scores)
    # lexsort sorts by the last key first: missing-ness, then score (descending), then tiebreak.
    return np.lexsort((tiebreak, -key, np.isnan(scores)))


def _quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split k over bins in proportion to their sizes (largest remainder method)."""
    exact = k * sizes / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    short = k - int(quota.sum())
    # Stable order so equal remainders go to the earlier (lower-density) bin every time.
    for i in np.argsort(-(exact - quota), kind="stable")[:short]:
        quota[i] += 1
    return np.minimum(quota, sizes)


def select(ids: Sequence[str], method: str, rate: float, *, askllm: Scores | None = None,
           density: Scores | None = None, seed: int = 0, strata: int = 5) -> list[str]:
    """The ids of a subset of about ``rate`` of the corpus chosen by ``method``.

    Order of the result: "askllm" and "combined" best score first; "density" and
    "random" in draw order. Raises ValueError for an unknown method, duplicate ids, a bad
    rate, or when the method's scores are missing ("askllm" needs at least one Ask-LLM
    score; "density" and "combined" need a density for every document).

        >>> select(["x", "y", "z"], "density", 0.34, density=[0.5, 0.5, 0.001], seed=0)
        ['z']
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    k = selection_size(len(ids), rate)
    if k == 0:
        return []
    rng = np.random.default_rng(seed)
    quality = _aligned(ids, askllm, "askllm")
    dens = _aligned(ids, density, "density")

    if method in ("askllm", "combined"):
        if quality is None or np.isnan(quality).all():
            raise ValueError(f"method {method!r} needs Ask-LLM scores (askllm=...), and none were given")
    if method in ("density", "combined"):
        if dens is None:
            raise ValueError(f"method {method!r} needs density scores (density=...)")
        missing = int(np.isnan(dens).sum())
        if missing:
            raise ValueError(f"method {method!r} needs a density for every document; {missing} are missing")

    if method == "random":
        chosen = rng.choice(len(ids), size=k, replace=False)
    elif method == "askllm":
        chosen = _rank_desc(quality, rng)[:k]
    elif method == "density":
        chosen = inverse_propensity_sample(dens, k, seed=seed)
    else:  # combined
        n_bins = max(1, min(strata, len(ids)))
        # Equal-count bins by density rank (quantile bins); ranks rather than np.quantile
        # edges so tied densities cannot leave a bin empty.
        order = np.lexsort((rng.permutation(len(ids)), dens))
        bin_of = np.empty(len(ids), dtype=np.int64)
        bin_of[order] = np.arange(len(ids)) * n_bins // len(ids)
        quota = _quotas(np.bincount(bin_of, minlength=n_bins), k)
        picks = []
        for b in range(n_bins):
            members = np.flatnonzero(bin_of == b)
            picks.append(members[_rank_desc(quality[members], rng)[:quota[b]]])
        chosen = np.concatenate(picks)
        # Best first overall, as for "askllm".
        chosen = chosen[_rank_desc(quality[chosen], rng)]
    return [ids[i] for i in chosen]


def selection_report(ids: Sequence[str], selected: Sequence[str], *, askllm: Scores | None = None,
                     density: Scores | None = None, labels: Scores | None = None) -> dict:
    """Summary of a selection against the whole corpus.

    Returns ``n_total``, ``n_selected``, ``rate``; for each of askllm / density given,
    ``{"mean_all", "mean_selected", "scored_all", "scored_selected"}`` (means over the
    documents that have a score); for ``labels`` (1 = junk, as from ``inject_junk``),
    ``{"junk_rate_all", "junk_rate_selected"}``.

        >>> r = selection_report(["a", "b", "c", "d"], ["b", "c"], askllm=[0.2, 0.9, 0.7, None])
        >>> r["n_selected"], r["askllm"]["mean_selected"], r["askllm"]["scored_all"]
        (2, 0.8, 3)
    """
    ids = list(ids)
    index = {i: n for n, i in enumerate(ids)}
    unknown = [s for s in selected if s not in index]
    if unknown:
        raise ValueError(f"selected ids not in the corpus: {unknown[:5]}")
    mask = np.zeros(len(ids), dtype=bool)
    mask[[index[s] for s in selected]] = True
    report: dict[str, Any] = {"n_total": len(ids), "n_selected": int(mask.sum()),
                              "rate": float(mask.mean()) if ids else 0.0}

    def mean(values: np.ndarray) -> float | None:
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else None

    for name, scores in (("askllm", askllm), ("density", density)):
        values = _aligned(ids, scores, name)
        if values is not None:
            report[name] = {"mean_all": mean(values), "mean_selected": mean(values[mask]),
                            "scored_all": int((~np.isnan(values)).sum()),
                            "scored_selected": int((~np.isnan(values[mask])).sum())}
    lab = _aligned(ids, labels, "labels")
    if lab is not None:
        report["labels"] = {"junk_rate_all": mean(lab), "junk_rate_selected": mean(lab[mask])}
    return report
