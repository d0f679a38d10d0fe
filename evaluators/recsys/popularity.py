"""Most-popular baseline: every user gets the items ranked by training interactions.
It reads no tags and no history; the floor every tag-based model should clear.

    >>> Popularity(3, [[0, 1], [1]]).score([[2], [0]]).tolist()
    [[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]]
"""

from __future__ import annotations

import torch


class Popularity:
    def __init__(self, n_items: int, train: list[list[int]]):
        counts = torch.zeros(n_items)
        for seq in train:
            counts.index_add_(0, torch.tensor(seq, dtype=torch.long), torch.ones(len(seq)))
        self.counts = counts

    def score(self, histories: list[list[int]]) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(histories), -1).clone()
