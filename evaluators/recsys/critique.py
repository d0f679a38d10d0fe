"""Critique-based recommendation: the user says "not X" or "more Y" about a descriptor,
the model's scores are re-ranked, and we measure whether the new top-k honours it.

Re-ranking shifts the score of every item with the descriptor: down for "not X", up for
"more Y", by ``strength`` standard deviations of the user's candidate scores
(``strength=inf``: a hard filter / hard promotion).

Critiques are chosen to be consistent with the held-out item, so a good re-ranking should
honour the critique and keep (or improve) the held-out item's rank:

- "more Y": Y is a descriptor of the held-out item, drawn at random (seeded);
- "not X": X is not a descriptor of the held-out item, and is the descriptor most frequent
  in the current top-k (a critique of something not shown would be honoured by doing nothing).

Honour rate: the share of the top-k (k=10) without X ("not X") or with Y ("more Y"),
before and after; NDCG@10 of the held-out item before and after.

    >>> import torch
    >>> scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    >>> has_x = torch.tensor([[True, True, False, False]])
    >>> rerank(scores, has_x, "not", strength=float("inf")).argsort(descending=True).tolist()
    [[2, 3, 0, 1]]
"""

from __future__ import annotations

import math
import random
from collections import Counter

import torch

from tagsmith.evaluators.recsys.metrics import candidate_mask, expected_metrics, rank_counts

TOP_K = 10
STRENGTHS = {"soft": 1.0, "hard": math.inf}   # score shift in user-score standard deviations


def rerank(scores: torch.Tensor, has: torch.Tensor, kind: str, strength: float,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shift the scores of items with the descriptor (``has`` [B, N]) down ("not") or up ("more")."""
    if kind not in ("not", "more"):
        raise ValueError(f"critique kind must be 'not' or 'more', not {kind!r}")
    sign = -1.0 if kind == "not" else 1.0
    if math.isinf(strength):
        # hard: every item with (more) / without (not) the descriptor ranks above every other
        # candidate; the original order is kept inside each part
        big = (scores[torch.isfinite(scores)].abs().max() + 1.0) * 4 if torch.isfinite(scores).any() else 1.0
        return scores + sign * big * has.float()
    m = mask if mask is not None else torch.ones_like(has)
    s = scores.masked_fill(~m, float("nan"))
    std = torch.sqrt(torch.nanmean((s - torch.nanmean(s, 1, keepdim=True)) ** 2, 1, keepdim=True)).clamp(min=1e-6)
    return scores + sign * strength * std * has.float()


def _top_k(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    return scores.masked_fill(~mask, -torch.inf).topk(k, dim=1).indices


def evaluate_critiques(scores: torch.Tensor, targets: list[int], exclude: list[list[int]],
                       item_desc: list[list[int]], seed: int = 0, k: int = TOP_K,
                       strengths: dict[str, float] | None = None) -> dict:
    """Choose one "more Y" and one "not X" critique per user, re-rank, and report per kind
    and strength: users, honour rate before/after, NDCG@10 before/after."""
    strengths = STRENGTHS if strengths is None else strengths
    rng = random.Random(seed)
    n_items = scores.shape[1]
    mask = candidate_mask(n_items, targets, exclude)
    top = _top_k(scores, mask, k).tolist()
    sets = [set(d) for d in item_desc]
    chosen: dict[str, list[tuple[int, int]]] = {"more": [], "not": []}   # (user row, descriptor)
    for u, t in enumerate(targets):
        if item_desc[t]:
            chosen["more"].append((u, rng.choice(item_desc[t])))
        shown = Counter(d for i in top[u] for d in sets[i] if d not in sets[t])
        if shown:
            best = max(shown.values())
            chosen["not"].append((u, min(d for d, c in shown.items() if c == best)))  # ties: lowest index
    desc_items: dict[int, torch.Tensor] = {}

    def has(d: int) -> torch.Tensor:
        if d not in desc_items:
            desc_items[d] = torch.tensor([d in s for s in sets])
        return desc_items[d]

    out: dict = {}
    for kind, pairs in chosen.items():
        if not pairs:
            out[kind] = {"users": 0}
            continue
        rows = torch.tensor([u for u, _ in pairs])
        s, m = scores[rows], mask[rows]
        tg = [targets[u] for u, _ in pairs]
        h = torch.stack([has(d) for _, d in pairs])
        want = h if kind == "more" else ~h          # items that honour the critique

        def honour(sc: torch.Tensor) -> float:
            idx = _top_k(sc, m, k)
            return float(want.gather(1, idx).float().mean())

        def ndcg(sc: torch.Tensor) -> float:
            return float(expected_metrics(*rank_counts(sc, tg, m), ks=(k,))[f"NDCG@{k}"].mean())

        entry = {"users": len(pairs), "honour_before": round(honour(s), 4), f"ndcg@{k}_before": round(ndcg(s), 5)}
        for name, strength in strengths.items():
            r = rerank(s, h, kind, strength, m)
            entry[name] = {"honour_after": round(honour(r), 4), f"ndcg@{k}_after": round(ndcg(r), 5)}
        out[kind] = entry
    out["strengths"] = {n: ("inf" if math.isinf(v) else v) for n, v in strengths.items()}
    return out
