"""Prompt templates as files, loaded by name. ``$name`` placeholders (string.Template), so
JSON braces in a prompt need no escaping. A user directory (``TAGSMITH_PROMPTS_DIR``)
overrides any template by file name.

    >>> render("probe_describe", item="Toy Story (1995)")[:20]
    'Describe this movie '
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from string import Template

from tagsmith.core.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent


def _path(name: str) -> Path:
    user_dir = os.environ.get("TAGSMITH_PROMPTS_DIR")
    if user_dir and (Path(user_dir) / f"{name}.txt").is_file():
        return Path(user_dir) / f"{name}.txt"
    path = PACKAGE_DIR / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"prompt template {name!r} not found in {PACKAGE_DIR}" +
                          (f" or {user_dir}" if user_dir else ""))
    return path


def load(name: str) -> str:
    return _load(name, os.environ.get("TAGSMITH_PROMPTS_DIR"))


@functools.lru_cache(maxsize=256)
def _load(name: str, user_dir: str | None) -> str:
    """Read once per process (a run records each prompt's hash when it starts, and keeps
    using that text); agents render a prompt on every call."""
    return _path(name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=256)
def _template(name: str, user_dir: str | None) -> Template:
    return Template(_load(name, user_dir))


def render(name: str, **values: object) -> str:
    try:
        return _template(name, os.environ.get("TAGSMITH_PROMPTS_DIR")).substitute(
            {k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise ConfigError(f"{_path(name)}: placeholder ${exc.args[0]} has no value") from exc


def prompt_hash(name: str) -> str:
    """Short content hash, stored with each run so results can be traced to prompt versions."""
    return hashlib.sha256(load(name).encode("utf-8")).hexdigest()[:12]
