"""Real image datasets through ``tfds.data_source``, without TensorFlow, cached as ``.npz``.

Why this route: ``tfds.data_source`` reads prepared ArrayRecord files with
plain Python/NumPy, so neither TensorFlow (1.3 GB, seconds of import) nor
``tf.data`` is needed. Examples are read one index at a time (batched reads
and slicing are not supported everywhere, e.g. under ``tfds.testing.mock_data``),
optionally resized, and written once to
``$LOPT_CACHE/<name>_<size>_<count>.npz`` (default cache:
``~/.cache/lopt/datasets``) as uint8 images and int32 labels. Later runs load
that file in seconds; it is read with ``allow_pickle=False``.

Where the data comes from: ``tfds.data_source`` looks in ``$TFDS_DATA_DIR``
(default ``~/tensorflow_datasets``) and, if the dataset is not prepared there,
tries to download and prepare it (set ``LOPT_NO_DOWNLOAD=1`` to forbid that and
only read prepared data). Without internet that fails, and the
failure is reported as one :class:`~lopt.tasks.datasets.DatasetError` saying how to
get the data. The tfds ``test`` split becomes our ``valid`` split.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile

import numpy as np

from lopt.tasks.datasets import DatasetError, get_spec, resize_images

SPLIT_MAP = {"train": "train", "valid": "test"}  # our split -> tfds split


def cache_dir() -> str:
    """``$LOPT_CACHE`` if set, else ``~/.cache/lopt/datasets``."""
    return os.environ.get("LOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lopt", "datasets")


def cache_path(name: str, image_size: int | None, max_examples: int | None) -> str:
    size = "native" if image_size is None else f"{image_size}px"
    count = "all" if max_examples is None else str(max_examples)
    return os.path.join(cache_dir(), f"{name}_{size}_{count}.npz")


def load_raw(name: str, image_size: int | None = None, max_examples: int | None = None) -> dict:
    """uint8 images ``[N, H, W, C]`` and int32 labels per split, from cache or tfds."""
    spec = get_spec(name)
    path = cache_path(spec.name, image_size, max_examples)
    if os.path.exists(path):
        try:
            return _read_cache(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"dataset cache {path} is corrupted ({err}); rebuilding it", stacklevel=2)
    raw = {split: _convert_split(spec.name, tfds_split, image_size, max_examples) for split, tfds_split in SPLIT_MAP.items()}
    _write_cache(path, raw)
    return raw


def _convert_split(name: str, tfds_split: str, image_size: int | None, max_examples: int | None) -> dict:
    source = _open_source(name, tfds_split)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    images = np.empty((n, *get_spec(name).shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):  # one index at a time: works for every data source, mocked ones included
        example = source[i]
        images[i] = np.asarray(example["image"], np.uint8).reshape(images.shape[1:])
        labels[i] = int(example["label"])
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        images = resize_images(images, image_size)
    return {"image": images, "label": labels}


def _open_source(name: str, tfds_split: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=tfds_split, download=not os.environ.get("LOPT_NO_DOWNLOAD"))
    except Exception as err:  # tfds raises many types here; all mean "not available"
        where = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DatasetError(
            f"dataset {name!r} is not available offline (looked in {where}; {type(err).__name__}: {reason}). "
            f"Get it by running once with internet access (it is downloaded, prepared and cached), "
            f"or point TFDS_DATA_DIR at a directory where {name} is already prepared in ArrayRecord format."
        ) from None


def _read_cache(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {
            split: {"image": f[f"{split}_image"].astype(np.uint8), "label": f[f"{split}_label"].astype(np.int32)}
            for split in SPLIT_MAP
        }


def _write_cache(path: str, raw: dict) -> None:
    """Write atomically (temp file + rename) so an interrupted run leaves no half file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"{split}_{field}": arr for split, d in raw.items() for field, arr in d.items()}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
