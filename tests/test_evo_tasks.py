"""Built-in tasks, task folders, the evolvable region and SEARCH/REPLACE edits."""

from __future__ import annotations

import math
import textwrap

import pytest

from tagsmith.core.errors import ConfigError
from tagsmith.evaluators.evo_tasks import (BUILTIN_TASKS, TASKS_DIR, Task, TaskConfig, apply_search_replace,
                                           builtin_task, extract_block, llmsr_data_dir, load_task,
                                           replace_block)
from tagsmith.evaluators.sandbox import SandboxLimits, SandboxPool

PROGRAM = textwrap.dedent("""\
    import math

    HELPER = 1


    # EVOLVE-BLOCK-START
    def f(x):
        y = x + 1
        return y * HELPER
    # EVOLVE-BLOCK-END


    def main():
        return f(2)
""")


def _llmsr_root():
    try:
        return llmsr_data_dir()
    except ConfigError as exc:  # same resolution as the code: argument, env, ../shared
        pytest.skip(f"LLM-SR data not available: {exc}")


@pytest.fixture
def llmsr_root():
    return _llmsr_root()


# ------------------------------------------------------------------ region and edits

def test_extract_and_replace_block():
    assert extract_block(PROGRAM) == "def f(x):\n    y = x + 1\n    return y * HELPER\n"
    new = replace_block(PROGRAM, "def f(x):\n    return 0")
    assert extract_block(new) == "def f(x):\n    return 0\n"
    head, tail = PROGRAM.split("# EVOLVE-BLOCK-START")[0], PROGRAM.split("# EVOLVE-BLOCK-END")[1]
    assert new.startswith(head) and new.endswith(tail)
    with pytest.raises(ValueError, match="exactly one"):
        extract_block("def f():\n    pass\n")
    with pytest.raises(ValueError, match="marker"):
        replace_block(PROGRAM, "# EVOLVE-BLOCK-END\n")


def test_search_replace_edits_inside_the_region():
    diff = textwrap.dedent("""\
        I will change the increment and the return.
        ```
        <<<<<<< SEARCH
            y = x + 1
        =======
            y = x + 2
        >>>>>>> REPLACE

        <<<<<<< SEARCH
            y = x + 2
            return y * HELPER
        =======
            y = x + 2
            return math.sqrt(y) * HELPER
        >>>>>>> REPLACE
        ```
    """)
    new = apply_search_replace(PROGRAM, diff)  # the second block sees the first's edit
    assert extract_block(new) == "def f(x):\n    y = x + 2\n    return math.sqrt(y) * HELPER\n"
    assert new.replace(extract_block(new), "") == PROGRAM.replace(extract_block(PROGRAM), "")


def test_search_replace_tolerates_trailing_whitespace():
    diff = "<<<<<<< SEARCH\n    y = x + 1   \n=======\n    y = x - 1\n>>>>>>> REPLACE\n"
    assert "y = x - 1" in extract_block(apply_search_replace(PROGRAM, diff))


def test_search_replace_refuses_edits_outside_the_region():
    diff = ("<<<<<<< SEARCH\n    y = x + 1\n=======\n    y = x\n>>>>>>> REPLACE\n"
            "<<<<<<< SEARCH\nHELPER = 1\n=======\nHELPER = 2\n>>>>>>> REPLACE\n")
    with pytest.raises(ValueError, match=r"block 2.*'HELPER = 1'.*outside the evolvable region"):
        apply_search_replace(PROGRAM, diff)


@pytest.mark.parametrize("diff, message", [
    ("<<<<<<< SEARCH\n    z = 3\n=======\n    z = 4\n>>>>>>> REPLACE\n",
     r"block 1.*'z = 3'.*does not match"),
    ("<<<<<<< SEARCH\ny = x + 1\n=======\ny = 0\n>>>>>>> REPLACE\n", r"block 1.*does not match.*indentation"),
    ("just prose, no edits", "no SEARCH/REPLACE blocks"),
    ("<<<<<<< SEARCH\n    y = x + 1\n=======\n    y = 0\n", r"block 1 is not closed"),
    ("<<<<<<< SEARCH\n\n=======\n    y = 0\n>>>>>>> REPLACE\n", r"block 1.*empty"),
])
def test_search_replace_errors_are_clear(diff, message):
    with pytest.raises(ValueError, match=message):
        apply_search_replace(PROGRAM, diff)


