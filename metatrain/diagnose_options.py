"""Options of ``lopt diagnose`` and its ``--sweep`` keys (light: the CLI parser imports this).

Sweeps may only change how the objective is *estimated* (truncation length,
stagger, perturbation std, sign-ES, non-finite handling): a key that changes
the objective itself (episode lengths, meta-loss, tasks) would need a
different reference, so it is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
from typing import Any



def _error(message: str) -> Exception:
    """A ConfigError (imported late: it pulls in jax, and this module must stay light)."""
    from lopt.metatrain.config import ConfigError

    return ConfigError(message)


KINDS = ("es", "pes", "full_es", "backprop")  # the keys of lopt.metatrain.estimators.ESTIMATORS (tested)

# sweep key -> (where it lives, field, type); aliases share an entry
SWEEP_KEYS: dict[str, tuple[str, str, type]] = {
    "truncation_length": ("unroller", "truncation_length", int),
    "unroll.truncation_length": ("unroller", "truncation_length", int),
    "unroll.stagger": ("unroller", "stagger", bool),
    "std": ("settings", "std", float),
    "estimator.std": ("settings", "std", float),
    "estimator.sign": ("settings", "sign", bool),
    "estimator.nonfinite": ("settings", "nonfinite", str),
}
# which estimators a swept field applies to
_APPLIES = {
    "truncation_length": ("pes", "es", "backprop"),
    "stagger": ("pes", "es", "backprop"),
    "std": ("pes", "es", "full_es"),
    "sign": ("full_es",),
    "nonfinite": ("pes", "es", "full_es", "backprop"),
}


@dataclasses.dataclass(frozen=True)
class DiagnoseOptions:
    """How much to sample. Defaults aim at ~5 minutes on a 2-core CPU for the shipped configs (BENCHMARKS.md)."""

    estimators: tuple[str, ...] = ("pes", "es", "full_es", "backprop")
    target_cosine: float = 0.5
    samples: int = 24  # consecutive estimates per chain (pes, es, backprop), after the burn-in
    chains: int = 2
    full_es_samples: int = 6
    # auto: exact backprop where it fits, else the subspace reference; es: full-dimensional antithetic ES
    reference: str = "auto"  # auto | backprop | subspace | es
    reference_samples: int = 4  # exact full-episode gradients (each over all the config's tasks)
    reference_es_samples: int = 64  # antithetic pairs when the reference is ES
    # random directions of the subspace reference (diagnose_subspace): each costs one antithetic pair of
    # whole episodes per reference sample; |reference|^2 measured through k of them is off by ~sqrt(2 / k)
    subspace_dims: int = 16
    max_memory_gb: float = 0.0  # backprop reference budget; 0 = half the available memory
    chunk: int = 0  # steps per checkpointed chunk of the reference; 0 = ~sqrt(episode)
    # The expensive samplers (the reference and full_es: whole episodes each) stop early, at
    # no fewer than 2 samples, once their next sample would pass this many seconds of sampling
    # (compiles not counted): what keeps a 2,000-4,000-step config within minutes. 0 = no cap.
    sample_budget_s: float = 45.0
    # The backprop estimator's step is compiled only where its trace + compile is predicted (from one
    # forward truncation's compile x diagnose_core's measured ratios) within this many CPU seconds:
    # else it is reported as not measured (a 6-family mixture's did not compile in 13 minutes). 0 = no cap.
    compile_budget_s: float = 120.0
    # With reference=auto the exact backprop reference is drawn only where its compile is predicted
    # (the same way) within this many CPU seconds; else the subspace reference, which compiles in
    # ~3 forward truncations' time (on mup: 55 s against backprop's 144 s) but samples after the
    # estimators, so on mup the whole run took about as long either way (BENCHMARKS.md). 0 = no cap.
    reference_compile_budget_s: float = 120.0
    # Compile the estimators' programs on a second thread while the reference runs (on machines
    # with >= 2 cores; samples are unchanged, see diagnose_warm).
    background_compile: bool = True
    seed: int = 0
    sweeps: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    sweep_estimators: tuple[str, ...] = ()  # estimators the sweeps measure; () = all of ``estimators``

    def __post_init__(self) -> None:
        bad = [e for e in self.estimators + self.sweep_estimators if e not in KINDS]
        if bad or not self.estimators:
            raise _error(f"--estimators: unknown {bad[0] if bad else '(none)'!r}; valid: {', '.join(KINDS)}")
        if self.reference not in ("auto", "backprop", "subspace", "es"):
            raise _error(f"--reference {self.reference!r}; valid: auto, backprop, subspace, es")
        if not self.compile_budget_s >= 0.0:
            raise _error(f"--compile-budget-s must be >= 0 (0: no cap), got {self.compile_budget_s}")
        if not self.reference_compile_budget_s >= 0.0:
            raise _error("--reference-compile-budget-s must be >= 0 (0: no cap), "
                         f"got {self.reference_compile_budget_s}")
        if not self.sample_budget_s >= 0.0:
            raise _error(f"--sample-budget-s must be >= 0 (0: no cap), got {self.sample_budget_s}")
        if not 0.0 < self.target_cosine < 1.0:
            raise _error(f"--target-cosine must be in (0, 1), got {self.target_cosine}")
        for name in ("samples", "chains", "full_es_samples", "reference_samples", "reference_es_samples",
                     "subspace_dims"):
            least = 1 if name == "chains" else 2
            if getattr(self, name) < least:
                raise _error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(self, name)}")


def parse_sweep(item: str) -> tuple[str, tuple[Any, ...]]:
    """``key=v1,v2,...`` -> (key, typed values); a clear ConfigError otherwise."""
    import yaml

    if "=" not in item:
        raise _error(f"--sweep {item!r} is not key=v1,v2,...")
    key, text = (x.strip() for x in item.split("=", 1))
    if key not in SWEEP_KEYS:
        raise _error(
            f"--sweep {key!r} cannot be swept (it would change the meta-objective or is unknown); "
            f"valid: {', '.join(SWEEP_KEYS)}"
        )
    _, field, tp = SWEEP_KEYS[key]
    values = []
    for raw in text.split(","):
        v = yaml.safe_load(raw.strip()) if raw.strip() else None  # same parsing as --set
        if tp is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, tp) or isinstance(v, bool) != (tp is bool):
            raise _error(f"--sweep {key}: {raw.strip()!r} is not a valid {tp.__name__}")
        if field in ("truncation_length", "std") and not v > 0:
            raise _error(f"--sweep {key}: values must be > 0, got {v}")
        values.append(v)
    if not values:
        raise _error(f"--sweep {key}: no values")
    return key, tuple(values)


