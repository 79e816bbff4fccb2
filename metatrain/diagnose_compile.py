"""How ``lopt diagnose`` compiles: cheaper XLA:CPU settings, and a prediction of backprop's compile time.

A diagnose run is dominated by compiling its programs, which then run only
briefly, so it trades a little run time for much less compile time; and it
predicts, from one cheap compile, whether the backprop programs would compile
within the run's budget before paying for them. The measurements behind each
number are in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax

# XLA:CPU options of diagnose's programs. Each program runs for seconds to a few minutes, so
# compiling it is most of a run's cost (XLA's default LLVM -O3 and its new fusion emitters took
# 35-60 s per program on the 2-core CPU). Measured per program on `reference` and `smoke`
# (BENCHMARKS.md): LLVM -O1 without the fusion emitters compiles an estimator step 4-10x faster
# and runs it at most ~1.5x slower (full_es's whole episodes: same speed); -O0 compiles faster
# still but runs 3-7x slower. The full-episode backprop reference runs longest (20+ s a sample)
# and keeps the fusion emitters: -O1 with them compiled it fastest and ran it fastest.
# Outputs match the default compile to float rounding: max relative difference 1e-7 on backprop
# gradients, 1e-5 (pes) to 2e-4 (full_es: 2,000-step loss differences) on ES estimates.
CHEAP_COMPILE = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
REFERENCE_COMPILE = {"xla_backend_optimization_level": 1}


class CompileTime(NamedTuple):
    """One compile's cost: wall-clock seconds, and CPU seconds of this process (all its threads)."""

    wall: float
    cpu: float


class _Jit:
    """``jax.jit(fun, **kw)`` with ``compiler_options`` applied on the CPU backend only.

    Resolved at first use (importing this module must not start a backend);
    other backends get XLA's defaults (the options are XLA:CPU's).
    """

    def __init__(self, fun, options: dict, **kw):
        self.fun, self.options, self.kw = fun, options, kw
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        opts = self.options if jax.default_backend() == "cpu" else None
        return jax.jit(self.fun, compiler_options=opts, **self.kw)

    def __call__(self, *args):
        return self.jitted(*args)

    def lower(self, *args):
        return self.jitted.lower(*args)


def jit_with(options: dict, **kw):
    """Decorator: :class:`_Jit` of the function with these XLA:CPU ``options``."""
    return lambda fun: _Jit(fun, options, **kw)


# The full-episode backprop reference's trace + compile time over that of one forward truncation
# of the same groups (backprop's burn-in program, :func:`lopt.metatrain.diagnose_core.forward_compile_seconds`), measured with
# the compile options above on smoke, default and reference: 5.8, 6.8, 5.6 (BENCHMARKS.md). The
# prediction decides, before paying for it, whether the exact reference compiles within budget.
REFERENCE_COMPILE_RATIO = 6.0
# The same for a truncated-backprop estimator step (a VJP through one truncation): 5.6, 5.7, 4.4.
BACKPROP_STEP_COMPILE_RATIO = 5.0
