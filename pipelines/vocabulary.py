"""Vocabulary building (AgenticTagger stage 1): architect drafts, annotators try it in
parallel, code aggregates their feedback, the architect answers with edit operations.

    draft -> annotate x N (Send) -> aggregate -> revise -> annotate x N -> ... -> finalize
                                       \\-> finalize   (coverage reached and few changes,
                                                        or the round limit)

Every version is stored (run_record kind "vocab_version") with its diff, the edits
applied and rejected, and the feedback statistics that caused it.
"""

from __future__ import annotations

import operator
import random
from collections import Counter, defaultdict
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import BaseModel, Field

from tagsmith.agents import annotator, architect
from tagsmith.errors import StructuredOutputError
from tagsmith.evaluators.vocab_metrics import agreement, tag_metrics, usage_counts
from tagsmith.vocabulary import Bounds, Edit, Facet, Vocabulary, apply_edits, change_rate, diff, normalise, slug

PROMPTS = architect.PROMPTS + annotator.PROMPTS


class VocabConfig(BaseModel):
    """pipeline.vocab section. Defaults sized for the bundled 135M model on 2 cores."""

    domain: str = "catalog items"
    sample_size: int = Field(default=120, ge=1)  # items the vocabulary is built on
    draft_sample: int = Field(default=16, ge=1)  # items the architect sees for the draft
    annotators: int = Field(default=4, ge=1)  # parallel annotator batches per round
    batch_size: int = Field(default=6, ge=1)
    overlap: int = Field(default=1, ge=0)  # items shared by neighbouring batches: agreement
    max_rounds: int = Field(default=2, ge=0)  # revision rounds after the draft (0: draft only)
    coverage_target: float = Field(default=0.9, ge=0, le=1)
    change_threshold: float = Field(default=0.1, ge=0)  # stop when a revision touches less
    broad_share: float = Field(default=0.6, gt=0, le=1)  # used on more items than this: too broad
    max_facets: int = Field(default=5, ge=1)
    max_per_facet: int = Field(default=10, ge=1)
    max_total: int = Field(default=36, ge=1)
    dedup: bool = True  # merge near-duplicate descriptors by embedding
    dedup_threshold: float = Field(default=0.9, gt=0, le=1)
    seed: int = 0
    # Facets the vocabulary starts from (a known taxonomy, or frequent values of a metadata
    # field, see seed_facet_from_field); the architect drafts the other facets around them.
    seed_facets: list[Facet] = Field(default_factory=list)

    def bounds(self) -> Bounds:
        return Bounds(max_facets=self.max_facets, max_per_facet=self.max_per_facet, max_total=self.max_total)


class State(TypedDict, total=False):
    items: list[dict]
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
    return runtime.context.section("vocab", VocabConfig)


# -- helpers (pure) ---------------------------------------------------------------------------
def seed_facet_from_field(items: list[dict], field: str, max_values: int, min_count: int = 2) -> Facet:
    """A facet from the most frequent values of a metadata field (lists count each value).

    [{"fields": {"genres": ["Comedy", "Drama"]}}, ...] -> Facet(name="genres", descriptors=[comedy, drama])"""
    from collections import Counter

    counts: Counter = Counter()
    for it in items:
        value = (it.get("fields") or {}).get(field)
        values = value if isinstance(value, list) else [value] if value not in (None, "") else []
        counts.update(slug(v) for v in values if slug(str(v)) and slug(str(v)) != "unknown")
    from tagsmith.vocabulary import Descriptor

    top = [(v, n) for v, n in counts.most_common(max_values) if n >= min_count]
    return Facet(name=slug(field), definition=f"the item's {field.replace('_', ' ')}",
                 descriptors=[Descriptor(name=v, definition=f"{field.replace('_', ' ')} is {v.replace('-', ' ')}")
                              for v, _ in top])



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


def aggregate_reports(vocab: Vocabulary, reports: list[dict], broad_share: float) -> dict:
    """Feedback statistics for one round: coverage, usage, OOV, proposals, overlaps,
    breadth, unused descriptors and agreement on items seen by two annotators."""
    names = set(vocab.names())
    per_item: dict[str, list[list[str]]] = defaultdict(list)
    oov = total_answers = failed = 0
    proposals: dict[str, dict[str, Any]] = {}
    overlaps: Counter = Counter()
    broad: Counter = Counter()
    narrow: Counter = Counter()
    for rep in reports:
        if rep.get("error"):
            failed += 1
            continue
        batch_ids = set(rep["item_ids"])
        r = rep["report"]
        for t in r.get("tags", []):
            item = str(t.get("item_id", ""))
            if item not in batch_ids:
                continue
            valid = []
            for n in t.get("descriptors", []):
                total_answers += 1
                if slug(n) in names:
                    valid.append(slug(n))
                else:
                    oov += 1
            per_item[item].append(sorted(set(valid)))
        for u in r.get("uncovered", []):
            key = slug(u.get("proposed_name", ""))
            if not key or key in names:
                continue
            p = proposals.setdefault(key, {"count": 0, "facets": Counter(), "evidence": []})
            p["count"] += 1
            p["facets"][slug(u.get("proposed_facet", ""))] += 1
            if len(p["evidence"]) < 2 and (u.get("evidence") or u.get("aspect")):
                p["evidence"].append((u.get("evidence") or u.get("aspect"))[:100])
        for pair in r.get("overlapping", []):
            a, b = slug(pair.get("a", "")), slug(pair.get("b", ""))
            if a in names and b in names and a != b:
                overlaps[tuple(sorted((a, b)))] += 1
        broad.update(slug(n) for n in r.get("too_broad", []) if slug(n) in names)
        narrow.update(slug(n) for n in r.get("too_narrow", []) if slug(n) in names)
    # one tag set per item for coverage and usage: the union of what annotators gave
    merged = {item: sorted(set().union(*map(set, sets))) for item, sets in per_item.items()}
    items_seen = len({i for rep in reports if not rep.get("error") for i in rep["item_ids"]})
    usage = usage_counts(vocab, merged)
    for name, count in usage.items():  # breadth from usage, not only from opinions
        if items_seen and count / items_seen > broad_share:
            broad[name] += 1
    covered = sum(1 for v in merged.values() if v)
    return {
        "items_seen": items_seen,
        "coverage": covered / items_seen if items_seen else 0.0,
        "usage": usage,
        "oov_answers": oov,
        "oov_rate": oov / total_answers if total_answers else 0.0,
        "failed_batches": failed,
        "agreement": agreement({k: v for k, v in per_item.items() if len(v) > 1}),
        "proposals": {k: {"count": v["count"], "facet": (v["facets"].most_common(1)[0][0] if v["facets"] else ""),
                          "evidence": v["evidence"]}
                      for k, v in sorted(proposals.items(), key=lambda kv: -kv[1]["count"])[:15]},
        "overlaps": [[a, b, n] for (a, b), n in overlaps.most_common(8)],
        "too_broad": dict(broad.most_common(8)),
        "too_narrow": dict(narrow.most_common(8)),
        "unused": sorted(k for k, v in usage.items() if v == 0),
        "tags": merged,
    }


