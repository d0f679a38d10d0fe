"""Probe: one structured call per item, fanned out with Send, collected into the store.

The smallest graph that exercises the whole runtime (gateway, cache, log, checkpoint,
resume). ``tagsmith quickstart --probe`` runs it on a few bundled MovieLens movies.

    {"items": [{"id": "1", "text": "Toy Story (1995) ..."}]}
      -> describe(item 1) ... describe(item n)   (parallel, Send)
      -> collect                                  (records in the store)
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import BaseModel, Field

from tagsmith.prompts import load, render

KIND = "probe"
PROMPTS = ("probe_system", "probe_describe")


class MovieCard(BaseModel):
    genre: Literal["action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller",
                   "animation", "documentary", "other"]
    audience: Literal["kids", "teens", "adults", "everyone"]
    mood: str = Field(max_length=40, description="one to three words")


class State(TypedDict, total=False):
    items: list[dict]
    cards: Annotated[list[dict], operator.add]  # Send fan-in
    done: int


class DescribeInput(TypedDict):
    item: dict


def fan_out(state: State) -> list[Send]:
    return [Send("describe", {"item": item}) for item in state["items"]]


async def describe(state: DescribeInput, runtime: Runtime) -> dict:
    ctx = runtime.context
    item = state["item"]
    result = await ctx.gateway.call(render("probe_describe", item=item["text"]), system=load("probe_system"),
                                    schema=MovieCard, node="describe", max_tokens=80)
    return {"cards": [{"id": item["id"], "text": item["text"], **result.parsed.model_dump(),
                       "cached": result.cached}]}


def collect(state: State, runtime: Runtime) -> dict:
    ctx = runtime.context
    cards = sorted(state.get("cards", []), key=lambda c: c["id"])
    ctx.store.put_records(ctx.run_id, "card", ((c["id"], {k: v for k, v in c.items() if k != "cached"})
                                                for c in cards))
    return {"done": len(cards)}


def initial_state(inputs: dict) -> dict:
    return inputs


def build_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("describe", describe)
    g.add_node("collect", collect)
    g.add_conditional_edges(START, fan_out, ["describe"])
    g.add_edge("describe", "collect")
    g.add_edge("collect", END)
    return g


def finish(ctx, state: State) -> dict:
    return {"items": len(state.get("items", [])), "described": state.get("done", 0)}


def export_rows(store, run) -> list[dict]:
    return [{"id": k, **v} for k, v in store.records(run.id, "card").items()]
