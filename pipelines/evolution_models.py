"""The evolution graph's data as validated models: islands with their idea memory, pool,
snapshots and plan; the step results, candidates and control actions that the graph
stores.

The graph state and the store keep plain JSON-able dicts (``model_dump()``), so that
checkpoints and records stay plain; every node validates what it reads into these models
and works on attributes, never on dict keys:

    >>> island = Island.start(0, cid="init", norm=2.5, score=2.5)
    >>> island.plan
    Refine(kind='refine')
    >>> island.plan = Backtrack(parent="g0003-i0", left=5, snapshot=0)
    >>> state_island = island.model_dump()              # what the graph state holds
    >>> state_island["plan"]
    {'kind': 'backtrack', 'parent': 'g0003-i0', 'left': 5, 'snapshot': 0}
    >>> Island.model_validate(state_island).plan.left   # what a node works on
    5
    >>> from pydantic import ValidationError
    >>> try:
    ...     Island.model_validate({**state_island, "moment": 0.1})   # a misspelt key fails loudly
    ... except ValidationError as exc:
    ...     print(exc.errors()[0]["type"], exc.errors()[0]["loc"])
    extra_forbidden ('moment',)

Scores: ``score`` is the task's metric as measured; ``norm`` is the same sign-normalised so
that lower is better (``TaskConfig.normalised``), which is what the control compares.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tagsmith.agents.evolver import Idea, IdeaStatus

__all__ = ["Action", "ActionRecord", "Backtrack", "Candidate", "Crossover", "Elite", "Idea", "IdeaStatus",
           "Island", "Plan", "PoolEntry", "Refine", "RunBest", "Snapshot", "StepResult"]

Action = Literal["refine", "backtrack", "crossover"]  # how a step chose its parent


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PoolEntry(_Model):
    """One of an island's top candidates, for refinement tournaments."""

    cid: str
    norm: float


class Elite(_Model):
    """An island's best candidate so far."""

    cid: str
    norm: float
    score: float


class RunBest(Elite):
    """The run's best candidate so far and the island that found it (-1: the initial program)."""

    island: int


class Snapshot(_Model):
    """The island's idea memory when it reached a new best: a backtrack target."""

    iter: int
    cid: str
    norm: float
    ideas: list[Idea]


class Refine(_Model):
    """The default: the parent is the winner of a tournament among the island's pool."""

    kind: Literal["refine"] = "refine"


class Backtrack(_Model):
    """For ``left`` more iterations the parent is an earlier snapshot's best (MBB)."""

    kind: Literal["backtrack"] = "backtrack"
    parent: str
    left: int
    snapshot: int  # index into the snapshots it chose from


class Crossover(_Model):
    """For one iteration the parent is the partner island's best (CE)."""

    kind: Literal["crossover"] = "crossover"
    parent: str
    partner: int


Plan = Annotated[Refine | Backtrack | Crossover, Field(discriminator="kind")]


class Island(_Model):
    """One island: its idea memory (HCM), candidate pool, momentum (MBB) and current plan."""

    id: int
    ideas: list[Idea] = Field(default_factory=list)
    next_idea: int = 1  # the number of the next idea it opens (I<n>)
    pool: list[PoolEntry]
    best: Elite
    first_norm: float  # the initial program's, for absolute progress (CE)
    momentum: float = 0.0
    updates: int = 0  # improvements of its best
    iters: int = 0  # steps it has taken
    last_action: int = 0  # the iteration of its last backtrack or crossover
    snapshots: list[Snapshot]
    plan: Plan = Field(default_factory=Refine)
    pre_backtrack_ideas: list[Idea] | None = None  # merged back when a backtrack ends

    @classmethod
    def start(cls, island_id: int, cid: str, norm: float, score: float) -> Island:
        """A fresh island whose only candidate is ``cid`` (the initial program)."""
        return cls(id=island_id, pool=[PoolEntry(cid=cid, norm=norm)], best=Elite(cid=cid, norm=norm, score=score),
                   first_norm=norm, snapshots=[Snapshot(iter=0, ideas=[], cid=cid, norm=norm)])


class StepResult(_Model):
    """What one island's step hands to the control (and stores as record kind "step")."""

    generation: int
    island: int
    cid: str  # g<gen>-i<island>
    norm: float | None  # None when the step produced no valid candidate
    score: float | None
    ok: bool
    ideas: list[Idea]  # the island's idea memory after the step
    next_idea: int
    action: Action
    evaluated: bool  # a candidate reached the sandbox (counts against the budget)


class Candidate(_Model):
    """One evaluated program (record kind "candidate"; key "init" or g<gen>-i<island>)."""

    program: str
    score: float | None
    norm: float | None
    metrics: dict[str, Any]
    status: str  # "ok", a sandbox status or "invalid"
    reason: str
    island: int  # -1: the initial program
    generation: int
    parent: str | None
    action: Literal["init", "refine", "backtrack", "crossover"]
    idea: str | None
    experiment: str


class ActionRecord(_Model):
    """A backtrack or crossover the control decided (state ``actions``)."""

    generation: int
    island: int
    action: Literal["backtrack", "crossover"]
    partner: int | None
    momentum: float
    A: list[float]  # every island's absolute progress when it was decided