def feedback_text(stats: dict) -> str:
    """The architect's view of the statistics: short, ranked, with evidence."""
    lines = [f"coverage {stats['coverage']:.2f} of {stats['items_seen']} items; out-of-vocabulary answers "
             f"{stats['oov_answers']}; annotator agreement "
             + ("n/a" if stats["agreement"] is None else f"{stats['agreement']:.2f}")]
    if stats["proposals"]:
        lines.append("uncovered aspects (proposed descriptor, times proposed, facet, evidence):")
        for name, p in list(stats["proposals"].items())[:8]:
            ev = f' "{p["evidence"][0]}"' if p["evidence"] else ""
            lines.append(f"- {name} x{p['count']} ({p['facet'] or '?'}){ev}")
    if stats["overlaps"]:
        lines.append("overlapping pairs: " + ", ".join(f"{a} ~ {b} x{n}" for a, b, n in stats["overlaps"]))
    if stats["too_broad"]:
        lines.append("too broad: " + ", ".join(f"{k} x{v}" for k, v in stats["too_broad"].items()))
    if stats["too_narrow"]:
        lines.append("too narrow: " + ", ".join(f"{k} x{v}" for k, v in stats["too_narrow"].items()))
    if stats["unused"]:
        lines.append("unused this round: " + ", ".join(stats["unused"][:15]))
    return "\n".join(lines)


def _embedder(runtime: Runtime):
    emb = runtime.context.extras.get("embed")
    if emb is None:
        from tagsmith.evaluators.embeddings import default_embedder

        emb = default_embedder().encode
        runtime.context.extras["embed"] = emb
    return emb


async def _store_version(runtime: Runtime, version: int, round_no: int, vocab: Vocabulary, **data: Any) -> None:
    ctx = runtime.context
    await ctx.store.aput_records(ctx.run_id, "vocab_version",
                          [(f"{version:03d}", {"version": version, "round": round_no,
                                               "vocabulary": vocab.model_dump(), **data})])


# -- nodes --------------------------------------------------------------------------------------
async def draft(state: State, runtime: Runtime) -> dict:
    cfg = _cfg(runtime)
    sample = random.Random(cfg.seed + 1).sample(state["items"], min(cfg.draft_sample, len(state["items"])))
    seed = normalise(Vocabulary(facets=cfg.seed_facets), cfg.bounds())
    vocab = await architect.draft(runtime.context.gateway, sample, cfg.bounds(), domain=cfg.domain, seed=seed)
    merges: list[Edit] = []
    if cfg.dedup and vocab.size() > 1:
        vocab, merges = dedup(vocab, cfg.dedup_threshold, _embedder(runtime))
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
        new, merges = dedup(new, cfg.dedup_threshold, _embedder(runtime))
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


def build_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("draft", draft)
    g.add_node("annotate", annotate)
    g.add_node("aggregate", aggregate)
    g.add_node("revise", revise)
    g.add_node("finalize", finalize)
    g.add_edge(START, "draft")
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
            "sample_items": len(state["items"]),
            "history": [{k: v for k, v in h.items() if k != "feedback"} for h in state.get("history", [])]}


def final_vocabulary(store, run_id: str) -> tuple[Vocabulary, dict[str, int]]:
    rec = store.records(run_id, "vocabulary").get("final")
    if rec is None:
        from tagsmith.errors import ConfigError

        raise ConfigError(f"run {run_id} has no finished vocabulary (is it a vocab run? `tagsmith resume {run_id}`)")
    return Vocabulary.model_validate(rec["vocabulary"]), rec.get("usage", {})


def export_rows(store, run) -> list[dict]:
    vocab, usage = final_vocabulary(store, run.id)
    return [{"facet": f.name, "facet_level": i, "descriptor": d.name, "definition": d.definition,
             "usage": usage.get(d.name, 0)} for i, f in enumerate(vocab.facets) for d in f.descriptors]
