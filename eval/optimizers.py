"""Finding the learned optimizer a user names on the command line.

``--optimizer`` is either a path to a saved optimizer file (safetensors + JSON
metadata, read by :func:`lopt.load`) or the name of a shipped pretrained one
(:func:`lopt.pretrained`). A path wins when both could apply; a string that is
neither gets one line listing the pretrained names.
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

    path = Path(spec)
    if path.exists():
        return _short_name(path), lopt.load(path), str(path)
    names = pretrained_names()
    if spec in names:
        return spec, lopt.pretrained(spec), f"pretrained:{spec}"
    looks_like_path = path.suffix or "/" in spec or "\\" in spec
    if looks_like_path:
        raise EvalError(f"optimizer file not found: {spec} (pretrained names: {', '.join(names) or 'none'})")
    raise EvalError(f"unknown optimizer {spec!r}: not a file and not a pretrained name; valid names: {', '.join(names) or 'none'}")


def _short_name(path: Path) -> str:
    name = path.name
    for suffix in (".safetensors", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or "learned"
