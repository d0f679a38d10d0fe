"""PACEvolve's search control, as pure functions: momentum-based backtracking (MBB) and the
self-adaptive choice between backtracking and crossover (CE). Scores are sign-normalised so
that lower is better (``TaskConfig.normalised``); ``target`` is normalised the same way.

    >>> relative_progress(prev=10.0, new=4.0, target=0.0)      # covered 60% of the gap
    0.6
    >>> momentum(0.0, 0.6, beta=0.85)
    0.09
    >>> action_weights(A=[0.9, 0.2], i=1)   # island 1 lags: crossover with the leader wins
    {'backtrack': 0.024, 'crossover': {0: 0.754}}

(j* = 0 and sim = 1 - |0.2 - 0.9| = 0.3, so w_backtrack = 0 + 0.3 * 0.8 * 0.1 and
w_cross(0) = 0.7 + 0.3 * 0.2 * 0.9; see :func:`action_weights`.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tagsmith.core.config import EvolveConfig
from tagsmith.pipelines.evolution_models import PoolEntry


@dataclass
class ControlConfig:
    beta: float = 0.85  # momentum decay
    epsilon: float = 0.001  # trigger threshold on momentum
    freeze: int = 15  # iterations after a backtrack/crossover before the next trigger
    backtrack_len: int = 5  # iterations that use the backtrack parent
    alpha: float = 1.5  # P(snapshot k) ~ (k + 1) ** -alpha, k = 0 the oldest
    tournament: int = 3  # refinement: tournament size among the island's top candidates
    top_pool: int = 8  # candidates kept per island for tournaments
    backtracking: bool = True  # the baseline turns both off
    crossover: bool = True


def control_config(cfg: EvolveConfig) -> ControlConfig:
    """The control's knobs from the pipeline.evolve section."""
    return ControlConfig(beta=cfg.beta, epsilon=cfg.epsilon, freeze=cfg.freeze, backtrack_len=cfg.backtrack_len,
                         alpha=cfg.alpha, tournament=cfg.tournament, top_pool=cfg.top_pool,
                         backtracking=cfg.backtracking, crossover=cfg.crossover)


def relative_progress(prev: float, new: float, target: float, tiny: float = 1e-12) -> float:
    """R_t = (s_{t-1} - s_t) / (s_{t-1} - r); 0 when there is no gap left to close or no
    improvement. Lower is better."""
    gap = prev - target
    if abs(gap) < tiny or new >= prev:
        return 0.0
    return (prev - new) / gap


def momentum(m: float, r: float, beta: float) -> float:
    """m_t = beta * m_{t-1} + (1 - beta) * R_t"""
    return round(beta * m + (1 - beta) * r, 15)


def absolute_progress(first: float, best: float, target: float, tiny: float = 1e-12) -> float:
    """A = clip((s_0 - s_t) / (s_0 - r), 0, 1): how much of the way to the target an island went."""
    gap = first - target
    if abs(gap) < tiny:
        return 1.0
    return min(1.0, max(0.0, (first - best) / gap))


def should_trigger(m: float, updates: int, iters_since_action: int, cfg: ControlConfig) -> bool:
    return m < cfg.epsilon and updates > 1 and iters_since_action > cfg.freeze


def action_weights(A: list[float], i: int) -> dict:
    """CE weights for triggered island i given every island's absolute progress A.

    w_backtrack = max(0, A_i - A_j*) + sim * (1 - A_i) * (1 - A_j*)     (dominance; both stuck)
    w_cross(j)  = max(0, A_j - A_i) + [j = j*] * sim * A_i * A_j*      (gain; both good)
    with j* = argmax_{j != i} A_j and sim = max(0, 1 - |A_i - A_j*|)."""
    others = [j for j in range(len(A)) if j != i]
    if not others:
        return {"backtrack": 1.0, "crossover": {}}
    j_star = max(others, key=lambda j: (A[j], -j))
    sim = max(0.0, 1.0 - abs(A[i] - A[j_star]))
    wb = max(0.0, A[i] - A[j_star]) + sim * (1 - A[i]) * (1 - A[j_star])
    wc = {j: max(0.0, A[j] - A[i]) + (sim * A[i] * A[j_star] if j == j_star else 0.0) for j in others}
    return {"backtrack": round(wb, 12), "crossover": {j: round(w, 12) for j, w in wc.items() if w > 0}}


def choose_action(A: list[float], i: int, rng: random.Random, cfg: ControlConfig) -> tuple[str, int | None]:
    """Sample backtrack or crossover(j) in proportion to the CE weights; backtrack when all
    weights are zero or there is one island. With one mechanism disabled, the other is used."""
    if not cfg.backtracking and not cfg.crossover:
        return "refine", None
    w = action_weights(A, i)
    options: list[tuple[str, int | None, float]] = []
    if cfg.backtracking:
        options.append(("backtrack", None, w["backtrack"]))
    if cfg.crossover:
        options += [("crossover", j, wj) for j, wj in w["crossover"].items()]
    total = sum(o[2] for o in options)
    if total <= 0:
        return ("backtrack", None) if cfg.backtracking else ("crossover", max(
            (j for j in range(len(A)) if j != i), key=lambda j: A[j], default=None))
    x = rng.random() * total
    for name, j, weight in options:
        x -= weight
        if x < 0:
            return name, j
    return options[-1][0], options[-1][1]


def snapshot_index(n: int, rng: random.Random, alpha: float) -> int:
    """Pick snapshot k in [0, n) with P(k) ~ (k + 1) ** -alpha: early states are favoured."""
    weights = [(k + 1) ** -alpha for k in range(n)]
    return rng.choices(range(n), weights=weights, k=1)[0]


def tournament(pool: list[PoolEntry], rng: random.Random, size: int) -> PoolEntry:
    """Refinement parent: the best (lowest normalised score) of ``size`` random members.
    (A copy of PACEvolve's code took the max even for minimised metrics; scores here are
    normalised, so min is right for both directions.)

    >>> pool = [PoolEntry(cid="a", norm=-3.0), PoolEntry(cid="b", norm=-1.0)]
    >>> tournament(pool, random.Random(0), size=2).cid
    'a'
    """
    contenders = rng.sample(pool, min(size, len(pool)))
    return min(contenders, key=lambda c: c.norm)
