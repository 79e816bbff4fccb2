"""Learned optimizers shipped inside the package, by name.

Each ``<name>.safetensors`` file in this directory is one trained optimizer
(see :mod:`lopt.io` for the format); ``lopt.pretrained()`` lists the names and
``lopt.pretrained(name)`` loads one. Files are found with
``importlib.resources``, so this works from a wheel; no network is used.
``search_path`` lets callers (tests, users with their own collection) look in
other directories first.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Sequence

from lopt.base import OptimizerError

SUFFIX = ".safetensors"


def _dirs(search_path: Sequence[str | os.PathLike] | None) -> list[Path]:
    dirs = [Path(p) for p in (search_path or ())]
    dirs.append(Path(str(importlib.resources.files(__name__))))
    return dirs


def available(search_path: Sequence[str | os.PathLike] | None = None) -> list[str]:
    """Names of the optimizers found in ``search_path`` and the package, sorted."""
    names = set()
    for d in _dirs(search_path):
        if d.is_dir():
            names.update(p.name[: -len(SUFFIX)] for p in d.iterdir() if p.name.endswith(SUFFIX))
    return sorted(names)


def pretrained(name: str | None = None, search_path: Sequence[str | os.PathLike] | None = None):
    """Without ``name``: the list of shipped names. With it: that optimizer.

    Returns a :class:`lopt.TrainedOptimizer`; an unknown name raises
    :class:`~lopt.base.OptimizerError` listing the available ones.
    """
    if name is None:
        return available(search_path)
    from lopt.trained import load

    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise OptimizerError(f"invalid pretrained optimizer name {name!r}")
    for d in _dirs(search_path):
        path = d / f"{name}{SUFFIX}"
        if path.is_file():
            return load(path)
    shipped = available(search_path)
    raise OptimizerError(
        f"unknown pretrained optimizer {name!r}; available: {', '.join(shipped) if shipped else '(none shipped yet)'}"
    )
