"""Quadratic bowls: the smallest task whose meta-gradient can be reasoned about.

``loss(x) = 0.5 * sum_i lambda_i * (x_i - t_i)^2`` with eigenvalues spread
log-uniformly between 1 and the condition number, and a target ``t`` that is
the origin plus Gaussian noise on the training split (noise-free on the
validation split). The condition number, the noise level and the init scale
are traced hyperparameters, so a whole family of bowls of one dimension can be
vmapped; the dimension is static structure.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lopt.tasks.base import Batch, Data, HParams, Params, Task, check_split, tree_hparams_like


@dataclasses.dataclass(frozen=True)
class Quadratic(Task):
    """A noisy, possibly ill-conditioned quadratic of fixed dimension.

    ``log10_cond_range`` / ``noise_range`` / ``init_scale_range`` give the
    family's distribution; the defaults (``condition``, ``noise``,
    ``init_scale``) define the fixed task.
    """

    dim: int = 10
    condition: float = 10.0
    noise: float = 0.0
    init_scale: float = 1.0
    log10_cond_range: tuple[float, float] = (0.0, 3.0)
    noise_range: tuple[float, float] = (0.0, 0.5)
    init_scale_range: tuple[float, float] = (0.3, 3.0)

    @property
    def name(self) -> str:
        return f"quadratic_{self.dim}"

    @property
    def loss_scale(self) -> float:
        # E[0.5 * sum lambda x^2] at init, with mean eigenvalue ~ cond / ln(cond).
        return float(0.5 * self.dim * self.init_scale**2 * max(1.0, self.condition / 2.0))

    def default_hparams(self) -> HParams:
        return tree_hparams_like(
            {"log10_cond": jnp.log10(self.condition), "noise": self.noise, "init_scale": self.init_scale}
        )

    def sample_hparams(self, key: jax.Array) -> HParams:
        k1, k2, k3 = jax.random.split(key, 3)
        lo, hi = self.log10_cond_range
        log_lo, log_hi = jnp.log(self.init_scale_range[0]), jnp.log(self.init_scale_range[1])
        return {
            "log10_cond": jax.random.uniform(k1, (), minval=lo, maxval=hi),
            "noise": jax.random.uniform(k2, (), minval=self.noise_range[0], maxval=self.noise_range[1]),
            "init_scale": jnp.exp(jax.random.uniform(k3, (), minval=log_lo, maxval=log_hi)),
        }

    def init(self, key: jax.Array, hparams: HParams | None = None) -> Params:
        hp = self._hp(hparams)
        return {"x": hp["init_scale"] * jax.random.normal(key, (self.dim,), jnp.float32)}

    def eigenvalues(self, hparams: HParams | None = None) -> jax.Array:
        hp = self._hp(hparams)
        frac = jnp.linspace(0.0, 1.0, self.dim, dtype=jnp.float32)
        return 10.0 ** (frac * hp["log10_cond"])

    def loss_and_aux(self, params: Params, batch: Batch, hparams: HParams | None = None):
        lam = self.eigenvalues(hparams)
        loss = 0.5 * jnp.sum(lam * (params["x"] - batch["target"]) ** 2)
        return loss, {}

    def load_data(self) -> Data:
        # Generated data: nothing to load; the splits only differ in noise.
        return {"train": {}, "valid": {}}

    def sample_batch(self, data: Data, key: jax.Array, split: str = "train", hparams: HParams | None = None) -> Batch:
        check_split(split)
        hp = self._hp(hparams)
        if split == "valid":
            return {"target": jnp.zeros((self.dim,), jnp.float32)}
        return {"target": hp["noise"] * jax.random.normal(key, (self.dim,), jnp.float32)}

    def describe(self) -> str:
        return f"quadratic bowl, dim {self.dim}, condition {self.condition:g}, noise {self.noise:g}"
