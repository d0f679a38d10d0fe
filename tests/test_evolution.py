"""PACEvolve control math, the evolution graph with the random and the (fake) LLM proposer,
and SIGKILL + resume with no evaluation lost or repeated."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tagsmith.agents.fake import FakeLLM
from tagsmith.cli import main
from tagsmith.core.config import load_config
from tagsmith.runtime import execute
from tagsmith.pipelines.evolution_control import (ControlConfig, absolute_progress, action_weights, choose_action, momentum,
                                     relative_progress, should_trigger, snapshot_index, tournament)
from tagsmith.pipelines.evolution_models import Idea, PoolEntry

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from crash import kill_when  # noqa: E402

# -- control math ---------------------------------------------------------------------------------


def test_progress_and_momentum_hand_computed():
    assert relative_progress(10.0, 4.0, 0.0) == pytest.approx(0.6)
    assert relative_progress(10.0, 10.0, 0.0) == 0.0 and relative_progress(10.0, 11.0, 0.0) == 0.0
    assert relative_progress(1.0, 0.5, 1.0) == 0.0  # no gap left
    m = momentum(0.0, 0.6, 0.85)
    assert m == pytest.approx(0.09)
    assert momentum(m, 0.0, 0.85) == pytest.approx(0.0765)
    assert absolute_progress(10.0, 5.0, 0.0) == 0.5 and absolute_progress(10.0, -1.0, 0.0) == 1.0
    cfg = ControlConfig()
    assert should_trigger(0.0005, 2, 16, cfg) and not should_trigger(0.0005, 1, 16, cfg)
    assert not should_trigger(0.0005, 2, 15, cfg) and not should_trigger(0.01, 2, 30, cfg)


def test_ce_weights_hand_computed():
    # island 1 lags far behind island 0: crossover gain 0.7; dominance 0; sim 0.3
    w = action_weights([0.9, 0.2], 1)
    assert w["backtrack"] == pytest.approx(0.3 * 0.8 * 0.1)
    assert w["crossover"] == {0: pytest.approx(0.7 + 0.3 * 0.2 * 0.9)}
    # both stuck near 0: backtracking dominates
    w = action_weights([0.05, 0.0, 0.02], 1)
    assert w["backtrack"] == pytest.approx(0.95 * 1.0 * 0.95)
    # one island: always backtrack
    assert choose_action([0.3], 0, random.Random(0), cfg := ControlConfig()) == ("backtrack", None)
    assert choose_action([0.3, 0.9], 0, random.Random(0), ControlConfig(backtracking=False))[0] == "crossover"
    assert choose_action([0.3, 0.9], 0, random.Random(0), ControlConfig(backtracking=False, crossover=False)) \
        == ("refine", None)
    del cfg


def test_snapshot_choice_favours_early_snapshots():
    rng = random.Random(1)
    counts = Counter(snapshot_index(4, rng, 1.5) for _ in range(20000))
    assert counts[0] > counts[1] > counts[2] > counts[3]
    expected0 = 1 / sum((k + 1) ** -1.5 for k in range(4))
    assert counts[0] / 20000 == pytest.approx(expected0, abs=0.02)


def test_tournament_uses_normalised_scores():
    pool = [PoolEntry(cid="a", norm=-3.0), PoolEntry(cid="b", norm=-1.0), PoolEntry(cid="c", norm=2.0)]
    assert tournament(pool, random.Random(0), 3).cid == "a"  # a max task's best has the lowest norm


# -- graph ----------------------------------------------------------------------------------------
TASK_TOML = 'name = "lin"\nmetric = "mse"\ndirection = "min"\ntarget = 1e-12\nbudget = {budget}\ntimeout_s = 20\n'
INITIAL = '''import numpy as np

# EVOLVE-BLOCK-START
def equation(x, v, params):
    return params[0] * x + params[1]
# EVOLVE-BLOCK-END
'''
EVALUATOR = '''import numpy as np, importlib.util, hashlib

def evaluate(program_path):
    spec = importlib.util.spec_from_file_location("p", program_path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    rng = np.random.default_rng(0)
    x, v = rng.uniform(-2, 2, 200), rng.uniform(-2, 2, 200)
    y = 1.5 * x * v - 0.7 * np.sin(x) + 0.2
    # linear in params: least squares on the columns the equation spans
    cols = [m.equation(x, v, np.eye(10)[i]) - m.equation(x, v, np.zeros(10)) for i in range(10)]
    A = np.stack(cols + [np.ones_like(x)], axis=1)
    p, *_ = np.linalg.lstsq(A, y, rcond=None)
    mse = float(np.mean((A @ p - y) ** 2))
    LOG
    return {"mse": mse}
'''


def make_task(tmp_path: Path, budget: int = 14, log: Path | None = None) -> Path:
    folder = tmp_path / "lin_task"
    folder.mkdir()
    (folder / "task.toml").write_text(TASK_TOML.format(budget=budget))
    (folder / "initial.py").write_text(INITIAL)
    line = (f"open({str(log)!r}, 'a').write(hashlib.sha256(open(program_path).read().encode()).hexdigest() + '\\n')"
            if log else "pass")
    (folder / "evaluator.py").write_text(EVALUATOR.replace("LOG", line))
    return folder


def evo_config(db_path: str, task: Path, **evolve):
    return load_config(overrides={"llm": {"model": "fake/x"}, "store": {"db": db_path}, "progress": False,
                                  "pipeline": {"evolve": {"task": str(task), "islands": 2, "proposer": "random",
                                                          "workers": 2, **evolve}}}, environ={})


async def test_random_proposer_run_improves_and_is_reproducible(tmp_path):
    task = make_task(tmp_path)
    runs = []
    for name in ("a.db", "b.db"):
        run, state = await execute("evolve", evo_config(str(tmp_path / name), task, seed=7), {})
        runs.append((run, state))
    (r1, s1), (r2, s2) = runs
    m1 = json.loads(r1.metrics_json)
    assert r1.status == "done" and m1["evaluations"] >= 14 and m1["stop_reason"].startswith("budget")
    from tagsmith.store.db import Store
    c1 = Store(str(tmp_path / "a.db")).records(r1.id, "candidate")
    c2 = Store(str(tmp_path / "b.db")).records(r2.id, "candidate")
    assert m1["best_score"] <= c1["init"]["score"]
    assert {k: v["program"] for k, v in c1.items()} == {k: v["program"] for k, v in c2.items()}  # same seed
    ideas = s1["islands"][0]["ideas"]
    assert ideas and all(i["history"] for i in ideas) and {i["status"] for i in ideas} <= {
        "new", "in progress", "validated", "invalidated"}


async def test_triggers_lead_to_backtrack_and_crossover(tmp_path):
    task = make_task(tmp_path, budget=30)
    cfg = evo_config(str(tmp_path / "t.db"), task, seed=3, freeze=0, epsilon=10.0, backtrack_len=2)
    run, state = await execute("evolve", cfg, {})
    kinds = Counter(a["action"] for a in state["actions"])
    assert kinds["backtrack"] + kinds["crossover"] >= 2
    from tagsmith.store.db import Store
    cands = Store(str(tmp_path / "t.db")).records(run.id, "candidate")
    acted = {c["action"] for c in cands.values()}
    assert acted & {"backtrack", "crossover"}
    for a in state["actions"]:
        if a["action"] == "crossover":
            assert a["partner"] != a["island"]


async def test_baseline_never_backtracks_or_crosses(tmp_path):
    task = make_task(tmp_path, budget=20)
    cfg = evo_config(str(tmp_path / "t.db"), task, freeze=0, epsilon=10.0, backtracking=False, crossover=False)
    _, state = await execute("evolve", cfg, {})
    assert state["actions"] == []


def _funcmin_reply(request: dict):
    user = next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")
    if "Propose up to 3 hypotheses" in user:
        known = "I1 [" in user  # classify into the existing idea once it exists
        return {"hypotheses": [{"text": "sample more points", "idea": "I1" if known else "new",
                                "description": "More random samples find a lower minimum."}],
                "selected": 0, "experiment": "raise iterations to 3000"}
    if "Your change failed" in user:
        return {"kind": "rewrite", "content": (
            "def search_algorithm(iterations=3000, bounds=(-5.0, 5.0)):\n"
            "    import numpy as np\n"
            "    rng = np.random.default_rng(0)\n"
            "    pts = rng.uniform(bounds[0], bounds[1], size=(iterations, 2))\n"
            "    vals = np.sin(pts[:, 0]) * np.cos(pts[:, 1]) + np.sin(pts[:, 0] * pts[:, 1]) "
            "+ (pts ** 2).sum(1) / 20\n"
            "    x, y = pts[vals.argmin()]\n"
            "    return float(x), float(y)\n")}
    if "Write the change" in user:
        return {"kind": "diff", "content": "<<<<<<< SEARCH\nthis line is not in the program\n=======\nx\n>>>>>>> REPLACE"}
    if "Summarise" in user:
        return {"bullets": ["more samples helped"]}
    return {"drop": []}


async def test_llm_proposer_hcm_with_repair_hidden_from_context(tmp_path):
    fake = FakeLLM(default=_funcmin_reply)
    cfg = load_config(overrides={"llm": {"model": "fake/x"}, "store": {"db": str(tmp_path / "f.db")},
                                 "pipeline": {"evolve": {"task": "funcmin", "islands": 1, "budget": 3,
                                                         "workers": 1}}}, environ={})
    run, state = await execute("evolve", cfg, {}, backend=fake)
    m = json.loads(run.metrics_json)
    assert m["best_score"] < -1.4  # 3000 samples get close to the minimum (-1.519)
    ideate = [r for r in fake.requests if "Propose up to 3 hypotheses" in r["messages"][-1]["content"]]
    assert len(ideate) == 2
    # the failed edit and its repair never reach later ideation context
    assert "not in the program" not in ideate[1]["messages"][-1]["content"]
    assert "more samples helped" in ideate[1]["messages"][-1]["content"]  # the summary does
    ideas = state["islands"][0]["ideas"]
    assert ideas[0]["id"] == "I1" and ideas[0]["count"] == 2 and ideas[0]["status"] == "validated"


def test_evolve_cli_and_show(tmp_path, capsys):
    task = make_task(tmp_path, budget=6)
    db = str(tmp_path / "c.db")
    assert main(["evolve", str(task), "--proposer", "random", "--islands", "2", "--db", db, "--no-progress"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("evolve show ")[1].split()[0]
    plot = tmp_path / "p.png"
    assert main(["evolve", "show", run_id, "--db", db, "--plot", str(plot)]) == 0
    shown = capsys.readouterr().out
    assert "island" in shown and "EVOLVE-BLOCK-START" in shown and plot.stat().st_size > 1000


EXAMPLE = HERE / "data" / "evolve_task"  # the README's "Task folders" example


def test_readme_task_folder_section_shows_the_tested_example():
    import re

    from tagsmith.evaluators.evo_tasks import _CONFIG_KEYS
    from tagsmith.pipelines.evolution import SUMMARY_METRICS

    readme = (HERE.parent / "README.md").read_text()
    section = readme.split("\n## Task folders\n", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"\*\*`([\w.]+)`\*\*\n\n```\w+\n(.*?)```", section, re.S))
    assert blocks == {n: (EXAMPLE / n).read_text() for n in ("task.toml", "initial.py", "evaluator.py")}
    assert set(re.findall(r"^  \| `(\w+)` \|", section, re.M)) == _CONFIG_KEYS  # every allowed key, no other
    assert all(f"`{k}`" in section for k in SUMMARY_METRICS)


def test_readme_task_folder_example_evolves(tmp_path, capsys):
    from tagsmith.evaluators.evo_tasks import load_task, replace_block

    db = str(tmp_path / "ex.db")
    assert main(["evolve", str(EXAMPLE), "--proposer", "random", "--islands", "2", "--seed", "2", "--db", db,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "target reached" in out and "nmse_id" in out and "nmse_ood" in out
    task = load_task(EXAMPLE)  # the {"error": ...} convention: status "invalid", the text as reason
    r = task.evaluate(replace_block(task.initial_program, "def equation(x, params):\n    return np.exp(params[0] * x)\n"))
    assert (r.ok, r.status) == (False, "invalid") and r.reason.startswith("equation(x, params) is not linear")


def test_unknown_task_is_one_line(tmp_path, capsys):
    assert main(["evolve", "no-such-task", "--db", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-task" in err


def test_sigkill_evolution_then_resume(tmp_path):
    log = tmp_path / "evals.log"
    task = make_task(tmp_path, budget=24, log=log)
    db = str(tmp_path / "k.db")
    args = ["evolve", str(task), "--proposer", "random", "--islands", "2", "--workers", "2", "--db", db,
            "--no-progress", "--seed", "5"]
    env = dict(os.environ, PYTHONPATH=str(HERE))
    child = subprocess.Popen([sys.executable, str(HERE / "fake_cli.py"), str(tmp_path / "served.log"), *args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = kill_when(db, "SELECT COUNT(*) FROM run_record WHERE kind = 'step'", 6, child, timeout=120)
    assert 6 <= seen < 23, f"kill landed at the wrong time ({seen} steps)"
    con = sqlite3.connect(db)
    run_id = con.execute("SELECT id FROM run").fetchone()[0]
    con.close()
    assert main(["resume", run_id, "--db", db, "--no-progress"]) == 0
    con = sqlite3.connect(db)
    status, metrics = con.execute("SELECT status, metrics_json FROM run").fetchone()
    steps = [k for (k,) in con.execute("SELECT key FROM run_record WHERE kind = 'step'")]
    con.close()
    m = json.loads(metrics)
    assert status == "done", metrics
    assert m["evaluations"] >= 24 or m["stop_reason"].startswith("target reached"), metrics
    assert len(steps) == len(set(steps))
    gens = Counter(k.split("-")[0] for k in steps)
    assert all(n == 2 for n in gens.values())  # every generation has both islands, none lost
    evaluated = log.read_text().split()
    # each stored step was evaluated once; at most the two in flight at the kill ran twice
    assert len(evaluated) <= len(steps) + 1 + 2


async def test_idea_cap_pruning_follows_the_model_then_the_code_rule():
    from tagsmith.pipelines.evolution import _prune

    ideas = [Idea(id=f"I{n}", status=s, count=c, description=f"idea {n}", history=[])
             for n, s, c in [(1, "validated", 5), (2, "invalidated", 4), (3, "in progress", 1),
                             (4, "new", 0), (5, "in progress", 3), (6, "new", 0), (7, "new", 0)]]

    class Chooser:
        def __init__(self, drop):
            self.drop, self.seen = drop, None

        async def prune(self, ideas, cap):
            self.seen = (len(ideas), cap)
            return self.drop

    # the model's choice is applied, but the idea being worked on is never dropped
    kept = await _prune(Chooser(["I2", "I4", "I7"]), ideas, cap=5, keep="I7")
    assert [i.id for i in kept] == ["I1", "I3", "I5", "I6", "I7"]
    # the model drops too few: invalidated first, then the least tried; validated ideas stay
    chooser = Chooser([])
    kept = await _prune(chooser, ideas, cap=4, keep="I6")
    assert chooser.seen == (7, 4)
    assert [i.id for i in kept] == ["I1", "I3", "I5", "I6"]
