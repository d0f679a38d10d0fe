"""Program evolution (PACEvolve): islands step in parallel, one candidate each per
generation; a control node applies momentum-based backtracking (MBB) and the self-adaptive
choice between backtracking and crossover (CE).

    init -> step x islands (Send) -> control -> step x islands -> ... -> finalize

``step`` (one island, one candidate): choose the parent (tournament, backtrack target or
crossover partner), ideate with the island's idea memory (HCM), write the change (repair
turns are kept out of later context), evaluate it in the sandbox, summarise the result
into the idea's history, condense long histories and prune ideas above the cap.
``control``: island bests, momentum, snapshots, triggers and actions, the stop rule.

Every candidate is stored (run_record kind "candidate", key g<gen>-i<island>) the moment
it is evaluated, so a resumed run re-uses it instead of evaluating it again.

Islands, ideas, plans, step results and candidates are pydantic models
(``evolution_models.py``); the state and the store hold their dumps, and every node
validates what it reads. The control's formulas are pure functions in
``evolution_control.py``.
"""

from __future__ import annotations

import math
import operator
import random
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from tagsmith.agents.evolver import PROMPTS as EVOLVER_PROMPTS
from tagsmith.agents.evolver import EditFailed, Hypothesis, Idea, LLMProposer, Proposer
from tagsmith.core.config import EvolveConfig
from tagsmith.core.errors import ConfigError, StructuredOutputError
from tagsmith.evaluators.evo_tasks import Task, builtin_task, extract_block, load_task
from tagsmith.evaluators.sandbox import SandboxPool
from tagsmith.pipelines.evolution_control import (absolute_progress, choose_action, control_config, momentum,
                                                  relative_progress, should_trigger, snapshot_index, tournament)
from tagsmith.pipelines.evolution_models import (Action, ActionRecord, Backtrack, Candidate, Crossover, Elite,
                                                 Island, PoolEntry, Refine, RunBest, Snapshot, StepResult)

KIND = "evolve"
PROMPTS = EVOLVER_PROMPTS
# Metrics of the best candidate that go into the run's metrics (and `runs show`) when the
# task's evaluator reports them; `tagsmith evolve` prints the first two.
SUMMARY_METRICS = ("nmse_id", "nmse_ood", "log10_nmse_id", "log10_nmse_ood")


class State(TypedDict, total=False):
    """Plain dicts (checkpoints stay JSON); nodes validate them into evolution_models."""

    generation: int
    islands: list[dict]  # Island
    results: Annotated[list[dict], operator.add]  # StepResult, all generations
    actions: Annotated[list[dict], operator.add]  # ActionRecord: backtrack/crossover decisions
    evaluations: int
    best: dict  # RunBest
    stop_reason: str
    initial: dict


class StepTask(TypedDict):
    generation: int
    island: dict  # Island


# -- context --------------------------------------------------------------------------------------
def _cfg(runtime: Runtime) -> EvolveConfig:
    return runtime.context.config.pipeline.evolve


def resolve_task(cfg: EvolveConfig) -> Task:
    from pathlib import Path

    if Path(cfg.task).is_dir():
        task = load_task(cfg.task, data_dir=cfg.data_dir)
    else:
        task = builtin_task(cfg.task, data_dir=cfg.data_dir)
    if cfg.timeout_s:
        task.config.timeout_s = cfg.timeout_s
    if cfg.memory_mb:
        task.config.memory_mb = cfg.memory_mb
    return task


def _task(runtime: Runtime) -> Task:
    ctx = runtime.context
    if ctx.task is None:
        ctx.task = resolve_task(_cfg(runtime))
    return ctx.task


def _pool(runtime: Runtime) -> SandboxPool:
    ctx = runtime.context
    if ctx.sandbox is None:
        ctx.sandbox = SandboxPool(_cfg(runtime).workers)
    return ctx.sandbox


