"""Image classification datasets as plain arrays, loaded once on the host.

Every dataset comes back in one layout, whatever its source::

    {"train": {"image": float32[N, H, W, C], "label": int32[N]},
     "valid": {"image": float32[M, H, W, C], "label": int32[M]}}

Images are scaled to [0, 1] and then standardized per channel with the
*training* split's mean and standard deviation (so the validation split sees
exactly the transform the model was trained under). Training rows are
shuffled once with a fixed seed, so a prefix of them is a random subset (that
is how the traced ``data_fraction`` hyperparameter restricts the data).

Sources:

* ``digits`` (the offline default): scikit-learn's bundled 1,797 real 8x8
  handwritten digits, split deterministically into 1,437 train / 360 valid.
  Needs no network, ever.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``:
  through ``tfds.data_source`` (no TensorFlow), converted once and cached as
  ``.npz`` (see :mod:`lopt.tasks.tfds_source`). Their ``test`` split is our
  ``valid`` split.

``image_size=None`` keeps the native resolution; an integer resizes to that
square size (bilinear, antialiased when shrinking), e.g. 16 for the 16x16
variants of every dataset.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from lopt.tasks.base import TaskError

SHUFFLE_SEED = 0
DIGITS_NUM_VALID = 360


class DatasetError(TaskError):
    """A dataset is unknown, unavailable offline, or its cache is unreadable."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset, known without loading it (for shapes and listings)."""

    name: str
    shape: tuple[int, int, int]  # native (H, W, C)
    num_classes: int
    source: str  # "sklearn" or "tfds"
    description: str

    def image_shape(self, image_size: int | None) -> tuple[int, int, int]:
        """(H, W, C) after resizing to ``image_size`` (``None`` = native)."""
        if image_size is None:
            return self.shape
        return (image_size, image_size, self.shape[2])


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", (8, 8, 1), 10, "sklearn", "scikit-learn digits, 8x8 gray, offline"),
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, "tfds", "MNIST, 28x28 gray"),
    "fashion_mnist": DatasetSpec("fashion_mnist", (28, 28, 1), 10, "tfds", "Fashion-MNIST, 28x28 gray"),
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 10, "tfds", "CIFAR-10, 32x32 color"),
    "cifar100": DatasetSpec("cifar100", (32, 32, 3), 100, "tfds", "CIFAR-100, 32x32 color"),
    "svhn_cropped": DatasetSpec("svhn_cropped", (32, 32, 3), 10, "tfds", "SVHN cropped digits, 32x32 color"),
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; unknown names list the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid datasets: {', '.join(dataset_names())}") from None


def load_images(name: str, image_size: int | None = None, max_examples: int | None = None) -> dict:
    """Load dataset ``name`` as normalized float32 host arrays (layout in the module doc).

    ``max_examples`` caps the rows converted per split (tests, quick looks).
    Results are memoized per argument tuple and returned read-only, so many
    tasks over the same data share one copy.
    """
    spec = get_spec(name)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size must be a positive int or None, got {image_size!r}")
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise DatasetError(f"max_examples must be a positive int or None, got {max_examples!r}")
    return _load_images_cached(spec.name, image_size, max_examples)


@functools.lru_cache(maxsize=16)
def _load_images_cached(name: str, image_size: int | None, max_examples: int | None) -> dict:
    spec = DATASETS[name]
    if spec.source == "sklearn":
        raw = _digits_raw()
    else:
        from lopt.tasks import tfds_source  # imported lazily: listing tasks must not import tfds

        raw = tfds_source.load_raw(name, image_size=image_size, max_examples=max_examples)
    if max_examples is not None:
        raw = {s: {k: v[:max_examples] for k, v in d.items()} for s, d in raw.items()}
    out = _finish(raw, image_size, spec.shape)
    for split in out.values():
        for arr in split.values():
            arr.flags.writeable = False
    return out


def clear_cache() -> None:
    """Forget memoized datasets (e.g. after changing ``$LOPT_CACHE`` or ``TFDS_DATA_DIR``)."""
    _load_images_cached.cache_clear()


def _digits_raw() -> dict:
    """sklearn digits as uint8-valued [0, 255] arrays, split deterministically."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(labels))
    valid_idx, train_idx = perm[:DIGITS_NUM_VALID], perm[DIGITS_NUM_VALID:]
    return {
        "train": {"image": images[train_idx], "label": labels[train_idx]},
        "valid": {"image": images[valid_idx], "label": labels[valid_idx]},
    }


def _finish(raw: dict, image_size: int | None, native: tuple[int, int, int]) -> dict:
    """Resize (if needed), scale to [0, 1], standardize with train statistics, shuffle train."""
    splits = {}
    for split in ("train", "valid"):
        images = raw[split]["image"]
        if image_size is not None and images.shape[1:3] != (image_size, image_size):
            images = resize_images(images, image_size)
        splits[split] = {"image": images.astype(np.float32) / 255.0, "label": raw[split]["label"].astype(np.int32)}
    train = splits["train"]["image"]
    mean = train.mean(axis=(0, 1, 2), keepdims=True)
    std = train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
    for split in splits.values():
        split["image"] = ((split["image"] - mean) / std).astype(np.float32)
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(splits["train"]["label"]))
    splits["train"] = {k: v[perm] for k, v in splits["train"].items()}
    return splits


def resize_images(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Resize uint8 [N, H, W, C] images to [N, size, size, C] uint8 (bilinear, antialiased).

    Done in chunks with ``jax.image.resize`` so that 50,000 CIFAR images never
    need more than a few hundred MB of float32 at once.
    """
    import jax
    import jax.numpy as jnp

    n, _, _, c = images.shape
    resize = jax.jit(lambda x: jax.image.resize(x, (x.shape[0], size, size, c), "linear", antialias=True))
    out = np.empty((n, size, size, c), np.uint8)
    for start in range(0, n, chunk):
        block = jnp.asarray(images[start : start + chunk], jnp.float32)
        out[start : start + chunk] = np.clip(np.rint(np.asarray(resize(block))), 0, 255).astype(np.uint8)
    return out
