"""The evolver's LLM roles (PACEvolve's hierarchical context management, HCM): ideate
(hypotheses, each classified into an existing idea or a new one, then one selected with an
experiment), write the code change, repair a failed change, summarise a result into the
idea's history, condense a long history, and choose ideas to drop.

    proposer = LLMProposer(gateway, task)
    plan = await proposer.ideate(ideas, parent_block, parent_score, rng)     # ideas: list[Idea]
    program = await proposer.write(parent_program, idea.description, idea.history, plan.experiment,
                                   parent_score, rng)

``agents/random_proposer.py`` implements the same interface without a model, so the search
control can be measured apart from any LLM.
"""

from __future__ import annotations

import random
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tagsmith.agents.gateway import Gateway
from tagsmith.evaluators.evo_tasks import Task, apply_search_replace, extract_block, replace_block
from tagsmith.prompts import render

PROMPTS = ("evolve_system", "evolve_ideate", "evolve_code", "evolve_repair", "evolve_summarize",
           "evolve_condense", "evolve_prune")


IdeaStatus = Literal["new", "in progress", "validated", "invalidated"]


class Idea(BaseModel):
    """One entry of an island's idea memory (HCM): what the evolver is told about an idea
    and what the search keeps about it. Lives here, beside the roles that read it, so that
    both the evolution graph and the proposers (LLM or random) can import it.

    >>> idea = Idea(id="I1", description="Sample more points.")
    >>> idea.status, idea.count, idea.history
    ('new', 0, [])
    >>> idea.history = ["more samples -> score -1.2", "a grid first -> score -1.5"]
    >>> print(render_ideas([idea], last=1))
    I1 [new, 0 experiments] Sample more points.
        - a grid first -> score -1.5
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str  # "I<n>", numbered per island
    description: str  # at most a few sentences; a hypothesis may rewrite it
    history: list[str] = Field(default_factory=list)  # one bullet per experiment, condensed now and then
    count: int = 0  # experiments run on it
    status: IdeaStatus = "new"
    best: float | None = None  # the best normalised score it reached (lower is better)
    born: str = ""  # the step that opened it (g<gen>-i<island>)


class Hypothesis(BaseModel):
    text: str
    idea: str = Field(description='an existing idea id such as "I2", or "new"')
    description: str = Field(default="", description="for a new idea, or a rewrite of the idea (<= 2 sentences)")


class Ideation(BaseModel):
    hypotheses: list[Hypothesis] = Field(min_length=1, max_length=3)
    selected: int = 0
    experiment: str


class CodeEdit(BaseModel):
    kind: Literal["diff", "rewrite"]
    content: str


class Bullets(BaseModel):
    bullets: list[str] = Field(min_length=1, max_length=2)


class Condensed(BaseModel):
    summary: str


class PruneChoice(BaseModel):
    drop: list[str] = Field(default_factory=list)


class EditFailed(ValueError):
    """A proposed change could not be applied; the message goes to the repair turn."""


def render_ideas(ideas: list[Idea], last: int = 2) -> str:
    if not ideas:
        return "(none yet)"
    lines = []
    for i in ideas:
        lines.append(f"{i.id} [{i.status}, {i.count} experiments] {i.description}")
        lines += [f"    - {b}" for b in i.history[-last:]]
    return "\n".join(lines)


def apply_edit(program: str, edit: CodeEdit) -> str:
    try:
        if edit.kind == "diff":
            return apply_search_replace(program, edit.content)
        block = edit.content.strip("\n")
        if block.startswith("```"):  # a fenced block: keep what is inside the fence
            block = block.split("\n", 1)[1].rsplit("```", 1)[0]
        return replace_block(program, block + "\n")
    except ValueError as exc:
        raise EditFailed(str(exc)) from exc


class Proposer(Protocol):
    async def ideate(self, ideas: list[Idea], parent_block: str, parent_score: str, rng: random.Random) -> Ideation: ...
    async def write(self, parent_program: str, idea: str, history: list[str], experiment: str,
                    parent_score: str, rng: random.Random) -> str: ...
    async def repair(self, program: str, error: str, rng: random.Random) -> str: ...
    async def summarize(self, idea: str, experiment: str, outcome: str) -> list[str]: ...
    async def condense(self, idea: str, history: list[str]) -> str: ...
    async def prune(self, ideas: list[Idea], cap: int) -> list[str]: ...
    def crossover(self, own_program: str, partner_program: str, rng: random.Random) -> str | None: ...


class LLMProposer:
    def __init__(self, gateway: Gateway, task: Task, node_prefix: str = ""):
        self.gw = gateway
        self.task = task
        c = task.config
        self.system = render("evolve_system", task_description=task.description, metric=c.metric,
                             direction_text="lower" if c.direction == "min" else "higher")
        self.prefix = node_prefix

    async def _call(self, prompt: str, schema, node: str, sample: int = 0, max_tokens: int = 1200):
        r = await self.gw.call(prompt, system=self.system, schema=schema, node=self.prefix + node,
                               sample=sample, max_tokens=max_tokens, temperature=None)
        return r.parsed

    @staticmethod
    def _code_tokens(block: str) -> int:
        """Room for a rewrite of the block and some growth (~4 characters a token), so a
        rambling model stops early instead of filling a fixed 2,000 tokens."""
        return min(2000, len(block) // 2 + 300)

    async def ideate(self, ideas, parent_block, parent_score, rng):
        plan = await self._call(render("evolve_ideate", ideas=render_ideas(ideas), parent_block=parent_block,
                                       parent_score=parent_score), Ideation, "ideate", sample=rng.randrange(1 << 30),
                                max_tokens=600)
        plan.selected = min(max(plan.selected, 0), len(plan.hypotheses) - 1)
        return plan

    async def write(self, parent_program, idea, history, experiment, parent_score, rng):
        edit = await self._call(render("evolve_code", idea=idea, history="\n".join(f"- {h}" for h in history[-4:])
                                       or "- nothing yet", experiment=experiment, parent_score=parent_score,
                                       parent_block=extract_block(parent_program)), CodeEdit, "code",
                                sample=rng.randrange(1 << 30), max_tokens=self._code_tokens(extract_block(parent_program)))
        return apply_edit(parent_program, edit)

    async def repair(self, program, error, rng):
        edit = await self._call(render("evolve_repair", error=error[-1500:], block=extract_block(program)),
                                CodeEdit, "repair", sample=rng.randrange(1 << 30),
                                max_tokens=self._code_tokens(extract_block(program)))
        return apply_edit(program, CodeEdit(kind="rewrite", content=edit.content))

    async def summarize(self, idea, experiment, outcome):
        return (await self._call(render("evolve_summarize", idea=idea, experiment=experiment, outcome=outcome),
                                 Bullets, "summarize", max_tokens=200)).bullets

    async def condense(self, idea, history):
        return (await self._call(render("evolve_condense", idea=idea, history="\n".join(f"- {h}" for h in history)),
                                 Condensed, "condense", max_tokens=200)).summary

    async def prune(self, ideas, cap):
        lines = "\n".join(f"{i.id} [{i.status}, {i.count}, best {i.best}] {i.description}" for i in ideas)
        return (await self._call(render("evolve_prune", cap=cap, ideas=lines), PruneChoice, "prune",
                                 max_tokens=200)).drop

    def crossover(self, own_program, partner_program, rng):
        return None  # the partner's best program becomes the parent; ideas carry the rest
