"""Data scoring commands: `tagsmith score DATA` and `tagsmith select RUN`."""

from __future__ import annotations

import json
import sys

from tagsmith.cli import config_from_args, execute_with_progress, out_dir
from tagsmith.errors import ConfigError


def add_commands(sub, common) -> None:
    p = sub.add_parser("score", parents=[common], help="Ask-LLM quality scores and Density for a dataset",
                       description="DATA: JSONL/CSV/TSV/Parquet with an id and a text field. Every document "
                                   "gets P(yes) from the model (logprobs; k-sample vote fallback) and a density "
                                   "from an LSH sketch over MiniLM embeddings.")
    p.add_argument("data")
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--format", dest="item_format", choices=["jsonl", "csv", "tsv", "parquet"])
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--limit", type=int)
    p.add_argument("--max-doc-tokens", type=int, help="cut documents to this many tokens (default 512)")
    p.add_argument("--samples", type=int, help="fallback votes when the provider has no logprobs (default 8)")
    p.add_argument("--no-density", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("select", parents=[common], help="select a subset of a scored dataset")
    p.add_argument("run")
    p.add_argument("--method", choices=["askllm", "density", "random", "combined"], required=True)
    p.add_argument("--rate", type=float, required=True, help="share of documents to keep, e.g. 0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strata", type=int, default=5, help="density strata for --method combined")
    p.add_argument("-o", "--output", help="selected ids, one per line (default tagsmith-out/RUN-METHOD-RATE.txt)")
    p.set_defaults(func=cmd_select)


def cmd_score(args) -> int:
    from tagsmith.items import load_items
    from tagsmith.runtime import open_store

    over: dict = {}
    if args.max_doc_tokens:
        over["max_doc_tokens"] = args.max_doc_tokens
    if args.samples is not None:
        over["fallback_samples"] = args.samples
    if args.no_density:
        over["density"] = False
    config = config_from_args(args, {"pipeline": {"score": over}})
    items, report = load_items(args.data, id_field=args.id_field, text_field=args.text_field, fmt=args.item_format,
                               on_error=args.on_error, limit=args.limit)
    if report.skipped:
        print(f"{args.data}: skipped {report.skipped} bad records (first: {report.errors[0]})", file=sys.stderr)
    if not items:
        raise ConfigError(f"{args.data}: no documents")
    store = open_store(config)
    run, elapsed = execute_with_progress("score", config, {"docs": [{"id": i.id, "text": i.text} for i in items]},
                                         total=len(items), desc="scoring", unit="doc", store=store)
    m = json.loads(run.metrics_json)
    print(f"score run {run.id}: {m['scored']}/{m['docs']} documents scored in {elapsed:.1f}s "
          f"({m['docs'] / elapsed:.2f} docs/s); methods {m['methods']}; mean P(yes) "
          f"{m['mean_score'] if m['mean_score'] is None else round(m['mean_score'], 4)}")
    if m.get("density_check"):
        print(f"  density sketch vs exact KDE: Spearman {m['density_check']['spearman_vs_exact']:.3f}")
    print(f"next: tagsmith select {run.id} --method combined --rate 0.1 | tagsmith export {run.id} --format csv")
    return 0


def cmd_select(args) -> int:
    from tagsmith.evaluators.selection import select, selection_report
    from tagsmith.runtime import open_store

    store = open_store(config_from_args(args))
    run = store.require_run(args.run)
    if run.kind != "score":
        raise ConfigError(f"run {run.id} is a {run.kind} run; select needs a score run")
    scores = store.records(run.id, "score")
    if not scores:
        raise ConfigError(f"run {run.id} has no scores yet (tagsmith resume {run.id})")
    ids = list(store.records(run.id, "doc"))
    askllm = {k: v["score"] for k, v in scores.items() if v["score"] is not None}
    dens = {k: v["density"] for k, v in store.records(run.id, "density").items()}
    try:
        chosen = select(ids, args.method, args.rate, askllm=askllm or None, density=dens or None, seed=args.seed,
                        strata=args.strata)
    except ValueError as exc:
        raise ConfigError(f"select {args.method}: {exc}") from exc
    output = args.output or str(out_dir() / f"{run.id}-{args.method}-{args.rate:g}.txt")
    from pathlib import Path

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("".join(f"{i}\n" for i in chosen))
    report = selection_report(ids, chosen, askllm=askllm or None, density=dens or None)
    Path(output).with_suffix(".report.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"selected {len(chosen)} of {len(ids)} documents by {args.method} at rate {args.rate:g}: {output} "
          f"(report {Path(output).with_suffix('.report.json')})")
    return 0
