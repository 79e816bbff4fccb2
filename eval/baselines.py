"""The optimizers users would pick instead of a learned one, built the same way for every task.

Six built-in baselines, chosen with ``lopt eval --baselines`` (all by default):

* ``adam_default``: Adam at the suite's ``default_lr`` (1e-3), what a user
  types without thinking;
* ``adam_tuned``: Adam at a constant learning rate tuned per task;
* ``adamw_cosine``: AdamW (optax defaults, weight decay 1e-4) with a linear
  warm-up over the first 5% of the steps to a peak learning rate tuned per
  task, then cosine decay to 0 at the last step: what most users actually run;
* ``prodigy``, ``schedule_free_adamw``, ``dadapt_adamw``: the tuning-free
  optimizers of ``optax.contrib`` at their published defaults (no argument
  passed). Schedule-free AdamW trains at one sequence of parameters and is
  meant to be *used* at its averaged ones, so it is validated at
  ``optax.contrib.schedule_free_eval_params``.

Tuning (``adam_tuned``, ``adamw_cosine``) picks the learning rate of the
suite's log grid with the lowest best validation loss on the tuning seeds (see
:func:`lopt.eval.tuning.tune_lr`). The warm-up/cosine schedule depends on the
planned number of steps, so ``adamw_cosine`` is built per horizon; the other
five do not depend on it (which is why ``adam_tuned`` can be run longer than
the learned optimizer to measure speedups past 1).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax.numpy as jnp
import optax

from lopt.eval.errors import EvalError

ADAM_DEFAULT = "adam_default"
ADAM_TUNED = "adam_tuned"
ADAMW_COSINE = "adamw_cosine"
TUNING_FREE = ("prodigy", "schedule_free_adamw", "dadapt_adamw")
BUILTIN = (ADAM_DEFAULT, ADAM_TUNED, ADAMW_COSINE) + TUNING_FREE
TUNED = (ADAM_TUNED, ADAMW_COSINE)
WARMUP_FRACTION = 0.05

EvalParams = Callable[[Any, Any], Any]  # (opt_state, params) -> params to validate at


def warmup_cosine(peak_lr: Any, num_steps: int, warmup_fraction: float = WARMUP_FRACTION) -> optax.Schedule:
    """Linear warm-up from 0 over ``ceil(fraction * num_steps)`` steps to ``peak_lr``, cosine decay to 0 at ``num_steps``.

    Written out (rather than ``optax.warmup_cosine_decay_schedule``) so that
    ``peak_lr`` may be a traced array: the whole tuning grid is one program.
    """
    warmup = max(1, math.ceil(warmup_fraction * num_steps))
    decay = max(1, num_steps - warmup)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        rise = (t + 1.0) / warmup  # the first update already moves (step 0 at lr/warmup)
        progress = jnp.clip((t - warmup) / decay, 0.0, 1.0)
        fall = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return peak_lr * jnp.where(t < warmup, rise, fall)

    return schedule


def adamw_cosine(peak_lr: Any, num_steps: int) -> optax.GradientTransformation:
    return optax.adamw(warmup_cosine(peak_lr, num_steps))


def tuning_free(name: str) -> tuple[optax.GradientTransformation, EvalParams | None]:
    """A tuning-free optimizer of ``optax.contrib`` at its defaults, and where to validate it."""
    from optax import contrib

    if name == "schedule_free_adamw":
        return contrib.schedule_free_adamw(), lambda state, params: contrib.schedule_free_eval_params(state, params)
    if name in TUNING_FREE:
        return getattr(contrib, name)(), None
    raise EvalError(f"unknown tuning-free baseline {name!r}; valid: {', '.join(TUNING_FREE)}")


def parse_baselines(text: str | None) -> tuple[str, ...]:
    """``--baselines``: comma-separated built-in names, ``all`` (the default) or ``none``; order is kept canonical."""
    if text is None or text.strip() == "all":
        return BUILTIN
    if text.strip() == "none":
        return ()
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in BUILTIN:
            raise EvalError(f"unknown baseline {n!r}; valid baselines: {', '.join(BUILTIN)}, all, none")
    return tuple(b for b in BUILTIN if b in names)
