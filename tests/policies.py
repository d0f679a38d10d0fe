"""Content policies: valid replies derived from the request, for each agent role.

A fake model (tests) or a simulated server (load tests) calls ``reply_for(request)`` and
gets what a competent model would answer: deterministic in the request, so a resumed
run that asks again gets the same answer. Roles are recognised by their system prompts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _system(request: dict) -> str:
    return next((m["content"] for m in request["messages"] if m["role"] == "system"), "")


def _user(request: dict) -> str:
    return next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")


def wire_schema(request: dict) -> dict:
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    return fmt.get("schema") or {}


DRAFT = {"facets": [
    {"name": "genre", "definition": "the kind of story",
     "descriptors": [{"name": "comedy", "definition": "meant to amuse"},
                     {"name": "drama", "definition": "serious, character driven"},
                     {"name": "action", "definition": "fights, chases, stunts"},
                     {"name": "thriller", "definition": "suspense and danger"}]},
    {"name": "mood", "definition": "how it feels",
     "descriptors": [{"name": "dark", "definition": "grim or bleak"},
                     {"name": "light", "definition": "cheerful, easy"}]}]}


def draft_reply(request: dict) -> dict:
    return DRAFT


def revise_reply(request: dict) -> dict:
    """First revision adds the proposed descriptor (and one invalid edit, to be rejected);
    later revisions change nothing, so the loop converges."""
    user = _user(request)
    if "- space-opera x" in user and "  - space-opera [" not in user:
        return {"operations": [
            {"op": "add", "name": "space-opera", "facet": "genre", "definition": "adventure among the stars"},
            {"op": "remove", "name": "no-such-descriptor"}], "rationale": "annotators proposed space-opera"}
    return {"operations": [], "rationale": "no problem left"}


def annotator_reply(request: dict) -> dict:
    schema = wire_schema(request)
    props = schema["properties"]["tags"]["items"]["properties"]
    ids = props["item_id"]["enum"]
    names = props["descriptors"]["items"]["enum"]
    tags = [{"item_id": i, "descriptors": [names[_h(i) % len(names)], names[_h(i + "x") % len(names)]]}
            for i in ids]
    uncovered = [{"item_id": ids[0], "aspect": "set in space", "proposed_name": "space-opera",
                  "proposed_facet": "genre", "evidence": "a war among the stars"}]
    return {"tags": tags, "uncovered": uncovered, "overlapping": [], "too_broad": [], "too_narrow": []}


def assigner_reply(request: dict) -> dict:
    schema = wire_schema(request)
    per_item = schema["properties"]["items"]["properties"]
    out = {}
    for i, spec in per_item.items():
        if "$ref" in spec:  # "#/$defs/tags": the enums stated once for every item
            spec = schema["$defs"][spec["$ref"].rsplit("/", 1)[-1]]
        out[i] = {facet: [fs["items"]["enum"][_h(i + facet) % len(fs["items"]["enum"])]]
                  for facet, fs in spec["properties"].items()}
    return {"items": out}


def probe_reply(request: dict) -> dict:
    digest = hashlib.sha256(json.dumps(request["messages"], sort_keys=True).encode()).hexdigest()
    return {"genre": "drama", "audience": "adults", "mood": digest[:8]}


def scorer_reply(request: dict):
    """P(yes) from the text: documents that mention 'junk' lean no. With logprobs asked for,
    the first token carries top alternatives; without, a sampled one-word answer."""
    from tagsmith.agents.fake import FakeReply
    from tagsmith.agents.gateway import TokenLogprob

    user = _user(request)
    junk = "junk" in user.split("###")[1]
    p = 0.2 if junk else 0.8
    if request.get("logprobs"):
        import math
        top = [("yes" if p >= 0.5 else "no", math.log(max(p, 1 - p))), (" Yes", math.log(min(p, 1 - p)) - 0.5),
               ("no" if p >= 0.5 else "yes", math.log(min(p, 1 - p))), ("The", -4.0)]
        return FakeReply(top[0][0], logprobs=[TokenLogprob(top[0][0], top[0][1], top)])
    return FakeReply("yes" if (_h(user + str(request.get("temperature"))) % 100) / 100 < p else "no")


def reply_for(request: dict):
    system, user = _system(request), _user(request)
    if "rate training data" in system:
        return scorer_reply(request)
    if "architect" in system:
        return draft_reply(request) if "Draft a vocabulary" in user else revise_reply(request)
    if "annotator" in system:
        return annotator_reply(request)
    if "tag catalog items" in system:
        return assigner_reply(request)
    return probe_reply(request)
