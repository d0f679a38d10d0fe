"""PACEvolve's search control against a baseline without backtracking and crossover, on the
three LLM-SR problems, with the seeded random-expression proposer (no LLM), so the control
is measured apart from any model. Same islands, same evaluation budget, same seeds.

    python benchmarks/evolution_llmsr.py --seeds 5 --budget 100 --islands 2 --freeze 5 --epsilon 0.01 \
        --out benchmarks/results/evolution_llmsr.json

Prints JSON: per problem and method, the best candidate's (by train MSE) NMSE on test_id and
test_ood for every seed, with median and quartiles; and the wall time."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tagsmith.core.config import load_config
from tagsmith.runtime import execute
from tagsmith.store.db import Store

PROBLEMS = ("llmsr-oscillator1", "llmsr-oscillator2", "llmsr-bactgrow")
METHODS = {"pacevolve": {}, "baseline": {"backtracking": False, "crossover": False}}


async def one(task: str, method: str, seed: int, args, tmp: str) -> dict:
    db = str(Path(tmp) / f"{task}-{method}-{seed}.db")
    evolve = {"task": task, "islands": args.islands, "budget": args.budget, "workers": args.workers, "seed": seed,
              "proposer": "random", "freeze": args.freeze, "epsilon": args.epsilon, **METHODS[method]}
    if args.data_dir:
        evolve["data_dir"] = args.data_dir
    cfg = load_config(overrides={"store": {"db": db}, "progress": False, "pipeline": {"evolve": evolve}})
    started = time.perf_counter()
    run, state = await execute("evolve", cfg, {})
    best = Store(db).records(run.id, "candidate")[state["best"]["cid"]]
    m = best["metrics"]
    return {"seed": seed, "train_mse": best["score"], "nmse_id": m.get("nmse_id"), "nmse_ood": m.get("nmse_ood"),
            "evaluations": state["evaluations"], "backtracks": sum(a["action"] == "backtrack" for a in state["actions"]),
            "crossovers": sum(a["action"] == "crossover" for a in state["actions"]),
            "wall_s": round(time.perf_counter() - started, 1)}


def summary(values: list[float]) -> dict:
    v = sorted(x for x in values if x is not None)
    if not v:
        return {}
    q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
    return {"median": v[len(v) // 2] if len(v) % 2 else statistics.median(v), "q1": q[0], "q3": q[2],
            "min": v[0], "max": v[-1]}


async def main(args) -> dict:
    out: dict = {"config": {"seeds": args.seeds, "budget": args.budget, "islands": args.islands,
                            "workers": args.workers, "proposer": "random", "freeze": args.freeze,
                            "epsilon": args.epsilon}, "results": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.problems:
            out["results"][task] = {}
            for method in METHODS:
                runs = []
                for seed in range(args.seeds):
                    r = await one(task, method, seed, args, tmp)
                    runs.append(r)
                    print(f"{task} {method} seed {seed}: nmse_id {r['nmse_id']:.3g} nmse_ood {r['nmse_ood']:.3g} "
                          f"({r['backtracks']} backtracks, {r['crossovers']} crossovers, {r['wall_s']}s)",
                          file=sys.stderr)
                out["results"][task][method] = {"runs": runs, "nmse_id": summary([r["nmse_id"] for r in runs]),
                                                "nmse_ood": summary([r["nmse_ood"] for r in runs])}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--islands", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    # PACEvolve's defaults (freeze 15, epsilon 0.001) rarely trigger within a short budget:
    # momentum needs ~27 flat iterations to fall from 0.075 below 0.001.
    ap.add_argument("--freeze", type=int, default=15)
    ap.add_argument("--epsilon", type=float, default=0.001)
    ap.add_argument("--data-dir")
    ap.add_argument("--out")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(text)
