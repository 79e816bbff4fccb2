"""The optimizer file format: safetensors tensors + JSON metadata. Never pickle.

A file holds one trained optimizer:

* tensors: the meta-parameter pytree (nested dicts) flattened to ``"a/b/c"``
  key paths, float32, little-endian -- readable by any safetensors library;
* header metadata ``"lopt"``: a JSON object with ``format`` (``"lopt-optimizer"``),
  ``format_version``, ``arch`` (registry name), ``hparams`` (the architecture's
  hyperparameters), ``provenance`` (free-form training record: config, steps,
  meta-loss, date, ...) and ``sha256`` (a checksum of the tensor bytes, so a
  corrupted file is detected instead of silently loaded).

Reading checks everything before returning and raises one
:class:`~lopt.base.OptimizerError` naming the problem: not a safetensors file,
truncated, corrupted (checksum), not written by lopt, written by a newer lopt,
unknown architecture or hyperparameter, missing / extra / mis-shaped tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any

import jax
import numpy as np

from lopt.base import LearnedOptimizer, OptimizerError

FORMAT = "lopt-optimizer"
FORMAT_VERSION = 1
METADATA_KEY = "lopt"
_MAX_HEADER = 100 * 1024 * 1024


def flatten_meta_params(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> ``{"a/b": array}`` (keys must be '/'-free strings)."""
    if not isinstance(tree, dict):
        return {prefix: np.asarray(tree)}
    out: dict[str, np.ndarray] = {}
    for key in sorted(tree):
        if not isinstance(key, str) or "/" in key or not key:
            raise OptimizerError(f"meta-parameter keys must be non-empty strings without '/', got {key!r}")
        out.update(flatten_meta_params(tree[key], f"{prefix}/{key}" if prefix else key))
    return out


def checksum(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes, in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.array(tensors[name], order="C")
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON data: non-finite floats become ``"inf"``, ``"-inf"``, ``"nan"``.

    Python's ``float()`` reads those strings back. Tuples become lists, numpy
    scalars and arrays plain numbers and lists, mapping keys strings, and any
    other object its ``str``, so metadata made of run records can always be
    written (a finished meta-training run must never fail on its metadata).
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return json_safe(np.asarray(value).tolist())
    if isinstance(value, jax.Array):
        return json_safe(np.asarray(value).tolist())
    return str(value)


def write(path: str | os.PathLike, arch: LearnedOptimizer, meta_params: Any, provenance: dict | None) -> None:
    """Write ``meta_params`` of ``arch`` with ``provenance`` to ``path``."""
    from safetensors.numpy import save

    # np.array (not ascontiguousarray, which turns 0-d into 1-d) keeps scalars scalar.
    flat = flatten_meta_params(jax.device_get(meta_params))
    tensors = {k: np.array(v, dtype=np.float32, order="C") for k, v in flat.items()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch.arch,
        "hparams": arch.hparams(),
        "provenance": provenance or {},
        "sha256": checksum(tensors),
    }
    try:
        text = json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise OptimizerError(f"optimizer metadata is not JSON-serializable: {err}") from None
    data = save(tensors, metadata={METADATA_KEY: text})
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:  # write then rename: a crash never leaves half a file
        f.write(data)
    os.replace(tmp, path)


def _parse_container(raw: bytes, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Validate the safetensors framing ourselves so each failure gets a precise message."""
    if len(raw) < 8:
        raise OptimizerError(f"{name}: not a safetensors file (only {len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n == 0 or n > _MAX_HEADER:
        raise OptimizerError(f"{name}: not a safetensors file (implausible header length {n})")
    if 8 + n > len(raw):
        raise OptimizerError(f"{name}: file is truncated (header needs {8 + n} bytes, file has {len(raw)})")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OptimizerError(f"{name}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise OptimizerError(f"{name}: not a safetensors file (header is not a JSON object)")
    ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)
            and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2]
    if ends and 8 + n + max(ends) > len(raw):
        raise OptimizerError(f"{name}: file is truncated (tensor data ends at byte {8 + n + max(ends)}, "
                             f"file has {len(raw)})")
    from safetensors.numpy import load

    try:
        tensors = load(raw)
    except Exception as err:  # the library's own framing checks  # noqa: BLE001
        raise OptimizerError(f"{name}: corrupted safetensors file ({err})") from None
    return header.get("__metadata__") or {}, tensors


def read(path: str | os.PathLike) -> tuple[LearnedOptimizer, Any, dict]:
    """Read ``(arch, meta_params, provenance)`` from ``path``, validating everything."""
    from lopt import architectures

    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise OptimizerError(f"{name}: no such optimizer file") from None
    except IsADirectoryError:
        raise OptimizerError(f"{name}: is a directory, not an optimizer file") from None
    except OSError as err:
        raise OptimizerError(f"{name}: cannot read optimizer file ({err.strerror})") from None
    metadata, tensors = _parse_container(raw, name)
    if METADATA_KEY not in metadata:
        raise OptimizerError(f"{name}: a safetensors file but not a lopt optimizer (no {METADATA_KEY!r} metadata)")
    try:
        header = json.loads(metadata[METADATA_KEY])
        if not isinstance(header, dict):
            raise ValueError
    except ValueError:
        raise OptimizerError(f"{name}: corrupted optimizer metadata (not a JSON object)") from None
    if header.get("format") != FORMAT:
        raise OptimizerError(f"{name}: not a lopt optimizer file (format {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise OptimizerError(f"{name}: corrupted optimizer metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise OptimizerError(f"{name}: written by a newer lopt (format version {version}; this lopt reads "
                             f"versions up to {FORMAT_VERSION}): upgrade lopt")
    if header.get("sha256") != checksum(tensors):
        raise OptimizerError(f"{name}: corrupted optimizer file (tensor checksum mismatch)")
    hparams = header.get("hparams", {})
    if not isinstance(hparams, dict):
        raise OptimizerError(f"{name}: corrupted optimizer metadata (hparams is not an object)")
    try:
        arch = architectures.get(header.get("arch"), **hparams)
    except (OptimizerError, TypeError) as err:  # TypeError: a field's own __post_init__ rejected a value
        raise OptimizerError(f"{name}: {err}") from None
    meta_params = _rebuild(arch, tensors, name)
    provenance = header.get("provenance") or {}
    return arch, meta_params, provenance


def _rebuild(arch: LearnedOptimizer, tensors: dict[str, np.ndarray], name: str) -> Any:
    """Check the file's tensors against the architecture's and rebuild its pytree."""
    expected = jax.eval_shape(arch.init_meta_params, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(expected)
    # Key path of each leaf, in leaf order: flatten a tree whose leaves are their own indices.
    index_tree = treedef.unflatten(list(range(len(leaves))))
    paths = {int(i): path for path, i in flatten_meta_params(index_tree).items()}
    want_names = set(paths.values())
    missing = sorted(want_names - set(tensors))
    if missing:
        raise OptimizerError(f"{name}: tensor {missing[0]!r} missing for architecture {arch.arch!r}")
    extra = sorted(set(tensors) - want_names)
    if extra:
        raise OptimizerError(f"{name}: unexpected tensor {extra[0]!r} for architecture {arch.arch!r}")
    ordered = []
    for i, want in enumerate(leaves):
        path, got = paths[i], tensors[paths[i]]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise OptimizerError(f"{name}: tensor {path!r} has shape {tuple(got.shape)} {got.dtype}, architecture "
                                 f"{arch.arch!r} expects {tuple(want.shape)} {want.dtype}")
        ordered.append(jax.numpy.asarray(got))
    return treedef.unflatten(ordered)
