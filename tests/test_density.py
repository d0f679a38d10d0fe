"""The LSH density sketch against exact kernel density, inverse-propensity sampling, and
subset selection (evaluators/density.py, evaluators/selection.py).

Measured when these tests were written (seed 0, defaults rows=128, width=2.0, 8
projections): Spearman rho between the sketch and the exact LSH-kernel KDE on a 2,000
point mixture of 9 clusters (sizes 1000 ... 10) was 0.985 / 0.970 / 0.923 in 16 / 64 /
384 dims, and against a Gaussian KDE of bandwidth 0.4 (the best match of 0.2-0.5)
0.985 / 0.970 / 0.923; on one heavy-tailed blob in 16 dims (density varying smoothly,
no cluster structure to lean on) 0.985."""

from __future__ import annotations

import numpy as np
import pytest

from tagsmith.evaluators.density import (LSHDensitySketch, exact_kde, inverse_propensity_sample,
                                         lsh_collision_probability)
from tagsmith.evaluators.selection import select, selection_report, selection_size

SIZES = [1000, 500, 250, 120, 60, 30, 20, 10, 10]  # 2,000 points, 100:1 between extremes


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        xs = x[order]
        starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
        lengths = np.diff(np.r_[starts, len(xs)])
        r = np.empty(len(x))
        r[order] = np.repeat(starts + (lengths + 1) / 2.0, lengths)
        return r
    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


def mixture(dim: int, sizes=tuple(SIZES), spread: float = 0.6, seed: int = 0):
    """Unit vectors around random unit centres, like sentence embeddings: within a
    cluster points are ~0.85 apart, across clusters ~1.4."""
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for i, n in enumerate(sizes):
        centre = rng.normal(size=dim)
        centre /= np.linalg.norm(centre)
        p = centre + rng.normal(size=(n, dim)) * spread / np.sqrt(dim)
        points.append(p / np.linalg.norm(p, axis=1, keepdims=True))
        labels += [i] * n
    return np.vstack(points), np.array(labels)


# -- the hash and its kernel ------------------------------------------------------------------

def test_collision_probability_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n = 400_000
    for c in (0.3, 1.0, 2.5):
        # One p-stable hash: a.x ~ N(0, |x|^2), so a.(x - y) ~ N(0, c^2); b ~ U[0, w).
        u, v, b = rng.normal(size=n) * 5, rng.normal(size=n) * c, rng.uniform(0, 1, n)
        empirical = (np.floor(u + b) == np.floor(u + v + b)).mean()
        assert lsh_collision_probability(c, 1.0) == pytest.approx(empirical, abs=0.005)
    assert float(lsh_collision_probability(0.0, 1.0)) == 1.0
    # Monotone decreasing in distance, increasing in width.
    p = lsh_collision_probability(np.linspace(0.1, 3, 30), 1.0)
    assert np.all(np.diff(p) < 0)
    assert lsh_collision_probability(1.0, 2.0) > lsh_collision_probability(1.0, 1.0)


def test_sketch_rows_collide_at_the_kernel_rate():
    """Two points at distance c share a bucket in a fraction p(c)^P of rows: the hash
    implementation (projections, combination, mod B) realises the kernel it claims."""
    dim = 32
    rng = np.random.default_rng(1)
    x = rng.normal(size=dim)
    for c in (0.5, 1.0, 2.0):
        step = rng.normal(size=dim)
        y = x + c * step / np.linalg.norm(step)
        s = LSHDensitySketch(dim, rows=2000, buckets=1 << 12, width=2.0, projections=4, seed=2)
        same = (s.buckets_of(x) == s.buckets_of(y)).mean()
        assert same == pytest.approx(float(s.kernel(c)), abs=0.035), c


