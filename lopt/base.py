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
parameter's dtype, input checks (pytree structure, leaf shapes against each
other and against the state, floating dtypes) and the non-finite guard.

The guard: a step is skipped (parameters unchanged, accumulators unchanged,
``skipped`` +1) when any update *or any new accumulator* is not finite. Checking
the updates alone is not enough: a huge but finite gradient (1e20) squares to
inf in a float32 second moment, the normalized update then comes out 0 rather
than NaN, and that parameter would never move again.

How the accumulators are checked is what the guard costs. Reading every new
accumulator back (a reduction each) and then choosing between new and old (a
masked write each) tripled the optimizer's memory traffic on CPU, where XLA
does not fuse several outputs into one loop. So an architecture names, in
``moment_keys``, the accumulators that are moving averages of the gradient and
of its square (or of row/column means of the square). Those stay finite
whenever the old ones are finite and every gradient element is at most
``MAX_GRADIENT`` in magnitude (its square, summed over any row, fits in
float32), so for them the guard checks the gradients instead: one reduction
over each gradient leaf. An architecture that also recomputes them in
:meth:`LearnedOptimizer.commit_inner` folds the choice between new and old
into the loop that writes the new value, so the guard adds no pass over them.
Every other accumulator is checked exactly.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import typing
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def _leaf_name(path: Any) -> str:
    return jax.tree_util.keystr(path) or "(the root)"


def _check_leaves(grads: Any, params: Any) -> None:
    """Same shapes, floating dtypes: broadcasting or silent casts would corrupt training.

    A (1,) gradient against a (3,) parameter would broadcast into the update and
    change the parameter's shape; an integer parameter would be truncated after
    every update; a complex one would lose its imaginary part.
    """
    g_leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    p_leaves = jax.tree.leaves(params)
    for (path, g), p in zip(g_leaves, p_leaves):
        for what, x in (("params", p), ("grads", g)):
            dtype = jnp.result_type(x)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise OptimizerError(
                    f"{what} leaf {_leaf_name(path)} has dtype {dtype}: learned optimizers update real floating-point "
                    "parameters only (keep other leaves out of the optimized pytree, e.g. with optax.masked)"
                )
        if jnp.shape(g) != jnp.shape(p):
            raise OptimizerError(
                f"grads leaf {_leaf_name(path)} has shape {tuple(jnp.shape(g))} but the parameter has shape "
                f"{tuple(jnp.shape(p))}"
            )


def _check_state_shapes(expected: Any, inner: Any) -> None:
    """The state's accumulators must be the ones ``init`` makes for these params."""
    # Leaves, not tree structures: containers may differ (flax nnx wraps the state in its own nodes).
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got_leaves = jax.tree.leaves(inner)
    if len(want) != len(got_leaves):
        raise OptimizerError("optimizer state does not match these params: call tx.init(params) for this pytree")
    for (path, w), g in zip(want, got_leaves):
        if tuple(w.shape) != tuple(jnp.shape(g)):
            raise OptimizerError(
                f"params shapes do not match the ones the optimizer state was built for: accumulator "
                f"{_leaf_name(path)} is {tuple(jnp.shape(g))}, these params need {tuple(w.shape)} "
                "(call tx.init(params) again after changing shapes)"
            )


INT32_MAX = 2**31 - 1


def check_num_steps(num_steps: Any) -> None:
    """A planned run length that fits the int32 step counter (arrays, e.g. traced ones, pass)."""
    if isinstance(num_steps, bool):
        raise OptimizerError(f"num_steps must be a positive integer (the planned run length), got {num_steps!r}")
    if isinstance(num_steps, (int, np.integer)) and not 1 <= int(num_steps) <= INT32_MAX:
        raise OptimizerError(
            f"num_steps must be between 1 and {INT32_MAX} (the step counter is int32), got {int(num_steps)}"
        )


def _hparam_problem(value: Any, tp: Any) -> str | None:
    """What a hyperparameter value should have been, or None if it fits ``tp``."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if tp is bool:
        return None if isinstance(value, bool) else "true/false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if tp is float:
        return None if number(value) and math.isfinite(value) else "a finite number"
    if tp is str:
        return None if isinstance(value, str) else "a string"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if not isinstance(value, (list, tuple)):
            return "a list"
        if item is not None and any(_hparam_problem(v, item) for v in value):
            return f"a list of {_hparam_problem(None, item) or item}s"
    return None


def check_hparams(cls: type, hparams: Mapping[str, Any]) -> None:
    """Type-check architecture hyperparameters against ``cls``'s dataclass fields.

    A string or a list where a float is meant would otherwise fail deep inside
    JAX (a TypeError at trace time) or, worse, be silently accepted; a
    non-finite float would poison every update. Unknown names are left to the
    caller (it lists the valid ones).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name, value in hparams.items():
        if name in names and (want := _hparam_problem(value, hints.get(name))) is not None:
            raise OptimizerError(f"{getattr(cls, 'arch', cls.__name__)} hyperparameter {name}: expected {want}, got {value!r}")


# Largest gradient magnitude the guard accepts: its square (1e30), summed over up
# to 3e8 elements (a row mean of squares), still fits in float32 (max 3.4e38).
MAX_GRADIENT = 1e15


def tree_max_abs(tree: Any) -> jax.Array:
    """Largest ``|x|`` over every element of every leaf (0 for none), one reduction per leaf.

    NaN propagates through ``max``, so a NaN anywhere makes the result NaN.
    """
    maxes = [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree) if jnp.size(x)]
    return jnp.max(jnp.stack(maxes)) if maxes else jnp.zeros((), jnp.float32)


