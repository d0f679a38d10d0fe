"""What every command shares: the common flags, configuration from flags, item-source
flags, a progress bar, printing. Importing this is cheap (no LangGraph, litellm or torch):
`tagsmith --help` loads every command module."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tagsmith.core.config import Config, deep_merge, load_config
from tagsmith.core.datasets import ItemSource


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
    return load_config(getattr(args, "config", None), overrides=deep_merge(flag_overrides(args), extra or {}))


def pipeline_flags(args: argparse.Namespace, section: str, mapping: dict[str, str],
                   **fixed: Any) -> dict[str, Any]:
    """{"pipeline": {section: {...}}} from the flags that were given (flag -> field)."""
    values = {field: getattr(args, flag) for flag, field in mapping.items() if getattr(args, flag, None) is not None}
    values.update({k: v for k, v in fixed.items() if v is not None})
    return {"pipeline": {section: values}} if values else {}


# -- items ----------------------------------------------------------------------------------------
def add_item_options(p: argparse.ArgumentParser, *, text_field: str | None = None, amazon: bool = True) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--id-field", default="id", help="id field of the records (default id)")
    g.add_argument("--text-field", default=text_field,
                   help="field holding the text" + (f" (default {text_field})" if text_field else ""))
    g.add_argument("--template", help="text template over the fields, e.g. '{title} ({year}): {description}'")
    formats = ["jsonl", "csv", "tsv", "parquet"] + (["amazon"] if amazon else [])
    g.add_argument("--format", dest="item_format", choices=formats,
                   help="input format (default: from the extension" + ("; amazon: Amazon Reviews metadata "
                                                                          "2014/2023)" if amazon else ")"))
    g.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad records: stop with FILE:LINE (default) or skip and count them")
    g.add_argument("--limit", type=int, help="use the first N records")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["asyncio", "ray"],
                   help="asyncio (default: waves in this process) or ray (a Ray Data pipeline; pip install "
                        "'tagsmith[ray]')")
    g.add_argument("--ray-address", metavar="ADDRESS", help="a Ray cluster (ray://host:10001, auto); default: a "
                                                            "local Ray instance")
    g.add_argument("--workers", type=int, help="Ray actors, each with its own gateway (default 1)")


def engine_flags(args: argparse.Namespace) -> dict[str, Any]:
    values = {k: v for k, v in (("kind", args.engine), ("ray_address", args.ray_address),
                                ("workers", args.workers)) if v is not None}
    return {"engine": values} if values else {}


def check_engine(config: Config) -> None:
    """Before anything is shown: the ray engine needs its extra (one line if it is missing)."""
    if config.engine.kind == "ray":
        from tagsmith.pipelines.batch_ray import require_ray

        require_ray()


def item_source(args: argparse.Namespace, path: str) -> ItemSource:
    return ItemSource(path=path, format=args.item_format, id_field=args.id_field, text_field=args.text_field,
                      template=args.template, on_error=args.on_error, limit=args.limit)


def report_skips(result: Any) -> None:
    report = getattr(result, "report", None)
    if report is not None and report.skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.reasons.items(), key=lambda kv: -kv[1]))
        print(f"{report.path}: skipped {report.skipped} bad records (first: {report.errors[0]}); by reason: {kinds}",
              file=sys.stderr)


# -- output ---------------------------------------------------------------------------------------
class Bar:
    """A tqdm bar on stderr as the runs' Progress."""

    def __init__(self, desc: str, unit: str):
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=desc, unit=unit, file=sys.stderr)

    def total(self, total: int, done: int = 0) -> None:
        self.bar.total, self.bar.n = total, done
        self.bar.refresh()

    def advance(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoBar:
    def total(self, total: int, done: int = 0) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(config: Config, desc: str, unit: str) -> Bar | NoBar:
    return Bar(desc, unit) if config.progress else NoBar()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_metrics(run: Any, title: str, seconds: float | None = None) -> None:
    metrics = json.loads(run.metrics_json or "{}")
    print(f"{title} {run.id}: {run.status}")
    for k, v in metrics.items():
        if k in ("history",) or isinstance(v, (dict, list)):
            continue
        print(f"  {k:<28} {v:.4g}" if isinstance(v, float) else f"  {k:<28} {v}")
    if seconds is not None:
        print(f"  {'wall_s':<28} {seconds:.1f}")


def out_dir() -> Path:
    return Path("tagsmith-out")
