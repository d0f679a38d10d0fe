"""Tasks for program search (PACEvolve-style): an initial program with one evolvable region,
an evaluator that runs the program in the sandbox, and a config (metric, direction, target).

    >>> task = builtin_task("funcmin")
    >>> task.config.metric, task.config.direction, task.config.target
    ('value', 'min', -1.519)
    >>> r = task.evaluate(task.initial_program)      # random search, in a sandboxed process
    >>> r.ok, r.status, r.score < 0
    (True, 'ok', True)
    >>> new = apply_search_replace(task.initial_program,
    ...     "<<<<<<< SEARCH\\ndef search_algorithm(iterations=50, bounds=(-5.0, 5.0)):\\n"
    ...     "=======\\ndef search_algorithm(iterations=5000, bounds=(-5.0, 5.0)):\\n>>>>>>> REPLACE")
    >>> "iterations=5000" in extract_block(new)
    True

The evolvable region is the lines strictly between a line ``# EVOLVE-BLOCK-START`` and a
line ``# EVOLVE-BLOCK-END`` (exactly one region per program). Edits from the LLM arrive as
SEARCH/REPLACE blocks and are applied only inside that region.

Every task is a folder (the README's "Task folders" section is the contract):
``task.toml`` (metric, direction, target...), ``initial.py`` (the program, one evolvable
region) and ``evaluator.py``, whose ``evaluate(program_path)`` runs inside the sandbox,
imports the program and returns a dict of metrics that holds the config's ``metric``. A
dict with a non-empty ``"error"`` entry means the program ran but its output is invalid
(e.g. overlapping circles): the result fails with status ``"invalid"`` and that text as
reason. An exception anywhere (program or evaluator) fails with the sandbox's status
(``"error"``, ``"timeout"``, ``"memory"``...). With a data folder (``--data-dir``) the
evaluator is called as ``evaluate(program_path, data_dir=...)``.

Built-in tasks are such folders, shipped in ``evaluators/tasks/`` and loaded by the same
:func:`load_task`:

* ``llmsr-oscillator1``, ``llmsr-oscillator2``, ``llmsr-bactgrow`` - LLM-SR symbolic
  regression (see /work/shared/data/llmsr/README.md). The program defines
  ``equation(<inputs...>, params)``; the evaluator fits the up to 10 ``params`` with
  ``scipy.optimize.minimize(loss, np.ones(10), method="BFGS")`` on train.csv. Score: the
  fitted training MSE (min). Metrics add NMSE = MSE / var(y) on train, test_id and
  test_ood (with the fitted params) and their log10. Target: the training MSE that equals
  NMSE 1e-8 (``1e-8 * var(y_train)``, written in each task.toml), about PACEvolve's best
  reported log10 NMSE (-8.24); it is a scale for progress, not a promise that it is
  reachable (bactgrow's best published NMSE is ~3e-3). Data: ``data_dir`` argument, else
  ``$TAGSMITH_LLMSR_DATA``, else ``../shared/data/llmsr`` beside the repository, else
  ConfigError; the evaluators share their fit (``tasks/llmsr_fit.py``).
* ``funcmin`` - ``search_algorithm()`` returns (x, y); score f(x, y) =
  sin x cos y + sin(xy) + (x^2 + y^2)/20 (min); target -1.519 (near (-1.704, 0.678)).
* ``circle-packing`` - ``construct_packing()`` returns 26 centers and radii in the unit
  square; score = sum of radii (max) after validation (inside the square, no overlaps,
  tolerance 1e-9); target 2.635 (AlphaEvolve).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from tagsmith.core.errors import ConfigError
from tagsmith.evaluators.sandbox import (SandboxLimits, SandboxPool, SandboxResult,
                                         arun_in_sandbox, run_in_sandbox)

__all__ = ["TaskConfig", "Task", "EvalResult", "builtin_task", "load_task", "extract_block",
           "replace_block", "apply_search_replace", "llmsr_data_dir", "BUILTIN_TASKS", "TASKS_DIR",
           "EVOLVE_START", "EVOLVE_END"]

EVOLVE_START = "# EVOLVE-BLOCK-START"
EVOLVE_END = "# EVOLVE-BLOCK-END"
LLMSR_ENV = "TAGSMITH_LLMSR_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TaskConfig:
    """What to optimise and how hard to try.

    >>> TaskConfig("t", "acc", "max", target=1.0).normalised(0.5)   # lower is better
    -0.5
    """

    name: str
    metric: str
    direction: Literal["min", "max"]
    target: float  # target score r (in the metric's own units and direction)
    budget: int = 100  # evaluations
    timeout_s: float = 30.0
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        if self.direction not in ("min", "max"):
            raise ConfigError(f"task {self.name}: direction must be 'min' or 'max', not {self.direction!r}")

    def normalised(self, score: float) -> float:
        """The score with its sign flipped for "max" tasks, so lower is always better
        (what momentum-based backtracking and the sampling weights expect)."""
        return score if self.direction == "min" else -score

    def limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)


@dataclass
class EvalResult:
    """One program's evaluation. ``status``: a sandbox status, or "invalid" when the
    program ran but its output was rejected (or the metric is missing / not finite)."""

    ok: bool
    score: float | None
    metrics: dict
    status: str
    reason: str
    wall_s: float
    stdout: str = ""  # the sandbox's (capped) output: tracebacks for a repair prompt
    stderr: str = ""


@dataclass
class Task:
    """An initial program, a description for the prompt, and an evaluator.

    ``evaluator_code`` runs inside the sandbox and defines
    ``evaluate(program_path, **evaluator_args)``; the program is written beside it as
    ``program.py``.
    """

    config: TaskConfig
    initial_program: str
    description: str
    evaluator_code: str = ""
    evaluator_args: dict = field(default_factory=dict)

    def _sandbox_call(self, program: str) -> tuple[dict, dict]:
        if not self.evaluator_code:
            raise ConfigError(f"task {self.config.name} has no evaluator")
        return {"program_path": "program.py", **self.evaluator_args}, {"program.py": program}

    def _result(self, r: SandboxResult) -> EvalResult:
        def fail(status: str, reason: str, metrics: dict | None = None) -> EvalResult:
            return EvalResult(False, None, metrics or {}, status, reason, r.wall_s, r.stdout, r.stderr)

        if not r.ok:
            return fail(r.status, r.reason)
        metrics = r.value
        if not isinstance(metrics, dict):
            return fail("invalid", f"the evaluator returned a {type(metrics).__name__}, not a dict of metrics")
        if metrics.get("error"):
            return fail("invalid", " ".join(str(metrics["error"]).split()), metrics)
        score = metrics.get(self.config.metric)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return fail("invalid", f"the evaluator returned no number for {self.config.metric!r}", metrics)
        if not math.isfinite(score):
            return fail("invalid", f"{self.config.metric} is {score}", metrics)
        return EvalResult(True, float(score), metrics, "ok", "", r.wall_s, r.stdout, r.stderr)

    def evaluate(self, program: str, limits: SandboxLimits | None = None) -> EvalResult:
        """Run the evaluator on ``program`` in a fresh sandbox (limits from the config
        unless given)."""
        args, files = self._sandbox_call(program)
        r = run_in_sandbox(self.evaluator_code, "evaluate", args, limits or self.config.limits(),
                           files=files)
        return self._result(r)

    async def aevaluate(self, program: str, limits: SandboxLimits | None = None, *,
                        pool: SandboxPool | None = None) -> EvalResult:
        """Async :meth:`evaluate`; with ``pool`` it waits for a free worker slot."""
        args, files = self._sandbox_call(program)
        lim = limits or self.config.limits()
        if pool is not None:
            r = await pool.run(self.evaluator_code, "evaluate", args, lim, files=files)
        else:
            r = await arun_in_sandbox(self.evaluator_code, "evaluate", args, lim, files=files)
        return self._result(r)


# --------------------------------------------------------------------------------------
# The evolvable region and SEARCH/REPLACE edits.

def _block_span(program: str) -> tuple[int, int]:
    """Character offsets (start, end) of the text strictly between the marker lines."""
    starts, ends = [], []
    offset = 0
    for line in program.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(EVOLVE_START):
            starts.append((offset, offset + len(line)))
        elif stripped.startswith(EVOLVE_END):
            ends.append((offset, offset + len(line)))
        offset += len(line)
    if len(starts) != 1 or len(ends) != 1:
        raise ValueError(f"the program must hold exactly one '{EVOLVE_START}' line and one "
                         f"'{EVOLVE_END}' line (found {len(starts)} and {len(ends)})")
    (_, begin), (end, _) = starts[0], ends[0]
    if end < begin:
        raise ValueError(f"'{EVOLVE_END}' comes before '{EVOLVE_START}'")
    return begin, end


def extract_block(program: str) -> str:
    """The evolvable region (without the marker lines).

    >>> extract_block("import math\\n# EVOLVE-BLOCK-START\\nx = 1\\n# EVOLVE-BLOCK-END\\n")
    'x = 1\\n'
    """
    begin, end = _block_span(program)
    return program[begin:end]


def replace_block(program: str, new_block: str) -> str:
    """``program`` with its evolvable region replaced; code outside is kept byte for byte.

    >>> replace_block("a\\n# EVOLVE-BLOCK-START\\nx = 1\\n# EVOLVE-BLOCK-END\\nb\\n", "x = 2")
    'a\\n# EVOLVE-BLOCK-START\\nx = 2\\n# EVOLVE-BLOCK-END\\nb\\n'
    """
    if EVOLVE_START in new_block or EVOLVE_END in new_block:
        raise ValueError("the new block must not contain the EVOLVE-BLOCK marker lines")
    begin, end = _block_span(program)
    if new_block and not new_block.endswith("\n"):
        new_block += "\n"  # the end marker must stay on a line of its own
    return program[:begin] + new_block + program[end:]


_SEARCH_RE = re.compile(r"^\s*<{5,}\s*SEARCH\s*$")
_DIVIDER_RE = re.compile(r"^\s*={5,}\s*$")
_REPLACE_RE = re.compile(r"^\s*>{5,}\s*REPLACE\s*$")


def _parse_diff(diff_text: str) -> list[tuple[str, str]]:
    blocks: list[tuple[str, str]] = []
    state, search, replace = "out", [], []
    for line in diff_text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if state == "out":
            if _SEARCH_RE.match(bare):
                state, search, replace = "search", [], []
        elif state == "search":
            if _DIVIDER_RE.match(bare):
                state = "replace"
            elif _SEARCH_RE.match(bare):
                raise ValueError(f"SEARCH/REPLACE block {len(blocks) + 1}: a new '<<<<<<< SEARCH' "
                                 "before '======='")
            else:
                search.append(line)
        else:
            if _REPLACE_RE.match(bare):
                blocks.append(("".join(search), "".join(replace)))
                state = "out"
            else:
                replace.append(line)
    if state != "out":
        want = "'=======' and '>>>>>>> REPLACE'" if state == "search" else "'>>>>>>> REPLACE'"
        raise ValueError(f"SEARCH/REPLACE block {len(blocks) + 1} is not closed: expected {want}")
    return [(_ensure_nl(s), _ensure_nl(r)) for s, r in blocks]


def _ensure_nl(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _find_exact(haystack: str, needle: str) -> tuple[int, int] | None:
    """Offsets of the first exact occurrence of ``needle`` that starts a line: a SEARCH
    quotes whole lines, and a match in the middle of a line ("x\n" inside "return x\n")
    would splice the replacement into the wrong place."""
    start = haystack.find(needle)
    while start != -1:
        if start == 0 or haystack[start - 1] == "\n":
            return start, start + len(needle)
        start = haystack.find(needle, start + 1)
    return None


def _find_lines(haystack: str, needle: str) -> tuple[int, int] | None:
    """Offsets of ``needle`` in ``haystack`` comparing whole lines with trailing
    whitespace ignored (LLMs often drop or add trailing spaces); None if absent."""
    hay = haystack.splitlines(keepends=True)
    want = [ln.rstrip() for ln in needle.splitlines()]
    if not want:
        return None
    starts = [0]
    for ln in hay:
        starts.append(starts[-1] + len(ln))
    for i in range(len(hay) - len(want) + 1):
        if all(hay[i + k].rstrip() == want[k] for k in range(len(want))):
            return starts[i], starts[i + len(want)]
    return None


def apply_search_replace(program: str, diff_text: str) -> str:
    """Apply SEARCH/REPLACE blocks to the evolvable region, in order (a later block sees
    the earlier edits). Each SEARCH text must match existing lines of the region exactly
    (whole lines, trailing whitespace aside); the first occurrence is replaced. Text outside the blocks
    (explanations, code fences) is ignored.

    >>> prog = "import math\\n# EVOLVE-BLOCK-START\\ndef f(x):\\n    return x\\n# EVOLVE-BLOCK-END\\n"
    >>> print(apply_search_replace(prog, '''
    ... <<<<<<< SEARCH
    ...     return x
    ... =======
    ...     return math.sin(x)
    ... >>>>>>> REPLACE'''), end="")
    import math
    # EVOLVE-BLOCK-START
    def f(x):
        return math.sin(x)
    # EVOLVE-BLOCK-END

    Raises ValueError naming the block and the reason: no blocks, an unclosed block, an
    empty SEARCH, a SEARCH that matches only outside the region or nowhere.
    """
    blocks = _parse_diff(diff_text)
    if not blocks:
        raise ValueError("no SEARCH/REPLACE blocks found: expected '<<<<<<< SEARCH', the old "
                         "lines, '=======', the new lines, '>>>>>>> REPLACE'")
    region = extract_block(program)
    begin, end = _block_span(program)
    outside = program[:begin] + program[end:]
    for i, (search, replace) in enumerate(blocks, 1):
        if not search.strip():
            raise ValueError(f"SEARCH/REPLACE block {i}: the SEARCH text is empty; it must quote "
                             "the lines of the EVOLVE-BLOCK region to replace")
        span = _find_exact(region, search) or _find_lines(region, search)
        if span is not None:
            region = region[:span[0]] + replace + region[span[1]:]
            continue
        first = search.strip().splitlines()[0]
        if _find_exact(outside, search) or _find_lines(outside, search):
            raise ValueError(f"SEARCH/REPLACE block {i}: its SEARCH text (starting {first!r}) is "
                             f"outside the evolvable region; only the lines between "
                             f"'{EVOLVE_START}' and '{EVOLVE_END}' may change")
        raise ValueError(f"SEARCH/REPLACE block {i}: its SEARCH text (starting {first!r}) does "
                         "not match the current EVOLVE-BLOCK region; quote existing lines exactly, "
                         "indentation included")
    return replace_block(program, region)


# --------------------------------------------------------------------------------------
# Built-in tasks: task folders shipped as package data, in the format users write.

TASKS_DIR = Path(__file__).resolve().with_name("tasks")
BUILTIN_TASKS = ("llmsr-oscillator1", "llmsr-oscillator2", "llmsr-bactgrow", "funcmin",
                 "circle-packing")
LLMSR_SPLITS = ("train", "test_id", "test_ood")


def llmsr_data_dir(data_dir: str | os.PathLike | None = None, *,
                   environ: dict[str, str] | None = None) -> Path:
    """Where the LLM-SR data live: ``data_dir``, else ``$TAGSMITH_LLMSR_DATA``, else
    ``../shared/data/llmsr`` beside the repository root. Raises ConfigError saying where
    to point it when none exists.

        >>> llmsr_data_dir("/nowhere")
        Traceback (most recent call last):
        ...
        tagsmith.core.errors.ConfigError: LLM-SR data folder /nowhere (data_dir argument) does not exist
    """
    env = os.environ if environ is None else environ
    for value, source in ((data_dir, "data_dir argument"), (env.get(LLMSR_ENV), f"${LLMSR_ENV}")):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ConfigError(f"LLM-SR data folder {path} ({source}) does not exist")
            return path.resolve()
    default = _REPO_ROOT.parent / "shared" / "data" / "llmsr"
    if default.is_dir():
        return default.resolve()
    raise ConfigError(f"LLM-SR data not found (looked in {default}): pass data_dir=... or set "
                      f"{LLMSR_ENV} to a folder holding oscillator1/, oscillator2/ and bactgrow/, "
                      "each with train.csv, test_id.csv and test_ood.csv")


def builtin_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """One of :data:`BUILTIN_TASKS`, loaded from its folder under :data:`TASKS_DIR` by
    :func:`load_task`. ``data_dir`` is only used by the LLM-SR tasks (see
    :func:`llmsr_data_dir`); their evaluators receive the resolved folder.

    >>> builtin_task("circle-packing").config.target
    2.635
    >>> (TASKS_DIR / "circle-packing" / "task.toml").is_file()
    True
    """
    if name not in BUILTIN_TASKS:
        raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")
    if not name.startswith("llmsr-"):
        return load_task(TASKS_DIR / name)
    problem = name[len("llmsr-"):]
    root = llmsr_data_dir(data_dir)
    missing = [s for s in LLMSR_SPLITS if not (root / problem / f"{s}.csv").is_file()]
    if missing:
        raise ConfigError(f"LLM-SR data folder {root / problem} lacks {', '.join(s + '.csv' for s in missing)}")
    return load_task(TASKS_DIR / name, data_dir=root)


# --------------------------------------------------------------------------------------
# Task folders.

_TASK_SHIM = """
import importlib.util
import os
import sys


