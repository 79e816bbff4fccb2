"""Learned optimizers shipped inside the package, by name.

Each ``<name>.safetensors`` file in this directory is one trained optimizer
(see :mod:`lopt.io` for the format); ``lopt.pretrained()`` lists the names and
``lopt.pretrained(name)`` loads one. Files are found with
``importlib.resources``, so this works from a wheel; no network is used.
``search_path`` lets callers (tests, users with their own collection) look in
other directories first.

:func:`resolve` reads what a user typed where either a file or a name fits
(``lopt eval --optimizer``) without ambiguity: see its docstring.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Sequence

from lopt.base import OptimizerError

SUFFIX = ".safetensors"
PREFIX = "pretrained:"  # forces the shipped name even where a file of that name exists


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

    return load(path_of(name, search_path))


def path_of(name: str, search_path: Sequence[str | os.PathLike] | None = None) -> Path:
    """The file of the pretrained optimizer ``name`` (where :func:`pretrained` reads it from)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise OptimizerError(f"invalid pretrained optimizer name {name!r}")
    for d in _dirs(search_path):
        path = d / f"{name}{SUFFIX}"
        if path.is_file():
            return path
    shipped = available(search_path)
    raise OptimizerError(
        f"unknown pretrained optimizer {name!r}; available: {', '.join(shipped) if shipped else '(none shipped yet)'}"
    )


def resolve(spec: str, search_path: Sequence[str | os.PathLike] | None = None):
    """``(TrainedOptimizer, source, note)`` for a file path or a pretrained name.

    * ``pretrained:NAME`` is always the shipped optimizer NAME;
    * a path that exists *as a file* is that file (a directory never is an
      optimizer, so a folder called ``default`` does not hide the shipped
      ``default``);
    * otherwise a shipped name.

    ``note`` is None, or one line saying which was meant when both readings
    were possible (a file named like a shipped optimizer, or a folder). A spec
    that is neither raises :class:`~lopt.base.OptimizerError` listing the names.
    """
    from lopt.trained import load

    names = available(search_path)
    if spec.startswith(PREFIX):
        return pretrained(spec[len(PREFIX):], search_path), spec, None
    path = Path(spec)
    if path.is_file():
        note = None
        if spec in names:
            note = f"using the file {spec!r}, not the shipped optimizer of that name (use {PREFIX}{spec} for it)"
        return load(path), str(path), note
    if spec in names:
        note = None
        if path.exists():
            note = f"{spec!r} is a directory here, not an optimizer file: using the shipped optimizer {spec!r}"
        return pretrained(spec, search_path), f"{PREFIX}{spec}", note
    valid = ", ".join(names) or "none"
    if path.is_dir():
        raise OptimizerError(f"{spec}: is a directory, not an optimizer file (pretrained names: {valid})")
    if path.suffix or "/" in spec or "\\" in spec:
        raise OptimizerError(f"optimizer file not found: {spec} (pretrained names: {valid})")
    raise OptimizerError(f"unknown optimizer {spec!r}: not a file and not a pretrained name; valid names: {valid}")
