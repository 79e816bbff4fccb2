"""The one interface every learned-optimizer architecture implements.

An architecture is a frozen dataclass whose fields are its (static)
hyperparameters: hidden sizes, momentum decays, output scales. Its weights,
the *meta-parameters*, are a plain pytree of float32 arrays returned by
:meth:`LearnedOptimizer.init_meta_params` and passed explicitly to every call,
so meta-training can perturb them (ES), differentiate through them
(backprop) or ``vmap`` over them.

Subclasses write two functions:

* :meth:`init_inner` -- per-parameter accumulators (momenta, second moments).
* :meth:`compute_update` -- the raw update and new accumulators, in float32.

The base class wraps them into :meth:`init` and :meth:`update`, which add what
every architecture needs and must not get wrong: the step counter, the planned
horizon, per-leaf update scales (used by the muP mode), casting back to each
parameter's dtype, and the non-finite guard (a step whose update is not finite
is skipped: parameters unchanged, accumulators unchanged, ``skipped`` +1).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

MetaParams = Any  # plain pytree of float32 arrays
Params = Any
Updates = Any


class OptimizerError(ValueError):
    """Bad optimizer input: unknown architecture, mismatched pytree, bad file."""


class OptState(NamedTuple):
    """State of a learned optimizer for one parameter pytree.

    Attributes:
      step: int32 scalar, number of updates applied so far.
      num_steps: int32 scalar, planned length of training (time features).
      skipped: int32 scalar, number of updates dropped by the non-finite guard.
      scales: pytree like params of float32 scalars multiplying each leaf's
        update (all ones unless a muP mode supplies per-layer scales).
      inner: architecture-specific accumulators (a pytree).
    """

    step: jax.Array
    num_steps: jax.Array
    skipped: jax.Array
    scales: Any
    inner: Any


def _check_same_structure(grads: Any, params: Any, scales: Any) -> None:
    """Fail with a readable message (at trace time) when the pytrees disagree."""
    expected = jax.tree.structure(scales)
    for what, tree in (("grads", grads), ("params", params)):
        got = jax.tree.structure(tree)
        if got != expected:
            raise OptimizerError(
                f"{what} pytree does not match the one the optimizer state was built for: "
                f"got {got}, expected {expected}"
            )


def tree_all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack(leaves))


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer(abc.ABC):
    """Base class of learned-optimizer architectures (see module docstring)."""

    arch: ClassVar[str] = "base"
    # Options a later meta-training stage may turn on while keeping every
    # trained tensor (metatrain's ``optimizer.init_from_partial``): they add
    # meta-parameters that start fresh, or use the same tensors differently
    # (small_fc's ``centered``), and never change a tensor's shape.
    extension_options: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------ subclass API
    @abc.abstractmethod
    def init_meta_params(self, key: jax.Array) -> MetaParams:
        """Fresh meta-parameters (a plain pytree of float32 arrays)."""

    @abc.abstractmethod
    def init_inner(self, meta_params: MetaParams, params: Params) -> Any:
        """Architecture-specific accumulators for ``params``."""

    @abc.abstractmethod
    def compute_update(
        self,
        meta_params: MetaParams,
        state: OptState,
        grads: Params,
        params: Params,
        loss: jax.Array,
    ) -> tuple[Updates, Any]:
        """Return (float32 updates shaped like params, new inner accumulators).

        ``state.step`` is the number of updates applied before this one;
        ``loss`` is a float32 scalar (zero when the caller passed none).
        """

    # ------------------------------------------------------------ concrete API
    def hparams(self) -> dict[str, Any]:
        """JSON-able hyperparameters: enough to rebuild this architecture."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def checked_update(
        self,
        meta_params: MetaParams,
        state: OptState,
        grads: Params,
        params: Params,
        loss: jax.Array,
    ) -> tuple[Updates, Any, jax.Array]:
        """:meth:`compute_update` times ``state.scales``, plus "all updates finite".

        Returns ``(scaled float32 updates, new inner, ok)``. Architectures may
        override it to compute the same three things more cheaply (``small_fc``
        checks one flat vector instead of one reduction per leaf); ``ok`` must be
        True exactly when every scaled update is finite.
        """
        raw, new_inner = self.compute_update(meta_params, state, grads, params, loss)
        raw = jax.tree.map(lambda u, s: u * s, raw, state.scales)
        return raw, new_inner, tree_all_finite(raw)

    def init(
        self,
        meta_params: MetaParams,
        params: Params,
        num_steps: int | jax.Array,
        update_scales: Any | None = None,
    ) -> OptState:
        """Optimizer state for ``params`` and a planned number of steps."""
        if update_scales is None:
            update_scales = jax.tree.map(lambda _: jnp.ones((), jnp.float32), params)
        else:
            update_scales = jax.tree.map(lambda s: jnp.asarray(s, jnp.float32), update_scales)
        return OptState(
            step=jnp.zeros((), jnp.int32),
            num_steps=jnp.asarray(num_steps, jnp.int32),
            skipped=jnp.zeros((), jnp.int32),
            scales=update_scales,
            inner=self.init_inner(meta_params, params),
        )

    def update(
        self,
        meta_params: MetaParams,
        state: OptState,
        grads: Params,
        params: Params,
        loss: jax.Array | float | None = None,
    ) -> tuple[Updates, OptState]:
        """One optimizer step: ``params + updates`` are the new parameters."""
        _check_same_structure(grads, params, state.scales)
        loss = jnp.zeros((), jnp.float32) if loss is None else jnp.asarray(loss, jnp.float32)
        grads32 = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
        params32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        raw, new_inner, ok = self.checked_update(meta_params, state, grads32, params32, loss)
        updates = jax.tree.map(
            lambda u, p: jnp.where(ok, u, jnp.zeros_like(u)).astype(jnp.asarray(p).dtype), raw, params
        )
        inner = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_inner, state.inner)
        new_state = state._replace(
            step=state.step + ok.astype(jnp.int32),
            skipped=state.skipped + (~ok).astype(jnp.int32),
            inner=inner,
        )
        return updates, new_state