def test_sketch_is_deterministic_and_chunking_does_not_matter():
    X, _ = mixture(24, sizes=(300, 50))
    a = LSHDensitySketch(24, seed=5).fit(X).density(X)
    b = LSHDensitySketch(24, seed=5, chunk_size=7).fit(X).density(X)
    np.testing.assert_array_equal(a, b)
    # Fitting in two calls is the same as fitting once.
    c = LSHDensitySketch(24, seed=5).fit(X[:100]).fit(X[100:])
    np.testing.assert_array_equal(c.density(X), a)
    assert c.n == len(X)
    # Another seed is another sketch.
    assert not np.array_equal(LSHDensitySketch(24, seed=6).fit(X).density(X), a)


def test_sketch_density_bounds_and_errors():
    X, _ = mixture(16, sizes=(200, 20))
    s = LSHDensitySketch(16, seed=0)
    with pytest.raises(ValueError, match="empty"):
        s.density(X)
    s.fit(X)
    d = s.density(X)
    assert d.shape == (len(X),) and d.dtype == np.float64
    assert np.all(d >= 1 / len(X)) and np.all(d <= 1)  # every fitted point counts itself
    assert s.density(X[0]).shape == (1,)                   # a single vector is one row
    with pytest.raises(ValueError, match="shape"):
        s.density(np.zeros((3, 15)))
    with pytest.raises(ValueError):
        LSHDensitySketch(16, width=0)


def test_exact_kde_hand_computed():
    X = np.array([[0.0, 0.0], [3.0, 4.0]])  # 5 apart
    g = exact_kde(X, bandwidth=5.0)
    # mean of k(self)=1 and k(5) = exp(-25/50)
    np.testing.assert_allclose(g, [(1 + np.exp(-0.5)) / 2] * 2)
    y = exact_kde(X, np.array([[0.0, 0.0]]), bandwidth=1.0, kernel="lsh", projections=2)
    np.testing.assert_allclose(y, [(1 + lsh_collision_probability(5.0, 1.0) ** 2) / 2])
    with pytest.raises(ValueError):
        exact_kde(X, kernel="epanechnikov")
    with pytest.raises(ValueError):
        exact_kde(X, np.zeros((1, 3)))


# -- sketch vs exact --------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [16, 64, 384])
def test_sketch_ranks_like_exact_kde_on_a_mixture(dim):
    X, _ = mixture(dim)
    sketch = LSHDensitySketch(dim, seed=0).fit(X).density(X)
    # Same kernel as the sketch: the sketch is an unbiased estimate of this.
    assert spearman(sketch, exact_kde(X, bandwidth=2.0, kernel="lsh", projections=8)) > 0.85
    # A Gaussian KDE of bandwidth 0.4 ranks points like the width-2, 8-projection LSH kernel.
    assert spearman(sketch, exact_kde(X, bandwidth=0.4)) > 0.85


def test_sketch_follows_smooth_density_within_one_blob():
    """No clusters: a heavy-tailed cloud whose density falls off from the centre, so the
    correlation must come from resolving neighbourhoods, not from cluster sizes."""
    X = np.random.default_rng(0).standard_t(3, size=(2000, 16)) * 0.15
    sketch = LSHDensitySketch(16, seed=0).fit(X).density(X)
    assert spearman(sketch, exact_kde(X, bandwidth=2.0, kernel="lsh", projections=8)) > 0.95
    # The densest points are the central ones.
    radius = np.linalg.norm(X, axis=1)
    assert spearman(sketch, -radius) > 0.8


def test_bigger_clusters_are_denser():
    X, labels = mixture(64)
    d = LSHDensitySketch(64, seed=0).fit(X).density(X)
    means = np.array([d[labels == i].mean() for i in range(len(SIZES))])
    assert np.all(np.diff(means[:4]) < 0)         # 1000 > 500 > 250 > 120
    assert means[:3].min() > 2 * means[5:].max()   # the three big ones vs the tiny ones


# -- inverse propensity sampling --------------------------------------------------------------

