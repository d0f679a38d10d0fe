"""The arithmetic of Ask-LLM scoring (arXiv 2402.09668), without any model call.

The scorer asks a model whether a paragraph is worth pre-training on and reads the first
generated token: ``score = P(yes) / (P(yes) + P(no))``, where P(yes) sums the
probabilities of every spelling of "yes" the tokenizer may produce (yes, Yes, YES, with a
leading space, SentencePiece's "▁yes", byte-level BPE's "Ġyes") and likewise for "no".
Providers without logprobs fall back to sampling k one-token answers and taking the share
of yes votes (QuRating used 20 samples).

    >>> from tagsmith.core.llm import TokenLogprob
    >>> tok = TokenLogprob("Yes", math.log(0.6), [("Yes", math.log(0.6)), (" yes", math.log(0.1)),
    ...                                          ("No", math.log(0.2)), ("Maybe", math.log(0.05))])
    >>> score, details = p_yes(tok)
    >>> round(score, 4), round(details["p_yes_raw"], 2), round(details["mass_seen"], 2)
    (0.7778, 0.7, 0.95)
    >>> vote_share(["Yes", " no", "yes.", "maybe"])
    0.6666666666666666
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

from tagsmith.core.llm import TokenLogprob

__all__ = ["YES_VARIANTS", "NO_VARIANTS", "normalise_answer", "p_yes", "vote_share",
           "approx_token_count", "truncate_to_tokens"]

# Word-start markers tokenizers put in front of a token: SentencePiece "▁" (U+2581) and
# GPT-2-style byte-level BPE "Ġ" (a space) and "Ċ" (a newline).
_MARKERS = "\u2581\u0120\u010a"


def _variants(word: str) -> tuple[str, ...]:
    cases = (word, word.capitalize(), word.upper())
    return tuple(prefix + c for prefix in ("", " ", "\u2581", "\u0120") for c in cases)


# The spellings the paper sums, plus the marker forms of the two common tokenizer
# families. Matching goes through normalise_answer, so these lists document what counts
# (and serve as logit-bias targets for the sampling fallback) rather than limit it.
YES_VARIANTS: tuple[str, ...] = _variants("yes")
NO_VARIANTS: tuple[str, ...] = _variants("no")


def normalise_answer(token: str) -> str:
    """Lower-case ``token`` with word-start markers, whitespace and surrounding punctuation
    removed, so every variant of an answer compares equal to "yes" or "no".

    Punctuation is stripped because sampled answers often arrive as "Yes." or "No,".

        >>> [normalise_answer(t) for t in [" Yes", "\u2581NO", "\u0120yes", "Yes.", "Nope"]]
        ['yes', 'no', 'yes', 'yes', 'nope']
    """
    return token.strip(_MARKERS + " \t\r\n").strip(".,!?:;\"'`*()[]").strip().lower()


def _logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))) without overflow or underflow; -inf for an empty list."""
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def p_yes(first_token: "TokenLogprob") -> tuple[float | None, dict]:
    """Ask-LLM score from the logprobs of the first generated token.

    Candidates are the token's top-k alternatives plus the chosen token itself when the
    top list lacks it. The score is ``P(yes) / (P(yes) + P(no))`` summed over all yes/no
    variants, computed as ``sigmoid(logsumexp(yes) - logsumexp(no))`` so that tiny
    logprobs (-200) neither underflow nor divide 0 by 0. When only one side appears the
    score is 1.0 or 0.0 (the other side is below the top-k cut-off). When neither appears
    the score is None and the caller should fall back (e.g. to ``vote_share``).

    ``details``: ``p_yes_raw`` and ``p_no_raw``, the summed probabilities, and
    ``mass_seen``, the total probability of the candidates (how much of the distribution
    the top-k covered; a small value means the answer was mostly something else).

        >>> from tagsmith.core.llm import TokenLogprob
        >>> round(p_yes(TokenLogprob("No", -0.1, [("No", -0.1), ("\u2581no", -3.0), ("Yes", -2.5)]))[0], 4)
        0.0792
        >>> p_yes(TokenLogprob("The", -0.2, [("The", -0.2), ("This", -2.0)]))[0] is None
        True
    """
    candidates: list[tuple[str, float]] = list(first_token.top or [])
    if first_token.token not in {tok for tok, _ in candidates}:
        candidates.append((first_token.token, first_token.logprob))
    yes: list[float] = []
    no: list[float] = []
    seen: list[float] = []
    for token, logprob in candidates:
        if logprob is None or math.isnan(logprob):
            continue  # a provider that sends no number for an alternative tells us nothing
        seen.append(logprob)
        answer = normalise_answer(token)
        if answer == "yes":
            yes.append(logprob)
        elif answer == "no":
            no.append(logprob)
    log_yes, log_no = _logsumexp(yes), _logsumexp(no)
    details = {"p_yes_raw": math.exp(log_yes), "p_no_raw": math.exp(log_no),
               "mass_seen": math.exp(_logsumexp(seen))}
    if log_yes == -math.inf and log_no == -math.inf:
        return None, details
    diff = log_yes - log_no  # may be +-inf when one side is missing; the branches handle it
    if diff >= 0:
        score = 1.0 / (1.0 + math.exp(-diff))
    else:
        e = math.exp(diff)
        score = e / (1.0 + e)
    return score, details


