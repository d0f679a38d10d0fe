"""TIGER-style generative retrieval: the next item is generated as its descriptor code.

Each item is written as its semantic ID (trie.py: its first descriptors, or a tagsmith
run's first descriptor per facet, plus a collision suffix). The model is decoder-only:

- a causal transformer reads the history, one position per item (the item's vector is
  the sum of its code tokens' embeddings, so items sharing descriptors share parameters);
- at every position a code decoder generates the next item's code token by token, each
  level over its own token vocabulary: level l reads the history state plus the
  embeddings of the tokens chosen at levels < l (their sum: tokens are level-specific, so
  the sum loses nothing of the prefix), through a residual feed-forward block.

Every position of a training window is a target, as in SASRec: one pass over the data
costs what one pass of a ranker costs, instead of one encoder pass per target as in an
encoder-decoder (which is what makes training take minutes on a CPU). At inference a beam
search constrained by the trie of valid codes returns only real items; items are ranked by
beam score and those the beams never reached rank after them.

    >>> codes = build_codes([["comedy"], ["drama"], ["comedy"]], levels=1)
    >>> m = TIGER(codes, max_len=4, config=GenerativeConfig(beam=3))
    >>> m.score([[0, 1]]).isfinite().sum().item()   # the beam reaches all 3 items
    3
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tagsmith.evaluators.recsys.data import Split
from tagsmith.evaluators.recsys.train import evaluate, fit, left_pad, minibatch_epochs, training_windows
from tagsmith.evaluators.recsys.trie import Codes, Trie, beam_scores, beam_search, build_codes  # noqa: F401

PAD = 0


@dataclass
class GenerativeConfig:
    d_model: int = 64
    heads: int = 2
    layers: int = 2          # history transformer layers
    dropout: float = 0.2
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch: int = 64          # windows of max_history items per step
    epochs: int = 40         # an upper bound: early stopping on validation usually ends sooner
    patience: int = 3
    beam: int = 50           # >= 20 so that Recall@20 is measurable after excluding seen items
    select_beam: int = 20    # beam for the per-epoch validation (early stopping needs NDCG@10 only)
    levels: int = 3          # descriptor slots per code (a run's semantic ID uses one per facet)
    eval_batch: int = 256    # users per beam search

    def to_dict(self) -> dict:
        return asdict(self)


def _layers(c: GenerativeConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(c.d_model, c.heads, c.d_model * 2, c.dropout, batch_first=True,
                                       norm_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, c.layers, norm=nn.LayerNorm(c.d_model), enable_nested_tensor=False)


class TIGER(nn.Module):
    def __init__(self, codes: Codes, max_len: int, config: GenerativeConfig | None = None):
        super().__init__()
        c = self.config = config or GenerativeConfig()
        self.codes, self.trie, self.max_len = codes, Trie(codes), max_len
        self.n_items, self.n_levels = codes.codes.shape[0], codes.n_levels
        sizes = codes.sizes
        offsets = [1 + sum(sizes[:level]) for level in range(self.n_levels)]  # token 0 = padding
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)
        self.slices = [(o, o + s) for o, s in zip(offsets, sizes)]
        vocab = 1 + sum(sizes)
        tokens = torch.zeros(self.n_items + 1, self.n_levels, dtype=torch.long)  # row 0: the padding item
        tokens[1:] = codes.codes + self.offsets
        self.register_buffer("item_tokens", tokens, persistent=False)
        self.tok_emb = nn.Embedding(vocab, c.d_model, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, c.d_model)
        self.level_emb = nn.Embedding(self.n_levels, c.d_model)
        self.history = _layers(c)
        self.dec_norm_in = nn.LayerNorm(c.d_model)
        # no dropout inside: drawing masks for the [positions x levels x 2d] hidden layer took a
        # fifth of the training time on CPU; the residual output is dropped out instead
        self.dec_ff = nn.Sequential(nn.Linear(c.d_model, c.d_model * 2), nn.GELU(), nn.Linear(c.d_model * 2, c.d_model))
        self.dec_norm_out = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.d_model, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(max_len), persistent=False)
        for emb in (self.tok_emb, self.pos_emb, self.level_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.tok_emb.weight[PAD].zero_()

    def states(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, S] item ids + 1 (0 = padding, left) -> causal history states [B, S, d]."""
        keep = (seq > 0).unsqueeze(-1).float()
        x = self.tok_emb(self.item_tokens[seq]).sum(2) * math.sqrt(self.config.d_model)
        x = self.drop(x + self.pos_emb.weight[-seq.shape[1]:]) * keep  # padding zeroed, not masked (no NaN rows)
        n = seq.shape[1]
        return self.history(x, mask=self.causal[-n:, -n:], is_causal=True) * keep

    def code_states(self, context: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """context [R, d], prefix [R, l] global code tokens -> states [R, l+1, d]
        (position j predicts level j from the context and the tokens of levels < j)."""
        emb = self.tok_emb(prefix) * math.sqrt(self.config.d_model)  # the same scale as the context
        before = torch.cat([torch.zeros_like(context).unsqueeze(1), emb.cumsum(1)], 1)
        x = context.unsqueeze(1) + before + self.level_emb.weight[:prefix.shape[1] + 1]
        x = x + self.drop(self.dec_ff(self.dec_norm_in(x)))
        return self.dec_norm_out(x)

    def level_logits(self, states: torch.Tensor, level: int) -> torch.Tensor:
        """[R, d] -> [R, tokens of this level]: only the level's rows of the output layer
        (a quarter of the cost of scoring every token at every level)."""
        lo, hi = self.slices[level]
        return F.linear(states, self.head.weight[lo:hi], self.head.bias[lo:hi])

    def loss(self, seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of every position's next-item code, each level over
        its own tokens. seq, target [B, S] item ids + 1 (0 = no target)."""
        on = target > 0
        context = self.states(seq)[on]                              # [P, d]
        code = self.item_tokens[target[on]]                         # [P, C] global tokens
        h = self.code_states(context, code[:, :-1])
        losses = [F.cross_entropy(self.level_logits(h[:, level], level), code[:, level] - lo)
                  for level, (lo, _) in enumerate(self.slices)]
        return torch.stack(losses).sum()

    @torch.no_grad()
    def generate(self, histories: list[list[int]], beam: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Trie-constrained beam search: items [B, beam] (-1 = none) and log-probabilities."""
        context = self.states(left_pad(histories, self.max_len))[:, -1]

        def step(rows: torch.Tensor, prefix: torch.Tensor, level: int) -> torch.Tensor:
            h = self.code_states(context[rows], prefix + self.offsets[:level])
            return self.level_logits(h[:, -1], level)

        return beam_search(step, self.trie, len(histories), beam or self.config.beam)

    @torch.no_grad()
    def score(self, histories: list[list[int]], beam: int | None = None) -> torch.Tensor:
        out = []
        for start in range(0, len(histories), self.config.eval_batch):
            items, scores = self.generate(histories[start:start + self.config.eval_batch], beam=beam)
            out.append(beam_scores(items, scores, self.n_items))
        return torch.cat(out)


def train_generative(split: Split, codes: Codes, config: GenerativeConfig | None = None, seed: int = 0,
                     progress: bool = True, desc: str = "generative") -> tuple[TIGER, dict]:
    c = config or GenerativeConfig()
    torch.manual_seed(seed)
    model = TIGER(codes, split.max_history, c)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    seqs, tgts = training_windows(split, split.max_history)
    run_epoch = minibatch_epochs(model, opt, seqs, tgts, c.batch, seed, clip_norm=1.0)

    def select_score(histories: list[list[int]]) -> torch.Tensor:
        return model.score(histories, beam=min(c.select_beam, c.beam))

    info = fit(model, run_epoch, lambda: evaluate(select_score, split, "val"), epochs=c.epochs,
               patience=c.patience, progress=progress, desc=desc)
    info["codes"] = {"levels": codes.n_levels, "tokens_per_level": codes.sizes,
                     "max_collisions": codes.sizes[-1],
                     "distinct_prefixes": len({tuple(r[:-1]) for r in codes.codes.tolist()})}
    return model, info