def _proposer(runtime: Runtime) -> Proposer:
    ctx = runtime.context
    if ctx.proposer is None:
        cfg, task = _cfg(runtime), _task(runtime)
        if cfg.proposer == "random":
            from tagsmith.agents.random_proposer import RandomExprProposer

            ctx.proposer = RandomExprProposer.for_program(task.initial_program)
        else:
            ctx.proposer = LLMProposer(ctx.gateway, task)
    return ctx.proposer


def _rng(cfg: EvolveConfig, *parts: Any) -> random.Random:
    return random.Random("-".join(str(p) for p in (cfg.seed, *parts)))


def _fmt(score: float | None) -> str:
    return "failed" if score is None else f"{score:.6g}"


async def _candidate(runtime: Runtime, cid: str) -> Candidate:
    ctx = runtime.context
    rec = (await ctx.store.run(ctx.store.records, ctx.run_id, "candidate")).get(cid)
    if rec is None:
        raise ConfigError(f"run {ctx.run_id}: candidate {cid} is missing from the store")
    return Candidate.model_validate(rec)


# -- nodes ----------------------------------------------------------------------------------------
async def init(state: State, runtime: Runtime) -> dict:
    ctx, cfg, task = runtime.context, _cfg(runtime), _task(runtime)
    existing = (await ctx.store.run(ctx.store.records, ctx.run_id, "candidate")).get("init")
    if existing is None:
        r = await task.aevaluate(task.initial_program, pool=_pool(runtime))
        if not r.ok:
            raise ConfigError(f"task {task.config.name}: the initial program fails ({r.status}: {r.reason})")
        first = Candidate(program=task.initial_program, score=r.score, norm=task.config.normalised(r.score),
                          metrics=r.metrics, status="ok", island=-1, generation=-1, parent=None, action="init",
                          idea=None, experiment="initial program", reason="")
        await ctx.store.aput_records(ctx.run_id, "candidate", [("init", first.model_dump())])
    else:
        first = Candidate.model_validate(existing)
    islands = [Island.start(i, cid="init", norm=first.norm, score=first.score) for i in range(cfg.islands)]
    return {"generation": 0, "islands": [i.model_dump() for i in islands], "evaluations": 1,
            "initial": {"score": first.score},
            "best": RunBest(cid="init", norm=first.norm, score=first.score, island=-1).model_dump()}


def fan_out(state: State) -> list[Send]:
    return [Send("step", {"generation": state["generation"], "island": isl}) for isl in state["islands"]]


def _choose_parent(island: Island, rng: random.Random, cfg: EvolveConfig) -> tuple[str, Action]:
    plan = island.plan
    if isinstance(plan, (Backtrack, Crossover)):
        return plan.parent, plan.kind
    return tournament(island.pool, rng, cfg.tournament).cid, "refine"


def _touch_idea(island: Island, hyp: Hypothesis, label: str) -> Idea:
    """Classify the selected hypothesis into one of the island's ideas, or open a new one."""
    match = next((i for i in island.ideas if i.id == hyp.idea.strip()), None)
    if match is None:
        match = Idea(id=f"I{island.next_idea}", description=(hyp.description or hyp.text).strip()[:400], born=label)
        island.next_idea += 1
        island.ideas.append(match)
    elif hyp.description.strip():
        match.description = hyp.description.strip()[:400]  # the rewrite keeps an idea current
    return match


