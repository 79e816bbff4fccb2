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

A SHA-256 of the arrays is stored too, so a damaged file (cut short, bits
flipped by a disk) is *detected*. :func:`restore_latest` then falls back to the
newest intact checkpoint, reporting each file it skipped in one line; only
when none is intact is it an error. A checkpoint from another configuration is
never skipped silently: that is an error, not damage.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from lopt.io import checksum
from lopt.metatrain.unroll import MetaTrainError

PATTERN = re.compile(r"^ckpt_(\d{9})\.safetensors$")
FORMAT = "lopt-metatrain-checkpoint/1"


class CheckpointError(MetaTrainError):
    """A checkpoint is unreadable or does not match the run's configuration."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file is damaged (truncated, bad checksum, not a checkpoint at all)."""


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
    metadata = {
        "format": FORMAT,
        "info": json.dumps({**info, "step": step}, sort_keys=True, allow_nan=False),
        "shapes": shapes,
        "sha256": checksum(arrays),
    }
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
            raise CorruptCheckpoint(f"{path} is not a lopt meta-training checkpoint")
        shapes = json.loads(metadata["shapes"])
        arrays = {k: v.reshape(shapes[k]) for k, v in arrays.items()}
        if "sha256" in metadata and metadata["sha256"] != checksum(arrays):  # older checkpoints have none
            raise CorruptCheckpoint(f"checkpoint {path} is corrupted (checksum mismatch)")
        return arrays, json.loads(metadata["info"])
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises several types on corrupt files
        raise CorruptCheckpoint(f"checkpoint {path} is corrupted or unreadable ({err.__class__.__name__})") from None


def read_info(path: str | Path) -> dict | None:
    """The JSON info of a checkpoint (step, config, ...) from its header alone; None if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            return None
        info = json.loads(metadata["info"])
        return info if isinstance(info, dict) else None
    except Exception:  # noqa: BLE001 - any damage means "no info"
        return None


def latest_info(directory: str | Path) -> dict | None:
    """The info of the newest checkpoint whose header is readable (None if there is none)."""
    for _, path in reversed(list_checkpoints(directory)):
        if (info := read_info(path)) is not None:
            return info
    return None


def restore(path: str | Path, template: Any, partial: bool = False) -> tuple[Any, dict]:
    """Load the checkpoint at ``path`` into the structure of ``template``.

    ``partial=True`` reads only the arrays ``template`` names (e.g.
    ``{"meta_params": ...}`` out of a whole trainer state) and ignores the rest.
    """
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
                f"checkpoint {path}: {key} is {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}: "
                "it was written by a different configuration"
            )
        out.append(arr)
    if not partial and len(arrays) != len(leaves):
        raise CheckpointError(f"checkpoint {path} has extra arrays: it was written by a different configuration")
    return jax.tree_util.tree_unflatten(treedef, out), info


def restore_latest(
    directory: str | Path, template: Any, on_skip: Callable[[str], None] | None = None
) -> tuple[Any, dict] | None:
    """The newest *intact* checkpoint in ``directory`` (None if there is none).

    A damaged newer file is skipped and ``on_skip`` gets one line naming it
    (the trainer prints it as a warning); the file itself is left in place
    (the resumed run overwrites it when it reaches that step again). If every
    checkpoint is damaged, :class:`CheckpointError` lists them all. A
    checkpoint of another configuration raises at once (never skipped).
    """
    found = list_checkpoints(directory)
    damaged: list[str] = []
    for _, path in reversed(found):
        try:
            result = restore(path, template)
        except CorruptCheckpoint as err:
            damaged.append(str(err))
            continue
        if on_skip is not None:
            for reason in damaged:
                on_skip(f"skipped a damaged checkpoint: {reason}; resuming from {path.name}")
        return result
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(damaged))
    return None
