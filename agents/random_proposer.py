"""A deterministic stand-in for the evolver's LLM: random edits of LLM-SR equations.

The equation is a weighted sum of terms, ``return params[0] * t0 + ... + params[k]``;
an edit adds, removes or swaps one term drawn from a library built on the inputs
(powers, products, sin/cos/exp). Ideas are the three edit kinds, so HCM's idea memory,
MBB and CE all run exactly as with a model, and a seed makes the run reproducible.

    >>> p = RandomExprProposer(["x", "v"])
    >>> p.terms_of("    return params[0] * x + params[1] * v + params[2]\\n")
    ['x', 'v']
"""

from __future__ import annotations

import re

from tagsmith.agents.evolver import Hypothesis, Ideation
from tagsmith.evaluators.evo_tasks import extract_block, replace_block
from tagsmith.core.errors import ConfigError

MAX_TERMS = 9  # + the constant = 10 params
KINDS = {"add": "Add one term from the library to the equation.",
         "remove": "Remove one term that may be noise.",
         "swap": "Replace one term by another from the library."}


def library(inputs: list[str]) -> list[str]:
    terms = []
    for a in inputs:
        terms += [a, f"{a}**2", f"{a}**3", f"np.sin({a})", f"np.cos({a})", f"np.exp(-np.abs({a}))",
                  f"np.abs({a})"]
    for i, a in enumerate(inputs):
        for b in inputs[i + 1:]:
            terms += [f"{a}*{b}", f"{a}**2*{b}", f"{a}*{b}**2", f"np.sin({a})*{b}"]
    return terms


class RandomExprProposer:
    def __init__(self, inputs: list[str]):
        self.inputs = inputs
        self.lib = library(inputs)

    @classmethod
    def for_program(cls, program: str) -> "RandomExprProposer":
        m = re.search(r"def equation\(([^)]*)\)", program)
        if not m:
            raise ConfigError("the random proposer edits LLM-SR equations: the program has no equation(...)")
        args = [a.split(":")[0].strip() for a in m.group(1).split(",")]
        return cls([a for a in args if a and a != "params"])

    @staticmethod
    def terms_of(block: str) -> list[str]:
        ret = block[block.rindex("return") + len("return"):].strip()
        terms = []
        for part in re.split(r"\s\+\s", ret):
            part = part.strip()
            m = re.fullmatch(r"params\[\d+\]\s*\*\s*(.+)", part)
            if m:
                terms.append(m.group(1).strip())
        return terms

    def render(self, block: str, terms: list[str]) -> str:
        head = block[: block.rindex("return")]
        body = " + ".join(f"params[{i}] * {t}" for i, t in enumerate(terms))
        body = f"{body} + params[{len(terms)}]" if terms else "params[0]"
        return f"{head}return {body}\n"

    async def ideate(self, ideas, parent_block, parent_score, rng):
        kind = rng.choice(sorted(KINDS))
        existing = next((i.id for i in ideas if i.description == KINDS[kind]), "new")
        return Ideation(hypotheses=[Hypothesis(text=KINDS[kind], idea=existing, description=KINDS[kind])],
                        selected=0, experiment=kind)

    async def write(self, parent_program, idea, history, experiment, parent_score, rng):
        block = extract_block(parent_program)
        terms = self.terms_of(block)
        unused = [t for t in self.lib if t not in terms]
        kind = experiment if experiment in KINDS else "add"
        if kind == "add" and len(terms) >= MAX_TERMS:
            kind = "swap"
        if kind == "remove" and len(terms) <= 1:
            kind = "add"
        if kind == "add" and unused:
            terms.insert(rng.randrange(len(terms) + 1), rng.choice(unused))
        elif kind == "remove":
            terms.pop(rng.randrange(len(terms)))
        elif unused and terms:
            terms[rng.randrange(len(terms))] = rng.choice(unused)
        return replace_block(parent_program, self.render(block, terms))

    async def repair(self, program, error, rng):
        return program

    async def summarize(self, idea, experiment, outcome):
        return [f"{experiment}: {outcome}"]

    async def condense(self, idea, history):
        return f"{len(history)} experiments; latest: {history[-1] if history else 'none'}"

    async def prune(self, ideas, cap):
        return []  # the graph's code rule (invalidated, then least used) decides

    def crossover(self, own_program, partner_program, rng):
        """Terms from both parents, each kept with probability 1/2 (at most MAX_TERMS)."""
        own, other = self.terms_of(extract_block(own_program)), self.terms_of(extract_block(partner_program))
        pool = list(dict.fromkeys(own + other))
        child = [t for t in pool if rng.random() < 0.5][:MAX_TERMS] or pool[:1]
        return replace_block(partner_program, self.render(extract_block(partner_program), child))
