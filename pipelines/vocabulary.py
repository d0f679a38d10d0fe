"""Vocabulary building (AgenticTagger stage 1): architect drafts, annotators try it in
parallel, code aggregates their feedback, the architect answers with edit operations.

    draft -> annotate x N (Send) -> aggregate -> revise -> annotate x N -> ... -> finalize
                                       \\-> finalize   (coverage reached and few changes,
                                                        or the round limit)

Every version is stored (run_record kind "vocab_version") with its diff, the edits
applied and rejected, and the feedback statistics that caused it.
"""

from __future__ import annotations

import json
import operator
import random
from collections.abc import Iterator
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from tagsmith.agents import annotator, architect
from tagsmith.core.config import VocabConfig
from tagsmith.core.datasets import ItemSource
from tagsmith.core.errors import ConfigError, StructuredOutputError
from tagsmith.core.vocabulary import (Bounds, Edit, Facet, FieldValues, Vocabulary, apply_edits, change_rate, diff,
                                      normalise)
from tagsmith.evaluators.vocab_metrics import aggregate_reports, feedback_text, tag_metrics
from tagsmith.pipelines.batch import Skips, compact

KIND = "vocab"
PROMPTS = architect.PROMPTS + annotator.PROMPTS


class State(TypedDict, total=False):
    source: dict  # the input file(s) (an ItemSource fingerprint), or
    items: list[dict]  # the input as a list; then the sample the vocabulary is built on
    catalog_items: int
    seed_facets: list[dict]  # counted from the input (pipeline.vocab.seed_field)
    vocab: dict
    round: int
    reports: Annotated[list[dict], operator.add]  # Send fan-in, all rounds (tagged with round)
    stats: dict
    history: Annotated[list[dict], operator.add]
    last_change: float | None
    rejected: list[dict]
    stop_reason: str
    batches: list[list[dict]]  # the next round's annotator batches


class AnnotateTask(TypedDict):
    vocab: dict
    items: list[dict]
    round: int
    batch: int


def _cfg(runtime: Runtime) -> VocabConfig:
    return runtime.context.config.pipeline.vocab


# -- helpers (pure) ---------------------------------------------------------------------------
def round_batches(items: list[dict], round_no: int, cfg: VocabConfig) -> list[list[dict]]:
    """Batches for one round: a window that moves through a seeded shuffle of the sample, so
    each round sees fresh items; neighbouring batches share ``overlap`` items."""
    order = list(items)
    random.Random(cfg.seed).shuffle(order)
    step = max(1, cfg.batch_size - cfg.overlap)
    per_round = step * cfg.annotators + cfg.overlap
    start = (round_no * step * cfg.annotators) % max(1, len(order))
    window = [order[(start + i) % len(order)] for i in range(min(per_round, max(len(order), 1)))]
    batches = []
    for b in range(cfg.annotators):
        batch = window[b * step: b * step + cfg.batch_size]
        if not batch:
            break
        batches.append(batch)
    return batches


def dedup(vocab: Vocabulary, threshold: float, embed) -> tuple[Vocabulary, list[Edit]]:
    """Merge descriptors of the same facet whose embeddings (name + definition) have cosine
    >= threshold; the first listed survives. Returns the new vocabulary and the merges."""
    merges: list[Edit] = []
    for f in vocab.facets:
        if len(f.descriptors) < 2:
            continue
        vecs = embed([f"{d.name.replace('-', ' ')}: {d.definition}" for d in f.descriptors])
        sims = vecs @ vecs.T
        absorbed: set[int] = set()
        for i in range(len(f.descriptors)):
            if i in absorbed:
                continue
            for j in range(i + 1, len(f.descriptors)):
                if j not in absorbed and sims[i, j] >= threshold:
                    absorbed.add(j)
                    merges.append(Edit(op="merge", sources=[f.descriptors[i].name, f.descriptors[j].name],
                                       name=f.descriptors[i].name,
                                       reason=f"near-duplicate (cosine {float(sims[i, j]):.2f})"))
    if not merges:
        return vocab, []
    result = apply_edits(vocab, merges, Bounds(max_facets=99, max_per_facet=999, max_total=9999))
    return result.vocabulary, result.applied


async def _store_version(runtime: Runtime, version: int, round_no: int, vocab: Vocabulary, **data: Any) -> None:
    ctx = runtime.context
    await ctx.store.aput_records(ctx.run_id, "vocab_version",
                          [(f"{version:03d}", {"version": version, "round": round_no,
                                               "vocabulary": vocab.model_dump(), **data})])