# ------------------------------------------------------------------ funcmin, circles

def test_task_config_normalises_to_lower_is_better():
    assert TaskConfig("a", "m", "min", 0.0).normalised(3.0) == 3.0
    assert TaskConfig("a", "m", "max", 1.0).normalised(3.0) == -3.0
    with pytest.raises(ConfigError):
        TaskConfig("a", "m", "up", 0.0)


def test_unknown_builtin_task():
    with pytest.raises(ConfigError, match="circle-packing"):
        builtin_task("nope")


def test_funcmin_initial_and_known_optimum():
    task = builtin_task("funcmin")
    r = task.evaluate(task.initial_program)
    assert r.ok and math.isfinite(r.score) and r.score > -1.52
    best = replace_block(task.initial_program, "def search_algorithm():\n    return -1.704, 0.678\n")
    r = task.evaluate(best)
    assert r.ok and r.score == pytest.approx(-1.519, abs=0.01)
    assert r.metrics["distance_to_optimum"] < 1e-9
    broken = replace_block(task.initial_program, "def search_algorithm():\n    return float('nan'), 0\n")
    r = task.evaluate(broken)
    assert (r.ok, r.status) == (False, "invalid") and "non-finite" in r.reason


def test_circle_packing_initial_is_valid():
    task = builtin_task("circle-packing")
    r = task.evaluate(task.initial_program)
    assert r.ok and r.score == pytest.approx(26 / 12)
    assert task.config.direction == "max" and task.config.target == 2.635


def _packing(body: str) -> str:
    return replace_block(builtin_task("circle-packing").initial_program,
                         "def construct_packing():\n" + textwrap.indent(body, "    "))


@pytest.mark.parametrize("body, reason", [
    ("centers = np.array([[0.25, 0.5], [0.45, 0.5]] + [[0.9, 0.9]] * 24)\n"
     "radii = np.array([0.2, 0.2] + [0.0] * 24)\nreturn centers, radii\n", "circles 0 and 1 overlap by 0.2"),
    ("centers = np.full((26, 2), 0.5)\ncenters[:, 0] = np.linspace(0.05, 0.95, 26)\n"
     "radii = np.full(26, 0.01)\nradii[3] = 0.6\nreturn centers, radii\n", "circle 3"),
    ("return np.zeros((25, 2)), np.zeros(25)\n", "expected centers of shape (26, 2)"),
])
def test_circle_packing_rejects_invalid_packings(body, reason):
    r = builtin_task("circle-packing").evaluate(_packing(body))
    assert (r.ok, r.status, r.score) == (False, "invalid", None)
    assert reason in r.reason


def test_program_exception_and_timeout_are_reported():
    task = builtin_task("funcmin")
    r = task.evaluate(replace_block(task.initial_program, "def search_algorithm():\n    return 1 / 0\n"))
    assert r.status == "error" and "ZeroDivisionError" in r.reason and "ZeroDivisionError" in r.stderr
    r = task.evaluate(replace_block(task.initial_program, "def search_algorithm():\n    while True:\n        pass\n"),
                      SandboxLimits(timeout_s=1))
    assert r.status == "timeout" and r.score is None


# ------------------------------------------------------------------ LLM-SR

async def test_llmsr_initial_programs_evaluate(llmsr_root):
    pool = SandboxPool(workers=2)
    tasks = [builtin_task(n) for n in BUILTIN_TASKS if n.startswith("llmsr-")]
    import asyncio
    results = await asyncio.gather(*(t.aevaluate(t.initial_program, pool=pool) for t in tasks))
    for task, r in zip(tasks, results):
        assert r.ok, (task.config.name, r.reason, r.stderr[-500:])
        assert math.isfinite(r.score) and r.score > task.config.target
        assert r.metrics["mse"] == r.score and len(r.metrics["params"]) == 10
        for key in ("nmse_id", "nmse_ood", "log10_nmse_id", "log10_nmse_ood"):
            assert math.isfinite(r.metrics[key])
        assert task.config.direction == "min" and "equation(" in task.description


