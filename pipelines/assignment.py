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
from tagsmith.agents import assigner
from tagsmith.core.config import AssignConfig
from tagsmith.core.errors import StructuredOutputError
from tagsmith.core.vocabulary import Vocabulary
from tagsmith.evaluators.vocab_metrics import tag_metrics
from tagsmith.pipelines.context import RunContext
from tagsmith.pipelines.vocabulary import final_vocabulary

KIND = "tag"
PROMPTS = assigner.PROMPTS


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
    return runtime.context.config.pipeline.assign


def vocabulary(ctx: RunContext, vocab_run: str) -> Vocabulary:
    """The final vocabulary of a vocab run, read from the store once per run."""
    if vocab_run not in ctx.vocabularies:
        ctx.vocabularies[vocab_run] = final_vocabulary(ctx.store, vocab_run)[0]
    return ctx.vocabularies[vocab_run]


def load(state: State, runtime: Runtime) -> dict:
    ctx = runtime.context
    vocab = vocabulary(ctx, state["vocab_run"])
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
    if ctx.progress is not None:
        ctx.progress.total(ctx.store.count_records(ctx.run_id, "item"), ctx.store.count_records(ctx.run_id, "tag"))
    return {"batches": batches, "waves": state.get("waves", 0) + (1 if batches else 0)}


def after_plan(state: State) -> list[Send] | Literal["finalize"]:
    if not state["batches"]:
        return "finalize"
    return [Send("assign", {"vocab_run": state["vocab_run"], "items": b}) for b in state["batches"]]


class AssignStage:
    """Per-run resources of the assign node: the vocabulary, the embedding index used to
    repair out-of-vocabulary answers, and a limit on batches past prompt building (a wave
    starts all its tasks at once; without it every task would build its prompt before the
    first request leaves: at C=128, 512 prompts, half a second of CPU before the provider
    sees anything)."""

    def __init__(self, ctx: RunContext, vocab_run: str):
        self.ctx = ctx
        self.cfg = ctx.config.pipeline.assign
        self.vocab = vocabulary(ctx, vocab_run)
        self.slots = asyncio.Semaphore(2 * ctx.config.llm.concurrency)
        self._index: tuple[list[str], np.ndarray] | None = None

    def nearest(self, queries: list[str]) -> list[tuple[str, float]]:
        """names -> nearest descriptor by MiniLM cosine (descriptor name + definition)."""
        embed = self.ctx.embedder()
        if self._index is None:
            descs = [(d.name, f"{d.name.replace('-', ' ')}: {d.definition}")
                     for f in self.vocab.facets for d in f.descriptors]
            self._index = ([n for n, _ in descs], np.asarray(embed([t for _, t in descs])))
        names, vecs = self._index
        q = np.asarray(embed([x.replace("-", " ").replace("_", " ") for x in queries]))
        sims = q @ vecs.T
        best = sims.argmax(axis=1)
        return [(names[b], float(sims[i, b])) for i, b in enumerate(best)]

    async def process(self, items: list[dict]) -> tuple[dict[str, assigner.ItemTags], assigner.BatchStats]:
        cfg = self.cfg
        try:
            return await assigner.assign(self.ctx.gateway, self.vocab, items, domain=cfg.domain,
                                         per_facet=cfg.per_facet,
                                         nearest=self.nearest if cfg.repair_by_embedding else None,
                                         repair_threshold=cfg.repair_threshold)
        except StructuredOutputError as exc:  # malformed beyond re-asks: record as failed, go on
            tags = {str(i["id"]): assigner.ItemTags(id=str(i["id"]), by_facet={}, descriptors=[],
                                                    semantic_id=[], status="failed") for i in items}
            return tags, assigner.BatchStats(calls=exc.attempts)


def _stage(ctx: RunContext, vocab_run: str) -> AssignStage:
    if not isinstance(ctx.stage, AssignStage):
        ctx.stage = AssignStage(ctx, vocab_run)
    return ctx.stage


async def assign(task: AssignTask, runtime: Runtime) -> dict:
    ctx = runtime.context
    stage = _stage(ctx, task["vocab_run"])
    async with stage.slots:
        tags, stats = await stage.process(task["items"])
        await ctx.store.aput_records(ctx.run_id, "tag", [(k, t.to_record()) for k, t in tags.items()])
    ctx.advance(len(tags))
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
