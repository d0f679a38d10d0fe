"""SASRec-style sequential ranker: causal self-attention over the history, the next item
scored against every item's embedding.

An item's embedding is its ID embedding plus the mean of its descriptors' embeddings
(``use_tags=True``); with ``use_tags=False`` it is the ID-only SASRec baseline. Input and
output share the item table, as in SASRec, so descriptors shape both what the history says
and which items it points to: an item seen rarely in training still gets a useful vector.

Training: each user's training sequence is cut into windows of ``max_history`` items
(from the end); every position predicts the next item, with a full softmax over the items
(``negatives=0``; the catalogues here are small), a sampled softmax (``negatives=N``
uniform negatives shared by the batch) or SASRec's BCE with one negative per position.

    >>> m = SASRec(n_items=3, item_desc=[[0], [1], []], n_desc=2, max_len=4)
    >>> m.score([[0, 1]]).shape        # one user, scores for all 3 items
    torch.Size([1, 3])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tagsmith.evaluators.recsys.data import Split
from tagsmith.evaluators.recsys.train import EVAL_BATCH, evaluate, fit, left_pad, minibatch_epochs, training_windows


@dataclass
class RankerConfig:
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch: int = 128
    epochs: int = 40          # an upper bound: early stopping on validation usually ends sooner
    patience: int = 3
    loss: str = "softmax"     # "softmax" (full or sampled) or "bce"
    negatives: int = 0        # sampled-softmax negatives; 0 = full softmax
    use_tags: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(nn.Module):
    def __init__(self, n_items: int, item_desc: list[list[int]], n_desc: int, max_len: int,
                 config: RankerConfig | None = None):
        super().__init__()
        c = self.config = config or RankerConfig()
        self.n_items, self.max_len = n_items, max_len
        self.item_emb = nn.Embedding(n_items + 1, c.d_model, padding_idx=0)   # 0 = padding
        self.pos_emb = nn.Embedding(max_len, c.d_model)
        self.use_tags = c.use_tags and n_desc > 0
        if self.use_tags:
            width = max(1, max((len(d) for d in item_desc), default=1))
            table = torch.full((n_items + 1, width), n_desc, dtype=torch.long)  # n_desc = padding slot
            for i, ds in enumerate(item_desc):
                if ds:
                    table[i + 1, :len(ds)] = torch.tensor(ds)
            self.register_buffer("item_desc", table, persistent=False)
            self.register_buffer("desc_count", (table < n_desc).sum(1, keepdim=True).clamp(min=1).float(),
                                 persistent=False)
            self.desc_emb = nn.Embedding(n_desc + 1, c.d_model, padding_idx=n_desc)
        layer = nn.TransformerEncoderLayer(c.d_model, c.heads, dim_feedforward=c.d_model * 2, dropout=c.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(max_len), persistent=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        if self.use_tags:
            nn.init.normal_(self.desc_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def item_table(self) -> torch.Tensor:
        """[N+1, d]: ID embedding + mean descriptor embedding (row 0: padding)."""
        table = self.item_emb.weight
        if self.use_tags:
            table = table + self.desc_emb(self.item_desc).sum(1) / self.desc_count
        return table

    def hidden(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """seq [B, L] (0 = padding, left) -> [B, L, d]."""
        length = seq.shape[1]
        keep = (seq > 0).unsqueeze(-1).float()
        x = table[seq] * math.sqrt(self.config.d_model) + self.pos_emb.weight[-length:]
        # padded positions are zeroed (as SASRec does) instead of masked: a fully masked
        # attention row would be NaN, and zeros carry no information to attend to
        x = self.drop(x) * keep
        h = self.encoder(x, mask=self.causal[-length:, -length:], is_causal=True)
        return self.norm(h) * keep

    @torch.no_grad()
    def score(self, histories: list[list[int]]) -> torch.Tensor:
        table = self.item_table()
        h = self.hidden(left_pad(histories, self.max_len), table)[:, -1]
        return h @ table[1:].T

    def loss(self, seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """seq, target [B, L] shifted item ids (0 = padding / no target)."""
        table = self.item_table()
        h = self.hidden(seq, table)
        on = target > 0
        h, pos = h[on], target[on]                                  # [P, d], [P]
        c = self.config
        if c.loss == "bce":
            neg = torch.randint(1, self.n_items + 1, pos.shape)
            pl = (h * table[pos]).sum(-1)
            nl = (h * table[neg]).sum(-1)
            return F.binary_cross_entropy_with_logits(torch.cat([pl, nl]),
                                                      torch.cat([torch.ones_like(pl), torch.zeros_like(nl)]))
        if c.negatives and c.negatives < self.n_items:
            neg = torch.randint(1, self.n_items + 1, (c.negatives,))
            logits = torch.cat([(h * table[pos]).sum(-1, keepdim=True), h @ table[neg].T], 1)
            # a sampled negative equal to the positive is not a negative
            logits[:, 1:] = logits[:, 1:].masked_fill(neg.unsqueeze(0) == pos.unsqueeze(1), -torch.inf)
            return F.cross_entropy(logits, torch.zeros_like(pos))
        return F.cross_entropy(h @ table[1:].T, pos - 1)


def train_ranker(split: Split, item_desc: list[list[int]], n_desc: int, config: RankerConfig | None = None,
                 seed: int = 0, progress: bool = True, desc: str = "ranker") -> tuple[SASRec, dict]:
    c = config or RankerConfig()
    torch.manual_seed(seed)
    model = SASRec(split.n_items, item_desc, n_desc, split.max_history, c)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    seqs, tgts = training_windows(split, split.max_history)
    run_epoch = minibatch_epochs(model, opt, seqs, tgts, c.batch, seed)

    info = fit(model, run_epoch, lambda: evaluate(model.score, split, "val", batch=EVAL_BATCH),
               epochs=c.epochs, patience=c.patience, progress=progress, desc=desc)
    return model, info
