"""Commands shared by every job: quickstart, serve, runs, resume, export."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

from tagsmith.commands.common import (config_from_args, flag_overrides, out_dir, print_json, print_metrics,
                                      progress)
from tagsmith.core.errors import ConfigError
from tagsmith.core.writers import FORMATS


def add_commands(sub, common) -> None:
    p = sub.add_parser("quickstart", parents=[common], help="the main job on the bundled model and data",
                       description="The main job on the embedded default (the bundled SmolLM2 model and "
                                   "MovieLens-100k): build a descriptor vocabulary on a sample of movies, "
                                   "tag the movies with it, print the metrics and where the output is.")
    p.add_argument("--items", type=int, default=200, help="movies to tag (default 200)")
    p.add_argument("--sample", type=int, default=40, help="movies to build the vocabulary on (default 40)")
    p.add_argument("--rounds", type=int, default=1, help="vocabulary revision rounds (default 1; 0: draft only)")
    p.add_argument("--probe", action="store_true",
                   help="instead: one structured call per movie (a smoke test of the runtime)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("serve", parents=[common], help="serve the bundled model (OpenAI-compatible) until Ctrl-C")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    runs = sub.add_parser("runs", help="list and inspect runs")
    rsub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    p = rsub.add_parser("list", parents=[common], help="recent runs")
    p.add_argument("--kind")
    p.add_argument("--limit", type=int, default=30)
    p.set_defaults(func=cmd_runs_list)
    p = rsub.add_parser("show", parents=[common], help="one run: status, metrics, LLM calls per node")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs_show)

    p = sub.add_parser("resume", parents=[common], help="continue any run from its last checkpoint",
                       description="Continue a run from its checkpoint with its stored configuration. "
                                   "Calls already answered come from the cache and cost nothing. "
                                   "--budget-tokens/--budget-usd/--concurrency override the stored values.")
    p.add_argument("run")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("export", parents=[common], help="write a run's results as JSONL, CSV or Parquet")
    p.add_argument("run")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("-o", "--output", help="output file ('-' for stdout; default tagsmith-out/RUN.FORMAT)")
    p.set_defaults(func=cmd_export)


# -- quickstart -------------------------------------------------------------------------------
def cmd_quickstart(args: argparse.Namespace) -> int:
    """Build a vocabulary on a sample of bundled MovieLens movies (genres seed the first
    facet), tag the movies with it, export the tags and print the metrics."""
    from tagsmith import api

    source = api.ItemSource(path=f"movielens:{args.items}")
    if args.probe:
        return _probe(args, source)
    config = config_from_args(args, {"pipeline": {
        "vocab": {"domain": "movies", "sample_size": args.sample, "max_rounds": args.rounds, "annotators": 2,
                  "batch_size": 5, "draft_sample": 12},
        "assign": {"domain": "movies", "batch_size": 8}}})
    store = api.open_store(config)
    where = store.label
    print(f"tagsmith quickstart: {args.items} MovieLens-100k movies, vocabulary built on {args.sample}, "
          f"model {config.llm.model}, store {where}", file=sys.stderr)
    vocab = api.build_vocabulary(source, config, seed_field="genres", store=store)
    words, usage = api.final_vocabulary(vocab.id, config, store=store)
    print(f"vocabulary {vocab.id} ({vocab.seconds:.0f}s): {len(words.facets)} facets, {words.size()} descriptors")
    print(words.render(usage, definitions=False))
    with progress(config, "tagging", "item") as bar:
        tagged = api.tag(source, config, vocab_run=vocab.id, store=store, progress=bar)
    print_metrics(tagged.run, "tagging")
    out = str(out_dir() / f"{tagged.id}.jsonl")
    api.export(tagged.id, config, fmt="jsonl", output=out, store=store)
    for n, row in enumerate(api.export_rows(tagged.id, config, store=store)):
        if n == 3:
            break
        print(f"  e.g. {row['text'][:50]!r} -> {row['descriptors']}")
    print(f"done in {vocab.seconds + tagged.seconds:.0f}s: vocabulary run {vocab.id}, tagging run {tagged.id} in "
          f"{where}; tags written to {out}")
    print(f"next: tagsmith vocab show {vocab.id} --versions | tagsmith runs show {tagged.id} | "
          f"tagsmith export {tagged.id} --format parquet")
    return 0


def _probe(args: argparse.Namespace, source) -> int:
    from tagsmith import api

    config = config_from_args(args)
    store = api.open_store(config)
    print(f"tagsmith quickstart: {args.items} MovieLens movies on {config.llm.model}; store {store.label}",
          file=sys.stderr)
    result = api.probe(source, config, store=store)
    for row in api.export_rows(result.id, config, store=store):
        print(json.dumps({k: row[k] for k in ("id", "genre", "audience", "mood")} | {"movie": row["text"][:60]}))
    m = result.metrics
    print(f"run {result.id}: {result.run.status} in {result.seconds:.1f}s; {m['llm_calls']} LLM calls, "
          f"{m['cache_hits']} cached, {m['prompt_tokens'] + m['completion_tokens']} tokens; "
          f"stored in {store.label} (tagsmith runs show {result.id})")
    return 0


# -- serve ------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from tagsmith.agents.local_model import LocalServer

    config = config_from_args(args, {"llm": {"local": {"port": args.port}}})
    server = LocalServer(config.llm.local)
    url = server.start()
    print(f"bundled model {config.llm.local.alias} serving at {url} (OpenAI-compatible); Ctrl-C stops it")
    print(f"use it with: --model openai/{config.llm.local.alias} --api-base {url}")
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


# -- runs ---------------------------------------------------------------------------------------
def cmd_runs_list(args: argparse.Namespace) -> int:
    from tagsmith.api import open_store

    store = open_store(config_from_args(args))
    runs = store.list_runs(kind=args.kind, limit=args.limit)
    if not runs:
        print(f"no runs in {store.label}")
        return 0
    print(f"{'RUN':<16} {'KIND':<10} {'STATUS':<11} {'CREATED':<19} {'CALLS':>6} {'CACHED':>6} {'TOKENS':>9} "
          f"{'COST':>8}  MODEL")
    for r in runs:
        print(f"{r.id:<16} {r.kind:<10} {r.status:<11} {r.created_at:%Y-%m-%d %H:%M:%S} {r.calls:>6} "
              f"{r.cache_hits:>6} {r.prompt_tokens + r.completion_tokens:>9} {r.cost_usd:>8.4f}  {r.model}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from tagsmith.api import open_store

    store = open_store(config_from_args(args))
    run = store.require_run(args.run)
    by_node: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c in store.calls(run.id):
        n = by_node[c.node or "-"]
        n["calls"] += 0 if c.cache_hit else 1
        n["cache_hits"] += 1 if c.cache_hit else 0
        n["errors"] += 1 if c.error else 0
        n["tokens"] += c.prompt_tokens + c.completion_tokens
        n["reasks"] += c.reasks
        n["latency_s"] += c.latency_s
    info = {"id": run.id, "kind": run.kind, "status": run.status, "model": run.model,
            "created_at": run.created_at, "finished_at": run.finished_at, "parent_run": run.parent_run,
            "error": run.error, "calls": run.calls, "cache_hits": run.cache_hits,
            "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
            "cost_usd": round(run.cost_usd, 6), "metrics": json.loads(run.metrics_json),
            "prompts": json.loads(run.prompt_hashes_json),
            "nodes": {k: dict(v) for k, v in by_node.items()}}
    work = {"tag": "item", "score": "doc"}.get(run.kind)
    if work is not None:  # a batch run, finished or not: where it is, from the store
        stats = store.stats(run.id)
        info["progress"] = {"loaded": int(stats.get("loaded", 0)), "done": store.count_work(run.id, work, "done"),
                            "failed": store.count_work(run.id, work, "failed"),
                            "pending": store.count_work(run.id, work, "pending"),
                            "skipped": int(stats.get("skipped", 0))}
    if args.json:
        print_json(info)
        return 0
    for key in ("id", "kind", "status", "model", "created_at", "finished_at", "parent_run", "error"):
        if info[key] is not None:
            print(f"{key:<12} {info[key]}")
    print(f"{'llm':<12} {run.calls} calls, {run.cache_hits} cache hits, {run.prompt_tokens} prompt + "
          f"{run.completion_tokens} completion tokens, ${run.cost_usd:.4f}")
    if "progress" in info:
        p = info["progress"]
        print(f"{'records':<12} {p['done']} done, {p['failed']} failed, {p['pending']} pending of {p['loaded']} "
              f"loaded; {p['skipped']} bad records skipped")
    if info["metrics"]:
        print("metrics")
        for k, v in info["metrics"].items():
            print(f"  {k:<28} {v:.4g}" if isinstance(v, float) else f"  {k:<28} {v}")
    if by_node:
        print(f"{'node':<20} {'calls':>6} {'cached':>6} {'errors':>6} {'reasks':>6} {'tokens':>8} {'mean s':>7}")
        for node, n in sorted(by_node.items()):
            mean = n["latency_s"] / n["calls"] if n["calls"] else 0.0
            print(f"{node:<20} {int(n['calls']):>6} {int(n['cache_hits']):>6} {int(n['errors']):>6} "
                  f"{int(n['reasks']):>6} {int(n['tokens']):>8} {mean:>7.2f}")
    return 0


# -- resume -------------------------------------------------------------------------------------
def cmd_resume(args: argparse.Namespace) -> int:
    from tagsmith import api

    config = config_from_args(args)
    store = api.open_store(config)
    run = store.require_run(args.run)
    if run.status == "done":
        print(f"run {run.id} is already done; nothing to resume")
        return 0
    overrides = {k: v for k, v in flag_overrides(args).items() if k not in ("store",)}
    holder = store.lease_holder(run.id)
    if holder is not None:  # said before anything else (the runtime checks again as it takes the lease)
        raise ConfigError(f"run {run.id} is being driven by {holder}; one process drives a run at a time "
                          f"(wait for it, or for its lease to expire)")
    print(f"resuming {run.kind} run {run.id} (was {run.status})", file=sys.stderr)
    desc, unit = {"tag": ("tagging", "item"), "score": ("scoring", "doc")}.get(run.kind, (run.kind, "step"))
    with progress(config, desc, unit) as bar:
        result = api.resume(run.id, config, overrides=overrides, store=store, progress=bar)
    print(f"run {result.id}: {result.run.status}; {result.run.calls} LLM calls paid in all, "
          f"{result.run.cache_hits} cache hits")
    return 0


# -- export -------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from tagsmith import api

    config = config_from_args(args)
    store = api.open_store(config)
    run = store.require_run(args.run)
    output = args.output or str(out_dir() / f"{run.id}.{args.format}")
    n = api.export(run.id, config, fmt=args.format, output=output, store=store)
    if output != "-":
        print(f"wrote {n} rows to {output}")
    return 0
