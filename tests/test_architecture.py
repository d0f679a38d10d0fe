"""The layout's rules, read from the source (DESIGN.md, "Layout, second edition"):

- dependencies run one way: the shell (``tagsmith/``: cli, commands, api, runtime) ->
  ``pipelines/`` -> ``agents/`` -> ``evaluators/`` -> ``store/`` -> ``prompts/`` -> ``core/``;
  a module imports only its own folder or folders below it, and nothing below the shell
  imports it;
- no import circle between modules (imports inside functions count too: a circle hidden
  in a function is still a circle);
- the shell holds no domain code: only the modules listed here;
- every pipeline module satisfies the declared ``Pipeline`` protocol.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {  # package -> (folder, rank); a module may import its own package or a lower rank
    "tagsmith.core": ("core", 0),
    "tagsmith.prompts": ("prompts", 1),
    "tagsmith.store": ("store", 2),
    "tagsmith.evaluators": ("evaluators", 3),
    "tagsmith.agents": ("agents", 4),
    "tagsmith.pipelines": ("pipelines", 5),
    "tagsmith": ("tagsmith", 6),
}
SHELL = {"tagsmith", "tagsmith.__main__", "tagsmith.cli", "tagsmith.api", "tagsmith.runtime", "tagsmith.commands"}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, (folder, _) in FOLDERS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            if "__pycache__" in rel.parts or "tasks" in rel.parts:  # task folders: data run in the sandbox
                continue
            out[".".join([pkg, *(p for p in rel.parts if p != "__init__")])] = path
    return out


MODULES = _modules()


def _owner(module: str) -> str:
    """The package (of FOLDERS) a module belongs to: the longest matching prefix."""
    best = "tagsmith"
    for pkg in FOLDERS:
        if (module == pkg or module.startswith(pkg + ".")) and len(pkg) > len(best):
            best = pkg
    return best


def _resolve(name: str) -> str | None:
    """The project module an import names (a package's __init__ when it names a package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            if n == "tagsmith" or n.startswith("tagsmith."):
                target = _resolve(n)
                if target is not None:
                    found.add(target)
    return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def test_the_source_tree_was_read():
    assert {"tagsmith.cli", "tagsmith.api", "tagsmith.runtime", "tagsmith.core.config",
            "tagsmith.pipelines.batch" if "tagsmith.pipelines.batch" in MODULES else "tagsmith.pipelines.assignment",
            "tagsmith.agents.gateway", "tagsmith.store.db"} <= set(MODULES)
    assert sum(len(v) for v in GRAPH.values()) > 100


def test_dependencies_run_one_way():
    bad = []
    for mod, deps in GRAPH.items():
        own = _owner(mod)
        rank = FOLDERS[own][1]
        for dep in deps:
            other = _owner(dep)
            if dep == "tagsmith":  # the namespace package's __init__: version only
                continue
            if other != own and FOLDERS[other][1] >= rank:
                bad.append(f"{mod} imports {dep} ({FOLDERS[other][0]}/ is not below {FOLDERS[own][0]}/)")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    # Tarjan's strongly connected components over the module graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_shell_holds_only_the_shell():
    shell = {m for m in MODULES if _owner(m) == "tagsmith"}
    extra = {m for m in shell if m not in SHELL and not m.startswith("tagsmith.commands.")}
    assert not extra, f"domain code under tagsmith/: {sorted(extra)} (it belongs in core/, pipelines/, ...)"


def test_every_pipeline_satisfies_the_protocol():
    from tagsmith.pipelines.context import Pipeline
    from tagsmith.runtime import PIPELINES

    assert set(PIPELINES) >= {"probe", "vocab", "tag", "evolve", "score"}
    for kind, name in PIPELINES.items():
        module = importlib.import_module(name)
        assert isinstance(module, Pipeline), f"{name} does not satisfy the Pipeline protocol"
        assert module.KIND == kind
        graph = module.build_graph()
        assert graph.compile() is not None


@pytest.mark.parametrize("module", ["tagsmith.cli", "tagsmith.commands.core", "tagsmith.commands.recsys"])
def test_the_cli_modules_do_not_pull_heavy_libraries(module):
    """`tagsmith --help` and `runs list` import the command modules: none of them may
    import torch, litellm or langgraph at module level (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; from tagsmith.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'litellm', 'langgraph', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
