"""The shared training loop and evaluation pass.

``fit`` runs epochs with a tqdm bar on stderr, evaluates validation NDCG@10 after each
epoch, keeps the best weights, stops after ``patience`` epochs without improvement and
restores the best. ``evaluate`` ranks all items for every user of a split and averages
the metrics (see metrics.py for the protocol).

    >>> model = torch.nn.Linear(2, 1)
    >>> val = iter([0.10, 0.30, 0.20, 0.25, 0.28, 0.40])   # validation NDCG@10 after each epoch
    >>> info = fit(model, lambda epoch: 1.0, lambda: {"NDCG@10": next(val)}, epochs=6, patience=3, progress=False)
    >>> info["best_epoch"], info["epochs"], info["best_val"]   # 3 epochs without a better score: stop at 5
    (2, 5, 0.3)
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from tagsmith.evaluators.recsys.data import Split
from tagsmith.evaluators.recsys.metrics import KS, SELECTION_METRIC, Accumulator

EVAL_BATCH = 256   # users scored at once
PATIENCE = 3       # epochs without a better validation NDCG@10 before stopping

ScoreFn = Callable[[list[list[int]]], torch.Tensor]  # histories -> [B, N] scores


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(score: ScoreFn, split: Split, stage: str, ks=KS, batch: int = EVAL_BATCH,
             users: list[int] | None = None) -> dict[str, float]:
    """Mean Recall@K / NDCG@K of ``stage`` ('val' or 'test') targets, full ranking, each
    user's earlier items excluded."""
    users = list(range(split.n_users)) if users is None else users
    acc = Accumulator(ks)
    targets = split.targets(stage)
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        scores = score([split.history(u, stage) for u in chunk])
        acc.add(scores, [targets[u] for u in chunk], [split.full_history(u, stage) for u in chunk])
    return acc.result()


def fit(model: torch.nn.Module, run_epoch: Callable[[int], float], validate: Callable[[], dict[str, float]],
        epochs: int, patience: int = PATIENCE, progress: bool = True, desc: str = "train") -> dict:
    """Train up to ``epochs`` epochs with early stopping on validation NDCG@10.
    ``run_epoch(epoch)`` trains one epoch and returns its mean loss."""
    from tqdm.auto import tqdm

    best, best_state, best_epoch, bad = -math.inf, None, 0, 0
    curve, train_s, val_s = [], 0.0, 0.0
    cpu0 = time.process_time()  # CPU seconds too: wall time on a shared machine says little
    bar = tqdm(range(1, epochs + 1), desc=desc, file=sys.stderr, disable=not progress, leave=False,
               dynamic_ncols=True)
    epoch = 0
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        loss = run_epoch(epoch)
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            val = validate()
        val_s += time.perf_counter() - t1
        train_s += t1 - t0
        score = val[SELECTION_METRIC]
        curve.append({"epoch": epoch, "loss": round(loss, 5), SELECTION_METRIC: round(score, 5)})
        bar.set_postfix(loss=f"{loss:.4f}", val_ndcg10=f"{score:.4f}", best=f"{max(best, score):.4f}")
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs": epoch, "best_epoch": best_epoch, "best_val": best, "train_s": round(train_s, 2),
            "val_eval_s": round(val_s, 2), "sec_per_epoch": round(train_s / max(1, epoch), 3),
            "cpu_s": round(time.process_time() - cpu0, 2), "curve": curve}


def minibatch_epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, seqs: torch.Tensor, tgts: torch.Tensor,
                     batch: int, seed: int, clip_norm: float | None = None) -> Callable[[int], float]:
    """``run_epoch`` for ``fit``: one pass over (seqs, tgts) in a seeded random order,
    ``model.loss`` per mini-batch, gradients clipped to ``clip_norm`` if given; returns
    the epoch's mean loss."""
    gen = torch.Generator().manual_seed(seed)

    def run_epoch(epoch: int) -> float:
        order = torch.randperm(len(seqs), generator=gen)
        total, n = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss = model.loss(seqs[idx], tgts[idx])
            opt.zero_grad()
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        return total / max(1, n)

    return run_epoch


def left_pad(seqs: list[list[int]], length: int, shift: int = 1) -> torch.Tensor:
    """[B, length] of item index + ``shift`` (0 stays padding), right-aligned.
    [[3, 4]], length 3 -> [[0, 4, 5]]"""
    out = torch.zeros(len(seqs), length, dtype=torch.long)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if s:
            out[r, length - len(s):] = torch.tensor(s, dtype=torch.long) + shift
    return out


def training_windows(split: Split, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets, each user's training sequence cut into windows of
    ``max_len`` from the end (ids + 1; 0 = padding).  train [a, b, c] -> input [.., a, b], target [.., b, c]"""
    seqs, tgts = [], []
    for s in split.train:
        x, y = s[:-1], s[1:]
        for end in range(len(x), 0, -max_len):
            start = max(0, end - max_len)
            seqs.append(x[start:end])
            tgts.append(y[start:end])
    return left_pad(seqs, max_len), left_pad(tgts, max_len)
