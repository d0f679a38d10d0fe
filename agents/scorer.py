"""The Ask-LLM scorer: P("yes") that a document is informative for pre-training.

The score is read from the logprobs of the first answer token (all variants of yes
against all variants of no, evaluators/askllm.py). Where the provider returns no logprobs,
or none of the top-k tokens is yes or no, the documented fallback takes k one-token
samples and scores the share of yes among the yes/no answers; the method is stored with
every score.

    r = await ask(gateway, "Paris is the capital of France ...", top_logprobs=10, samples=8)
    r.score, r.method    -> (0.73, "logprobs")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tagsmith.agents.gateway import Gateway
from tagsmith.evaluators.askllm import p_yes, truncate_to_tokens, vote_share
from tagsmith.prompts import load, render

PROMPTS = ("askllm_system", "askllm")


@dataclass
class ScoreResult:
    score: float | None
    method: str  # "logprobs" | "votes" | "none"
    details: dict = field(default_factory=dict)


async def ask(gateway: Gateway, text: str, *, max_doc_tokens: int = 512, top_logprobs: int = 10,
              samples: int = 8, fallback: bool = True, node: str = "score") -> ScoreResult:
    prompt = render("askllm", example=truncate_to_tokens(text, max_doc_tokens))
    system = load("askllm_system")
    r = await gateway.call(prompt, system=system, logprobs=top_logprobs, max_tokens=1, temperature=0.0, node=node)
    details: dict = {"first_token": r.text}
    if r.logprobs:
        score, info = p_yes(r.logprobs[0])
        details.update(info)
        if score is not None:
            return ScoreResult(score, "logprobs", details)
        details["logprobs"] = "no yes/no among the top tokens"
    else:
        details["logprobs"] = "none returned"
    if not fallback or samples < 1:
        return ScoreResult(None, "none", details)
    answers = []
    for i in range(samples):  # distinct sample indices: distinct cache keys, fresh draws
        s = await gateway.call(prompt, system=system, max_tokens=1, temperature=1.0, sample=i + 1,
                               node=node + ".vote")
        answers.append(s.text)
    details["answers"] = answers
    share = vote_share(answers)
    return ScoreResult(share, "votes" if share is not None else "none", details)
