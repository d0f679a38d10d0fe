"""Tagging commands: vocab build, vocab show, tag."""

from __future__ import annotations

import json
import random
import sys
import time

from tagsmith.cli import config_from_args, execute_with_progress, out_dir, print_json, run_async
from tagsmith.errors import ConfigError


def _item_options(p) -> None:
    g = p.add_argument_group("items")
    g.add_argument("--id-field", default="id", help="id field of the records (default id)")
    g.add_argument("--text-field", help="field holding the item text")
    g.add_argument("--template", help="text template over the fields, e.g. '{title} ({year}): {description}'")
    g.add_argument("--format", dest="item_format", choices=["jsonl", "csv", "tsv", "parquet", "amazon"],
                   help="input format (default: from the extension; amazon: Amazon Reviews metadata 2014/2023)")
    g.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad records: stop with FILE:LINE (default) or skip and count them")
    g.add_argument("--limit", type=int, help="use the first N items")
    g.add_argument("--domain", help="what the items are, for the prompts (e.g. 'movies')")


def add_commands(sub, common) -> None:
    vocab = sub.add_parser("vocab", help="build and inspect descriptor vocabularies")
    vsub = vocab.add_subparsers(dest="vocab_command", metavar="SUBCOMMAND", required=True)
    p = vsub.add_parser("build", parents=[common], help="build a vocabulary for ITEMS (architect + annotators)",
                        description="ITEMS: a JSONL/CSV/TSV/Parquet file, or 'movielens[:N]' for the bundled "
                                    "MovieLens-100k movies.")
    p.add_argument("items")
    _item_options(p)
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
    _item_options(p)
    p.add_argument("--batch-size", type=int, help="items per call (default 4)")
    p.set_defaults(func=cmd_tag)


def load_cli_items(args) -> list[dict]:
    from tagsmith.items import load_amazon, load_any

    kw = {"on_error": args.on_error, "limit": args.limit}
    if args.item_format == "amazon":
        items, report = load_amazon(args.items, **kw)
    else:
        items, report = load_any(args.items, id_field=args.id_field, text_field=args.text_field,
                                 template=args.template, fmt=args.item_format, **kw)
    if report.skipped:
        print(f"{args.items}: skipped {report.skipped} bad records (first: {report.errors[0]})", file=sys.stderr)
    if not items:
        raise ConfigError(f"{args.items}: no items to work on")
    return [{"id": i.id, "text": i.text, "fields": i.fields} for i in items]


def id_text(items: list[dict]) -> list[dict]:
    """What the graphs keep in their state: id and text only."""
    return [{"id": i["id"], "text": i["text"]} for i in items]


def seed_facets(args, items: list[dict], max_per_facet: int) -> list[dict]:
    from tagsmith.pipelines.vocabulary import seed_facet_from_field
    from tagsmith.vocabulary import Vocabulary

    facets: list[dict] = []
    if getattr(args, "seed_vocab", None):
        from pydantic import ValidationError

        from tagsmith.config import read_config_file

        try:
            facets += [f.model_dump() for f in Vocabulary.model_validate(read_config_file(args.seed_vocab)).facets]
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{args.seed_vocab}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    if getattr(args, "seed_field", None):
        facet = seed_facet_from_field(items, args.seed_field, max_per_facet)
        if not facet.descriptors:
            raise ConfigError(f"--seed-field {args.seed_field}: no value occurs twice in the items' fields")
        facets.append(facet.model_dump())
    return facets


def _domain(args) -> str:
    if args.domain:
        return args.domain
    return "movies" if args.items.startswith("movielens") else "catalog items"