# -- nodes --------------------------------------------------------------------------------------
def sample(state: State, runtime: Runtime) -> dict:
    """The items the vocabulary is built on: a seeded uniform sample of ``sample_size`` items
    (reservoir sampling, so the input streams: a file, shards or a list), and the seed facet
    of ``seed_field`` counted over every item."""
    ctx = runtime.context
    cfg = _cfg(runtime)
    rng = random.Random(cfg.seed)
    field = FieldValues(cfg.seed_field, cfg.seed_separator) if cfg.seed_field else None
    chosen: list[dict] = []
    n = skipped = 0
    for item in _stream(state, ctx):
        if item is None:
            skipped += 1
            continue
        if field is not None:
            field.add(item.get("fields", {}).get(cfg.seed_field))
        entry = {"id": str(item["id"]), "text": item["text"]}
        if n < cfg.sample_size:
            chosen.append(entry)
        elif (slot := rng.randrange(n + 1)) < cfg.sample_size:  # reservoir sampling: uniform, one pass
            chosen[slot] = entry
        n += 1
    if not n:
        raise ConfigError("vocab build: no items" + (f" ({skipped} bad records skipped)" if skipped else ""))
    out: dict = {"items": chosen, "catalog_items": n}
    if field is not None:
        facet = field.facet(cfg.max_per_facet)
        if not facet.descriptors:
            raise ConfigError(f"seed field {cfg.seed_field!r}: no value occurs twice in the items' fields")
        out["seed_facets"] = [facet.model_dump()]
    return out


def _stream(state: State, ctx) -> Iterator[dict | None]:
    """The input's items as dicts (id, text, fields), None for a skipped bad record (its
    count and reason go to the run's counters); a bad record stops the run when the
    source says ``on_error: raise``."""
    if "source" not in state:
        yield from state["items"]
        return
    spec = json.loads(ctx.store.require_run(ctx.run_id).inputs_json)["source"]  # the run row keeps the file list
    source = ItemSource.model_validate({k: v for k, v in spec.items() if k != "files"})
    source.check_unchanged(spec)
    skips = Skips(source.on_error)
    seen: dict[str, str] = {}
    for entry in source.read():
        if entry.item is not None and entry.item.id in seen:
            entry.item, entry.reason = None, f"duplicate id {entry.item.id!r} (first seen at {seen[entry.item.id]})"
        if entry.item is None:
            skips.add(entry.where, entry.reason or "bad record")
            yield None
            continue
        seen[entry.item.id] = entry.where
        yield {"id": entry.item.id, "text": entry.item.text, "fields": entry.item.fields}
    if skips.stats:
        ctx.store.transact(skips.write(ctx.store, ctx.run_id))


async def draft(state: State, runtime: Runtime) -> dict:
    cfg = _cfg(runtime)
    sample = random.Random(cfg.seed + 1).sample(state["items"], min(cfg.draft_sample, len(state["items"])))
    seed = normalise(Vocabulary(facets=[*cfg.seed_facets, *(Facet.model_validate(f) for f in state.get("seed_facets", []))]),
                     cfg.bounds())
    vocab = await architect.draft(runtime.context.gateway, sample, cfg.bounds(), domain=cfg.domain, seed=seed)
    merges: list[Edit] = []
    if cfg.dedup and vocab.size() > 1:
        vocab, merges = dedup(vocab, cfg.dedup_threshold, runtime.context.embedder())
    await _store_version(runtime, 0, 0, vocab, diff={"added": vocab.names(), "removed": [], "moved": []},
                   edits={"applied": [], "rejected": [], "auto_merges": [m.model_dump(exclude_defaults=True)
                                                                        for m in merges]},
                   feedback=None, draft_items=[s["id"] for s in sample])
    return {"vocab": vocab.model_dump(), "round": 0, "last_change": None, "rejected": [],
            "batches": round_batches(state["items"], 0, cfg)}


def fan_out(state: State) -> list[Send]:
    return [Send("annotate", {"vocab": state["vocab"], "items": batch, "round": state["round"], "batch": b})
            for b, batch in enumerate(state["batches"])]


async def annotate(task: AnnotateTask, runtime: Runtime) -> dict:
    cfg = _cfg(runtime)
    vocab = Vocabulary.model_validate(task["vocab"])
    entry = {"round": task["round"], "batch": task["batch"], "item_ids": [str(i["id"]) for i in task["items"]]}
    try:
        report = await annotator.annotate(runtime.context.gateway, vocab, task["items"], domain=cfg.domain,
                                          node="annotate")
        entry["report"] = report.model_dump()
    except StructuredOutputError as exc:  # one broken annotator must not sink the round
        entry["error"] = str(exc)
    return {"reports": [entry]}


def aggregate(state: State, runtime: Runtime) -> dict:
    cfg = _cfg(runtime)
    vocab = Vocabulary.model_validate(state["vocab"])
    reports = [r for r in state.get("reports", []) if r["round"] == state["round"]]
    stats = aggregate_reports(vocab, reports, cfg.broad_share)
    stop = ""
    if state["round"] >= cfg.max_rounds:
        stop = f"round limit ({cfg.max_rounds} revisions)"
    elif (state.get("last_change") is not None and stats["coverage"] >= cfg.coverage_target
          and state["last_change"] < cfg.change_threshold):
        stop = (f"converged: coverage {stats['coverage']:.2f} >= {cfg.coverage_target}, "
                f"change rate {state['last_change']:.2f} < {cfg.change_threshold}")
    summary = {k: v for k, v in stats.items() if k != "tags"}
    return {"stats": stats, "stop_reason": stop,
            "history": [{"round": state["round"], "vocab_size": vocab.size(), "coverage": stats["coverage"],
                         "agreement": stats["agreement"], "oov_rate": stats["oov_rate"],
                         "proposals": len(stats["proposals"]), "feedback": summary}]}


