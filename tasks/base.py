"""The task contract every part of lopt relies on.

A *task* is an inner problem a learned optimizer trains on. It is split in two:

* **static structure** lives in the fields of a frozen dataclass that subclasses
  :class:`Task` (widths, depth, activation, dataset name, image size). Changing
  it changes shapes, so it is a Python-level choice and a new compile.
* **traced hyperparameters** (``hparams``: init scale, label noise, data subset,
  ...) are a flat ``dict[str, jax.Array]`` of scalars drawn by
  :meth:`Task.sample_hparams`. Because they are arrays, one jitted function can
  be ``vmap``-ed over many sampled tasks of the same structure.

Everything is pure: ``init``, ``loss`` and ``sample_batch`` take explicit keys
and explicit data, hold no state, and work under ``jit``, ``vmap`` and
``lax.scan``. Data is loaded once on the host by :meth:`Task.load_data` into a
pytree of device arrays ``{"train": {...}, "valid": {...}}`` and then passed
*as an argument* to jitted code (never closed over, so it is not baked into the
compiled program as a constant).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays
HParams = dict[str, jax.Array]  # flat dict of traced scalars
Batch = dict[str, jax.Array]
Data = dict[str, dict[str, jax.Array]]  # split -> field -> array

SPLITS = ("train", "valid")


class TaskError(ValueError):
    """A task was asked for something it cannot do (bad name, bad split, ...)."""


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
    """Base class of every task. Subclasses are frozen dataclasses.

    Subclasses implement :meth:`init`, :meth:`loss_and_aux`, :meth:`load_data`
    and :meth:`sample_batch`; they may override :meth:`default_hparams` and
    :meth:`sample_hparams` to expose traced hyperparameters.

    ``loss_scale`` is the loss normalizer: a typical loss value at
    initialization (``log(num_classes)`` for classification, the initial value
    for quadratics). Meta-training divides by it so that tasks with different
    loss scales can be averaged into one meta-loss.

    ``loss_floor`` is a lower bound on the expected training loss under the
    default hyperparameters: no optimizer can get below it except by sampling
    noise of the minibatches. It is 0 unless a task knows better (least
    squares knows its exact minimum). Evaluation uses it to say which tasks
    can still be *won* against a baseline that already sits at the floor.
    """

    VALID_CHUNK_ROWS = 512  # rows per chunk of whole-split validation (a class constant, not a field)

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Registry-style name of this concrete task, e.g. ``mlp_digits``."""

    @property
    def loss_scale(self) -> float:
        return 1.0

    @property
    def loss_floor(self) -> float:
        return 0.0

    # ----------------------------------------------------------- hparams
    def default_hparams(self) -> HParams:
        """The traced hyperparameters of the un-perturbed task (may be empty)."""
        return {}

    def sample_hparams(self, key: jax.Array) -> HParams:
        """Draw traced hyperparameters for one member of this task's family.

        Must return the same keys, shapes and dtypes as :meth:`default_hparams`
        so that sampled and default tasks share one compiled program.
        """
        del key
        return self.default_hparams()

    # ----------------------------------------------------------- model
    @abc.abstractmethod
    def init(self, key: jax.Array, hparams: HParams | None = None) -> Params:
        """Fresh parameters for this task."""

    @abc.abstractmethod
    def loss_and_aux(
        self, params: Params, batch: Batch, hparams: HParams | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar loss plus auxiliary scalar metrics (``accuracy``, ...)."""

    def loss(self, params: Params, batch: Batch, hparams: HParams | None = None) -> jax.Array:
        """Scalar training loss (the first element of :meth:`loss_and_aux`)."""
        return self.loss_and_aux(params, batch, hparams)[0]

    # ----------------------------------------------------------- data
    @abc.abstractmethod
    def load_data(self) -> Data:
        """Load (host side, once) the arrays this task samples batches from.

        Returns ``{"train": {...}, "valid": {...}}`` of device arrays. Tasks
        whose data is generated (quadratics) return their sampling constants.
        """

    @abc.abstractmethod
    def sample_batch(
        self, data: Data, key: jax.Array, split: str = "train", hparams: HParams | None = None
    ) -> Batch:
        """Sample one batch inside jit from ``data[split]`` (``split`` is static)."""

    def valid_loss_full(
        self, params: Params, data: Data, hparams: HParams | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Loss and aux metrics on the *whole* validation split (jittable, memory bounded).

        Why not sampled batches: a validation loss that decides early stopping,
        tuning and speedups must not carry its own sampling noise, and must be
        measured on the same examples for every optimizer. Row-structured
        splits (every field has the same leading axis, and a batch is a set of
        rows, as :func:`lopt.tasks.sampling.take_rows` makes) are walked in
        chunks of at most ``VALID_CHUNK_ROWS`` rows by :func:`mean_over_rows`.
        A task without validation arrays (generated data) has a deterministic
        validation batch, which is the whole split. Tasks whose split is not
        rows (a token stream) override this.
        """
        rows = data["valid"]
        if not rows:
            return self.loss_and_aux(params, self.sample_batch(data, jax.random.PRNGKey(0), "valid", hparams), hparams)
        return mean_over_rows(lambda batch: self.loss_and_aux(params, batch, hparams), rows, self.VALID_CHUNK_ROWS)

    # ----------------------------------------------------------- helpers
    def _hp(self, hparams: HParams | None) -> HParams:
        return self.default_hparams() if hparams is None else hparams

    def num_params(self) -> int:
        """Number of scalar parameters (computed by shape evaluation, no FLOPs)."""
        shapes = jax.eval_shape(self.init, jax.random.PRNGKey(0))
        return int(sum(_size(s.shape) for s in jax.tree.leaves(shapes)))

    def describe(self) -> str:
        """One line for ``lopt tasks``: what data and model this task is."""
        return self.__class__.__name__

    def data_summary(self) -> str:
        """Short name of the data for ``lopt tasks`` (e.g. ``digits 8x8x1``)."""
        return "generated"


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def mean_over_rows(fn, rows: dict[str, jax.Array], chunk: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Row-weighted mean of ``fn(batch) -> (loss, aux)`` over all rows, ``chunk`` rows at a time.

    ``fn`` returns means over its batch, so the whole-split mean is the
    chunk means weighted by chunk sizes: full chunks go through one
    ``lax.map`` (one chunk's activations live at a time), the remainder is one
    smaller batch. Exact for any row count, no padding, no masking.
    """
    n = int(jax.tree.leaves(rows)[0].shape[0])
    full, rem = divmod(n, chunk) if n > chunk else (0, n)
    parts, weights = [], []
    if full:
        stacked = jax.tree.map(lambda a: a[: full * chunk].reshape(full, chunk, *a.shape[1:]), rows)
        loss, aux = jax.lax.map(fn, stacked)
        parts.append((jnp.sum(loss), jax.tree.map(jnp.sum, aux)))
        weights.append(float(chunk))
    if rem:
        loss, aux = fn(jax.tree.map(lambda a: a[full * chunk:], rows))
        parts.append((loss, aux))
        weights.append(float(rem))
    total_loss = sum(w * l for w, (l, _) in zip(weights, parts)) / n
    total_aux = jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs)) / n, *[a for _, a in parts])
    return total_loss, total_aux


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """A named distribution over tasks.

    ``tasks`` are the static variants (each a different shape, so each is its
    own vmapped group during meta-training); ``weights`` say how many of the
    vmapped slots each variant gets relative to the others. Traced
    hyperparameters inside each variant are drawn by the variant's own
    :meth:`Task.sample_hparams`.
    """

    name: str
    tasks: tuple[Task, ...]
    weights: tuple[float, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise TaskError(f"task family {self.name!r} has no tasks")
        if self.weights is not None and len(self.weights) != len(self.tasks):
            raise TaskError(
                f"task family {self.name!r}: {len(self.weights)} weights for {len(self.tasks)} tasks"
            )

    def normalized_weights(self) -> tuple[float, ...]:
        w = self.weights or tuple(1.0 for _ in self.tasks)
        total = float(sum(w))
        return tuple(float(x) / total for x in w)


def tree_hparams_like(hparams: Mapping[str, Any]) -> HParams:
    """Cast a mapping of Python scalars into float32 arrays (for default_hparams)."""
    return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in hparams.items()}
