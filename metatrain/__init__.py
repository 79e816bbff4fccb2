"""Meta-training of learned optimizers: unroll engine, gradient estimators, training loop.

The public entry points are :func:`train` (config + output directory ->
``lopt.TrainedOptimizer``) and :func:`load_config`; the pure pieces live in
:mod:`lopt.metatrain.unroll` (vmapped inner trainings), :mod:`lopt.metatrain.estimators`
(ES, PES, full ES, backprop) and :mod:`lopt.metatrain.inner_loop` (train one task
with any optax optimizer); :mod:`lopt.metatrain.sharding` splits the tasks over all
devices and :mod:`lopt.metatrain.distributed` joins several hosts. Imports are lazy so that ``metatrain.inner_loop``
can be used without loading the trainer.
"""

from __future__ import annotations

from typing import Any


def train(config: Any, out_dir: Any, progress: bool | None = None) -> Any:
    """Meta-train per ``config`` (a TrainConfig or a YAML path) into ``out_dir``.

    Returns the ``lopt.TrainedOptimizer`` also written to ``out_dir/optimizer.safetensors``;
    see :func:`lopt.metatrain.trainer.train`.
    """
    from lopt.metatrain.config import TrainConfig
    from lopt.metatrain.config import load_config as _load
    from lopt.metatrain.trainer import train as _train

    if not isinstance(config, TrainConfig):
        config = _load(config)
    return _train(config, out_dir, progress=progress)


def load_config(path: Any = None, overrides: Any = ()) -> Any:
    """Read a YAML training config (see :func:`lopt.metatrain.config.load_config`)."""
    from lopt.metatrain.config import load_config as _load

    return _load(path, overrides)


__all__ = ["train", "load_config"]
