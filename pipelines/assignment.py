"""Vocabulary assignment (AgenticTagger stage 2): every item gets in-vocabulary descriptors,
ordered coarse to fine, several items per call.

    load -> plan -> assign x N (Send, one batch each) -> plan -> ... -> finalize

``load`` stores the items (run_record kind "item"); ``plan`` takes the next wave of items
that have no tags yet, so the run is idempotent and resumable: items already tagged are
never sent again, and a batch in flight at a crash is answered from the response cache.
Tags are written per batch (kind "tag") the moment they arrive.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Literal, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import BaseModel, Field

from tagsmith.agents import assigner
from tagsmith.errors import StructuredOutputError
from tagsmith.evaluators.vocab_metrics import tag_metrics
from tagsmith.vocabulary import Vocabulary

PROMPTS = assigner.PROMPTS


class AssignConfig(BaseModel):
    """pipeline.assign section."""

    domain: str = "catalog items"
    batch_size: int = Field(default=4, ge=1)  # items per call
    per_facet: int = Field(default=2, ge=1)  # descriptors per facet at most
    # batches per superstep, at least 4 x llm.concurrency: the gateway's semaphore keeps C
    # calls in flight within a wave, and the superstep barrier costs one tail per wave
    wave_batches: int = Field(default=64, ge=1)
    repair_threshold: float = Field(default=0.6, ge=0, le=1)  # cosine for embedding repair
    repair_by_embedding: bool = True


class State(TypedDict, total=False):
    vocab_run: str
    vocab: dict
    items: list[dict]  # the input; moved into the store by `load` and then dropped
    n_items: int
    batches: list[list[dict]]
    batch_stats: Annotated[list[dict], operator.add]
    waves: int


class AssignTask(TypedDict):
    vocab_run: str  # the vocabulary comes from the store (once per process), not in each task
    items: list[dict]


def _cfg(runtime: Runtime) -> AssignConfig:
    return runtime.context.section("assign", AssignConfig)


def load(state: State, runtime: Runtime) -> dict:
    ctx = runtime.context
    from tagsmith.pipelines.vocabulary import final_vocabulary

    vocab, _ = final_vocabulary(ctx.store, state["vocab_run"])
    items = state.get("items", [])
    ctx.store.put_records(ctx.run_id, "item", ((i["id"], {"text": i["text"]}) for i in items))
    return {"vocab": vocab.model_dump(), "n_items": len(items), "items": [], "waves": 0}


def plan(state: State, runtime: Runtime) -> dict:
    ctx = runtime.context
    cfg = _cfg(runtime)
    # the next wave: items without tags, read from the store (never the whole catalog), so
    # a resumed run sends only what is left. A wave holds several times as many batches as
    # may run at once: the superstep is a barrier, and its tail is paid once per wave.
    limit = cfg.batch_size * max(cfg.wave_batches, 4 * ctx.config.llm.concurrency)
    wave = [{"id": k, "text": v["text"]} for k, v in ctx.store.pending_records(ctx.run_id, "item", "tag", limit)]
    batches = [wave[i:i + cfg.batch_size] for i in range(0, len(wave), cfg.batch_size)]
    bar = ctx.extras.get("progress")
    if bar is not None:
        bar.total = ctx.store.count_records(ctx.run_id, "item")
        bar.n = ctx.store.count_records(ctx.run_id, "tag")
        bar.refresh()
    return {"batches": batches, "waves": state.get("waves", 0) + (1 if batches else 0)}


def after_plan(state: State) -> list[Send] | Literal["finalize"]:
    if not state["batches"]:
        return "finalize"
    return [Send("assign", {"vocab_run": state["vocab_run"], "items": b}) for b in state["batches"]]


def _vocabulary(runtime: Runtime, vocab_run: str) -> Vocabulary:
    extras = runtime.context.extras
    key = ("vocabulary", vocab_run)
    if key not in extras:
        from tagsmith.pipelines.vocabulary import final_vocabulary

        extras[key] = final_vocabulary(runtime.context.store, vocab_run)[0]
    return extras[key]


def _nearest_fn(runtime: Runtime, vocab: Vocabulary):
    """names -> nearest descriptor by MiniLM cosine (descriptor name + definition)."""
    extras = runtime.context.extras
    key = ("vocab_vecs", tuple(vocab.names()))
    embed = extras.get("embed")
    if embed is None:
        from tagsmith.evaluators.embeddings import default_embedder

        embed = extras["embed"] = default_embedder().encode
    if key not in extras:
        descs = [(d.name, f"{d.name.replace('-', ' ')}: {d.definition}") for f in vocab.facets for d in f.descriptors]
        extras[key] = ([n for n, _ in descs], embed([t for _, t in descs]))
    names, vecs = extras[key]

    def nearest(queries: list[str]) -> list[tuple[str, float]]:
        q = embed([x.replace("-", " ").replace("_", " ") for x in queries])
        sims = np.asarray(q) @ np.asarray(vecs).T
        best = sims.argmax(axis=1)
        return [(names[b], float(sims[i, b])) for i, b in enumerate(best)]

    return nearest


def _slots(runtime: Runtime) -> asyncio.Semaphore:
    """At most 2 x concurrency batches past this point. A wave starts all its tasks at
    once; without it every task would build its prompt before the first request leaves
    (at C=128, 512 prompts: half a second of CPU before the provider sees anything)."""
    extras = runtime.context.extras
    if "assign_slots" not in extras:
        extras["assign_slots"] = asyncio.Semaphore(2 * runtime.context.config.llm.concurrency)
    return extras["assign_slots"]


async def assign(task: AssignTask, runtime: Runtime) -> dict:
    ctx = runtime.context
    cfg = _cfg(runtime)
    vocab = _vocabulary(runtime, task["vocab_run"])
    nearest = _nearest_fn(runtime, vocab) if cfg.repair_by_embedding else None
    async with _slots(runtime):
        try:
            tags, stats = await assigner.assign(ctx.gateway, vocab, task["items"], domain=cfg.domain,
                                                per_facet=cfg.per_facet, nearest=nearest,
                                                repair_threshold=cfg.repair_threshold)
        except StructuredOutputError as exc:  # malformed beyond re-asks: record as failed, go on
            tags = {str(i["id"]): assigner.ItemTags(id=str(i["id"]), by_facet={}, descriptors=[],
                                                    semantic_id=[], status="failed") for i in task["items"]}
            stats = assigner.BatchStats(calls=exc.attempts)
        await ctx.store.aput_records(ctx.run_id, "tag", [(k, t.to_record()) for k, t in tags.items()])
    bar = ctx.extras.get("progress")
    if bar is not None:
        bar.update(len(tags))
    return {"batch_stats": [{"items": len(task["items"]), "answers": stats.answers, "oov": stats.oov,
                             "repaired": stats.repaired, "reasked_items": stats.reasked_items,
                             "missing_items": stats.missing_items,
                             "failed": sum(1 for t in tags.values() if t.status == "failed")}]}


def finalize(state: State, runtime: Runtime) -> dict:
    return {"batches": []}


def build_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("load", load)
    g.add_node("plan", plan)
    g.add_node("assign", assign)
    g.add_node("finalize", finalize)
    g.add_edge(START, "load")
    g.add_edge("load", "plan")
    g.add_conditional_edges("plan", after_plan, ["assign", "finalize"])
    g.add_edge("assign", "plan")
    g.add_edge("finalize", END)
    return g


def finish(ctx, state: State) -> dict:
    vocab = Vocabulary.model_validate(state["vocab"])
    records = ctx.store.records(ctx.run_id, "tag")
    tags = {k: v["descriptors"] for k, v in records.items()}
    m = tag_metrics(vocab, tags)
    totals = {k: sum(b[k] for b in state.get("batch_stats", [])) for k in
              ("answers", "oov", "repaired", "reasked_items", "missing_items")}
    oov_items = sum(1 for v in records.values() if v.get("oov"))
    run = ctx.store.require_run(ctx.run_id)
    n = max(1, len(records))
    return {**{k: m[k] for k in ("items", "coverage", "coverage_per_facet", "size_per_level",
                                 "descriptors_per_item", "usage_entropy_bits", "usage_entropy_norm",
                                 "redundant_pair_share", "mean_cooccurrence_jaccard", "distinct_descriptors_used")},
            "unused_descriptors": len(m["unused_descriptors"]),
            "failed_items": sum(1 for v in records.values() if v["status"] == "failed"),
            "oov_rate": totals["oov"] / totals["answers"] if totals["answers"] else 0.0,
            "oov_item_rate": oov_items / n,
            "repair_rate": totals["repaired"] / totals["oov"] if totals["oov"] else 0.0,
            "reasked_items": totals["reasked_items"],
            "distinct_semantic_ids": len({tuple(v.get("semantic_id", [])) for v in records.values()}),
            "calls_per_item": run.calls / n, "tokens_per_item": (run.prompt_tokens + run.completion_tokens) / n,
            "cost_per_item_usd": run.cost_usd / n}


def export_rows(store, run) -> list[dict]:
    items = store.records(run.id, "item")
    rows = []
    for k, v in store.records(run.id, "tag").items():
        rows.append({"id": k, "descriptors": v["descriptors"], "semantic_id": v["semantic_id"],
                     "by_facet": v["by_facet"], "status": v["status"], "oov": v["oov"], "repaired": v["repaired"],
                     "text": items.get(k, {}).get("text", "")})
    return rows