def test_inverse_propensity_covers_the_rare_clusters():
    X, labels = mixture(64)
    d = LSHDensitySketch(64, seed=0).fit(X).density(X)
    k = 100
    rare = np.isin(labels, [5, 6, 7, 8])            # 70 of 2,000 points (3.5%)
    ip_rare, uni_rare, ip_hit, uni_hit = [], [], [], []
    for seed in range(5):
        ip = inverse_propensity_sample(d, k, seed=seed)
        uni = np.random.default_rng(seed).choice(len(X), k, replace=False)
        assert len(set(ip.tolist())) == k             # without replacement
        ip_rare.append(rare[ip].mean())
        uni_rare.append(rare[uni].mean())
        ip_hit.append(len(set(labels[ip])))
        uni_hit.append(len(set(labels[uni])))
    # Uniform gives ~3.5% from the rare clusters; inverse propensity several times that.
    assert np.mean(ip_rare) > 3 * np.mean(uni_rare)
    assert np.mean(ip_hit) > np.mean(uni_hit)
    assert min(ip_hit) >= 8                         # of 9 clusters, every time


def test_inverse_propensity_sampling_contract():
    d = np.array([0.5, 0.25, 0.125, 0.0])
    a = inverse_propensity_sample(d, 3, seed=4)
    np.testing.assert_array_equal(a, inverse_propensity_sample(d, 3, seed=4))
    assert a.dtype == np.int64 and len(set(a.tolist())) == 3
    assert sorted(inverse_propensity_sample(d, 4, seed=0).tolist()) == [0, 1, 2, 3]
    assert len(inverse_propensity_sample(d, 0)) == 0
    with pytest.raises(ValueError):
        inverse_propensity_sample(d, 5)
    with pytest.raises(ValueError):
        inverse_propensity_sample(np.array([0.1, np.nan]), 1)
    # First-draw frequencies follow 1/density: weights 2 : 4 : 8 (and the zero-density
    # point is treated as the rarest seen, weight 8).
    first = np.array([inverse_propensity_sample(d, 1, seed=s)[0] for s in range(4000)])
    freq = np.bincount(first, minlength=4) / len(first)
    np.testing.assert_allclose(freq, np.array([2, 4, 8, 8]) / 22, atol=0.025)


# -- selection --------------------------------------------------------------------------------

IDS = [f"d{i}" for i in range(10)]
SCORES = [0.1, 0.9, 0.5, None, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4]


def test_selection_size_rounding():
    assert selection_size(10, 0.25) == 3      # 2.5 rounds up, not to even
    assert selection_size(10, 0.01) == 1      # at least one
    assert selection_size(7, 1.0) == 7
    assert selection_size(0, 0.5) == 0
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            selection_size(10, bad)


def test_select_askllm_top_k_and_missing_scores_rank_last():
    assert select(IDS, "askllm", 0.3, askllm=SCORES) == ["d1", "d6", "d4"]
    # The mapping form; an id absent from the mapping is unscored.
    as_map = {i: s for i, s in zip(IDS, SCORES) if s is not None}
    assert select(IDS, "askllm", 0.3, askllm=as_map) == ["d1", "d6", "d4"]
    full = select(IDS, "askllm", 1.0, askllm=SCORES)
    assert full[-1] == "d3" and len(full) == 10
    nan_scores = [np.nan if s is None else s for s in SCORES]
    assert select(IDS, "askllm", 1.0, askllm=nan_scores)[-1] == "d3"


def test_select_ties_are_seeded_not_positional():
    ids = [f"t{i}" for i in range(20)]
    tied = [0.5] * 20
    picks = {tuple(select(ids, "askllm", 0.25, askllm=tied, seed=s)) for s in range(6)}
    assert len(picks) > 1
    assert select(ids, "askllm", 0.25, askllm=tied, seed=3) == select(ids, "askllm", 0.25, askllm=tied, seed=3)


