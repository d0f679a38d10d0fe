"""Ask-LLM arithmetic (evaluators/askllm.py): P(yes) from first-token logprobs, the
vote-share fallback and token-budget truncation. Expected values are worked by hand."""

from __future__ import annotations

import math
import random

import pytest

from tagsmith.agents.gateway import TokenLogprob
from tagsmith.evaluators.askllm import (NO_VARIANTS, YES_VARIANTS, approx_token_count, normalise_answer,
                                        p_yes, truncate_to_tokens, vote_share)

L = math.log


def test_variants_cover_case_space_and_tokenizer_markers():
    for v in ("yes", "Yes", "YES", " yes", " Yes", " YES", "\u2581yes", "\u0120Yes"):
        assert v in YES_VARIANTS
    for v in ("no", "No", "NO", " no", " No", " NO", "\u2581No", "\u0120no"):
        assert v in NO_VARIANTS
    assert {normalise_answer(v) for v in YES_VARIANTS} == {"yes"}
    assert {normalise_answer(v) for v in NO_VARIANTS} == {"no"}
    assert not set(YES_VARIANTS) & set(NO_VARIANTS)
    # Close but different words must not count.
    assert [normalise_answer(t) for t in ("Yesterday", "Nope", "not", "y")] == ["yesterday", "nope", "not", "y"]


def test_p_yes_sums_variants_and_normalises_by_yes_plus_no():
    tok = TokenLogprob("Yes", L(0.6), [("Yes", L(0.6)), (" yes", L(0.1)), ("No", L(0.2)), ("Maybe", L(0.05))])
    score, details = p_yes(tok)
    assert score == pytest.approx(0.7 / 0.9)
    assert details["p_yes_raw"] == pytest.approx(0.7)
    assert details["p_no_raw"] == pytest.approx(0.2)
    assert details["mass_seen"] == pytest.approx(0.95)
    assert set(details) == {"p_yes_raw", "p_no_raw", "mass_seen"}


def test_p_yes_counts_marker_forms():
    tok = TokenLogprob("\u2581Yes", L(0.3), [("\u2581Yes", L(0.3)), ("\u0120no", L(0.3)), ("\u2581NO", L(0.15)),
                                             ("YES", L(0.15))])
    score, details = p_yes(tok)
    assert score == pytest.approx(0.45 / 0.9)
    assert details["p_no_raw"] == pytest.approx(0.45)


def test_p_yes_adds_the_chosen_token_when_the_top_list_lacks_it():
    tok = TokenLogprob("yes", L(0.3), [("No", L(0.5)), ("Maybe", L(0.2))])
    score, details = p_yes(tok)
    assert score == pytest.approx(0.3 / 0.8)
    assert details["mass_seen"] == pytest.approx(1.0)
    # ... but never counts it twice when it is there.
    score, details = p_yes(TokenLogprob("Yes", L(0.5), [("Yes", L(0.5)), ("No", L(0.5))]))
    assert score == pytest.approx(0.5) and details["mass_seen"] == pytest.approx(1.0)
    # With no top list at all, the chosen token alone decides.
    assert p_yes(TokenLogprob("No", -0.01, []))[0] == 0.0
    assert p_yes(TokenLogprob(" yes", -0.01))[0] == 1.0


def test_p_yes_one_sided_and_missing():
    assert p_yes(TokenLogprob("Yes", L(0.9), [("Yes", L(0.9)), ("Sure", L(0.05))]))[0] == 1.0
    assert p_yes(TokenLogprob("No", L(0.9), [("No", L(0.9)), ("Sure", L(0.05))]))[0] == 0.0
    score, details = p_yes(TokenLogprob("The", L(0.7), [("The", L(0.7)), ("This", L(0.2))]))
    assert score is None
    assert details == {"p_yes_raw": 0.0, "p_no_raw": 0.0, "mass_seen": pytest.approx(0.9)}


