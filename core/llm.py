"""What a model call returns that code outside the gateway reads: token log-probabilities.

    >>> tok = TokenLogprob("Yes", -0.1, [("Yes", -0.1), ("No", -2.4)])
    >>> tok.top[1][0]
    'No'
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """One generated token, its log-probability and the top-k alternatives (best first)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)
