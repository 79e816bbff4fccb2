"""The one error type of the eval package (a ValueError, so the CLI prints one line)."""

from __future__ import annotations


class EvalError(ValueError):
    """Bad evaluation input: unknown suite or optimizer, malformed suite YAML."""