def test_p_yes_is_numerically_stable():
    # exp(-1000) underflows to 0 in float64; the ratio must still be sigmoid(1).
    score, details = p_yes(TokenLogprob("yes", -1000.0, [("yes", -1000.0), ("no", -1001.0)]))
    assert score == pytest.approx(1 / (1 + math.exp(-1)))
    assert details["p_yes_raw"] == 0.0
    # Large gaps saturate without overflow.
    assert p_yes(TokenLogprob("no", 0.0, [("no", 0.0), ("yes", -800.0)]))[0] == pytest.approx(0.0, abs=1e-300)
    assert p_yes(TokenLogprob("yes", 0.0, [("yes", 0.0), ("no", -800.0)]))[0] == 1.0
    # A NaN alternative is skipped, not propagated.
    score, _ = p_yes(TokenLogprob("yes", L(0.5), [("yes", L(0.5)), ("no", float("nan")), ("No", L(0.5))]))
    assert score == pytest.approx(0.5)


def test_p_yes_matches_direct_computation_on_random_cases():
    rng = random.Random(0)
    tokens = ["yes", " Yes", "YES", "no", " No", "\u2581no", "maybe", "I", "The"]
    for _ in range(200):
        chosen = rng.sample(tokens, rng.randint(1, len(tokens)))
        probs = [rng.random() for _ in chosen]
        total = sum(probs)
        probs = [p / total * rng.uniform(0.5, 1.0) for p in probs]
        top = [(t, L(p)) for t, p in zip(chosen, probs)]
        score, details = p_yes(TokenLogprob(top[0][0], top[0][1], top))
        y = sum(p for t, p in zip(chosen, probs) if t.strip("\u2581 ").lower() == "yes")
        n = sum(p for t, p in zip(chosen, probs) if t.strip("\u2581 ").lower() == "no")
        if y + n == 0:
            assert score is None
        else:
            assert score == pytest.approx(y / (y + n))
        assert details["mass_seen"] == pytest.approx(sum(probs))


def test_vote_share():
    assert vote_share(["yes", "Yes", " no", "YES"]) == pytest.approx(0.75)
    assert vote_share(["\u2581Yes", "\u0120no", "No.", "maybe", ""]) == pytest.approx(1 / 3)
    assert vote_share(["maybe", "I think"]) is None
    assert vote_share([]) is None
    assert vote_share(iter(["no"] * 20)) == 0.0


def test_truncate_default_counter_cuts_on_a_word_boundary():
    text = "the quick brown fox jumps over the lazy dog"
    assert approx_token_count(text) == 11             # 43 characters / 4, rounded up
    assert truncate_to_tokens(text, 100) == text
    cut = truncate_to_tokens(text, 4)                  # at most 16 characters
    assert cut == "the quick brown"
    assert text.startswith(cut) and approx_token_count(cut) <= 4
    assert truncate_to_tokens(text, 0) == ""
    with pytest.raises(ValueError):
        truncate_to_tokens(text, -1)


def test_truncate_with_an_injected_counter():
    words = lambda s: len(s.split())  # noqa: E731 - a one-word-one-token counter
    assert truncate_to_tokens("a b c d e", 3, count=words) == "a b c"
    # Whitespace runs and newlines are kept inside the prefix.
    assert truncate_to_tokens("a\n\nb  c d", 3, count=words) == "a\n\nb  c"
    calls = []

    def counting(s):
        calls.append(s)
        return words(s)

    truncate_to_tokens(" ".join(["w"] * 1000), 10, count=counting)
    assert len(calls) < 20                             # binary search, not a scan


def test_truncate_hard_cuts_a_single_overlong_word():
    assert truncate_to_tokens("x" * 100, 5) == "x" * 20
    assert truncate_to_tokens("abcdefghijkl rest", 2) == "abcdefgh"


def test_truncate_never_exceeds_the_budget():
    rng = random.Random(1)
    for _ in range(200):
        text = " ".join("".join(rng.choice("abcdef") for _ in range(rng.randint(1, 15)))
                        for _ in range(rng.randint(1, 60)))
        budget = rng.randint(1, 60)
        cut = truncate_to_tokens(text, budget)
        assert approx_token_count(cut) <= budget
        assert text.startswith(cut)
        # It is the longest word-boundary prefix that fits.
        rest = text[len(cut):]
        if rest and cut:
            nxt = cut + rest[: len(rest) - len(rest.lstrip())] + rest.lstrip().split(" ")[0]
            assert approx_token_count(nxt) > budget
