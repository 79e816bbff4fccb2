"""Hand-fused kernels for the deployed optimizer, and the rule that picks them.

``as_optax(..., kernel=...)`` chooses how a learned optimizer's update runs:

* ``"xla"``: the architecture's JAX code, compiled by XLA (every platform,
  shardable, differentiable, vmappable);
* ``"cpu"``: a hand-fused C++ kernel (:mod:`lopt.kernels.normed_fc_cpu`), for
  ``normed_fc`` on CPU; an :class:`~lopt.base.OptimizerError` says why when it
  cannot run;
* ``"pallas"``: a Pallas kernel (:mod:`lopt.kernels.normed_fc_pallas`) of
  ``normed_fc``'s one-pass update (``tensor_stats="previous"``, the shipped
  ``default``), compiled for GPUs by Pallas's Triton backend and interpreted
  elsewhere (correct but slow: for tests). Like the CPU kernel it is a custom
  call, which XLA does not partition: use it with parameters on one device.
  ``"auto"`` does not pick it yet: its speed on a GPU has not been measured
  (BENCHMARKS.md);
* ``"auto"`` (the default): the kernel where it pays and is safe, else XLA.
  That is: the architecture is one the kernel implements, JAX runs on a single
  CPU device (so parameters cannot be sharded: a custom call does not
  partition, and XLA would gather every shard onto each device), the model has
  at least :data:`AUTO_MIN_PARAMS` parameters (below that the forward and
  backward pass dominate the step and the XLA program is as good), and the
  kernel builds on this machine (a C++ compiler; see :mod:`lopt.kernels.build`).

The kernels need a newer JAX than the package (``jax.ffi``: 0.5; Pallas's Triton
load and store: 0.8). On an older one ``"auto"`` warns and keeps XLA, and an
explicit choice is an :class:`~lopt.base.OptimizerError` naming the version.

Every implementation computes the same rule; they agree to float32 rounding,
not bit for bit (tests/test_kernels.py, tests/test_kernel_pallas.py). The kernels have no derivative: pass
``kernel="xla"`` to differentiate through the update itself. Meta-training's
unrolls call the architecture's own update, so meta-gradients always go through
the XLA code. The choice is made when the update is
traced, from the parameters' sizes and the platform, so it is the same on
every step and every run on one machine.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax

from lopt.base import OptimizerError

KERNELS = ("auto", "xla", "cpu", "pallas")
AUTO_MIN_PARAMS = 1 << 20  # "auto" uses a kernel on models of at least this many parameters


def check_kernel(kernel: Any) -> str:
    """``kernel`` if it names an implementation, else an :class:`OptimizerError`."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise OptimizerError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def _num_params(params: Any) -> int:
    return sum(int(getattr(x, "size", 1)) for x in jax.tree.leaves(params))


def fused_update(kernel: str, arch: Any, params: Any) -> Callable | None:
    """The kernel update ``kernel`` picks for ``arch`` on ``params``, or None for the architecture's XLA update.

    The returned function takes ``(arch, meta_params, state, grads, params, loss)`` and returns what
    ``arch.update(meta_params, state, grads, params, loss)`` does: ``(updates, new_state)``.
    """
    if kernel == "pallas":
        from lopt.kernels import normed_fc_pallas

        why = normed_fc_pallas.unsupported(arch)
        if why:
            raise OptimizerError(f"kernel='pallas': {why}")
        return normed_fc_pallas.update
    if use_cpu_kernel(kernel, arch, params):
        from lopt.kernels import normed_fc_cpu

        return normed_fc_cpu.update
    return None


def use_cpu_kernel(kernel: str, arch: Any, params: Any) -> bool:
    """Whether this update of ``arch`` on ``params`` runs through the fused CPU kernel (see the module docstring)."""
    if kernel in ("xla", "pallas"):
        return False
    from lopt.kernels import build, normed_fc_cpu

    why = normed_fc_cpu.unsupported(arch)
    if kernel == "cpu":
        if why:
            raise OptimizerError(f"kernel='cpu': {why}")
        if jax.default_backend() != "cpu":
            raise OptimizerError(f"kernel='cpu' runs on CPU only; JAX's default backend is {jax.default_backend()!r}")
        try:
            build.load(normed_fc_cpu.NAME)
        except build.KernelUnavailable as e:
            raise OptimizerError(f"kernel='cpu' is not available here: {e}") from e
        return True
    if why or jax.default_backend() != "cpu" or jax.device_count() != 1 or _num_params(params) < AUTO_MIN_PARAMS:
        return False
    try:
        build.load(normed_fc_cpu.NAME)
    except build.KernelUnavailable as e:
        warnings.warn(f"lopt: using the XLA implementation of {arch.arch}'s update: the fused CPU kernel is "
                      f"not available ({e})", RuntimeWarning, stacklevel=3)
        return False
    return True
