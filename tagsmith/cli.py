"""The ``tagsmith`` command line: the parser, and the boundary where errors become one
clear line (``--debug`` shows the traceback; under tests they raise).

Each job's commands live in their own module under ``tagsmith.commands`` and register
their subparsers; they parse flags and call ``tagsmith.api``. Nothing here or there imports
LangGraph, litellm or torch until a command runs, so ``tagsmith --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys

from tagsmith import __version__
from tagsmith.commands import core, evolve, recsys, scoring, tagging
from tagsmith.commands.common import common_parser
from tagsmith.core.errors import BudgetExceeded, Interrupted, TagsmithError

COMMANDS = (core, tagging, evolve, scoring, recsys)  # modules with add_commands(subparsers, common)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagsmith",
        description="LLM agents for catalog tagging (AgenticTagger), program evolution (PACEvolve) "
                    "and data scoring (Ask-LLM). Every command is a run stored in SQLite; "
                    "`tagsmith resume RUN` continues any run after a crash.")
    parser.add_argument("--version", action="version", version=f"tagsmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    for module in COMMANDS:
        module.add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except BudgetExceeded as exc:
        if debug:
            raise
        print(f"tagsmith: stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        if debug:
            raise
        print(f"tagsmith: {exc}; {_resume_hint()}", file=sys.stderr)
        return exc.exit_code
    except TagsmithError as exc:
        if debug:
            raise
        print(f"tagsmith: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"tagsmith: interrupted; {_resume_hint()}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unexpected failure: still one line
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"tagsmith: error: {type(exc).__name__}: {msg} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _resume_hint() -> str:
    runtime = sys.modules.get("tagsmith.runtime")  # loaded only if a run was started
    run = getattr(runtime, "current_run", None)
    return f"`tagsmith resume {run}` continues the run" if run else "`tagsmith resume RUN` continues the run"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
