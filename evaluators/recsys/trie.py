"""Semantic IDs from descriptors, and beam search that can only emit valid item codes.

An item's code is its first ``levels`` descriptors (or its semantic ID, one slot per facet,
from a tagsmith run), padded with an empty slot, plus a collision suffix: items sharing
a prefix are numbered 0, 1, 2, ... so every item has a unique code of the same length.
Each level has its own token vocabulary (as TIGER's codebooks).

    >>> c = build_codes([["comedy", "family"], ["comedy", "family"], ["drama"]], levels=2)
    >>> c.names(0), c.names(1), c.names(2)
    (['comedy', 'family', '#0'], ['comedy', 'family', '#1'], ['drama', '', '#0'])

The trie holds, per level, a table node x token -> child node (the last level: -> item);
beam search masks every token without a child, so a finished beam is always an item.

    >>> items, scores = beam_search(lambda rows, prefix, level: torch.zeros(len(rows), c.sizes[level]),
    ...                             Trie(c), batch=1, beam=5)
    >>> sorted(items[0][items[0] >= 0].tolist())   # all three items, nothing else
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LEVELS = 3      # descriptor positions in a code before the collision suffix
EMPTY = ""      # the token of an empty slot (an item with fewer descriptors than levels)


@dataclass
class Codes:
    """codes[i] = local token ids of item i, one per level (the last is the suffix)."""

    codes: torch.Tensor            # [N, C] long
    tokens: list[list[str]]        # per level: token names; the suffix level holds '#0', '#1', ...

    @property
    def n_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def sizes(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def names(self, item: int) -> list[str]:
        return [self.tokens[level][int(t)] for level, t in enumerate(self.codes[item])]


def build_codes(item_descriptors: list[list[str]], levels: int = LEVELS,
                semantic_ids: list[list[str]] | None = None) -> Codes:
    """Codes for items in split order. ``semantic_ids`` (one slot per facet, '' = none)
    wins over the first ``levels`` descriptors where given."""
    if semantic_ids is not None:
        width = max((len(s) for s in semantic_ids), default=0) or levels
        prefixes = [tuple((list(s) + [EMPTY] * width)[:width]) for s in semantic_ids]
    else:
        width = levels
        prefixes = [tuple((list(d) + [EMPTY] * width)[:width]) for d in item_descriptors]
    tokens: list[list[str]] = [sorted({p[level] for p in prefixes}) for level in range(width)]
    index = [{t: n for n, t in enumerate(ts)} for ts in tokens]
    seen: dict[tuple, int] = {}
    suffix = []
    for p in prefixes:  # items in order: the first with a prefix gets #0
        suffix.append(seen.get(p, 0))
        seen[p] = suffix[-1] + 1
    tokens.append([f"#{n}" for n in range(max(suffix) + 1)])
    rows = [[index[level][p[level]] for level in range(width)] + [s] for p, s in zip(prefixes, suffix)]
    return Codes(torch.tensor(rows, dtype=torch.long).reshape(len(prefixes), width + 1), tokens)


class Trie:
    """child[level][node, token] -> node at level+1 (at the last level: the item), -1 if none.
    Level 0 has one node, the root."""

    def __init__(self, codes: Codes):
        self.sizes = codes.sizes
        n_levels = codes.n_levels
        node_of: list[dict[tuple, int]] = [{(): 0}] + [{} for _ in range(n_levels - 1)]
        edges: list[list[tuple[int, int, int]]] = [[] for _ in range(n_levels)]
        for item, code in enumerate(codes.codes.tolist()):
            for level in range(n_levels):
                parent = node_of[level][tuple(code[:level])]
                if level == n_levels - 1:
                    child = item
                else:
                    child = node_of[level + 1].setdefault(tuple(code[:level + 1]), len(node_of[level + 1]))
                edges[level].append((parent, code[level], child))
        self.child = []
        for level in range(n_levels):
            table = torch.full((len(node_of[level]), self.sizes[level]), -1, dtype=torch.long)
            for parent, token, child in edges[level]:
                table[parent, token] = child
            self.child.append(table)

    @property
    def n_levels(self) -> int:
        return len(self.child)


# step(rows, prefix, level) -> logits [R, sizes[level]]: rows [R] is the batch row each beam
# belongs to, prefix [R, level] the local tokens chosen so far.
StepFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def beam_search(step: StepFn, trie: Trie, batch: int, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trie-constrained beam search. Returns items [B, beam] (-1 where fewer than ``beam``
    valid items exist) and their summed log-probabilities [B, beam], best first. The
    log-softmax runs over the valid tokens only, so a beam's score is the log-probability
    of its item among the items the trie allows."""
    neg = -torch.inf
    nodes = torch.zeros(batch, 1, dtype=torch.long)      # all beams start at the root
    scores = torch.zeros(batch, 1)
    prefix = torch.zeros(batch, 1, 0, dtype=torch.long)
    for level in range(trie.n_levels):
        k = nodes.shape[1]
        flat_nodes = nodes.reshape(-1)
        alive = flat_nodes >= 0
        rows = torch.arange(batch).repeat_interleave(k)
        child = trie.child[level][flat_nodes.clamp(min=0)]                 # [B*k, V]
        valid = (child >= 0) & alive.unsqueeze(1)
        logits = step(rows, prefix.reshape(batch * k, level), level).float()
        logp = torch.log_softmax(logits.masked_fill(~valid, neg), dim=-1)
        logp = torch.where(valid, logp, torch.full_like(logp, neg))       # rows with no valid token: NaN -> -inf
        size = logp.shape[1]
        cand = (scores.reshape(-1, 1) + logp).reshape(batch, k * size)
        top = cand.topk(min(beam, k * size), dim=1)
        src = top.indices // size                                          # which beam it extends
        token = top.indices % size
        flat_src = (src + torch.arange(batch).unsqueeze(1) * k).reshape(-1)
        new_nodes = child[flat_src, token.reshape(-1)].reshape(batch, -1)
        scores = top.values
        nodes = torch.where(torch.isfinite(scores), new_nodes, torch.full_like(new_nodes, -1))
        prefix = torch.cat([prefix.reshape(batch * k, level)[flat_src].reshape(batch, token.shape[1], level),
                            token.unsqueeze(2)], dim=2)
    if nodes.shape[1] < beam:  # fewer items than the beam: pad
        pad = beam - nodes.shape[1]
        nodes = torch.cat([nodes, torch.full((batch, pad), -1, dtype=torch.long)], 1)
        scores = torch.cat([scores, torch.full((batch, pad), neg)], 1)
    return nodes, scores


def beam_scores(items: torch.Tensor, scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """[B, N] scores for ranking: the beam score of reached items, -inf for the rest (they
    tie below every reached item; the metrics break that tie at random)."""
    out = torch.full((items.shape[0], n_items), -torch.inf)
    ok = items >= 0
    rows = torch.arange(items.shape[0]).unsqueeze(1).expand_as(items)
    out[rows[ok], items[ok]] = scores[ok]
    return out
