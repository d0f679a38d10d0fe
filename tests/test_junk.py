"""Evaluation material (evaluators/junk.py): ROC AUC against hand-computed values, junk
injection, the offline clean corpus, and the tiny byte-level language model.

Measured when written (2 CPU cores, shared): train_eval_lm on 250 Lee paragraphs, 50k
held-out bytes: 200k training bytes in ~4-9 s with 1 thread (held-out loss 2.23
nats/byte); at a 50k budget the model trained on clean text beat the one trained on junk
by 0.048 / 0.070 / 0.068 / 0.080 nats/byte for seeds 0-3."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import math
import pickle
import random

import numpy as np
import pytest

from tagsmith.evaluators.junk import JUNK_KINDS, Example, clean_corpus, inject_junk, roc_auc, train_eval_lm

needs_gensim = pytest.mark.skipif(importlib.util.find_spec("gensim") is None,
                                  reason="gensim (its bundled Lee corpus) not installed: pip install --no-deps gensim")

CLEAN = [
    "The museum reopened on Saturday after a two-year renovation. Visitors queued outside before the doors opened. "
    "The new wing holds a collection of maritime paintings donated by a local family.",
    "Farmers in the region expect a smaller wheat harvest this year. A dry winter was followed by late frosts. "
    "Prices at the regional market have already risen by ten percent.",
    "The city council voted to extend the tram line to the northern suburbs. Construction will begin next spring. "
    "Officials said the project would take three years and cost 400 million dollars.",
    "Researchers have found a new species of frog in the rainforest. It is smaller than a fingernail. "
    "The team recorded its call, a high-pitched whistle heard only after heavy rain.",
]


# -- ROC AUC ----------------------------------------------------------------------------------

def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_hand_computed():
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # Ties count half: positives 2, 3 vs negatives 1, 2 -> 1 + 0.5 + 1 + 1 = 3.5 of 4.
    assert roc_auc([1, 2, 2, 3], [0, 1, 0, 1]) == 0.875
    assert roc_auc([3, 4, 1, 2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([3, 4, 1, 2], [0, 0, 1, 1]) == 0.0
    assert roc_auc([7, 7, 7, 7, 7], [0, 1, 0, 1, 1]) == 0.5
    # One positive ranked above 2 of 3 negatives.
    assert roc_auc(np.array([0.2, 0.5, 0.9, 0.6]), np.array([0, 0, 0, 1])) == pytest.approx(2 / 3)


def test_roc_auc_matches_pairwise_counting_with_many_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 40)
        labels = [rng.randint(0, 1) for _ in range(n)]
        labels[0], labels[1] = 0, 1
        scores = [rng.randint(0, 5) for _ in range(n)]  # few values: lots of ties
        assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2, 0.3], [0, 1])


# -- junk injection ---------------------------------------------------------------------------

def test_inject_junk_labels_kinds_and_rate():
    texts = CLEAN * 5  # 20 clean
    out = inject_junk(texts, rate=0.2, seed=0)
    assert len(out) == 25                                  # 20 clean + 5 junk = 20% junk
    assert all(isinstance(ex, tuple) and len(ex) == 2 for ex in out)
    clean = [t for t, y in out if y == 0]
    junk = [ex for ex in out if ex.label == 1]
    assert sorted(clean) == sorted(texts)                  # every clean text, once, unchanged
    assert all(ex.kind == "clean" for ex in out if ex.label == 0)
    assert sorted(ex.kind for ex in junk) == sorted(JUNK_KINDS)   # one of each kind
    # Larger rate: kinds dealt round-robin, counts within one of each other.
    out = inject_junk(texts, rate=0.5, seed=0)
    kinds = [ex.kind for ex in out if ex.label]
    assert len(kinds) == 20
    counts = [kinds.count(k) for k in JUNK_KINDS]
    assert max(counts) - min(counts) <= 1
    # Junk is mixed in, not appended.
    labels = [y for _, y in out]
    assert labels != sorted(labels)
    assert sorted(inject_junk(texts, rate=0.0, seed=0)) == sorted((t, 0) for t in texts)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            inject_junk(texts, rate=bad)


def test_inject_junk_is_seeded():
    a = inject_junk(CLEAN, rate=0.5, seed=3)
    assert a == inject_junk(CLEAN, rate=0.5, seed=3)
    assert [ex.kind for ex in a] == [ex.kind for ex in inject_junk(CLEAN, rate=0.5, seed=3)]
    assert a != inject_junk(CLEAN, rate=0.5, seed=4)


def test_each_junk_kind_looks_like_what_it_claims():
    out = inject_junk(CLEAN * 10, rate=0.6, seed=1)
    by_kind = {k: [ex.text for ex in out if ex.kind == k] for k in JUNK_KINDS}
    assert all(len(v) == 12 for v in by_kind.values())
    clean_words = [sorted(t.split()) for t in CLEAN]
    for text in by_kind["boilerplate"]:
        assert any(w in text for w in ("cookies", "Privacy", "©", "newsletter", "Home |", "Sign in",
                                       "JavaScript", "Page", "Loading", "cart", "Follow us", "Click here",
                                       "trademark"))
    for text in by_kind["repetition"]:
        sentence = next(s for c in CLEAN for s in c.replace(". ", ".\n").split("\n") if text.startswith(s))
        assert text.count(sentence) >= 5
    for text in by_kind["shuffled"]:
        assert sorted(text.split()) in clean_words         # same words as a real text...
        assert text not in CLEAN                           # ...in another order
    for text in by_kind["keyboard_mash"]:
        words = text.split()
        assert 30 <= len(words) <= 80
        keys = set("".join(["qwertyuiop", "asdfghjkl", "zxcvbnm", "1234567890", ";'[]"]))
        assert all(set(w.lower()) <= keys for w in words)
        assert not any(w in " ".join(CLEAN) for w in words if len(w) > 4)
    for text in by_kind["fragment"]:
        assert 3 <= len(text.split()) <= 8
        assert any(text in c for c in CLEAN)               # a contiguous cut
        assert not any(c.startswith(text) for c in CLEAN)  # from the middle, not the start


def test_example_is_a_pair_that_keeps_its_kind():
    ex = Example("zxcv", 1, "keyboard_mash")
    text, label = ex
    assert (text, label) == ex and ex.text == "zxcv" and ex.label == 1
    for clone in (copy.copy(ex), copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
        assert clone == ex and clone.kind == "keyboard_mash"


def test_junk_is_separable_by_a_simple_score():
    """The ROC machinery end to end: a crude quality score (share of distinct words that
    are common English words seen in clean text) separates most junk from clean text."""
    out = inject_junk(CLEAN * 5, rate=0.5, seed=2)
    vocab = {w.lower().strip(".,") for t in CLEAN for w in t.split()}

    def quality(text):
        words = [w.lower().strip(".,") for w in text.split()]
        known = sum(w in vocab for w in words) / max(1, len(words))
        distinct = len(set(words)) / max(1, len(words))
        return known * distinct * min(1.0, len(words) / 20)

    scores = [quality(t) for t, _ in out]
    labels = [y for _, y in out]
    auc = roc_auc([-s for s in scores], labels)            # junk = positive: low quality ranks high
    assert auc > 0.9                                       # measured 0.975
    assert roc_auc(scores, [1 - y for y in labels]) == pytest.approx(auc)


# -- clean corpus -----------------------------------------------------------------------------

@needs_gensim
def test_clean_corpus_is_real_paragraphs():
    paras = clean_corpus()
    assert len(paras) >= 300
    assert all(len(p.split()) >= 30 for p in paras)
    assert len(set(paras)) == len(paras)
    assert all("\n" not in p for p in paras)
    assert clean_corpus(limit=7) == paras[:7]
    # English news prose: common function words are everywhere.
    assert sum(" the " in p for p in paras) > 0.95 * len(paras)


# -- the tiny language model ------------------------------------------------------------------

@needs_gensim
def test_lm_trained_on_clean_text_beats_one_trained_on_junk():
    import torch

    texts = clean_corpus()
    train, held = texts[:250], texts[250:]
    junk = [ex.text for ex in inject_junk(train, rate=0.5, seed=0) if ex.label]
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)

    clean_run = train_eval_lm(train, held, token_budget=50_000, seed=0, max_heldout_tokens=20_000)
    junk_run = train_eval_lm(junk, held, token_budget=50_000, seed=0, max_heldout_tokens=20_000)

    assert torch.rand(1) == expected_draw                  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads              # and so is the thread count
    assert clean_run["train_tokens"] == junk_run["train_tokens"] == 50_000   # equal budgets
    assert clean_run["heldout_tokens"] == junk_run["heldout_tokens"] == 20_000
    # Measured margin 0.048 nats/byte at seed 0 (0.05-0.08 over seeds 0-3).
    assert clean_run["heldout_loss"] < junk_run["heldout_loss"] - 0.02
    assert clean_run["heldout_loss"] < math.log(256) - 2.5   # far below uniform (5.55)
    for r in (clean_run, junk_run):
        assert r["wall_s"] >= r["train_s"] > 0 and r["eval_s"] >= 0
    # Same seed, same numbers.
    runs = [train_eval_lm(train[:20], held[:5], token_budget=3_000, seed=0, max_heldout_tokens=2_000)
            for _ in range(2)]
    assert runs[0]["heldout_loss"] == runs[1]["heldout_loss"] and runs[0]["train_loss"] == runs[1]["train_loss"]


def test_lm_cycles_a_small_subset_to_the_exact_budget():
    r = train_eval_lm(CLEAN[:1], CLEAN[1:], token_budget=1_001, seed=1, seq_len=16, batch_size=4)
    assert r["train_tokens"] == 1_001                      # ~5 passes over one 230-byte text
    assert r["steps"] == math.ceil(math.ceil(1_001 / 16) / 4)
    assert r["heldout_tokens"] == sum(len(t.encode()) + 2 for t in CLEAN[1:]) - 1
    assert set(r) == {"heldout_loss", "heldout_tokens", "train_loss", "train_tokens", "steps",
                      "train_s", "eval_s", "wall_s"}
    with pytest.raises(ValueError):
        train_eval_lm([], CLEAN, token_budget=100)
    with pytest.raises(ValueError):
        train_eval_lm(CLEAN, CLEAN, token_budget=0)


def test_lm_restores_a_thread_setting():
    import torch

    before = torch.get_num_threads()  # the machine's cores (2 here), so 1 is a change
    train_eval_lm(CLEAN[:2], CLEAN[2:], token_budget=200, seed=0, seq_len=16, num_threads=1)
    assert torch.get_num_threads() == before
    train_eval_lm(CLEAN[:2], CLEAN[2:], token_budget=64, seed=0, seq_len=16, num_threads=None)
    assert torch.get_num_threads() == before
