"""Data scoring commands: `tagsmith score DATA` and `tagsmith select RUN`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tagsmith.commands.common import (add_engine_options, add_item_options, check_engine, config_from_args,
                                      engine_flags,
                                      item_source, out_dir, pipeline_flags, progress, report_skips)
from tagsmith.core.config import deep_merge

SCORE_FLAGS = {"max_doc_tokens": "max_doc_tokens", "samples": "fallback_samples"}


def add_commands(sub, common) -> None:
    p = sub.add_parser("score", parents=[common], help="Ask-LLM quality scores and Density for a dataset",
                       description="DATA: JSONL/CSV/TSV/Parquet with an id and a text field. Every document "
                                   "gets P(yes) from the model (logprobs; k-sample vote fallback) and a density "
                                   "from an LSH sketch over MiniLM embeddings.")
    p.add_argument("data")
    add_item_options(p, text_field="text", amazon=False)
    p.add_argument("--max-doc-tokens", type=int, help="cut documents to this many tokens (default 512)")
    p.add_argument("--samples", type=int, help="fallback votes when the provider has no logprobs (default 8)")
    p.add_argument("--no-density", action="store_true")
    add_engine_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("select", parents=[common], help="select a subset of a scored dataset")
    p.add_argument("run")
    p.add_argument("--method", choices=["askllm", "density", "random", "combined"], required=True)
    p.add_argument("--rate", type=float, required=True, help="share of documents to keep, e.g. 0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strata", type=int, default=5, help="density strata for --method combined")
    p.add_argument("-o", "--output", help="selected ids, one per line (default tagsmith-out/RUN-METHOD-RATE.txt)")
    p.set_defaults(func=cmd_select)


def cmd_score(args: argparse.Namespace) -> int:
    from tagsmith import api

    config = config_from_args(args, deep_merge(pipeline_flags(args, "score", SCORE_FLAGS,
                                                              density=False if args.no_density else None),
                                               engine_flags(args)))
    check_engine(config)
    with progress(config, "scoring", "doc") as bar:
        result = api.score(item_source(args, args.data), config, progress=bar)
    report_skips(result)
    m = result.metrics
    print(f"score run {result.id}: {m['scored']}/{m['docs']} documents scored in {result.seconds:.1f}s "
          f"({m['docs'] / max(result.seconds, 1e-9):.2f} docs/s); methods {m['methods']}; mean P(yes) "
          f"{m['mean_score'] if m['mean_score'] is None else round(m['mean_score'], 4)}")
    if (m.get("density_check") or {}).get("spearman_vs_exact") is not None:
        print(f"  density sketch vs exact KDE: Spearman {m['density_check']['spearman_vs_exact']:.3f}")
    print(f"next: tagsmith select {result.id} --method combined --rate 0.1 | tagsmith export {result.id} --format csv")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from tagsmith import api

    config = config_from_args(args)
    chosen = api.select(args.run, config, method=args.method, rate=args.rate, seed=args.seed, strata=args.strata)
    output = Path(args.output or out_dir() / f"{args.run}-{args.method}-{args.rate:g}.txt")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(f"{i}\n" for i in chosen.ids))
    output.with_suffix(".report.json").write_text(json.dumps(chosen.report, indent=2, default=float))
    print(f"selected {len(chosen.ids)} of {chosen.report['n_total']} documents by {args.method} at rate "
          f"{args.rate:g}: {output} (report {output.with_suffix('.report.json')})")
    return 0
