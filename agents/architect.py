"""The architect: drafts the vocabulary, then revises it with edit operations.

    vocab = await draft(gateway, sample_items, bounds, domain="movies")
    plan = await revise(gateway, vocab, feedback_text, bounds, domain="movies", round_no=1, ...)
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tagsmith.agents.common import render_items
from tagsmith.agents.gateway import Gateway
from tagsmith.prompts import render
from tagsmith.core.vocabulary import Bounds, Edit, Facet, Vocabulary, normalise

PROMPTS = ("architect_system", "architect_draft", "architect_revise")


class DraftVocabulary(BaseModel):
    facets: list[Facet] = Field(min_length=1)


class EditPlan(BaseModel):
    operations: list[Edit] = Field(default_factory=list)
    rationale: str = ""


async def draft(gateway: Gateway, items: list[dict], bounds: Bounds, *, domain: str,
                seed: Vocabulary | None = None, node: str = "draft", max_tokens: int = 1500) -> Vocabulary:
    """Draft from a sample. With ``seed`` facets, the architect adds the other facets and the
    seed comes first, unchanged (seed names win any clash)."""
    seed = seed or Vocabulary()
    seed_text = ""
    if seed.facets:
        seed_text = ("These facets already exist; keep them out of your reply and draft the other facets:\n"
                     + seed.render(definitions=False) + "\n")
    prompt = render("architect_draft", items=render_items(items, 300), max_facets=bounds.max_facets,
                    max_per_facet=bounds.max_per_facet, max_total=bounds.max_total, seed=seed_text)
    result = await gateway.call(prompt, system=render("architect_system", domain=domain),
                                schema=DraftVocabulary, node=node, max_tokens=max_tokens)
    return normalise(Vocabulary(facets=seed.facets + result.parsed.facets), bounds)


async def revise(gateway: Gateway, vocab: Vocabulary, usage: dict[str, int], feedback: str,
                 bounds: Bounds, *, domain: str, round_no: int, items_seen: int, rejected: str = "",
                 node: str = "revise", max_tokens: int = 1000) -> EditPlan:
    prompt = render("architect_revise", vocabulary=vocab.render(usage), feedback=feedback, round=round_no,
                    items_seen=items_seen, max_per_facet=bounds.max_per_facet, max_total=bounds.max_total,
                    size=vocab.size(), rejected=rejected)
    result = await gateway.call(prompt, system=render("architect_system", domain=domain), schema=EditPlan,
                                node=node, max_tokens=max_tokens)
    return result.parsed