def after_aggregate(state: State) -> Literal["revise", "finalize"]:
    return "finalize" if state.get("stop_reason") else "revise"


async def revise(state: State, runtime: Runtime) -> dict:
    cfg = _cfg(runtime)
    old = Vocabulary.model_validate(state["vocab"])
    stats = state["stats"]
    rejected_note = ""
    if state.get("rejected"):
        rejected_note = "Rejected last round (do not repeat): " + "; ".join(
            f"{r.get('op')} {r.get('name') or r.get('sources')}: {r['why']}" for r in state["rejected"][:6])
    try:
        plan = await architect.revise(runtime.context.gateway, old, stats["usage"], feedback_text(stats),
                                      cfg.bounds(), domain=cfg.domain, round_no=state["round"],
                                      items_seen=stats["items_seen"], rejected=rejected_note)
        edits, plan_error = plan.operations, None
    except StructuredOutputError as exc:  # keep the vocabulary, note why, go on
        edits, plan_error = [], str(exc)
    result = apply_edits(old, edits, cfg.bounds())
    new, merges = result.vocabulary, []
    if cfg.dedup and new.size() > 1:
        new, merges = dedup(new, cfg.dedup_threshold, runtime.context.embedder())
    rate = change_rate(old, new)
    version = state["round"] + 1
    await _store_version(runtime, version, version, new, diff=diff(old, new), change_rate=rate,
                   edits={**result.summary(), "auto_merges": [m.model_dump(exclude_defaults=True) for m in merges],
                          "plan_error": plan_error},
                   feedback={k: v for k, v in stats.items() if k != "tags"})
    return {"vocab": new.model_dump(), "round": version, "last_change": rate,
            "rejected": result.summary()["rejected"], "batches": round_batches(state["items"], version, cfg)}


def finalize(state: State, runtime: Runtime) -> dict:
    ctx = runtime.context
    vocab = Vocabulary.model_validate(state["vocab"])
    stats = state["stats"]
    ctx.store.put_records(ctx.run_id, "vocabulary", [("final", {"vocabulary": vocab.model_dump(),
                                                                "usage": stats["usage"],
                                                                "rounds": state["round"],
                                                                "stop_reason": state.get("stop_reason", "")})])
    return {}


def initial_state(inputs: dict) -> dict:
    """The state holds the sample and a digest of the input's files, not the file list."""
    return {**inputs, "source": compact(inputs["source"])} if "source" in inputs else inputs


def build_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("sample", sample)
    g.add_node("draft", draft)
    g.add_node("annotate", annotate)
    g.add_node("aggregate", aggregate)
    g.add_node("revise", revise)
    g.add_node("finalize", finalize)
    g.add_edge(START, "sample")
    g.add_edge("sample", "draft")
    g.add_conditional_edges("draft", fan_out, ["annotate"])
    g.add_edge("annotate", "aggregate")
    g.add_conditional_edges("aggregate", after_aggregate, ["revise", "finalize"])
    g.add_conditional_edges("revise", fan_out, ["annotate"])
    g.add_edge("finalize", END)
    return g


# -- run protocol ------------------------------------------------------------------------------
def finish(ctx, state: State) -> dict:
    vocab = Vocabulary.model_validate(state["vocab"])
    stats = state["stats"]
    m = tag_metrics(vocab, stats["tags"])
    first = state["history"][0] if state.get("history") else {}
    return {"rounds": state["round"], "stop_reason": state.get("stop_reason", ""),
            "vocab_size": vocab.size(), "facets": len(vocab.facets),
            "size_per_level": m["size_per_level"],
            "coverage_last_round": stats["coverage"], "coverage_first_round": first.get("coverage"),
            "agreement": stats["agreement"], "oov_rate": stats["oov_rate"],
            "descriptors_per_item": m["descriptors_per_item"], "usage_entropy_norm": m["usage_entropy_norm"],
            "redundant_pair_share": m["redundant_pair_share"], "unused": len(stats["unused"]),
            "sample_items": len(state["items"]), "catalog_items": state.get("catalog_items", len(state["items"])),
            **{k: int(v) for k, v in ctx.store.stats(ctx.run_id).items() if k.startswith("skipped")},
            "history": [{k: v for k, v in h.items() if k != "feedback"} for h in state.get("history", [])]}


def final_vocabulary(store, run_id: str) -> tuple[Vocabulary, dict[str, int]]:
    rec = store.records(run_id, "vocabulary").get("final")
    if rec is None:
        raise ConfigError(f"run {run_id} has no finished vocabulary (is it a vocab run? `tagsmith resume {run_id}`)")
    return Vocabulary.model_validate(rec["vocabulary"]), rec.get("usage", {})


def export_rows(store, run) -> list[dict]:
    vocab, usage = final_vocabulary(store, run.id)
    return [{"facet": f.name, "facet_level": i, "descriptor": d.name, "definition": d.definition,
             "usage": usage.get(d.name, 0)} for i, f in enumerate(vocab.facets) for d in f.descriptors]