async def step(task_in: StepTask, runtime: Runtime) -> dict:
    ctx, cfg, task = runtime.context, _cfg(runtime), _task(runtime)
    gen, island = task_in["generation"], Island.model_validate(task_in["island"])  # this step's own copy
    key = f"g{gen:04d}-i{island.id}"
    done = (await ctx.store.run(ctx.store.records, ctx.run_id, "step")).get(key)
    if done is not None:  # evaluated before a crash: never evaluate twice
        return {"results": [StepResult.model_validate(done).model_dump()]}
    rng = _rng(cfg, "step", gen, island.id)
    proposer = _proposer(runtime)
    parent_cid, action = _choose_parent(island, rng, cfg)
    parent = await _candidate(runtime, parent_cid)
    program, idea, experiment, note = None, None, "", ""
    try:
        plan = island.plan
        if isinstance(plan, Crossover) and (child := proposer.crossover(
                (await _candidate(runtime, island.best.cid)).program, parent.program, rng)):
            program, experiment = child, f"crossover with island {plan.partner}"
            idea = _touch_idea(island, Hypothesis(text="crossover", idea="new",
                                                  description=f"Combine with island {plan.partner}'s best."), key)
        else:
            ideation = await proposer.ideate(island.ideas, extract_block(parent.program), _fmt(parent.score), rng)
            hyp = ideation.hypotheses[ideation.selected]
            idea = _touch_idea(island, hyp, key)
            experiment = ideation.experiment
            program = await _write_with_repair(proposer, parent, idea, experiment, rng, cfg)
    except (StructuredOutputError, EditFailed) as exc:
        note = f"no candidate: {str(exc).splitlines()[0][:300]}"
    result = None
    if program is not None:
        result = await task.aevaluate(program, pool=_pool(runtime))
        for _ in range(cfg.repair_turns):  # a crash or compile error gets a hidden repair turn
            if result.ok or result.status not in ("error", "invalid"):
                break
            try:
                fixed = await proposer.repair(program, f"{result.status}: {result.reason}\n{result.stderr[-800:]}", rng)
            except (StructuredOutputError, EditFailed):
                break
            if fixed == program:
                break
            program, result = fixed, await task.aevaluate(fixed, pool=_pool(runtime))
    ok = bool(result and result.ok)
    score = result.score if ok else None
    norm = task.config.normalised(score) if ok else None
    outcome = (f"score {_fmt(score)} (parent {_fmt(parent.score)})" if ok
               else f"failed: {result.status}: {result.reason[:200]}" if result else note)
    if idea is not None:
        idea.count += 1
        improved = ok and norm < island.best.norm
        if improved:
            idea.status = "validated"
        elif idea.status != "validated":
            idea.status = "invalidated" if idea.count >= 3 else "in progress"
        if ok and (idea.best is None or norm < idea.best):
            idea.best = norm
        idea.history += await _summary(proposer, idea, experiment, outcome, cfg)
        if idea.count % cfg.condense_every == 0:  # hierarchical: many bullets become one
            idea.history = [await _condense(proposer, idea)]
    ideas = island.ideas
    if len(ideas) > cfg.idea_cap:
        ideas = await _prune(proposer, ideas, cfg.idea_cap, keep=idea.id if idea else None)
    out = StepResult(generation=gen, island=island.id, cid=key, norm=norm, score=score, ok=ok, ideas=ideas,
                     next_idea=island.next_idea, action=action, evaluated=result is not None).model_dump()
    if program is not None:
        cand = Candidate(program=program, score=score, norm=norm, metrics=result.metrics if result else {},
                         status=result.status if result else "no-candidate",
                         reason=(result.reason if result else note)[:500], island=island.id, generation=gen,
                         parent=parent_cid, action=action, idea=idea.id if idea else None,
                         experiment=experiment[:500])
        await ctx.store.aput_records(ctx.run_id, "candidate", [(key, cand.model_dump())])
    await ctx.store.aput_records(ctx.run_id, "step", [(key, out)])
    return {"results": [out]}


async def _write_with_repair(proposer: Proposer, parent: Candidate, idea: Idea, experiment: str,
                             rng: random.Random, cfg: EvolveConfig) -> str:
    try:
        return await proposer.write(parent.program, idea.description, idea.history, experiment,
                                    _fmt(parent.score), rng)
    except EditFailed as exc:
        if cfg.repair_turns < 1:
            raise
        return await proposer.repair(parent.program, f"the edit could not be applied: {exc}", rng)


