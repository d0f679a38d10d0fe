"""Commands shared by every job: quickstart, serve, runs, resume, export."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

from tagsmith.cli import config_from_args, out_dir, print_json, run_async
from tagsmith.errors import ConfigError

EXPORT_FORMATS = ("jsonl", "csv", "parquet")


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
    p.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    p.add_argument("-o", "--output", help="output file ('-' for stdout; default tagsmith-out/RUN.FORMAT)")
    p.set_defaults(func=cmd_export)


# -- quickstart -------------------------------------------------------------------------------
def cmd_quickstart(args) -> int:
    if not args.probe:
        from tagsmith.commands.tagging import quickstart

        return quickstart(args)
    from tagsmith.datasets import movielens_items
    from tagsmith.runtime import execute, open_store

    config = config_from_args(args)
    items = [{"id": i["id"], "text": i["text"]} for i in movielens_items(limit=args.items)]
    store = open_store(config)
    print(f"tagsmith quickstart: {len(items)} MovieLens movies on {config.llm.model}; store {store.path or store.url}",
          file=sys.stderr)
    started = time.perf_counter()
    run, state = run_async(execute("probe", config, {"items": items}, store=store))
    elapsed = time.perf_counter() - started
    from tagsmith.pipelines.probe import export_rows

    for row in export_rows(store, run):
        print(json.dumps({k: row[k] for k in ("id", "genre", "audience", "mood")} | {"movie": row["text"][:60]}))
    metrics = json.loads(run.metrics_json)
    print(f"run {run.id}: {run.status} in {elapsed:.1f}s; {metrics['llm_calls']} LLM calls, "
          f"{metrics['cache_hits']} cached, {metrics['prompt_tokens'] + metrics['completion_tokens']} tokens; "
          f"stored in {store.path or store.url} (tagsmith runs show {run.id})")
    return 0


# -- serve ------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
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
def cmd_runs_list(args) -> int:
    from tagsmith.runtime import open_store

    store = open_store(config_from_args(args))
    runs = store.list_runs(kind=args.kind, limit=args.limit)
    if not runs:
        print(f"no runs in {store.path or store.url}")
        return 0
    print(f"{'RUN':<16} {'KIND':<10} {'STATUS':<11} {'CREATED':<19} {'CALLS':>6} {'CACHED':>6} {'TOKENS':>9} "
          f"{'COST':>8}  MODEL")
    for r in runs:
        print(f"{r.id:<16} {r.kind:<10} {r.status:<11} {r.created_at:%Y-%m-%d %H:%M:%S} {r.calls:>6} "
              f"{r.cache_hits:>6} {r.prompt_tokens + r.completion_tokens:>9} {r.cost_usd:>8.4f}  {r.model}")
    return 0


def cmd_runs_show(args) -> int:
    from collections import defaultdict

    from tagsmith.runtime import open_store

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
    if args.json:
        print_json(info)
        return 0
    for key in ("id", "kind", "status", "model", "created_at", "finished_at", "parent_run", "error"):
        if info[key] is not None:
            print(f"{key:<12} {info[key]}")
    print(f"{'llm':<12} {run.calls} calls, {run.cache_hits} cache hits, {run.prompt_tokens} prompt + "
          f"{run.completion_tokens} completion tokens, ${run.cost_usd:.4f}")
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
def cmd_resume(args) -> int:
    from tagsmith.cli import flag_overrides
    from tagsmith.runtime import open_store, resume

    config = config_from_args(args)
    store = open_store(config)
    run = store.require_run(args.run)
    if run.status == "done":
        print(f"run {run.id} is already done; nothing to resume")
        return 0
    overrides = {k: v for k, v in flag_overrides(args).items() if k not in ("store",)}
    print(f"resuming {run.kind} run {run.id} (was {run.status})", file=sys.stderr)
    run, _ = run_async(resume(run.id, config, overrides=overrides, store=store))
    print(f"run {run.id}: {run.status}; {run.calls} LLM calls paid in all, {run.cache_hits} cache hits")
    return 0


# -- export -------------------------------------------------------------------------------------
def export_rows(store, run) -> list[dict]:
    from tagsmith.runtime import pipeline_module

    module = pipeline_module(run.kind)
    if not hasattr(module, "export_rows"):
        raise ConfigError(f"run {run.id} ({run.kind}) has nothing to export")
    return module.export_rows(store, run)


def write_rows(rows: list[dict], fmt: str, output: str) -> str:
    """Write rows as jsonl/csv/parquet to a path or '-' (stdout); nested values become JSON."""
    if fmt == "parquet":
        if output == "-":
            raise ConfigError("--format parquet needs a file (-o PATH), not stdout")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError("--format parquet needs pyarrow: pip install pyarrow") from exc
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), output)
        return output
    buf = io.StringIO()
    if fmt == "jsonl":
        for row in rows:
            buf.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    else:
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                        for k, v in row.items()})
    if output == "-":
        sys.stdout.write(buf.getvalue())
        return "-"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(buf.getvalue(), encoding="utf-8")
    return output


def cmd_export(args) -> int:
    from tagsmith.runtime import open_store

    store = open_store(config_from_args(args))
    run = store.require_run(args.run)
    rows = export_rows(store, run)
    output = args.output or str(out_dir() / f"{run.id}.{args.format}")
    where = write_rows(rows, args.format, output)
    if where != "-":
        print(f"wrote {len(rows)} rows to {where}")
    return 0