def vote_share(answers: Iterable[str]) -> float | None:
    """Share of "yes" among the yes/no answers of k sampled one-token completions (the
    fallback for providers without logprobs). Other answers are ignored; None when no
    answer is yes or no.

        >>> vote_share([" Yes", "NO", "yes", "\u2581yes"])
        0.75
        >>> vote_share(["maybe", ""]) is None
        True
    """
    yes = no = 0
    for answer in answers:
        a = normalise_answer(answer or "")
        yes += a == "yes"
        no += a == "no"
    return yes / (yes + no) if yes + no else None


# -- truncation ----------------------------------------------------------------------------

def approx_token_count(text: str) -> int:
    """Tokens in ``text`` estimated as ceil(characters / 4), the usual rule of thumb for
    English under BPE tokenizers (GPT-2/Llama/SmolLM run 3.5-4.5 characters per token on
    prose; code and non-Latin scripts take more tokens, so leave headroom there).

        >>> approx_token_count("four"), approx_token_count("hello world")
        (1, 3)
    """
    return math.ceil(len(text) / 4)


_WORD_END = re.compile(r"\S+")


def truncate_to_tokens(text: str, max_tokens: int, count: Callable[[str], int] | None = None) -> str:
    """The longest prefix of ``text`` that ends on a word boundary and fits ``max_tokens``
    by ``count`` (default: ``approx_token_count``, ~4 characters a token).

    A scorer prompt must fit the model's context, and cutting mid-word would show the
    model a junk-looking fragment. ``count`` may be any monotone counter, e.g. a real
    tokenizer's ``lambda s: len(tok.encode(s))``; it is called O(log n) times (binary
    search over word ends). If not even the first word fits, the text is cut inside it.

        >>> truncate_to_tokens("the quick brown fox jumps", 4)     # 16 characters allowed
        'the quick brown'
        >>> truncate_to_tokens("the quick brown fox", 3, count=lambda s: len(s.split()))
        'the quick brown'
        >>> truncate_to_tokens("short", 10)
        'short'
    """
    if max_tokens < 0:
        raise ValueError("max_tokens must be non-negative")
    count = count or approx_token_count
    if count(text) <= max_tokens:
        return text
    ends = [m.end() for m in _WORD_END.finditer(text)]

    def longest(cuts: Sequence[int]) -> int:
        """Index into ``cuts`` of the longest prefix that fits, or -1 (binary search)."""
        lo, hi = 0, len(cuts) - 1
        best = -1
        while lo <= hi:
            mid = (lo + hi) // 2
            if count(text[:cuts[mid]]) <= max_tokens:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    i = longest(ends)
    if i >= 0:
        return text[:ends[i]].strip()
    # Not even one word fits: a hard cut inside it beats returning nothing.
    first_end = ends[0] if ends else len(text)
    j = longest(range(1, first_end + 1))
    return text[:j + 1].strip() if j >= 0 else ""