async def _summary(proposer: Proposer, idea: Idea, experiment: str, outcome: str, cfg: EvolveConfig) -> list[str]:
    if cfg.summarize_with_llm:
        try:
            return [b.strip()[:300] for b in await proposer.summarize(idea.description, experiment, outcome)]
        except StructuredOutputError:
            pass
    return [f"{experiment[:150]} -> {outcome}"]


async def _condense(proposer: Proposer, idea: Idea) -> str:
    try:
        return (await proposer.condense(idea.description, idea.history))[:400]
    except StructuredOutputError:
        return f"{idea.count} experiments; last: {idea.history[-1][:200]}"


async def _prune(proposer: Proposer, ideas: list[Idea], cap: int, keep: str | None) -> list[Idea]:
    try:
        drop = set(await proposer.prune(ideas, cap))
    except StructuredOutputError:
        drop = set()
    kept = [i for i in ideas if i.id not in drop or i.id == keep]
    if len(kept) > cap:  # the model dropped too few: invalidated first, then least tried, then oldest
        order = sorted(kept, key=lambda i: (i.id == keep, i.status != "invalidated", i.status == "validated", i.count))
        remove = {i.id for i in order[: len(kept) - cap]}
        kept = [i for i in kept if i.id not in remove]
    return kept


def _end_of_iteration(isl: Island) -> None:
    """A backtrack counts down (its end merges the pre-backtrack ideas back in); a crossover
    lasts one iteration."""
    plan = isl.plan
    if isinstance(plan, Backtrack):
        plan.left -= 1
        if plan.left <= 0:
            ids = {i.id for i in isl.ideas}
            isl.ideas = isl.ideas + [i for i in (isl.pre_backtrack_ideas or []) if i.id not in ids]
            isl.pre_backtrack_ideas = None
            isl.plan = Refine()
    elif isinstance(plan, Crossover):
        isl.plan = Refine()


def control(state: State, runtime: Runtime) -> dict:
    cfg = _cfg(runtime)
    ctl = control_config(cfg)
    task = _task(runtime)
    target = task.config.normalised(task.config.target)
    gen = state["generation"]
    results = {r.island: r for r in map(StepResult.model_validate, state["results"]) if r.generation == gen}
    islands = [Island.model_validate(i) for i in state["islands"]]
    evaluations = state["evaluations"]
    best = RunBest.model_validate(state["best"])
    actions: list[ActionRecord] = []
    for isl in islands:
        r = results.get(isl.id)
        if r is None:
            continue
        evaluations += 1 if r.evaluated else 0
        isl.ideas, isl.next_idea, isl.iters = r.ideas, r.next_idea, isl.iters + 1
        prev = isl.best.norm
        if r.ok:
            isl.pool = sorted(isl.pool + [PoolEntry(cid=r.cid, norm=r.norm)], key=lambda c: c.norm)[: ctl.top_pool]
            if r.norm < prev:
                isl.best = Elite(cid=r.cid, norm=r.norm, score=r.score)
                isl.updates += 1
                isl.snapshots = isl.snapshots + [Snapshot(iter=isl.iters, cid=r.cid, norm=r.norm,
                                                          ideas=[i.model_copy(deep=True) for i in isl.ideas])]
                if r.norm < best.norm:
                    best = RunBest(cid=r.cid, norm=r.norm, score=r.score, island=isl.id)
        # every iteration moves the momentum: no improvement means R = 0, so it decays
        isl.momentum = momentum(isl.momentum, relative_progress(prev, isl.best.norm, target), ctl.beta)
        _end_of_iteration(isl)
    A = [absolute_progress(i.first_norm, i.best.norm, target) for i in islands]
    rng = _rng(cfg, "control", gen)
    for isl in islands:
        if not isinstance(isl.plan, Refine):
            continue
        if not should_trigger(isl.momentum, isl.updates, isl.iters - isl.last_action, ctl):
            continue
        kind, partner = choose_action(A, isl.id, rng, ctl)
        if kind == "refine":
            continue
        isl.last_action = isl.iters
        if kind == "backtrack":
            earlier = isl.snapshots[:-1] or isl.snapshots
            k = snapshot_index(len(earlier), rng, ctl.alpha)
            snap = earlier[k]
            isl.pre_backtrack_ideas = isl.ideas
            isl.ideas = [i.model_copy(deep=True) for i in snap.ideas]
            isl.plan = Backtrack(parent=snap.cid, left=ctl.backtrack_len, snapshot=k)
        else:
            other = islands[partner]
            isl.plan = Crossover(parent=other.best.cid, partner=partner)
            good = sorted(other.ideas, key=lambda i: (i.status != "validated", -i.count))[:2]
            for g in good:  # the partner's best ideas join this island's memory
                isl.ideas = isl.ideas + [g.model_copy(update={"id": f"I{isl.next_idea}", "history": g.history[-3:],
                                                              "description": f"(from island {partner}) {g.description}"})]
                isl.next_idea += 1
        actions.append(ActionRecord(generation=gen, island=isl.id, action=kind, partner=partner,
                                    momentum=isl.momentum, A=A))
    budget = cfg.budget or task.config.budget
    stop = ""
    if best.norm <= target:
        stop = f"target reached ({task.config.metric} {best.score:.6g})"
    elif evaluations >= budget:
        stop = f"budget spent ({evaluations} evaluations)"
    return {"islands": [i.model_dump() for i in islands], "generation": gen + 1, "evaluations": evaluations,
            "best": best.model_dump(), "actions": [a.model_dump() for a in actions], "stop_reason": stop}


