"""Evolution commands: `tagsmith evolve TASK` and `tagsmith evolve show RUN`."""

from __future__ import annotations

import json
import sys

from tagsmith.commands.common import config_from_args, out_dir
from tagsmith.core.errors import ConfigError


def add_commands(sub, common) -> None:
    p = sub.add_parser("evolve", parents=[common], help="evolve a program (PACEvolve); `evolve show RUN` reports",
                       description="TASK: a built-in task (llmsr-oscillator1, llmsr-oscillator2, llmsr-bactgrow, "
                                   "funcmin, circle-packing) or a task folder (task.toml, initial.py, evaluator.py). "
                                   "`tagsmith evolve show RUN` prints the best program, per-island progress and "
                                   "the actions taken, and writes a PNG plot.")
    p.add_argument("task", metavar="TASK|show")
    p.add_argument("run", nargs="?", help="with show: the run")
    g = p.add_argument_group("search")
    g.add_argument("--islands", type=int)
    g.add_argument("--budget", type=int, help="evaluations (default: the task's)")
    g.add_argument("--workers", type=int, help="sandboxed evaluations in parallel (default 2)")
    g.add_argument("--seed", type=int)
    g.add_argument("--proposer", choices=["llm", "random"], help="random: seeded random expression edits "
                                                                  "(LLM-SR tasks), no model")
    g.add_argument("--no-backtracking", action="store_true")
    g.add_argument("--no-crossover", action="store_true")
    g.add_argument("--data-dir", help="data folder for the task's evaluator (evaluate(program_path, data_dir=...)); "
                                       "LLM-SR tasks: default $TAGSMITH_LLMSR_DATA or ../shared/data/llmsr")
    g.add_argument("--timeout", type=float, help="seconds per evaluation")
    g.add_argument("--plot", help="with show: PNG path (default tagsmith-out/RUN.png)")
    p.set_defaults(func=cmd_evolve)


def evolve_overrides(args) -> dict:
    e: dict = {"task": args.task}
    for flag, key in (("islands", "islands"), ("budget", "budget"), ("workers", "workers"), ("seed", "seed"),
                      ("proposer", "proposer"), ("data_dir", "data_dir"), ("timeout", "timeout_s")):
        if getattr(args, flag) is not None:
            e[key] = getattr(args, flag)
    if args.no_backtracking:
        e["backtracking"] = False
    if args.no_crossover:
        e["crossover"] = False
    return e


def cmd_evolve(args) -> int:
    if args.task == "show":
        if not args.run:
            raise ConfigError("usage: tagsmith evolve show RUN")
        return show(args)
    from tagsmith import api
    from tagsmith.pipelines.evolution import resolve_task

    config = config_from_args(args, {"pipeline": {"evolve": evolve_overrides(args)}})
    ecfg = config.pipeline.evolve
    task = resolve_task(ecfg)  # fail early on a bad task or data folder
    print(f"evolving {task.config.name} ({task.config.metric}, {task.config.direction}; target "
          f"{task.config.target}) on {ecfg.islands} islands, budget {ecfg.budget or task.config.budget} evaluations, "
          f"proposer {ecfg.proposer} ({config.llm.model if ecfg.proposer == 'llm' else 'no model'})", file=sys.stderr)
    result = api.evolve(config)
    m = result.metrics
    print(f"run {result.id}: {result.run.status} in {result.seconds:.0f}s; best {task.config.metric} "
          f"{m['best_score']:.6g} ({m['evaluations']} evaluations, {m['backtracks']} backtracks, "
          f"{m['crossovers']} crossovers; {m['stop_reason']})")
    for k in ("nmse_id", "nmse_ood"):
        if m.get(k) is not None:
            print(f"  {k}: {m[k]:.4g}")
    print(f"details: tagsmith evolve show {result.id}")
    return 0


def show(args) -> int:
    from collections import defaultdict

    from tagsmith.api import open_store
    from tagsmith.pipelines.evolution import progress_table

    store = open_store(config_from_args(args))
    run = store.require_run(args.run, kind="evolve")
    m = json.loads(run.metrics_json or "{}")
    cands = store.records(run.id, "candidate")
    rows = progress_table(store, run.id)
    if not rows:
        print(f"run {run.id} ({run.status}) has no evaluated steps yet")
        return 0
    from tagsmith.core.config import EvolveConfig
    from tagsmith.pipelines.evolution import resolve_task

    task = resolve_task(EvolveConfig.model_validate(json.loads(run.config_json)["pipeline"]["evolve"]))
    better = min if task.config.direction == "min" else max
    best_key = better((k for k, c in cands.items() if c["score"] is not None), key=lambda k: cands[k]["score"])
    best = cands[best_key]
    print(f"run {run.id} ({run.status}): task {task.config.name}; best {task.config.metric} {best['score']:.6g} "
          f"from {best_key} (island {best['island']}, {best['action']})")
    for k, v in m.items():
        if k not in ("task", "best_score"):
            print(f"  {k}: {v}")
    init = cands["init"]["score"]
    series: dict[int, list[tuple[int, float]]] = defaultdict(list)
    bests: dict[int, float] = {}
    actions: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        i = r["island"]
        cur = bests.get(i, init)
        if r["score"] is not None:
            cur = better(cur, r["score"])
        bests[i] = cur
        series[i].append((r["generation"], cur))
        actions[i][r["action"]] += 1
    print(f"{'island':>6} {'steps':>6} {'best':>14} {'refine':>7} {'backtrack':>9} {'crossover':>9}")
    for i in sorted(series):
        a = actions[i]
        print(f"{i:>6} {len(series[i]):>6} {bests[i]:>14.6g} {a['refine']:>7} {a['backtrack']:>9} {a['crossover']:>9}")
    print("best program:")
    print(best["program"])
    plot = args.plot or str(out_dir() / f"{run.id}.png")
    _plot(series, init, task, plot, run.id)
    print(f"plot: {plot}")
    return 0


def _plot(series, init: float, task, path: str, run_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, pts in sorted(series.items()):
        ax.step([-1] + [g for g, _ in pts], [init] + [s for _, s in pts], where="post", label=f"island {i}")
    positive = all(s > 0 for pts in series.values() for _, s in pts) and init > 0
    if positive and task.config.direction == "min":
        ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"best {task.config.metric} so far")
    ax.set_title(f"{task.config.name} — run {run_id}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
