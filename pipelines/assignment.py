"""Vocabulary assignment (AgenticTagger stage 2): every item gets in-vocabulary descriptors,
ordered coarse to fine, several items per call.

A batch stage (pipelines/batch.py): items stream from the source into the store (kind
"item"), waves of pending items are tagged, a batch's tags are written onto its items the
moment they arrive, so the run is idempotent and resumable: items already tagged are never
sent again, and a batch in flight at a crash is answered from the response cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from langgraph.graph import StateGraph

from tagsmith.agents import assigner
from tagsmith.core.errors import StructuredOutputError
from tagsmith.core.vocabulary import Vocabulary
from tagsmith.evaluators.vocab_metrics import TagMetrics
from tagsmith.pipelines import batch
from tagsmith.pipelines.batch import BatchResult, BatchSettings, BatchState
from tagsmith.pipelines.context import RunContext
from tagsmith.pipelines.vocabulary import final_vocabulary

KIND = "tag"
PROMPTS = assigner.PROMPTS


class State(BatchState, total=False):
    """The batch stage's state; params = {"vocab_run": id}."""


def vocabulary(ctx: RunContext, vocab_run: str) -> Vocabulary:
    """The final vocabulary of a vocab run, read from the store once per run."""
    if vocab_run not in ctx.vocabularies:
        ctx.vocabularies[vocab_run] = final_vocabulary(ctx.store, vocab_run)[0]
    return ctx.vocabularies[vocab_run]


class AssignStage:
    """Assign a batch of items: the vocabulary, the embedding index used to repair
    out-of-vocabulary answers, and the assigner agent. Items the model could not tag after
    its re-asks come back failed (written, retried once one by one)."""

    input_kind = "item"

    def __init__(self, ctx: RunContext, params: dict):
        self.ctx = ctx
        self.cfg = ctx.config.pipeline.assign
        self.batch_size = self.cfg.batch_size
        self.vocab = vocabulary(ctx, params["vocab_run"])
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

    def failure(self, key: str, reason: str) -> dict:
        return assigner.ItemTags(id=key, by_facet={}, descriptors=[], semantic_id=[], status="failed").to_record() | {
            "error": reason}

    async def process(self, batch: list[tuple[str, dict]]) -> BatchResult:
        cfg = self.cfg
        items = [{"id": k, "text": d["text"]} for k, d in batch]
        try:
            tags, stats = await assigner.assign(self.ctx.gateway, self.vocab, items, domain=cfg.domain,
                                                per_facet=cfg.per_facet,
                                                nearest=self.nearest if cfg.repair_by_embedding else None,
                                                repair_threshold=cfg.repair_threshold)
        except StructuredOutputError as exc:  # malformed beyond re-asks
            return BatchResult(failed=[(k, self.failure(k, str(exc)[:300])) for k, _ in batch],
                               stats={"failed_batches": 1})
        done = [(k, t.to_record()) for k, t in tags.items() if t.status != "failed"]
        failed = [(k, t.to_record()) for k, t in tags.items() if t.status == "failed"]
        return BatchResult(done=done, failed=failed, stats={
            "answers": stats.answers, "oov": stats.oov, "repaired": stats.repaired,
            "reasked_items": stats.reasked_items, "missing_items": stats.missing_items,
            "oov_items": sum(1 for t in tags.values() if t.oov)})


def _settings(ctx: RunContext) -> BatchSettings:
    c = ctx.config.pipeline.assign
    return BatchSettings(batch_size=c.batch_size, wave_batches=c.wave_batches, retries=c.retries,
                         load_chunk=c.load_chunk)


def build_graph() -> StateGraph:
    return batch.build(AssignStage, _settings, State)


def initial_state(inputs: dict) -> dict:
    return batch.initial_state(inputs)


def finish(ctx: RunContext, state: State) -> dict:
    vocab = vocabulary(ctx, state["params"]["vocab_run"])
    acc = TagMetrics(vocab)
    failed = 0
    sids: set[int] = set()
    for _, _, rec in ctx.store.iter_results(ctx.run_id, "item"):
        if rec is None:
            continue
        acc.add(rec["descriptors"])
        failed += rec["status"] == "failed"
        sids.add(hash(tuple(rec.get("semantic_id", []))))
    m = acc.result()
    st = ctx.store.stats(ctx.run_id)
    run = ctx.store.require_run(ctx.run_id)
    n = max(1, m["items"])
    answers, oov = st.get("answers", 0), st.get("oov", 0)
    return {**{k: m[k] for k in ("items", "coverage", "coverage_per_facet", "size_per_level",
                                 "descriptors_per_item", "usage_entropy_bits", "usage_entropy_norm",
                                 "redundant_pair_share", "mean_cooccurrence_jaccard", "distinct_descriptors_used")},
            "unused_descriptors": len(m["unused_descriptors"]),
            "failed_items": failed,
            "oov_rate": oov / answers if answers else 0.0,
            "oov_item_rate": st.get("oov_items", 0) / n,
            "repair_rate": st.get("repaired", 0) / oov if oov else 0.0,
            "reasked_items": int(st.get("reasked_items", 0)),
            "distinct_semantic_ids": len(sids),
            **batch.load_metrics(st),
            "calls_per_item": run.calls / n, "tokens_per_item": (run.prompt_tokens + run.completion_tokens) / n,
            "cost_per_item_usd": run.cost_usd / n}


def export_rows(store, run) -> Iterator[dict]:
    for key, item, tag in store.iter_results(run.id, "item"):
        if tag is None:  # not tagged yet (a run that has not finished)
            continue
        yield {"id": key, "descriptors": tag["descriptors"], "semantic_id": tag["semantic_id"],
               "by_facet": tag["by_facet"], "status": tag["status"], "oov": tag["oov"], "repaired": tag["repaired"],
               "text": item.get("text", "")}
