"""Tagging commands: vocab build, vocab show, tag. Flags in, `tagsmith.api` calls, text out."""

from __future__ import annotations

import argparse

from tagsmith.commands.common import (add_engine_options, add_item_options, check_engine, config_from_args,
                                      engine_flags, item_source, pipeline_flags, print_json, print_metrics, progress,
                                      report_skips)
from tagsmith.core.config import deep_merge

VOCAB_FLAGS = {"sample": "sample_size", "rounds": "max_rounds", "annotators": "annotators",
               "annotator_batch": "batch_size", "max_total": "max_total", "max_per_facet": "max_per_facet",
               "seed": "seed"}


def add_commands(sub, common) -> None:
    vocab = sub.add_parser("vocab", help="build and inspect descriptor vocabularies")
    vsub = vocab.add_subparsers(dest="vocab_command", metavar="SUBCOMMAND", required=True)
    p = vsub.add_parser("build", parents=[common], help="build a vocabulary for ITEMS (architect + annotators)",
                        description="ITEMS: a JSONL/CSV/TSV/Parquet file, or 'movielens[:N]' for the bundled "
                                    "MovieLens-100k movies.")
    p.add_argument("items")
    add_item_options(p)
    p.add_argument("--domain", help="what the items are, for the prompts (e.g. 'movies')")
    g = p.add_argument_group("vocabulary")
    g.add_argument("--sample", type=int, help="items to build on (default 120)")
    g.add_argument("--rounds", type=int, help="revision rounds after the draft (default 2; 0 = draft only)")
    g.add_argument("--annotators", type=int, help="parallel annotator batches per round (default 4)")
    g.add_argument("--annotator-batch", type=int, help="items per annotator batch (default 6)")
    g.add_argument("--max-total", type=int, help="descriptors in all (default 36)")
    g.add_argument("--max-per-facet", type=int, help="descriptors per facet (default 10)")
    g.add_argument("--seed", type=int)
    g.add_argument("--seed-field", metavar="FIELD",
                   help="start from a facet of the most frequent values of this field (e.g. genres, categories)")
    g.add_argument("--seed-vocab", metavar="FILE", help="start from these facets (YAML/JSON: facets: [{name, "
                                                        "definition, descriptors: [{name, definition}]}])")
    p.set_defaults(func=cmd_vocab_build)

    p = vsub.add_parser("show", parents=[common], help="the vocabulary tree with usage counts")
    p.add_argument("run")
    p.add_argument("--versions", action="store_true", help="also list every version with its diff")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_vocab_show)

    p = sub.add_parser("tag", parents=[common], help="assign in-vocabulary descriptors to ITEMS",
                       description="ITEMS: a file or 'movielens[:N]'. Items already tagged in a resumed run "
                                   "are skipped.")
    p.add_argument("items")
    p.add_argument("--vocab", required=True, metavar="RUN", help="the vocab build run to use")
    add_item_options(p)
    p.add_argument("--domain", help="what the items are, for the prompts (e.g. 'movies')")
    p.add_argument("--batch-size", type=int, help="items per call (default 4)")
    add_engine_options(p)
    p.set_defaults(func=cmd_tag)


def domain(args: argparse.Namespace) -> str | None:
    """--domain, or "movies" for the bundled MovieLens; else the configuration's."""
    if args.domain:
        return args.domain
    return "movies" if args.items.startswith("movielens") else None


def cmd_vocab_build(args: argparse.Namespace) -> int:
    from tagsmith import api

    config = config_from_args(args, pipeline_flags(args, "vocab", VOCAB_FLAGS, domain=domain(args)))
    result = api.build_vocabulary(item_source(args, args.items), config, seed_field=args.seed_field,
                                  seed_vocab=args.seed_vocab)
    report_skips(result)
    print_metrics(result.run, "vocabulary", result.seconds)
    print(f"show it: tagsmith vocab show {result.id}; tag with it: tagsmith tag ITEMS --vocab {result.id}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from tagsmith import api

    config = config_from_args(args, deep_merge(
        pipeline_flags(args, "assign", {"batch_size": "batch_size"}, domain=domain(args)), engine_flags(args)))
    check_engine(config)
    with progress(config, "tagging", "item") as bar:
        result = api.tag(item_source(args, args.items), config, vocab_run=args.vocab, progress=bar)
    report_skips(result)
    print_metrics(result.run, "tagging", result.seconds)
    print(f"export: tagsmith export {result.id} --format jsonl|csv|parquet")
    return 0


def cmd_vocab_show(args: argparse.Namespace) -> int:
    from tagsmith.api import open_store
    from tagsmith.pipelines.vocabulary import final_vocabulary

    store = open_store(config_from_args(args))
    run = store.require_run(args.run)
    if run.kind == "tag" and run.parent_run:  # show the vocabulary a tagging run used, with its usage
        vocab, _ = final_vocabulary(store, run.parent_run)
        usage = dict.fromkeys(vocab.names(), 0)
        tagged = 0
        for _, _, tag in store.iter_results(run.id, "item"):
            if tag is not None:
                tagged += 1
                for n in set(tag["descriptors"]):
                    usage[n] = usage.get(n, 0) + 1
        source = f"usage over {tagged} tagged items (run {run.id})"
    else:
        run = store.require_run(args.run, kind="vocab")
        vocab, usage = final_vocabulary(store, run.id)
        source = "usage in the last annotation round"
    versions = store.records(run.parent_run if run.kind == "tag" else run.id, "vocab_version")
    if args.json:
        print_json({"vocabulary": vocab.model_dump(), "usage": usage, "versions": versions})
        return 0
    print(f"vocabulary of run {run.id}: {len(vocab.facets)} facets, {vocab.size()} descriptors ({source})")
    for level, f in enumerate(vocab.facets):
        print(f"{level + 1}. {f.name}" + (f" — {f.definition}" if f.definition else ""))
        for d in f.descriptors:
            print(f"     {d.name:<28} {usage.get(d.name, 0):>5}  {d.definition}")
    if args.versions:
        print("versions:")
        for v in versions.values():
            d = v.get("diff") or {}
            edits = v.get("edits") or {}
            print(f"  v{v['version']} round {v['round']}: {len(v['vocabulary']['facets'])} facets; "
                  f"+{len(d.get('added', []))} -{len(d.get('removed', []))} ~{len(d.get('moved', []))}; "
                  f"{len(edits.get('applied', []))} edits applied, {len(edits.get('rejected', []))} rejected, "
                  f"{len(edits.get('auto_merges', []))} near-duplicates merged")
    return 0
