"""The ``tagsmith`` command line: the boundary where errors become one clear line.

Each job's commands live in their own module (``COMMAND_MODULES``) and register their
subparsers; this file holds the shared flags, configuration and the error boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tagsmith import __version__
from tagsmith.config import Config, load_config
from tagsmith.errors import BudgetExceeded, TagsmithError

# modules with add_commands(subparsers, common_parent)
COMMAND_MODULES = ["tagsmith.commands.core", "tagsmith.commands.tagging", "tagsmith.commands.evolve",
                   "tagsmith.commands.scoring", "tagsmith.commands.recsys"]


def common_parser() -> argparse.ArgumentParser:
    """Flags every subcommand accepts; each maps to one configuration field."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--config", metavar="FILE", help="YAML or TOML configuration file")
    g.add_argument("--db", metavar="PATH|URL", help="store: SQLite file or SQLAlchemy URL (default tagsmith.db)")
    g.add_argument("--model", help="litellm model string, e.g. openai/gpt-4o-mini, ollama/qwen2.5 "
                                   "(default: local/smollm2, the bundled model)")
    g.add_argument("--api-base", metavar="URL", help="OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama)")
    g.add_argument("--transport", choices=["litellm", "http"],
                   help="litellm (default; any provider) or http (straight to an OpenAI-compatible "
                        "--api-base: less client CPU per call)")
    g.add_argument("--concurrency", type=int, help="parallel LLM calls (default 8)")
    g.add_argument("--budget-tokens", type=int, metavar="N", help="stop the run cleanly after N tokens")
    g.add_argument("--budget-usd", type=float, metavar="USD", help="stop the run cleanly after this cost")
    g.add_argument("--temperature", type=float)
    g.add_argument("--no-cache", action="store_true", help="do not reuse cached LLM responses")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


_FLAG_FIELDS = {"db": ("store", "db"), "model": ("llm", "model"), "api_base": ("llm", "api_base"),
                "transport": ("llm", "transport"),
                "concurrency": ("llm", "concurrency"), "budget_tokens": ("llm", "budget_tokens"),
                "budget_usd": ("llm", "budget_usd"), "temperature": ("llm", "temperature")}


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, (sect, field) in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.setdefault(sect, {})[field] = value
    if getattr(args, "no_cache", False):
        out.setdefault("llm", {})["cache"] = False
    if getattr(args, "no_progress", False):
        out["progress"] = False
    if getattr(args, "debug", False):
        out["debug"] = True
    return out


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    from tagsmith.config import deep_merge

    return load_config(getattr(args, "config", None), overrides=deep_merge(flag_overrides(args), extra or {}))


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="tagsmith",
        description="LLM agents for catalog tagging (AgenticTagger), program evolution (PACEvolve) "
                    "and data scoring (Ask-LLM). Every command is a run stored in SQLite; "
                    "`tagsmith resume RUN` continues any run after a crash.")
    parser.add_argument("--version", action="version", version=f"tagsmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub, common)
    return parser


def run_async(coro):
    return asyncio.run(coro)


def execute_with_progress(kind: str, config, inputs: dict[str, Any], *, total: int, desc: str, unit: str,
                          show: bool = True, **kwargs: Any):
    """Run a pipeline with a progress bar on stderr (the pipeline updates it through
    ``extras["progress"]``); returns (run, seconds)."""
    import time

    from tagsmith.runtime import execute

    extras: dict[str, Any] = {}
    bar = None
    if show and config.progress:
        from tqdm import tqdm

        bar = extras["progress"] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
    started = time.perf_counter()
    try:
        run, _ = run_async(execute(kind, config, inputs, extras=extras, **kwargs))
    finally:
        if bar is not None:
            bar.close()
    return run, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        result = args.func(args)
        return int(result or 0)
    except BudgetExceeded as exc:
        if debug:
            raise
        print(f"tagsmith: stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    except TagsmithError as exc:
        if debug:
            raise
        print(f"tagsmith: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("tagsmith: interrupted; `tagsmith resume RUN` continues the run", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unexpected failure: still one line
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"tagsmith: error: {type(exc).__name__}: {msg} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def out_dir() -> Path:
    return Path("tagsmith-out")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