def gradients_bounded(grads: Any) -> jax.Array:
    """True when every gradient element is finite and at most ``MAX_GRADIENT`` in magnitude.

    NaN fails the comparison, so NaN and inf are caught by the same test.
    """
    return tree_max_abs(grads) <= MAX_GRADIENT


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every floating leaf is finite, with ONE fused reduction per leaf.

    ``sum(x - x)`` is 0 when ``x`` is finite and NaN as soon as one element is
    inf or NaN (``inf - inf`` is NaN). It compiles to a single reduction that
    reads ``x`` once, while ``all(isfinite(x))`` writes a boolean array the
    size of ``x`` first, and ``sum(x * 0)`` makes XLA's CPU reduction kernels
    write out an array of zeros the size of ``x``. Integer leaves are always
    finite and are not read.
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    sums = [jnp.sum(x - x) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not sums:
        return jnp.asarray(True)
    return jnp.isfinite(sum(sums[1:], sums[0]))


def scaled_updates_finite(raw: Any, scales: Any) -> jax.Array:
    """True when every ``u * s`` (``raw`` leaf times its scalar scale) is finite, without forming ``u * s``.

    ``max|u| * |s|`` is finite exactly when every product is (it is the largest
    of them; NaN propagates through ``max``), so the check reads each update
    once and the scaled update is only ever formed inside the loop that
    applies it.
    """
    bounds = [jnp.max(jnp.abs(u)) * jnp.abs(s) for u, s in zip(jax.tree.leaves(raw), jax.tree.leaves(scales))
              if jnp.size(u)]
    if not bounds:
        return jnp.asarray(True)
    return jnp.isfinite(jnp.max(jnp.stack(bounds)))


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer(abc.ABC):
    """Base class of learned-optimizer architectures (see module docstring)."""

    arch: ClassVar[str] = "base"
    # Options a later meta-training stage may turn on while keeping every
    # trained tensor (metatrain's ``optimizer.init_from_partial``): they add
    # meta-parameters that start fresh, or use the same tensors differently
    # (small_fc's ``centered``), and never change a tensor's shape.
    extension_options: ClassVar[tuple[str, ...]] = ()
    # Keys of ``init_inner``'s dict that hold moving averages of the gradient or
    # of its square: the guard checks the gradients for them, not the new values
    # (see the module docstring). Anything not named here is checked exactly.
    moment_keys: ClassVar[tuple[str, ...]] = ()

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
        ok = scaled_updates_finite(raw, state.scales)
        return jax.tree.map(lambda u, s: u * s, raw, state.scales), new_inner, ok

    def commit_inner(self, meta_params: MetaParams, state: OptState, grads: Params, new_inner: Any,
                     ok: jax.Array) -> Any:
        """The accumulators to keep: ``new_inner`` if ``ok``, else the old ones, exactly.

        Architectures may override it to recompute their moving averages here
        with the choice folded into the same loop (see ``normed_fc``): on CPU,
        choosing between two materialized arrays is a whole extra pass over
        each accumulator.
        """
        del meta_params, grads
        return jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_inner, state.inner)

    def _accumulators_finite(self, grads: Params, new_inner: Any) -> jax.Array:
        """True when every new accumulator is finite (moments: through the gradients' bound)."""
        if not self.moment_keys:
            return tree_all_finite(new_inner)
        others = {k: v for k, v in new_inner.items() if k not in self.moment_keys}
        return self.moments_finite(grads) & tree_all_finite(others)

    def moments_finite(self, grads: Params) -> jax.Array:
        """True when these gradients keep the ``moment_keys`` accumulators finite (given finite old ones).

        Default: every element finite and at most ``MAX_GRADIENT``. An
        architecture that clips gradients before averaging them overrides it.
        """
        return gradients_bounded(grads)

    def init(
        self,
        meta_params: MetaParams,
        params: Params,
        num_steps: int | jax.Array,
        update_scales: Any | None = None,
    ) -> OptState:
        """Optimizer state for ``params`` and a planned number of steps."""
        check_num_steps(num_steps)
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

    def check_update_inputs(self, meta_params: MetaParams, state: OptState, grads: Params, params: Params) -> None:
        """Trace-time checks of an update's inputs (pytree structure, leaf shapes and dtypes, the state's
        shapes), each failing with an :class:`OptimizerError` that names the problem."""
        _check_same_structure(grads, params, state.scales)
        _check_leaves(grads, params)
        _check_state_shapes(jax.eval_shape(self.init_inner, meta_params, params), state.inner)

    def update(
        self,
        meta_params: MetaParams,
        state: OptState,
        grads: Params,
        params: Params,
        loss: jax.Array | float | None = None,
    ) -> tuple[Updates, OptState]:
        """One optimizer step: ``params + updates`` are the new parameters.

        Skipped (zero updates, old accumulators, ``skipped`` +1) when any
        update or new accumulator is not finite; see the module docstring.
        """
        self.check_update_inputs(meta_params, state, grads, params)
        loss = jnp.zeros((), jnp.float32) if loss is None else jnp.asarray(loss, jnp.float32)
        grads32 = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
        params32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        raw, new_inner, ok = self.checked_update(meta_params, state, grads32, params32, loss)
        ok = ok & self._accumulators_finite(grads32, new_inner)
        updates = jax.tree.map(
            lambda u, p: jnp.where(ok, u, jnp.zeros_like(u)).astype(jnp.asarray(p).dtype), raw, params
        )
        inner = self.commit_inner(meta_params, state, grads32, new_inner, ok)
        new_state = state._replace(
            step=state.step + ok.astype(jnp.int32),
            skipped=state.skipped + (~ok).astype(jnp.int32),
            inner=inner,
        )
        return updates, new_state
