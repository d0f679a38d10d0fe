"""Data scoring (Ask-LLM + Density): every document gets P("yes") from the scorer model and a
density from a locality-sensitive-hashing sketch over MiniLM embeddings.

    load -> density -> plan -> score x N (Send, a batch of documents each) -> plan -> ... -> finalize

Idempotent and resumable like assignment: ``plan`` only sends documents without a stored
score; a batch in flight at a crash is answered from the response cache. Selection
(`tagsmith select RUN`) reads the stored scores and densities.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Literal, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from tagsmith.agents import scorer
from tagsmith.core.config import ScoreConfig
from tagsmith.evaluators.density import LSHDensitySketch, exact_kde

KIND = "score"
PROMPTS = scorer.PROMPTS


class State(TypedDict, total=False):
    docs: list[dict]  # the input; moved into the store by `load`
    n_docs: int
    batches: list[list[dict]]
    batch_stats: Annotated[list[dict], operator.add]
    density_check: dict


def _cfg(runtime: Runtime) -> ScoreConfig:
    return runtime.context.config.pipeline.score


def load(state: State, runtime: Runtime) -> dict:
    ctx = runtime.context
    docs = state.get("docs", [])
    ctx.store.put_records(ctx.run_id, "doc", ((d["id"], {"text": d["text"]}) for d in docs))
    return {"n_docs": len(docs), "docs": []}


def density(state: State, runtime: Runtime) -> dict:
    """MiniLM embeddings -> LSH sketch density per document (and exact KDE for small N)."""
    ctx, cfg = runtime.context, _cfg(runtime)
    if not cfg.density:
        return {"density_check": {}}
    docs = ctx.store.records(ctx.run_id, "doc")
    ids = list(docs)
    vecs = np.asarray(ctx.embedder()([docs[i]["text"] for i in ids]))
    sketch = LSHDensitySketch(vecs.shape[1], rows=cfg.density_rows, buckets=cfg.density_buckets,
                              width=cfg.density_width, projections=cfg.density_projections, seed=cfg.seed).fit(vecs)
    dens = sketch.density(vecs)
    check: dict = {}
    if 2 < len(ids) <= cfg.exact_check_max:
        exact = exact_kde(vecs, bandwidth=cfg.density_width, kernel="lsh", projections=cfg.density_projections)
        from scipy.stats import spearmanr

        check = {"spearman_vs_exact": float(spearmanr(dens, exact).statistic), "n": len(ids)}
    ctx.store.put_records(ctx.run_id, "density", ((i, {"density": float(d)}) for i, d in zip(ids, dens)))
    return {"density_check": check}


def plan(state: State, runtime: Runtime) -> dict:
    ctx, cfg = runtime.context, _cfg(runtime)
    docs = ctx.store.records(ctx.run_id, "doc")
    done = ctx.store.record_keys(ctx.run_id, "score")
    pending = [{"id": k, "text": v["text"]} for k, v in docs.items() if k not in done]
    wave = pending[: cfg.batch_size * cfg.wave_batches]
    if ctx.progress is not None:
        ctx.progress.total(len(docs), len(done))
    return {"batches": [wave[i:i + cfg.batch_size] for i in range(0, len(wave), cfg.batch_size)]}


def after_plan(state: State) -> list[Send] | Literal["finalize"]:
    if not state["batches"]:
        return "finalize"
    return [Send("score", {"docs": b}) for b in state["batches"]]


async def score(task: dict, runtime: Runtime) -> dict:
    ctx, cfg = runtime.context, _cfg(runtime)
    # all documents of the batch at once: the gateway's concurrency limit paces them
    results = await asyncio.gather(*(scorer.ask(ctx.gateway, d["text"], max_doc_tokens=cfg.max_doc_tokens,
                                                top_logprobs=cfg.top_logprobs, samples=cfg.fallback_samples)
                                     for d in task["docs"]))
    rows = [(d["id"], {"score": r.score, "method": r.method, "details": r.details})
            for d, r in zip(task["docs"], results)]
    await ctx.store.aput_records(ctx.run_id, "score", rows)
    ctx.advance(len(rows))
    methods: dict[str, int] = {}
    for r in results:
        methods[r.method] = methods.get(r.method, 0) + 1
    return {"batch_stats": [{"docs": len(rows), **methods}]}


def finalize(state: State, runtime: Runtime) -> dict:
    return {"batches": []}


def build_graph() -> StateGraph:
    g = StateGraph(State)
    for name, fn in (("load", load), ("density", density), ("plan", plan), ("score", score),
                     ("finalize", finalize)):
        g.add_node(name, fn)
    g.add_edge(START, "load")
    g.add_edge("load", "density")
    g.add_edge("density", "plan")
    g.add_conditional_edges("plan", after_plan, ["score", "finalize"])
    g.add_edge("score", "plan")
    g.add_edge("finalize", END)
    return g


def finish(ctx, state: State) -> dict:
    scores = ctx.store.records(ctx.run_id, "score")
    vals = [v["score"] for v in scores.values() if v["score"] is not None]
    methods: dict[str, int] = {}
    for v in scores.values():
        methods[v["method"]] = methods.get(v["method"], 0) + 1
    run = ctx.store.require_run(ctx.run_id)
    n = max(1, len(scores))
    return {"docs": len(scores), "scored": len(vals), "methods": methods,
            "mean_score": float(np.mean(vals)) if vals else None,
            "density_check": state.get("density_check", {}),
            "calls_per_doc": run.calls / n, "tokens_per_doc": (run.prompt_tokens + run.completion_tokens) / n}


def export_rows(store, run) -> list[dict]:
    docs = store.records(run.id, "doc")
    dens = store.records(run.id, "density")
    return [{"id": k, "askllm": v["score"], "method": v["method"], "density": dens.get(k, {}).get("density"),
             "text": docs.get(k, {}).get("text", "")} for k, v in store.records(run.id, "score").items()]
