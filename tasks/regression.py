"""Linear least-squares regression on a fixed synthetic data set.

Features are Gaussian with per-feature scales spread log-uniformly up to
``sqrt(condition)``, so the Hessian of the loss has condition number about
``condition``; targets are a fixed random linear function plus noise. The data
is generated once from ``seed`` with NumPy (deterministic, no download) and
held on device like any other data set.

Traced hyperparameters: ``init_scale`` (initial weight scale), ``data_fraction``
(prefix of the training rows batches come from) and ``target_noise`` (extra
Gaussian noise added to training targets, keyed per batch).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks import sampling
from lopt.tasks.base import Batch, Data, HParams, Params, Task, check_split, tree_hparams_like
from lopt.tasks.supervised import log_uniform


@dataclasses.dataclass(frozen=True)
class LinearRegression(Task):
    dim: int = 16
    condition: float = 10.0
    num_train: int = 1024
    num_valid: int = 256
    batch_size: int = 64
    seed: int = 0
    init_scale_range: tuple[float, float] = (0.3, 3.0)
    data_fraction_range: tuple[float, float] = (0.1, 1.0)
    target_noise_range: tuple[float, float] = (0.0, 0.5)
    task_name: str = ""

    @property
    def name(self) -> str:
        return self.task_name or f"linear_regression_{self.dim}"

    @property
    def loss_scale(self) -> float:
        # 0.5 * E[y^2] with unit-variance targets: the loss of predicting zero.
        return 0.5

    def data_summary(self) -> str:
        return f"synthetic {self.num_train}x{self.dim}"

    def describe(self) -> str:
        return f"linear least squares, dim {self.dim}, condition {self.condition:g}, batch {self.batch_size}"

    def default_hparams(self) -> HParams:
        return tree_hparams_like({"init_scale": 1.0, "data_fraction": 1.0, "target_noise": 0.0})

    def sample_hparams(self, key: jax.Array) -> HParams:
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "init_scale": log_uniform(k1, *self.init_scale_range),
            "data_fraction": jax.random.uniform(k2, (), jnp.float32, *self.data_fraction_range),
            "target_noise": jax.random.uniform(k3, (), jnp.float32, *self.target_noise_range),
        }

    def init(self, key: jax.Array, hparams: HParams | None = None) -> Params:
        scale = self._hp(hparams)["init_scale"]
        w = jax.random.normal(key, (self.dim,), jnp.float32) * scale / math.sqrt(self.dim)
        return {"w": w, "b": jnp.zeros((), jnp.float32)}

    def loss_and_aux(self, params: Params, batch: Batch, hparams: HParams | None = None):
        pred = batch["x"] @ params["w"] + params["b"]
        mse = jnp.mean(jnp.square(pred - batch["y"]))
        return 0.5 * mse, {"mse": mse}

    @property
    def loss_floor(self) -> float:
        """The exact least-squares minimum of the training loss (default hyperparameters).

        The targets carry noise, so this is well above 0 (about 0.004 for
        ``linear_regression_ill``): a baseline that reaches it cannot be beaten.
        """
        x, y = self._numpy_data()
        x, y = x[: self.num_train].astype(np.float64), y[: self.num_train].astype(np.float64)
        design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        return float(0.5 * np.mean(np.square(design @ coef - y)))

    def _numpy_data(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows (training first), float32, generated deterministically from ``seed``."""
        rng = np.random.default_rng(self.seed)
        n = self.num_train + self.num_valid
        scales = np.exp(np.linspace(0.0, 0.5 * math.log(self.condition), self.dim))
        x = rng.standard_normal((n, self.dim)) * scales
        w_true = rng.standard_normal(self.dim) / (scales * math.sqrt(self.dim))
        y = x @ w_true + 0.1 * rng.standard_normal(n)
        y = y / y.std()
        return x.astype(np.float32), y.astype(np.float32)

    def load_data(self) -> Data:
        x, y = self._numpy_data()
        t = self.num_train
        return {
            "train": {"x": jnp.asarray(x[:t]), "y": jnp.asarray(y[:t])},
            "valid": {"x": jnp.asarray(x[t:]), "y": jnp.asarray(y[t:])},
        }

    def sample_batch(self, data: Data, key: jax.Array, split: str = "train", hparams: HParams | None = None) -> Batch:
        check_split(split)
        rows = data[split]["y"].shape[0]
        if split == "valid":
            return sampling.take_rows(data[split], sampling.sample_indices(key, rows, self.batch_size))
        hp = self._hp(hparams)
        k_idx, k_noise = jax.random.split(key)
        batch = sampling.take_rows(data[split], sampling.sample_indices(k_idx, rows, self.batch_size, hp["data_fraction"]))
        batch["y"] = batch["y"] + hp["target_noise"] * jax.random.normal(k_noise, batch["y"].shape, jnp.float32)
        return batch
