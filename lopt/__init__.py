"""lopt: learned optimizers in JAX, usable as drop-in optax optimizers.

    import lopt, optax
    opt = lopt.load("my_optimizer.safetensors")     # or lopt.pretrained("default")
    tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax(num_steps=10_000))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, value=loss)  # value= is optional

Architectures live in :mod:`lopt.architectures` (``get(name, **hparams)``);
the file format in :mod:`lopt.io`.
"""

from lopt.base import LearnedOptimizer, OptimizerError, OptState
from lopt.optax_export import as_optax
from lopt.trained import TrainedOptimizer, load
from lopt.pretrained import pretrained  # noqa: E402  (the function shadows the subpackage name)

__all__ = [
    "LearnedOptimizer",
    "OptState",
    "OptimizerError",
    "TrainedOptimizer",
    "as_optax",
    "load",
    "pretrained",
]
