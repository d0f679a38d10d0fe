"""Recall@K and NDCG@K of one held-out item per user, over the full item set.

Choices (the protocol of TIGER / P5 / ActionPiece, made explicit):

- full ranking: every item is a candidate, no sampled negatives;
- the items the user already interacted with before the target (the training items, and
  the validation item when testing) are removed from the candidates, except the target
  itself should it repeat: a recommender should not be credited or blamed for re-showing
  what the user has seen, and MovieLens has no repeats so nothing else changes;
- one relevant item, so Recall@K = HR@K and IDCG = 1;
- ties are broken at random, scored in expectation: with g candidates scoring above the
  target and t others tied with it, the target's 0-based rank is uniform on g..g+t. A model
  that gives many items the same score (term retrieval on coarse tags; items the beam
  search never reached) is neither rewarded nor punished by an arbitrary order.

    >>> import torch
    >>> m = ranking_metrics(torch.tensor([[0.9, 0.1, 0.5, 0.3]]), [2], [[0]], ks=(1, 2))
    >>> m["Recall@1"], m["NDCG@1"]          # item 0 excluded: the target ranks first
    (1.0, 1.0)
    >>> m = ranking_metrics(torch.tensor([[0.5, 0.5, 0.9]]), [0], [[]], ks=(1, 2, 3))
    >>> m["Recall@1"], m["Recall@2"], m["Recall@3"]   # one above, one tie: 2nd or 3rd, half the time each
    (0.0, 0.5, 1.0)
"""

from __future__ import annotations

import math

import torch

KS = (5, 10, 20)
SELECTION_METRIC = "NDCG@10"  # early stopping and model selection on validation


def candidate_mask(n_items: int, targets: list[int], exclude: list[list[int]]) -> torch.Tensor:
    """[B, N] bool: True where an item is ranked (not excluded, or the target)."""
    mask = torch.ones(len(targets), n_items, dtype=torch.bool)
    rows = [u for u, ex in enumerate(exclude) for _ in ex]
    cols = [i for ex in exclude for i in ex]
    if cols:
        mask[torch.tensor(rows), torch.tensor(cols)] = False
    mask[torch.arange(len(targets)), torch.tensor(targets)] = True
    return mask


def rank_counts(scores: torch.Tensor, targets: list[int], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates scoring strictly above the target, other candidates tying with it)."""
    s = torch.nan_to_num(scores.float(), nan=-math.inf)
    t = s[torch.arange(len(targets)), torch.tensor(targets)].unsqueeze(1)
    greater = ((s > t) & mask).sum(1)
    ties = ((s == t) & mask).sum(1) - 1
    return greater, ties


def _cum_discount(n: int) -> torch.Tensor:
    """D[r] = sum_{j<r} 1/log2(j+2): the NDCG gain of ranks 0..r-1, summed."""
    d = torch.zeros(n + 1, dtype=torch.float64)
    d[1:] = torch.cumsum(1.0 / torch.log2(torch.arange(n, dtype=torch.float64) + 2), 0)
    return d


def expected_metrics(greater: torch.Tensor, ties: torch.Tensor, ks=KS) -> dict[str, torch.Tensor]:
    """Per-user expected Recall@K and NDCG@K with the rank uniform on greater..greater+ties.

        greater=3, ties=1, K=5: rank 3 or 4 -> Recall 1.0, NDCG (1/log2(5) + 1/log2(6)) / 2
    """
    g = greater.double()
    t = ties.double()
    d = _cum_discount(max(ks) + 1)
    out = {}
    for k in ks:
        out[f"Recall@{k}"] = ((k - g) / (t + 1)).clamp(0, 1)
        last = torch.minimum(g + t, torch.full_like(g, k - 1))  # last rank inside the top k
        inside = last >= g
        hi = d[(last + 1).clamp(0, k).long()]
        lo = d[g.clamp(0, k).long()]
        out[f"NDCG@{k}"] = torch.where(inside, (hi - lo) / (t + 1), torch.zeros_like(g))
    return out


def ranking_metrics(scores: torch.Tensor, targets: list[int], exclude: list[list[int]], ks=KS,
                    per_user: bool = False) -> dict:
    """Mean (or per-user, ``per_user=True``) Recall@K and NDCG@K for scores [B, N]."""
    mask = candidate_mask(scores.shape[1], targets, exclude)
    m = expected_metrics(*rank_counts(scores, targets, mask), ks=ks)
    if per_user:
        return {k: v.tolist() for k, v in m.items()}
    return {k: float(v.mean()) for k, v in m.items()}


class Accumulator:
    """Sums per-user metrics over batches: evaluation scores users in chunks."""

    def __init__(self, ks=KS):
        self.ks = ks
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, scores: torch.Tensor, targets: list[int], exclude: list[list[int]]) -> None:
        mask = candidate_mask(scores.shape[1], targets, exclude)
        for k, v in expected_metrics(*rank_counts(scores, targets, mask), ks=self.ks).items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.sum())
        self.n += len(targets)

    def result(self) -> dict[str, float]:
        return {k: v / max(1, self.n) for k, v in self.sums.items()}
