"""The v14 round's variants of the shipped v13: one prior hyperparameter or the learned decay changed, tensors kept.

    python docs/recipe_results/default_v14/make_variants.py OUT_DIR
"""

import dataclasses
import math
import sys
from pathlib import Path

import jax.numpy as jnp

import lopt

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
out.mkdir(parents=True, exist_ok=True)
v13 = lopt.pretrained("default_v13")


def save(name, arch=None, wd_factor=1.0):
    mp = dict(v13.meta_params)
    if wd_factor != 1.0:  # the learned decoupled decay, scaled (0: off)
        mp["log_wd"] = jnp.asarray(mp["log_wd"] + (math.log(wd_factor) if wd_factor > 0 else -30.0), jnp.float32)
    lopt.TrainedOptimizer(arch or v13.arch, mp, v13.metadata).save(out / f"{name}.safetensors")


save("lr05", dataclasses.replace(v13.arch, learning_rate=0.05))  # peak sqrt(0.05 D): 0.71x v13's
save("lr025", dataclasses.replace(v13.arch, learning_rate=0.025))  # peak sqrt(0.025 D): 0.5x
save("exp075", dataclasses.replace(v13.arch, distance_exponent=0.75))
save("wd0", wd_factor=0.0)
save("wd3", wd_factor=3.0)
save("wd03", wd_factor=0.3)
save("lr05_wd141", dataclasses.replace(v13.arch, learning_rate=0.05), wd_factor=2 ** 0.5)  # same decay per step
save("lr025_wd2", dataclasses.replace(v13.arch, learning_rate=0.025), wd_factor=2.0)
# The second round (rule_lr_horizon.md): the gradient step of runs planned longer than 3,000 steps scaled down.
save("lrh05", dataclasses.replace(v13.arch, lr_horizon=3000, lr_horizon_exponent=0.5))
save("lrh1", dataclasses.replace(v13.arch, lr_horizon=3000, lr_horizon_exponent=1.0))
# The third round (rule_relative_step.md): each matrix's and kernel's step scaled by (rms(p) / 0.125)**k.
save("rel05", dataclasses.replace(v13.arch, relative_step_exponent=0.5))
save("rel1", dataclasses.replace(v13.arch, relative_step_exponent=1.0))
# The fourth round (rule_relative_step_initial.md): the same, from each tensor's RMS at initialization.
save("rel05i", dataclasses.replace(v13.arch, relative_step_exponent=0.5, relative_step_rms="initial"))
save("rel1i", dataclasses.replace(v13.arch, relative_step_exponent=1.0, relative_step_rms="initial"))
# The fifth round (rule_relative_step_quarter.md): a quarter power of the initial RMS.
save("rel025i", dataclasses.replace(v13.arch, relative_step_exponent=0.25, relative_step_rms="initial"))
# Placebos (placebo.py, rule_calibrated.md): v13 with its arithmetic nudged at float32 rounding.
save("placebo", dataclasses.replace(v13.arch, relative_step_exponent=1e-5, relative_step_rms="initial"))
save("placebo2", dataclasses.replace(v13.arch, relative_step_exponent=3e-5, relative_step_rms="initial"))
