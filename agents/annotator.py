"""The annotator: tags a batch of items with the current vocabulary and reports its gaps.

    report = await annotate(gateway, vocab, batch, domain="movies")
    report.tags[0].descriptors, report.uncovered[0].proposed_name
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tagsmith.agents.common import render_items
from tagsmith.agents.gateway import Gateway
from tagsmith.prompts import render
from tagsmith.core.vocabulary import Vocabulary

PROMPTS = ("annotator_system", "annotator")


class ItemTagging(BaseModel):
    item_id: str
    descriptors: list[str] = Field(default_factory=list)


class Uncovered(BaseModel):
    item_id: str = ""
    aspect: str = ""
    proposed_name: str
    proposed_facet: str = ""
    evidence: str = ""


class PairNote(BaseModel):
    a: str
    b: str
    note: str = ""


class AnnotatorReport(BaseModel):
    tags: list[ItemTagging] = Field(default_factory=list)
    uncovered: list[Uncovered] = Field(default_factory=list)
    overlapping: list[PairNote] = Field(default_factory=list)
    too_broad: list[str] = Field(default_factory=list)
    too_narrow: list[str] = Field(default_factory=list)


def wire_schema(vocab: Vocabulary, item_ids: list[str], max_uncovered: int = 4) -> dict:
    """The report schema with the vocabulary and the batch's ids as enums, so a constrained
    decoder cannot invent a descriptor or an item; the validator stays lenient."""
    names = vocab.names()
    name = {"type": "string", "enum": names}
    return {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "minItems": len(item_ids), "maxItems": len(item_ids), "items": {
                "type": "object", "properties": {
                    "item_id": {"type": "string", "enum": item_ids},
                    # at least one: the closest descriptors; what they miss goes to "uncovered"
                    "descriptors": {"type": "array", "items": name, "minItems": 1, "maxItems": 6}},
                "required": ["item_id", "descriptors"]}},
            "uncovered": {"type": "array", "maxItems": max_uncovered, "items": {
                "type": "object", "properties": {
                    "item_id": {"type": "string", "enum": item_ids},
                    "aspect": {"type": "string", "maxLength": 80},
                    "proposed_name": {"type": "string", "maxLength": 30},
                    "proposed_facet": {"type": "string", "enum": [f.name for f in vocab.facets]},
                    "evidence": {"type": "string", "maxLength": 120}},
                "required": ["item_id", "aspect", "proposed_name", "proposed_facet", "evidence"]}},
            "overlapping": {"type": "array", "maxItems": 3, "items": {
                "type": "object", "properties": {"a": name, "b": name}, "required": ["a", "b"]}},
            "too_broad": {"type": "array", "items": name, "maxItems": 3},
            "too_narrow": {"type": "array", "items": name, "maxItems": 3},
        },
        "required": ["tags", "uncovered", "overlapping", "too_broad", "too_narrow"],
    }


async def annotate(gateway: Gateway, vocab: Vocabulary, items: list[dict], *, domain: str,
                   node: str = "annotate", max_tokens: int = 1200) -> AnnotatorReport:
    prompt = render("annotator", vocabulary=vocab.render(), items=render_items(items))
    result = await gateway.call(prompt, system=render("annotator_system", domain=domain), schema=AnnotatorReport,
                                wire_schema=wire_schema(vocab, [str(i["id"]) for i in items]),
                                node=node, max_tokens=max_tokens)
    return result.parsed