def _set(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


def vocab_overrides(args) -> dict:
    v: dict = {"domain": _domain(args)}
    for flag, key in (("sample", "sample_size"), ("rounds", "max_rounds"), ("annotators", "annotators"),
                      ("annotator_batch", "batch_size"), ("max_total", "max_total"),
                      ("max_per_facet", "max_per_facet"), ("seed", "seed")):
        _set(v, key, getattr(args, flag, None))
    return v


def build_vocabulary(config, items: list[dict], store, progress: bool = True):
    """Run a vocab build on a seeded sample of ``items``; returns (run, elapsed seconds)."""
    from tagsmith.config import section
    from tagsmith.pipelines.vocabulary import VocabConfig
    from tagsmith.runtime import execute

    vcfg = section(config, "vocab", VocabConfig)
    sample = items if len(items) <= vcfg.sample_size else random.Random(vcfg.seed).sample(items, vcfg.sample_size)
    started = time.perf_counter()
    run, _ = run_async(execute("vocab", config, {"items": id_text(sample)}, store=store))
    return run, time.perf_counter() - started


def tag_items(config, items: list[dict], vocab_run: str, store, progress: bool = True):
    return execute_with_progress("tag", config, {"vocab_run": vocab_run, "items": id_text(items)}, total=len(items),
                                 desc="tagging", unit="item", show=progress, store=store, parent_run=vocab_run)


def print_metrics(run, title: str) -> None:
    metrics = json.loads(run.metrics_json)
    print(f"{title} {run.id}: {run.status}")
    for k, v in metrics.items():
        if k in ("history",) or isinstance(v, (dict, list)):
            continue
        print(f"  {k:<28} {v:.4g}" if isinstance(v, float) else f"  {k:<28} {v}")


def cmd_vocab_build(args) -> int:
    from tagsmith.runtime import open_store

    items = load_cli_items(args)
    over = vocab_overrides(args)
    from tagsmith.pipelines.vocabulary import VocabConfig

    base = config_from_args(args, {"pipeline": {"vocab": over}})
    seeds = seed_facets(args, items, VocabConfig.model_validate(base.pipeline.get("vocab", {})).max_per_facet)
    config = config_from_args(args, {"pipeline": {"vocab": {**over, "seed_facets": seeds}}}) if seeds else base
    store = open_store(config)
    run, elapsed = build_vocabulary(config, items, store)
    print_metrics(run, "vocabulary")
    print(f"  wall_s                       {elapsed:.1f}")
    print(f"show it: tagsmith vocab show {run.id}; tag with it: tagsmith tag ITEMS --vocab {run.id}")
    return 0


def cmd_tag(args) -> int:
    from tagsmith.runtime import open_store

    over: dict = {"domain": _domain(args)}
    _set(over, "batch_size", args.batch_size)
    config = config_from_args(args, {"pipeline": {"assign": over}})
    store = open_store(config)
    vocab_run = store.require_run(args.vocab).id  # before reading the items: a wrong id fails fast
    items = load_cli_items(args)
    run, elapsed = tag_items(config, items, vocab_run, store)
    print_metrics(run, "tagging")
    print(f"  wall_s                       {elapsed:.1f}")
    print(f"export: tagsmith export {run.id} --format jsonl|csv|parquet")
    return 0


def cmd_vocab_show(args) -> int:
    from tagsmith.pipelines.vocabulary import final_vocabulary
    from tagsmith.runtime import open_store

    store = open_store(config_from_args(args))
    run = store.require_run(args.run)
    if run.kind == "tag" and run.parent_run:  # show the vocabulary a tagging run used, with its usage
        tags = store.records(run.id, "tag")
        vocab, _ = final_vocabulary(store, run.parent_run)
        usage = {n: sum(1 for t in tags.values() if n in t["descriptors"]) for n in vocab.names()}
        source = f"usage over {len(tags)} tagged items (run {run.id})"
    else:
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
        for key, v in versions.items():
            d = v.get("diff") or {}
            edits = v.get("edits") or {}
            print(f"  v{v['version']} round {v['round']}: {len(v['vocabulary']['facets'])} facets; "
                  f"+{len(d.get('added', []))} -{len(d.get('removed', []))} ~{len(d.get('moved', []))}; "
                  f"{len(edits.get('applied', []))} edits applied, {len(edits.get('rejected', []))} rejected, "
                  f"{len(edits.get('auto_merges', []))} near-duplicates merged")
    return 0


def quickstart(args) -> int:
    """Build a vocabulary on a sample of bundled MovieLens movies (genres as the seed facet),
    tag the movies with it, export the tags and print the metrics."""
    from tagsmith.commands.core import write_rows
    from tagsmith.datasets import movielens_items
    from tagsmith.pipelines import assignment
    from tagsmith.pipelines.vocabulary import VocabConfig, seed_facet_from_field
    from tagsmith.runtime import open_store

    items = movielens_items(limit=args.items)
    vcfg = {"domain": "movies", "sample_size": args.sample, "max_rounds": args.rounds, "annotators": 2,
            "batch_size": 5, "draft_sample": 12}
    vcfg["seed_facets"] = [seed_facet_from_field(items, "genres", VocabConfig().max_per_facet).model_dump()]
    config = config_from_args(args, {"pipeline": {"vocab": vcfg, "assign": {"domain": "movies", "batch_size": 8}}})
    store = open_store(config)
    where = store.path or store.url
    print(f"tagsmith quickstart: {len(items)} MovieLens-100k movies, vocabulary built on {args.sample}, "
          f"model {config.llm.model}, store {where}", file=sys.stderr)
    vrun, vtime = build_vocabulary(config, items, store)
    from tagsmith.pipelines.vocabulary import final_vocabulary

    vocab, usage = final_vocabulary(store, vrun.id)
    print(f"vocabulary {vrun.id} ({vtime:.0f}s): {len(vocab.facets)} facets, {vocab.size()} descriptors")
    print(vocab.render(usage, definitions=False))
    trun, ttime = tag_items(config, items, vrun.id, store)
    print_metrics(trun, "tagging")
    out = str(out_dir() / f"{trun.id}.jsonl")
    write_rows(assignment.export_rows(store, trun), "jsonl", out)
    for row in assignment.export_rows(store, trun)[:3]:
        print(f"  e.g. {row['text'][:50]!r} -> {row['descriptors']}")
    print(f"done in {vtime + ttime:.0f}s: vocabulary run {vrun.id}, tagging run {trun.id} in {where}; "
          f"tags written to {out}")
    print(f"next: tagsmith vocab show {vrun.id} --versions | tagsmith runs show {trun.id} | "
          f"tagsmith export {trun.id} --format parquet")
    return 0
