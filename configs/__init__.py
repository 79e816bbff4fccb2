"""Shipped YAML configs, installed as package data of ``lopt.configs``.

``configs/train/*.yaml`` are meta-training configs, ``configs/eval/*.yaml``
evaluation suites, ``configs/recipes/*.yaml`` multi-stage recipes. They are
found through :mod:`importlib.resources`, so a name such as ``smoke`` resolves
the same from a checkout, an editable install or a wheel, from any folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

KINDS = ("train", "eval", "recipes")
SUFFIXES = (".yaml", ".yml")


def _kind_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; valid: {', '.join(KINDS)}")
    return Path(str(importlib.resources.files(__name__))) / kind


def names(kind: str) -> list[str]:
    """Names of the shipped configs of one kind (``train``, ``eval``, ``recipes``), sorted."""
    d = _kind_dir(kind)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def shipped_path(kind: str, name: str) -> Path | None:
    """The shipped file called ``name`` of this kind, or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = _kind_dir(kind) / f"{name}.yaml"
    return path if path.is_file() else None


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """A config given by shipped name (``smoke``) or by path (``my/run.yaml``).

    A value that names an existing file is that file; otherwise it must be a
    shipped name. Both failing is a :class:`FileNotFoundError` that lists the
    shipped names, so a typo is one readable line.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix not in SUFFIXES and (shipped := shipped_path(kind, text)) is not None:
        return shipped
    valid = ", ".join(names(kind)) or "(none)"
    if path.suffix in SUFFIXES or path.is_dir():
        raise FileNotFoundError(f"{kind} config file not found: {text} (shipped names: {valid})")
    raise FileNotFoundError(f"unknown {kind} config {text!r}; shipped names: {valid}")
