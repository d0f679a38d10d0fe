"""Data scoring (Ask-LLM + Density): every document gets P("yes") from the scorer model and a
density from a locality-sensitive-hashing sketch over MiniLM embeddings.

A batch stage (pipelines/batch.py): documents stream from the source into the store (kind
"doc"), waves of pending documents are scored (each score kept on its document),
resumable and idempotent.
After the waves, the density phase goes through the documents in chunks, in load order:

    ... waves -> embed (a chunk at a time) -> densities (a chunk at a time) -> finalize

``embed`` embeds a chunk, adds it to the sketch and keeps each document's bucket indices
(``dcode``: rows small integers, not the 384-float embedding); ``densities`` reads them
back against the full sketch. Both keep their cursor, and the sketch, in the store in the
same transaction as the chunk, so a crash resumes at the chunk it stopped in. The sketch
stays with the run (``run_blob``), so new data can be scored against it
(``pipeline.score.density_from: RUN``): then one pass, against the frozen sketch. Up to
``exact_check_max`` documents, everything is one chunk and the exact KDE is computed too,
as a check of the sketch.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from tagsmith.agents import scorer
from tagsmith.core.config import ScoreConfig
from tagsmith.core.errors import ConfigError
from tagsmith.evaluators.density import LSHDensitySketch, exact_kde
from tagsmith.pipelines import batch
from tagsmith.pipelines.batch import BatchResult, BatchSettings, BatchState
from tagsmith.pipelines.context import RunContext

KIND = "score"
PROMPTS = scorer.PROMPTS
SKETCH = "density_sketch"


class State(BatchState, total=False):
    embed_done: bool
    densities_done: bool
    density_check: dict


class ScoreStage:
    """Score a batch of documents, each its own call (the gateway's limit paces them)."""

    input_kind = "doc"

    def __init__(self, ctx: RunContext, params: dict):
        self.ctx = ctx
        self.cfg = ctx.config.pipeline.score
        self.batch_size = self.cfg.batch_size

    def failure(self, key: str, reason: str) -> dict:
        return {"score": None, "method": "failed", "details": {"error": reason}}

    async def process(self, batch_: list[tuple[str, dict]]) -> BatchResult:
        cfg = self.cfg
        results = await asyncio.gather(*(scorer.ask(self.ctx.gateway, d["text"], max_doc_tokens=cfg.max_doc_tokens,
                                                    top_logprobs=cfg.top_logprobs, samples=cfg.fallback_samples)
                                         for _, d in batch_))
        stats: dict[str, float] = {}
        for r in results:
            stats[f"method: {r.method}"] = stats.get(f"method: {r.method}", 0) + 1
            if r.score is not None:
                stats["scored"] = stats.get("scored", 0) + 1
                stats["score_sum"] = stats.get("score_sum", 0) + r.score
        return BatchResult(done=[(k, {"score": r.score, "method": r.method, "details": r.details})
                                 for (k, _), r in zip(batch_, results)], stats=stats)


def _cfg(ctx: RunContext) -> ScoreConfig:
    return ctx.config.pipeline.score


def _settings(ctx: RunContext) -> BatchSettings:
    c = _cfg(ctx)
    return BatchSettings(batch_size=c.batch_size, wave_batches=c.wave_batches, retries=c.retries,
                         load_chunk=c.load_chunk)


# -- density --------------------------------------------------------------------------------------
def new_sketch(cfg: ScoreConfig, dim: int) -> LSHDensitySketch:
    return LSHDensitySketch(dim, rows=cfg.density_rows, buckets=cfg.density_buckets, width=cfg.density_width,
                            projections=cfg.density_projections, seed=cfg.seed)


def stored_sketch(store, run_id: str) -> LSHDensitySketch | None:
    data = store.get_blob(run_id, SKETCH)
    return None if data is None else LSHDensitySketch.from_bytes(data)


def _codes(b: np.ndarray) -> str:
    return base64.b64encode(np.asarray(b, dtype=np.uint16 if b.max(initial=0) < 2**16 else np.uint32).tobytes()
                            ).decode()


def _uncode(s: str, rows: int) -> np.ndarray:
    raw = base64.b64decode(s)
    return np.frombuffer(raw, dtype=np.uint16 if len(raw) == 2 * rows else np.uint32).astype(np.int64)


def _position(store, run_id: str, name: str) -> int:
    return (store.cursor(run_id, name) or {"after": 0})["after"]


def embed(state: State, runtime: Runtime) -> dict:
    """One chunk: embed, add to the sketch (unless it is frozen) and keep the bucket codes;
    with a frozen sketch or one chunk in all, the densities come at once."""
    ctx = runtime.context
    cfg = _cfg(ctx)
    if not cfg.density:
        return {"embed_done": True, "densities_done": True}
    store, run_id = ctx.store, ctx.run_id
    total = store.count_records(run_id, "doc")
    frozen = stored_sketch(store, cfg.density_from) if cfg.density_from else None
    if cfg.density_from and frozen is None:
        raise ConfigError(f"pipeline.score.density_from: run {cfg.density_from} has no density sketch")
    at = _position(store, run_id, "embed")
    whole = frozen is None and total <= cfg.exact_check_max  # one chunk: densities and the exact check now
    size = total if whole else cfg.density_chunk
    docs = store.records_after(run_id, "doc", at, size)
    if not docs:
        return {"embed_done": True}
    vecs = np.asarray(ctx.embedder()([d["text"] for _, _, d in docs]), dtype=np.float32)
    sketch = frozen or stored_sketch(store, run_id) or new_sketch(cfg, vecs.shape[1])
    codes = sketch.buckets_of(vecs)
    last = len(docs) < size or whole
    out: dict[str, Any] = {"embed_done": last}
    if frozen is None:
        sketch.fit_buckets(codes)
    if frozen is not None or whole:  # the sketch is final for these documents: densities now
        dens = sketch.density_of_buckets(codes)
        rows, kind = [(k, {"density": float(x)}) for (_, k, _), x in zip(docs, dens)], "density"
        out["densities_done"] = last
        if whole and len(docs) > 2:
            from scipy.stats import spearmanr

            exact = exact_kde(vecs, bandwidth=cfg.density_width, kernel="lsh", projections=cfg.density_projections)
            rho = float(spearmanr(dens, exact).statistic) if np.ptp(dens) > 0 and np.ptp(exact) > 0 else None
            out["density_check"] = {"spearman_vs_exact": rho, "n": len(docs)}
    else:
        rows, kind = [(k, {"b": _codes(c)}) for (_, k, _), c in zip(docs, codes)], "dcode"
    store.put_chunk(run_id, kind, rows, cursor=("embed", {"after": docs[-1][0]}),
                    blob=None if frozen is not None else (SKETCH, sketch.to_bytes()))
    return out


def densities(state: State, runtime: Runtime) -> dict:
    """One chunk of the second pass: densities from the bucket codes and the full sketch."""
    ctx = runtime.context
    cfg = _cfg(ctx)
    if state.get("densities_done") or not cfg.density:
        return {"densities_done": True}
    store, run_id = ctx.store, ctx.run_id
    sketch = stored_sketch(store, run_id)
    at = _position(store, run_id, "densities")
    codes = store.records_after(run_id, "dcode", at, cfg.density_chunk)
    if not codes or sketch is None:
        return {"densities_done": True}
    B = np.stack([_uncode(d["b"], sketch.rows) for _, _, d in codes])
    dens = sketch.density_of_buckets(B)
    store.put_chunk(run_id, "density", [(k, {"density": float(x)}) for (_, k, _), x in zip(codes, dens)],
                    cursor=("densities", {"after": codes[-1][0]}))
    return {"densities_done": len(codes) < cfg.density_chunk}


def build_graph() -> StateGraph:
    return batch.build(ScoreStage, _settings, State, after=(("embed", embed), ("densities", densities)))


def initial_state(inputs: dict) -> dict:
    return batch.initial_state(inputs)


def finish(ctx: RunContext, state: State) -> dict:
    st = ctx.store.stats(ctx.run_id)
    run = ctx.store.require_run(ctx.run_id)
    docs = ctx.store.count_work(ctx.run_id, "doc", "done") + ctx.store.count_work(ctx.run_id, "doc", "failed")
    n = max(1, docs)
    scored = int(st.get("scored", 0))
    return {"docs": docs, "scored": scored,
            "methods": {k.removeprefix("method: "): int(v) for k, v in st.items() if k.startswith("method: ")},
            "mean_score": st["score_sum"] / scored if scored else None,
            "density_check": state.get("density_check", {}),
            **batch.load_metrics(st),
            "calls_per_doc": run.calls / n, "tokens_per_doc": (run.prompt_tokens + run.completion_tokens) / n}


def export_rows(store, run) -> Iterator[dict]:
    dens = store.iter_joined(run.id, "doc", "density")
    for (key, doc, score), (_, _, d) in zip(store.iter_results(run.id, "doc"), dens):
        if score is None:
            continue
        yield {"id": key, "askllm": score["score"], "method": score["method"],
               "density": None if d is None else d["density"], "text": doc.get("text", "")}
