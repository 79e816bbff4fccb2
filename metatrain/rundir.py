"""The output directory of a run: what a new run finds there, and how it writes metrics.

A directory holds one run. Before anything is built, :func:`check_config_change`
compares the config a rerun was given with the one the directory's run used
(its newest checkpoint's, else ``config.json``) and refuses a difference,
listing the dotted keys (``seed: 0 -> 5``), unless the caller allows it:
resuming silently with another config would mix two runs and label the
result with the second. Bookkeeping keys that never change the result
(:data:`BOOKKEEPING_KEYS`) may change freely.

Metrics are JSON lines, strictly JSON (:func:`write_record`: a diverged
validation loss is the string ``"inf"``, not a bare ``Infinity`` that strict
parsers reject); on resume the lines after the checkpoint are dropped
(:func:`trim_metrics`), since the resumed run redoes those steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from lopt.io import json_safe
from lopt.metatrain import checkpoint
from lopt.metatrain.config import ConfigError, TrainConfig, to_dict


class ConfigChanged(ConfigError):
    """``--out`` holds a run made with another config (the message lists the keys)."""


# Keys that never change what a run computes: a resumed run may change them freely.
BOOKKEEPING_KEYS = ("progress", "checkpoint_every", "keep_checkpoints")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values (empty mappings have no keys, so ``{}`` vs ``{a: 1}`` shows ``a``)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def config_changes(old: Mapping[str, Any] | None, new: TrainConfig) -> list[str]:
    """``["seed: 0 -> 5", ...]``: dotted keys whose value differs between a saved config and ``new``.

    ``old`` is a saved config dict (``to_dict`` of an earlier run); a key the
    saved one lacks (written by an older lopt) counts as its default value.
    Bookkeeping keys (:data:`BOOKKEEPING_KEYS`) are ignored.
    """
    if old is None:
        return []
    a, b, default = _flatten(old), _flatten(to_dict(new)), _flatten(to_dict(TrainConfig()))
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0].split("[")[0] in BOOKKEEPING_KEYS:
            continue
        before = a.get(key, default.get(key, "(absent)"))
        after = b.get(key, "(absent)")
        if before != after:
            changes.append(f"{key}: {_show(before)} -> {_show(after)}")
    return changes


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    path.write_text("".join(line + "\n" for line in kept))


def remove_stale_tmp(out: Path) -> None:
    for name in os.listdir(out):
        if name.startswith(".tmp_ckpt_"):
            (out / name).unlink(missing_ok=True)


def _saved_config(out: Path) -> dict | None:
    """The config of the run in ``out``: its newest checkpoint's, else its config.json, else None."""
    info = checkpoint.latest_info(out)
    if info is not None and isinstance(info.get("config"), dict):
        return info["config"]
    path = out / "config.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) else None
    return None


def check_config_change(out: Path, config: TrainConfig, allow: bool, main: bool) -> list[str]:
    if not out.is_dir():
        return []
    changes = config_changes(_saved_config(out), config)
    if changes and not allow:
        raise ConfigChanged(
            f"{out} holds a run with another config ({', '.join(changes)}); pass --allow-config-change to "
            "continue it with this one, or choose another --out"
        )
    if changes and main:
        print(f"lopt train: warning: continuing {out} with a changed config: {', '.join(changes)}", flush=True)
    return changes


def write_record(log: Any, record: dict) -> None:
    """One strict-JSON line (non-finite numbers as strings), flushed."""
    log.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
    log.flush()
