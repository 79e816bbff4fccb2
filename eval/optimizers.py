"""Finding the learned optimizer a user names on the command line.

``--optimizer`` is either a path to a saved optimizer file (safetensors + JSON
metadata, read by :func:`lopt.load`) or the name of a shipped pretrained one
(:func:`lopt.pretrained`), resolved by :func:`lopt.pretrained.resolve`: an
existing *file* wins over a name (with a note), a folder never counts, and
``pretrained:NAME`` forces the shipped one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lopt.eval.errors import EvalError


def pretrained_names() -> list[str]:
    import lopt

    return sorted(lopt.pretrained())


def resolve_optimizer(spec: str) -> tuple[str, Any, str]:
    """``(short name, TrainedOptimizer, source description)`` for a path or pretrained name."""
    import lopt

    import sys

    from lopt.pretrained import PREFIX, resolve  # names vs paths without ambiguity (a folder is never a file)

    try:
        opt, source, note = resolve(spec)
    except lopt.OptimizerError as err:
        raise EvalError(str(err)) from None
    if note:
        print(f"lopt eval: note: {note}", file=sys.stderr)
    return (source[len(PREFIX):] if source.startswith(PREFIX) else _short_name(Path(spec))), opt, source


def _short_name(path: Path) -> str:
    name = path.name
    for suffix in (".safetensors", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or "learned"
