"""Image classification tasks, and the few-lines way to define your own.

:class:`ClassificationTask` does everything but the model: it loads the data
(:mod:`lopt.tasks.datasets`), samples batches inside ``jit`` (:mod:`lopt.tasks.sampling`),
computes softmax cross-entropy and accuracy, and exposes three traced
hyperparameters so that a family of tasks shares one compiled program:

* ``init_scale``: every initial parameter is multiplied by it;
* ``label_noise``: probability that a training label is replaced by a random class;
* ``data_fraction``: fraction of the training split that batches are drawn from.

The validation split is never noised or sub-sampled, and evaluation scores all
of it (:meth:`Task.valid_loss_full` walks its rows in chunks). ``loss_scale`` is
``log(num_classes)``, the loss of a uniform prediction.

A subclass only adds ``init_model(key) -> params`` and ``apply(params, images)
-> logits``. Without subclassing, :class:`SimpleClassificationTask` takes the
two functions directly. Define your own task in a few lines::

    import jax, jax.numpy as jnp
    from lopt.tasks.supervised import SimpleClassificationTask

    def init(key):                       # a softmax regression on 8x8 digits
        return {"w": 0.1 * jax.random.normal(key, (64, 10)), "b": jnp.zeros(10)}

    def apply(params, images):           # images: float32[batch, 8, 8, 1]
        return images.reshape(images.shape[0], -1) @ params["w"] + params["b"]

    task = SimpleClassificationTask("my_softmax", init, apply, dataset="digits", batch_size=64)
    data = task.load_data()                                   # {"train": ..., "valid": ...} on device
    params = task.init(jax.random.PRNGKey(0))
    batch = task.sample_batch(data, jax.random.PRNGKey(1))    # works inside jit / lax.scan
    loss, aux = task.loss_and_aux(params, batch)              # aux["accuracy"]

Use ``image_size=16`` for a resized variant and any name from
:func:`lopt.tasks.datasets.dataset_names` as ``dataset``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from lopt.tasks import sampling
from lopt.tasks.base import Batch, Data, HParams, Params, Task, TaskError, check_split, tree_hparams_like
from lopt.tasks.datasets import get_spec, load_images


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of integer ``labels`` under ``logits`` (last axis = classes)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def log_uniform(key: jax.Array, lo: float, hi: float) -> jax.Array:
    """A scalar drawn log-uniformly from [lo, hi] (lo, hi > 0)."""
    return jnp.exp(jax.random.uniform(key, (), jnp.float32, math.log(lo), math.log(hi)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassificationTask(Task):
    """Classification on one image dataset; subclasses supply the model.

    Fields are static structure (a change means a new compile). The ``*_range``
    fields give the distribution :meth:`sample_hparams` draws from.
    """

    dataset: str = "digits"
    image_size: int | None = None  # None = native resolution
    batch_size: int = 128
    max_examples: int | None = None  # cap rows per split (tests, quick looks)
    train_examples: int | None = None  # keep only the first N (shuffled) training rows: a small set over-fits
    init_scale_range: tuple[float, float] = (0.5, 2.0)
    label_noise_range: tuple[float, float] = (0.0, 0.2)
    data_fraction_range: tuple[float, float] = (0.1, 1.0)

    def __post_init__(self) -> None:
        get_spec(self.dataset)  # unknown dataset -> DatasetError listing valid names
        if self.batch_size < 1:
            raise TaskError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.train_examples is not None and self.train_examples < 1:
            raise TaskError(f"train_examples must be >= 1 or None, got {self.train_examples}")

    # ------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def init_model(self, key: jax.Array) -> Params:
        """Parameters at the default scale (``init_scale`` = 1)."""

    @abc.abstractmethod
    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        """Logits ``[batch, num_classes]`` for images ``[batch, H, W, C]``."""

    # ------------------------------------------------------------- static facts
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return get_spec(self.dataset).image_shape(self.image_size)

    @property
    def num_classes(self) -> int:
        return get_spec(self.dataset).num_classes

    @property
    def loss_scale(self) -> float:
        return math.log(self.num_classes)

    def data_summary(self) -> str:
        h, w, c = self.input_shape
        return f"{self.dataset} {h}x{w}x{c}"

    # ------------------------------------------------------------- hparams
    def default_hparams(self) -> HParams:
        return tree_hparams_like({"init_scale": 1.0, "label_noise": 0.0, "data_fraction": 1.0})

    def sample_hparams(self, key: jax.Array) -> HParams:
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "init_scale": log_uniform(k1, *self.init_scale_range),
            "label_noise": jax.random.uniform(k2, (), jnp.float32, *self.label_noise_range),
            "data_fraction": jax.random.uniform(k3, (), jnp.float32, *self.data_fraction_range),
        }

    # ------------------------------------------------------------- Task API
    def init(self, key: jax.Array, hparams: HParams | None = None) -> Params:
        scale = self._hp(hparams)["init_scale"]
        return jax.tree.map(lambda p: p * scale.astype(p.dtype), self.init_model(key))

    def loss_and_aux(self, params: Params, batch: Batch, hparams: HParams | None = None):
        logits = self.apply(params, batch["image"])
        loss = softmax_cross_entropy(logits, batch["label"])
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32))
        return loss, {"accuracy": accuracy}

    def load_data(self) -> Data:
        host = load_images(self.dataset, self.image_size, self.max_examples)
        if self.train_examples is not None:  # train rows are shuffled at load time: a prefix is a random subset
            host = {**host, "train": {k: v[: self.train_examples] for k, v in host["train"].items()}}
        return jax.tree.map(jnp.asarray, host)

    def sample_batch(self, data: Data, key: jax.Array, split: str = "train", hparams: HParams | None = None) -> Batch:
        check_split(split)
        split_data = data[split]
        num_rows = split_data["label"].shape[0]
        if split == "valid":
            return sampling.take_rows(split_data, sampling.sample_indices(key, num_rows, self.batch_size))
        hp = self._hp(hparams)
        k_idx, k_noise = jax.random.split(key)
        idx = sampling.sample_indices(k_idx, num_rows, self.batch_size, hp["data_fraction"])
        batch = sampling.take_rows(split_data, idx)
        batch["label"] = sampling.noisy_labels(k_noise, batch["label"], self.num_classes, hp["label_noise"])
        return batch


@dataclasses.dataclass(frozen=True)
class SimpleClassificationTask(ClassificationTask):
    """A classification task from two plain functions (see the module docstring).

    ``init_fn(key) -> params`` and ``apply_fn(params, images) -> logits``.
    Both must be pure; they are compared by identity, so define them once at
    module level rather than as fresh lambdas per call.
    """

    task_name: str
    init_fn: Callable[[jax.Array], Params]
    apply_fn: Callable[[Params, jax.Array], jax.Array]

    @property
    def name(self) -> str:
        return self.task_name

    def init_model(self, key: jax.Array) -> Params:
        return self.init_fn(key)

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        return self.apply_fn(params, images)

    def describe(self) -> str:
        return f"user-defined classifier on {self.data_summary()}"
