"""Recommendation commands: ``tagsmith recsys eval`` judges tags by what they do downstream.

    tagsmith recsys eval --tags genres,random,tfidf --model term,ranker,ranker-id --seeds 3 --out results/
    -> results/recsys_movielens.json and .md (model x tag source, mean ± std over seeds)

--tags: comma-separated sources: a run id of `tagsmith tag` in the store (--db), a JSONL/CSV
file (id, descriptors), or a built-in: genres, tfidf (MovieLens titles), random (random tags
with the genres' cardinality), random:SPEC (random tags with SPEC's cardinality), none.
"""

from __future__ import annotations

import argparse
import sys

from tagsmith.commands.common import config_from_args, out_dir
from tagsmith.core.errors import ConfigError
from tagsmith.evaluators.recsys import MODELS

DEFAULT_TAGS = "genres"
DEFAULT_MODELS = "term"


def _parent_without_model(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The common flags minus --model: here --model names the recommender, not the LLM.
    (argparse cannot override a parent's option without editing the shared action.)"""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    for action in common._actions:  # noqa: SLF001 - argparse has no public way to copy actions
        if "--model" in action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        g._add_action(action)  # shares the action object, as parents=[common] does
    return p


def add_commands(sub, common) -> None:
    rec = sub.add_parser("recsys", help="judge tags downstream: retrieval, ranking, critiques on interactions")
    rsub = rec.add_subparsers(dest="recsys_command", metavar="SUBCOMMAND", required=True)
    p = rsub.add_parser(
        "eval", parents=[_parent_without_model(common)],
        help="train and evaluate recommenders on tag sources (Recall/NDCG@5/10/20, leave-one-out)",
        description="Models: " + ", ".join(MODELS) + ". Tags: a `tagsmith tag` run id (store: --db), a "
                    "JSONL/CSV file with id and descriptors, genres, tfidf, random, random:SPEC, none. Both "
                    "flags take comma-separated lists; every model runs on every tag source and seed. "
                    "Writes recsys_<data>.json and .md under --out.")
    p.add_argument("--tags", default=DEFAULT_TAGS, metavar="RUN|FILE|genres|random|tfidf",
                   help=f"tag sources, comma-separated (default {DEFAULT_TAGS})")
    p.add_argument("--model", default=DEFAULT_MODELS, metavar="term|generative|ranker|ranker-id|critique|pop",
                   help=f"models, comma-separated (default {DEFAULT_MODELS})")
    p.add_argument("--data", default="movielens", metavar="movielens|FILE",
                   help="interactions: the bundled MovieLens-100k or a CSV/TSV/JSONL file with user, item, "
                        "timestamp columns (default movielens)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, help="cap on training epochs (default 40 for both trained models; "
                                              "early stopping on validation usually stops sooner)")
    p.add_argument("--max-history", type=int, default=20, help="items of history the models see (default 20)")
    p.add_argument("--core", type=int, default=5, help="k-core filtering (default 5)")
    p.add_argument("--beam", type=int, help="generative beam size (default 50)")
    p.add_argument("--jobs", type=int, default=1,
                   help="parallel processes, one (seed, tag source) each (default 1; 2 on a 2-core machine)")
    p.add_argument("--threads", type=int, help="torch threads per process (default 1: these models are too "
                                               "small to gain from more, and lose much on a busy machine)")
    p.add_argument("--out", metavar="DIR", help="output folder (default tagsmith-out/recsys)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of an earlier report in --out (add a tag source to a table)")
    p.set_defaults(func=cmd_recsys_eval)


def _split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"--{what}: give at least one")
    return list(dict.fromkeys(items))


def cmd_recsys_eval(args) -> int:
    from tagsmith import api
    from tagsmith.evaluators.recsys import evaluate as ev

    config = config_from_args(args)
    report = api.recsys_eval(config, tags=_split_list(args.tags, "tags"), models=_split_list(args.model, "model"),
                             data=args.data, seeds=args.seeds, epochs=args.epochs, max_history=args.max_history,
                             core=args.core, beam=args.beam, jobs=args.jobs, threads=args.threads,
                             log=ev.log_stderr)
    report["commands"] = [_command_line(args)]
    try:
        jpath, mpath = ev.write(report, args.out or out_dir() / "recsys", merge_existing=args.merge)
    except ValueError as exc:
        raise ConfigError(f"--merge: {exc}") from None
    print(mpath.read_text())
    print(f"wrote {jpath} and {mpath}", file=sys.stderr)
    return 0


def _command_line(args) -> str:
    """The command as typed, for the report's header (from sys.argv), or rebuilt from the
    parsed flags when called from Python."""
    import shlex

    argv = sys.argv[1:]
    if argv[:2] != ["recsys", "eval"]:  # called from Python: rebuild from the parsed flags
        argv = ["recsys", "eval", "--tags", args.tags, "--model", args.model, "--seeds", str(args.seeds)]
        argv += ["--epochs", str(args.epochs)] if args.epochs else []
        argv += ["--jobs", str(args.jobs)] if args.jobs > 1 else []
    return "tagsmith " + shlex.join(argv)
