"""Typed errors. The CLI turns any TagsmithError into one line; --debug shows the traceback."""

from __future__ import annotations

from typing import Any


class TagsmithError(Exception):
    """Base class: a problem the user can act on, reported as one line."""

    exit_code = 1


class ConfigError(TagsmithError):
    """Bad configuration: a file, a field, a flag or a missing environment variable."""

    exit_code = 2


class InputError(TagsmithError):
    """Bad input data; the message names the file and line."""

    exit_code = 2


class BudgetExceeded(TagsmithError):
    """The run's token or cost budget is spent. The run stops cleanly and can be resumed
    with a larger budget (``tagsmith resume RUN --budget-tokens N``)."""

    exit_code = 3

    def __init__(self, message: str, spent_tokens: int = 0, spent_usd: float = 0.0):
        super().__init__(message)
        self.spent_tokens = spent_tokens
        self.spent_usd = spent_usd


class Interrupted(TagsmithError):
    """The run was stopped by a signal (SIGTERM); it is marked interrupted and resumable."""

    exit_code = 143


class LLMError(TagsmithError):
    """A model call failed for good (after retries), or for a reason retries cannot fix."""


class StructuredOutputError(LLMError):
    """The model never produced output that validates against the schema.

    Carries what a caller needs to decide what to do next: how many attempts were made,
    the last raw output, the last validation error and the tokens spent on the way.
    """

    def __init__(self, message: str, *, attempts: int, last_output: str, usage: dict[str, Any],
                 last_error: str = ""):
        super().__init__(message)
        self.attempts = attempts
        self.last_output = last_output
        self.usage = usage
        self.last_error = last_error