def after_control(state: State) -> list[Send] | Literal["finalize"]:
    return "finalize" if state.get("stop_reason") else fan_out(state)


def finalize(state: State, runtime: Runtime) -> dict:
    return {}


def initial_state(inputs: dict) -> dict:
    return inputs


def build_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("init", init)
    g.add_node("step", step)
    g.add_node("control", control)
    g.add_node("finalize", finalize)
    g.add_edge(START, "init")
    g.add_conditional_edges("init", fan_out, ["step"])
    g.add_edge("step", "control")
    g.add_conditional_edges("control", after_control, ["step", "finalize"])
    g.add_edge("finalize", END)
    return g


# -- run protocol ---------------------------------------------------------------------------------
def finish(ctx, state: State) -> dict:
    cands = {k: Candidate.model_validate(v) for k, v in ctx.store.records(ctx.run_id, "candidate").items()}
    run_best = RunBest.model_validate(state["best"])
    best = cands[run_best.cid]
    actions = [ActionRecord.model_validate(a) for a in state.get("actions", [])]
    counts = {k: sum(1 for a in actions if a.action == k) for k in ("backtrack", "crossover")}
    failed = sum(1 for c in cands.values() if c.status != "ok")
    out = {"task": ctx.config.pipeline.evolve.task, "best_score": best.score,
           "best_candidate": run_best.cid, "evaluations": state["evaluations"],
           "generations": state["generation"], "failed_candidates": failed, "stop_reason": state["stop_reason"],
           "backtracks": counts["backtrack"], "crossovers": counts["crossover"]}
    for k in SUMMARY_METRICS:
        if k in best.metrics:
            v = best.metrics[k]
            out[k] = v if v is None or math.isfinite(v) else None
    return out


def progress_table(store, run_id: str) -> list[dict]:
    """Best-so-far per island per generation (raw scores), and the action taken."""
    steps = store.records(run_id, "step")
    rows = []
    for key in sorted(steps):
        s = StepResult.model_validate(steps[key])
        rows.append({"generation": s.generation, "island": s.island, "score": s.score, "action": s.action, "ok": s.ok})
    return rows


EXPORT_FIELDS = ("island", "generation", "action", "parent", "idea", "score", "status", "reason", "experiment",
                 "program")


def export_rows(store, run) -> list[dict]:
    rows = []
    for k, v in store.records(run.id, "candidate").items():
        c = Candidate.model_validate(v)
        rows.append({"id": k, **{f: getattr(c, f) for f in EXPORT_FIELDS}})
    return rows
