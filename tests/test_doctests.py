"""Every docstring example in the package runs and is true (examples are documentation
that cannot rot). Each module's examples run in a fresh temporary folder, as a user would
type them; an example that truly needs a server says ``# doctest: +SKIP``."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tagsmith

PACKAGES = ["tagsmith", "tagsmith.core", "tagsmith.store", "tagsmith.prompts", "tagsmith.evaluators",
            "tagsmith.agents", "tagsmith.pipelines"]


def _modules() -> list[str]:
    names: set[str] = set()
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            if ".tasks." in info.name or info.name.endswith("__main__"):
                continue  # task folders are programs run in the sandbox; __main__ runs the CLI
            names.add(info.name)
    return sorted(names)


MODULES = _modules()


def test_the_package_has_examples():
    found = 0
    finder = doctest.DocTestFinder()
    for name in MODULES:
        found += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert len(MODULES) > 40 and found > 80


@pytest.mark.parametrize("name", MODULES)
def test_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=dict(vars(module))):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (see above)"


def test_version_is_set():
    assert tagsmith.__version__