def test_llmsr_true_form_beats_the_linear_start(llmsr_root):
    # Found by least squares on a library of terms: a = 0.8 sin x - x cos x - 0.5 x v
    # - 0.2 x^3 - 0.5 v^3 fits oscillator1's training data to machine precision.
    task = builtin_task("llmsr-oscillator1")
    good = replace_block(task.initial_program,
                         "def equation(x, v, params):\n"
                         "    return (params[0] * np.sin(x) + params[1] * x * np.cos(x) + params[2] * x * v\n"
                         "            + params[3] * x ** 3 + params[4] * v ** 3)\n")
    base, r = task.evaluate(task.initial_program), task.evaluate(good)
    assert r.ok and r.score < base.score / 1000
    assert r.metrics["log10_nmse_id"] < -4 and r.metrics["nmse_ood"] < base.metrics["nmse_ood"]


def test_llmsr_extra_terms_do_not_worsen_the_fit(llmsr_root):
    task = builtin_task("llmsr-bactgrow")
    richer = replace_block(task.initial_program,
                           "def equation(b, s, temp, pH, params):\n"
                           "    return (params[0] * b + params[1] * s + params[2] * temp + params[3] * pH\n"
                           "            + params[4] + params[5] * b * s / (1 + np.abs(params[6]) * s))\n")
    base, r = task.evaluate(task.initial_program), task.evaluate(richer)
    assert r.ok and r.score <= base.score * 1.001


def test_llmsr_bad_shape_is_an_error(llmsr_root):
    task = builtin_task("llmsr-oscillator1")
    bad = replace_block(task.initial_program,
                        "def equation(x, v, params):\n    return (params[0] * x)[:, None]\n")
    r = task.evaluate(bad)
    assert r.status == "error" and "shape" in r.reason


def test_llmsr_targets_are_nmse_1e8_of_the_training_data(llmsr_root):
    import numpy as np

    for name in BUILTIN_TASKS:
        if name.startswith("llmsr-"):
            y = np.loadtxt(llmsr_root / name[len("llmsr-"):] / "train.csv", delimiter=",", skiprows=1, usecols=-1)
            assert builtin_task(name).config.target == float(1e-8 * np.var(y))


def test_llmsr_folder_runs_as_a_user_task_folder_with_a_data_dir(llmsr_root):
    task = load_task(TASKS_DIR / "llmsr-oscillator2", data_dir=llmsr_root)  # what `evolve FOLDER --data-dir` does
    r = task.evaluate(task.initial_program)
    assert r.ok and r.score == builtin_task("llmsr-oscillator2").evaluate(task.initial_program).score
    r = load_task(TASKS_DIR / "llmsr-oscillator2").evaluate(task.initial_program)  # no data folder given
    assert r.status == "error" and "data_dir" in r.reason


def test_llmsr_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("TAGSMITH_LLMSR_DATA", raising=False)
    with pytest.raises(ConfigError, match="does not exist"):
        llmsr_data_dir(tmp_path / "missing")
    monkeypatch.setenv("TAGSMITH_LLMSR_DATA", str(tmp_path))
    assert llmsr_data_dir() == tmp_path.resolve()
    with pytest.raises(ConfigError, match="lacks train.csv"):
        builtin_task("llmsr-oscillator1")  # the env folder exists but holds no data
    monkeypatch.setenv("TAGSMITH_LLMSR_DATA", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="TAGSMITH_LLMSR_DATA"):
        llmsr_data_dir()


# ------------------------------------------------------------------ task folders