def test_select_errors_name_the_missing_scores():
    with pytest.raises(ValueError, match="Ask-LLM"):
        select(IDS, "askllm", 0.5)
    with pytest.raises(ValueError, match="Ask-LLM"):
        select(IDS, "askllm", 0.5, askllm=[None] * 10)
    with pytest.raises(ValueError, match="density"):
        select(IDS, "density", 0.5)
    with pytest.raises(ValueError, match="1 are missing"):
        select(IDS, "combined", 0.5, askllm=SCORES, density=[0.1] * 9 + [None])
    with pytest.raises(ValueError, match="unknown selection method"):
        select(IDS, "best", 0.5)
    with pytest.raises(ValueError, match="9 scores for 10 ids"):
        select(IDS, "askllm", 0.5, askllm=SCORES[:9])
    with pytest.raises(ValueError, match="unique"):
        select(["a", "a"], "random", 0.5)


def test_select_random_and_density():
    ids = [f"r{i}" for i in range(100)]
    r = select(ids, "random", 0.2, seed=1)
    assert len(r) == 20 and len(set(r)) == 20 and r == select(ids, "random", 0.2, seed=1)
    assert r != select(ids, "random", 0.2, seed=2)
    assert select([], "random", 0.5) == []
    # Ten rare documents (density 0.001) among 90 common ones (0.1): each rare one is
    # 100 times as likely per draw, so a 10% sample is mostly rare (uniform: 1 of 10).
    density = [0.1] * 90 + [0.001] * 10
    rare = [sum(p in ids[90:] for p in select(ids, "density", 0.1, density=density, seed=s)) for s in range(20)]
    assert np.mean(rare) > 6 and min(rare) >= 4


def test_select_combined_takes_the_best_in_every_stratum():
    ids = [f"c{i}" for i in range(100)]
    rng = np.random.default_rng(0)
    density = rng.permutation(np.linspace(0.01, 1.0, 100))
    # Quality rises with density, so plain top-k would take only the densest documents.
    quality = density + rng.normal(0, 0.001, 100)
    picked = select(ids, "combined", 0.2, askllm=quality, density=density, strata=5)
    assert len(picked) == 20
    rank = np.argsort(np.argsort(density))             # 0 = least dense
    strata = [rank[ids.index(p)] // 20 for p in picked]
    assert np.bincount(strata, minlength=5).tolist() == [4, 4, 4, 4, 4]
    # Within each stratum, the four best scores.
    for s in range(5):
        members = [i for i in range(100) if rank[i] // 20 == s]
        best = sorted(members, key=lambda i: -quality[i])[:4]
        assert {ids[i] for i in best} == {p for p in picked if rank[ids.index(p)] // 20 == s}
    # Returned best first.
    q = [quality[ids.index(p)] for p in picked]
    assert q == sorted(q, reverse=True)
    top = select(ids, "askllm", 0.2, askllm=quality)
    assert {rank[ids.index(p)] // 20 for p in top} == {4}


def test_selection_report():
    picked = select(IDS, "askllm", 0.3, askllm=SCORES)
    density = [0.5] * 5 + [0.1] * 5
    labels = [0, 0, 1, 0, 0, 0, 1, 1, 0, 0]
    r = selection_report(IDS, picked, askllm=SCORES, density=density, labels=labels)
    assert r["n_total"] == 10 and r["n_selected"] == 3 and r["rate"] == pytest.approx(0.3)
    assert r["askllm"]["mean_selected"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert r["askllm"]["mean_all"] == pytest.approx(4.5 / 9)
    assert r["askllm"]["scored_all"] == 9 and r["askllm"]["scored_selected"] == 3
    assert r["density"]["mean_selected"] == pytest.approx((0.5 + 0.1 + 0.5) / 3)
    assert r["labels"] == {"junk_rate_all": pytest.approx(0.3), "junk_rate_selected": pytest.approx(1 / 3)}
    assert "density" not in selection_report(IDS, picked)
    with pytest.raises(ValueError, match="not in the corpus"):
        selection_report(IDS, ["nope"])
