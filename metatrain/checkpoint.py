"""Atomic, pickle-free checkpoints of the whole meta-training state.

A checkpoint is ONE safetensors file: every array leaf of the state pytree
under its key path (``['est']['groups'][0]...``) plus a JSON string in the
safetensors metadata (outer step, config, version). One file means one atomic
``os.replace``: the file is written under a temporary name, flushed and
fsync-ed, then renamed, and the directory is fsync-ed, so a crash at any
moment leaves either the previous checkpoint or the new one, never a torn
file. Restoring needs a *template* pytree of the same structure (built from
the same config); leaves are matched by key path and checked for shape and
dtype, so a checkpoint from another config is refused with a clear message.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from lopt.metatrain.unroll import MetaTrainError

PATTERN = re.compile(r"^ckpt_(\d{9})\.safetensors$")
FORMAT = "lopt-metatrain-checkpoint/1"


class CheckpointError(MetaTrainError):
    """A checkpoint is unreadable or does not match the run's configuration."""


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    # np.array(order="C"), not np.ascontiguousarray: the latter turns 0-d arrays into 1-d
    return {jax.tree_util.keystr(path): np.array(np.asarray(x), order="C") for path, x in leaves}


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:09d}.safetensors"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / name) for name in os.listdir(directory) if (m := PATTERN.match(name))]
    return sorted(found)


def save(directory: str | Path, step: int, state: Any, info: dict, keep: int = 3) -> Path:
    """Write ``state`` (a pytree of arrays) and ``info`` (JSON-able) atomically; keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = directory / f".tmp_{final.name}.{os.getpid()}"
    arrays = _flatten(state)
    # safetensors stores 0-d arrays as shape [1]: keep the true shapes next to them
    shapes = json.dumps({k: list(v.shape) for k, v in arrays.items()})
    metadata = {"format": FORMAT, "info": json.dumps({**info, "step": step}, sort_keys=True), "shapes": shapes}
    save_file(arrays, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        arrays = load_file(str(path))
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a lopt meta-training checkpoint")
        shapes = json.loads(metadata["shapes"])
        arrays = {k: v.reshape(shapes[k]) for k, v in arrays.items()}
        return arrays, json.loads(metadata["info"])
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises several types on corrupt files
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({err.__class__.__name__})") from None


def restore(path: str | Path, template: Any) -> tuple[Any, dict]:
    """Load the checkpoint at ``path`` into the structure of ``template``."""
    arrays, info = _read(Path(path))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for key_path, ref in leaves:
        key = jax.tree_util.keystr(key_path)
        if key not in arrays:
            raise CheckpointError(f"checkpoint {path} lacks {key}: it was written by a different configuration")
        # only shape and dtype of the template are read: it may be abstract or sharded over hosts
        arr, shape = arrays[key], tuple(np.shape(ref))
        dtype = np.dtype(ref.dtype) if hasattr(ref, "dtype") else np.asarray(ref).dtype
        if arr.shape != shape or arr.dtype != dtype:
            raise CheckpointError(
                f"checkpoint {path}: {key} is {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}"
                " (different configuration?)"
            )
        out.append(arr)
    if len(arrays) != len(leaves):
        raise CheckpointError(f"checkpoint {path} has extra arrays: it was written by a different configuration")
    return jax.tree_util.tree_unflatten(treedef, out), info


def restore_latest(directory: str | Path, template: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint in ``directory`` (None if there is none)."""
    found = list_checkpoints(directory)
    if not found:
        return None
    return restore(found[-1][1], template)