def test_builtin_tasks_are_task_folders_in_the_user_format():
    folders = sorted(p.name for p in TASKS_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders == sorted(BUILTIN_TASKS)
    for name in folders:
        assert {"task.toml", "initial.py", "evaluator.py"} <= {p.name for p in (TASKS_DIR / name).iterdir()}
    for name in ("funcmin", "circle-packing"):  # the same loader, the same task
        a, b = builtin_task(name), load_task(TASKS_DIR / name)
        assert (a.config, a.initial_program, a.description, a.evaluator_args) == \
            (b.config, b.initial_program, b.description, b.evaluator_args)
        assert a.config.name == name



EVALUATOR = textwrap.dedent("""\
    import importlib.util
    import os

    def evaluate(program_path):
        spec = importlib.util.spec_from_file_location("prog", program_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        weights = [float(w) for w in open(os.path.join(os.path.dirname(__file__), "weights.txt")).read().split()]
        loss = sum(w * mod.f(x) ** 2 for w, x in zip(weights, range(3)))
        if loss > 1e6:
            return {"error": "loss exploded"}
        return {"loss": loss}
""")


def _folder(tmp_path, config_name: str, config_text: str):
    root = tmp_path / "mytask"
    root.mkdir()
    (root / config_name).write_text(config_text)
    (root / "initial.py").write_text("# EVOLVE-BLOCK-START\ndef f(x):\n    return x + 1\n# EVOLVE-BLOCK-END\n")
    (root / "evaluator.py").write_text(EVALUATOR)
    (root / "weights.txt").write_text("1 1 1")
    return root


def test_load_task_from_toml_folder(tmp_path):
    root = _folder(tmp_path, "task.toml",
                   'metric = "loss"\ndirection = "min"\ntarget = 0.0\nbudget = 7\ntimeout_s = 5\n'
                   'description = "Make f vanish."\n')
    task = load_task(root)
    assert isinstance(task, Task)
    assert (task.config.name, task.config.budget, task.config.timeout_s) == ("mytask", 7, 5.0)
    assert task.description == "Make f vanish."
    r = task.evaluate(task.initial_program)
    assert r.ok and r.score == 1 + 4 + 9
    r = task.evaluate(apply_search_replace(task.initial_program,
                                           "<<<<<<< SEARCH\n    return x + 1\n=======\n    return 0\n>>>>>>> REPLACE"))
    assert r.ok and r.score == 0
    r = task.evaluate(replace_block(task.initial_program, "def f(x):\n    return 1e9\n"))
    assert (r.status, r.reason) == ("invalid", "loss exploded")


async def test_load_task_from_yaml_folder_async(tmp_path):
    root = _folder(tmp_path, "task.yaml", "name: sq\nmetric: loss\ndirection: min\ntarget: 0\n")
    task = load_task(root)
    assert task.config.name == "sq" and "loss" in task.description
    r = await task.aevaluate(task.initial_program)
    assert r.ok and r.score == 14


@pytest.mark.parametrize("config, message", [
    ('metric = "loss"\ndirection = "min"\n', "missing target"),
    ('metric = "loss"\ndirection = "min"\ntarget = 0\ntimeout = 5\n', "unknown key"),
    ('metric = "loss"\ndirection = "down"\ntarget = 0\n', "direction"),
])
def test_load_task_rejects_bad_config(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        load_task(_folder(tmp_path, "task.toml", config))


def test_load_task_passes_a_data_dir_to_the_evaluator(tmp_path):
    root = _folder(tmp_path, "task.toml", 'metric = "loss"\ndirection = "min"\ntarget = 0\n')
    data = tmp_path / "data"
    data.mkdir()
    (data / "weights.txt").write_text("2 0 0")
    (root / "evaluator.py").write_text(EVALUATOR.replace("def evaluate(program_path):", "def evaluate(program_path, data_dir):")
                                       .replace("os.path.dirname(__file__)", "data_dir"))
    r = load_task(root, data_dir=data).evaluate("# EVOLVE-BLOCK-START\ndef f(x):\n    return x + 1\n# EVOLVE-BLOCK-END\n")
    assert r.ok and r.score == 2  # 2 * f(0) ** 2 with the data folder's weights
    with pytest.raises(ConfigError, match="data folder .* does not exist"):
        load_task(root, data_dir=tmp_path / "nope")
    (root / "evaluator.py").write_text(EVALUATOR)  # evaluate(program_path): a data folder is refused clearly
    r = load_task(root, data_dir=data).evaluate("# EVOLVE-BLOCK-START\ndef f(x):\n    return 0\n# EVOLVE-BLOCK-END\n")
    assert r.status == "error" and "takes no data_dir argument" in r.reason


def test_load_task_needs_markers_and_files(tmp_path):
    root = _folder(tmp_path, "task.toml", 'metric = "loss"\ndirection = "min"\ntarget = 0\n')
    (root / "initial.py").write_text("def f(x):\n    return x\n")
    with pytest.raises(ConfigError, match="EVOLVE-BLOCK"):
        load_task(root)
    (root / "evaluator.py").unlink()
    with pytest.raises(ConfigError, match="evaluator.py"):
        load_task(root)
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(tmp_path / "none")