def evaluate(program_path, evaluator_path, data_dir=None):
    # The task's evaluator stays in its folder, so it can find its own data beside __file__.
    sys.path.insert(0, os.path.dirname(evaluator_path))
    spec = importlib.util.spec_from_file_location("task_evaluator", evaluator_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["task_evaluator"] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "evaluate", None)):
        raise AttributeError("evaluator.py defines no function evaluate(program_path)")
    if data_dir is None:
        return module.evaluate(os.path.abspath(program_path))
    import inspect

    params = inspect.signature(module.evaluate).parameters
    if "data_dir" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise TypeError("a data folder was given (--data-dir) but evaluator.py's evaluate() "
                        "takes no data_dir argument")
    return module.evaluate(os.path.abspath(program_path), data_dir=data_dir)
"""

_CONFIG_KEYS = {"name", "metric", "direction", "target", "budget", "timeout_s", "memory_mb",
                "description"}


def load_task(folder: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Task:
    """A task from a folder holding ``task.toml`` (or ``task.yaml``), ``initial.py`` and
    ``evaluator.py`` (``evaluate(program_path) -> dict`` holding the metric). With
    ``data_dir`` (``--data-dir``), the evaluator is called as
    ``evaluate(program_path, data_dir=<that folder, absolute>)``.

    task.toml::

        name = "sum-squares"        # default: the folder's name
        metric = "loss"
        direction = "min"
        target = 0.0
        budget = 50                 # optional, like timeout_s and memory_mb
        description = "Make f return values close to zero."   # or a description.md file

    The built-in tasks are folders in this format (:data:`TASKS_DIR`):

    >>> task = load_task(TASKS_DIR / "funcmin")
    >>> task.config.name, task.config.metric, "def search_algorithm" in extract_block(task.initial_program)
    ('funcmin', 'value', True)
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"task folder {root} does not exist")
    cfg_path = next((root / n for n in ("task.toml", "task.yaml", "task.yml") if (root / n).is_file()), None)
    if cfg_path is None:
        raise ConfigError(f"task folder {root} holds no task.toml or task.yaml")
    try:
        if cfg_path.suffix == ".toml":
            raw = tomllib.loads(cfg_path.read_text())
        else:
            raw = yaml.safe_load(cfg_path.read_text()) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: expected a table of settings")
    unknown = set(raw) - _CONFIG_KEYS
    if unknown:  # a typo must fail loudly, not fall back to a default
        raise ConfigError(f"{cfg_path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(_CONFIG_KEYS))}")
    missing = [k for k in ("metric", "direction", "target") if k not in raw]
    if missing:
        raise ConfigError(f"{cfg_path}: missing {', '.join(missing)}")
    description = raw.pop("description", None)
    try:
        config = TaskConfig(name=str(raw.pop("name", root.name)), metric=str(raw.pop("metric")),
                            direction=raw.pop("direction"), target=float(raw.pop("target")),
                            **{k: (int(v) if k != "timeout_s" else float(v)) for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from exc
    for needed in ("initial.py", "evaluator.py"):
        if not (root / needed).is_file():
            raise ConfigError(f"task folder {root} lacks {needed}")
    initial = (root / "initial.py").read_text()
    try:
        _block_span(initial)
    except ValueError as exc:
        raise ConfigError(f"{root / 'initial.py'}: {exc}") from exc
    if description is None and (root / "description.md").is_file():
        description = (root / "description.md").read_text().strip()
    if description is None:
        better = "lower" if config.direction == "min" else "higher"
        description = f"Improve the program so that its {config.metric} is {better}."
    args = {"evaluator_path": str((root / "evaluator.py").resolve())}
    if data_dir is not None:
        data = Path(data_dir).expanduser()
        if not data.is_dir():
            raise ConfigError(f"task {config.name}: data folder {data} does not exist")
        args["data_dir"] = str(data.resolve())
    return Task(config, initial, str(description), _TASK_SHIM, args)
