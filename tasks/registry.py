"""Every task and task family lopt knows, by name.

The registry is two plain tables of ``name -> factory``: a factory is a
zero-argument function that builds the (cheap, frozen) task object. Nothing is
loaded when this module is imported; data is only read when a caller asks a
task for it with ``task.load_data()``. Entries whose data column says a tfds
dataset need it prepared once (see :mod:`lopt.tasks.tfds_source`); all others work
offline.

To add an entry, add one line, e.g.::

    TASKS["mlp_digits_tiny"] = lambda: MLPClassifier(hidden=(8,), task_name="mlp_digits_tiny")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from lopt.tasks import families as fam
from lopt.tasks.base import Task, TaskError, TaskFamily
from lopt.tasks.char_lm import CharTransformerLM
from lopt.tasks.cnn import ConvClassifier
from lopt.tasks.conv1d import SequenceConvClassifier
from lopt.tasks.lm import ConvLM, TransformerLM
from lopt.tasks.mlp import MLPClassifier
from lopt.tasks.mup import MupMLP, MupTransformer, mup_mlp_family, mup_transformer_family
from lopt.tasks.quadratic import Quadratic
from lopt.tasks.regression import LinearRegression
from lopt.tasks.resnets import ResidualCNN, ResidualMLP

TASKS: dict[str, Callable[[], Task]] = {
    # generated data
    "quadratic": lambda: Quadratic(),
    "quadratic_ill": lambda: Quadratic(dim=50, condition=1000.0),
    "linear_regression": lambda: LinearRegression(task_name="linear_regression"),
    "linear_regression_ill": lambda: LinearRegression(dim=32, condition=1000.0, task_name="linear_regression_ill"),
    # 8x8 digits (offline)
    "logistic_regression_digits": lambda: MLPClassifier(hidden=(), task_name="logistic_regression_digits"),
    "mlp_digits": lambda: MLPClassifier(task_name="mlp_digits"),  # the reference 64-32-10 ReLU, batch 128
    "mlp_digits_deep": lambda: MLPClassifier(hidden=(32, 32, 32), task_name="mlp_digits_deep"),
    "mlp_digits_wide": lambda: MLPClassifier(hidden=(128,), task_name="mlp_digits_wide"),
    "mlp_digits_tanh": lambda: MLPClassifier(activation="tanh", task_name="mlp_digits_tanh"),
    "mlp_digits_gelu": lambda: MLPClassifier(hidden=(32, 32), activation="gelu", task_name="mlp_digits_gelu"),
    "cnn_digits": lambda: ConvClassifier(task_name="cnn_digits"),
    # 16x16 digits (offline, upsampled)
    "mlp_digits16": lambda: MLPClassifier(image_size=16, task_name="mlp_digits16"),
    "cnn_digits16": lambda: ConvClassifier(image_size=16, channels=(8, 16, 32), task_name="cnn_digits16"),
    # standard-library source text (offline)
    "char_lm": lambda: CharTransformerLM(task_name="char_lm"),
    "char_lm_small": lambda: CharTransformerLM(num_layers=1, d_model=16, task_name="char_lm_small"),
    # tfds images (prepared once, then cached): native resolution and 16x16
    "mlp_mnist": lambda: MLPClassifier(dataset="mnist", hidden=(128,), task_name="mlp_mnist"),
    "mlp_mnist16": lambda: MLPClassifier(dataset="mnist", image_size=16, task_name="mlp_mnist16"),
    "mlp_fashion_mnist": lambda: MLPClassifier(dataset="fashion_mnist", hidden=(128,), task_name="mlp_fashion_mnist"),
    "cnn_fashion_mnist16": lambda: _cnn16("fashion_mnist", "cnn_fashion_mnist16"),
    "cnn_cifar10": lambda: ConvClassifier(dataset="cifar10", channels=(16, 32, 32), task_name="cnn_cifar10"),
    "cnn_cifar10_16": lambda: _cnn16("cifar10", "cnn_cifar10_16"),
    "cnn_cifar100": lambda: ConvClassifier(dataset="cifar100", channels=(16, 32, 64), task_name="cnn_cifar100"),
    "cnn_svhn": lambda: ConvClassifier(dataset="svhn_cropped", channels=(16, 32, 32), task_name="cnn_svhn"),
    "cnn_svhn16": lambda: _cnn16("svhn_cropped", "cnn_svhn16"),
    # muP and standard-param (sp_) twins, width 128, base 32 (tasks/mup.py); overrides: {mup: false} works too
    "mup_mlp_digits": lambda: MupMLP(width=128, task_name="mup_mlp_digits"),
    "sp_mlp_digits": lambda: MupMLP(width=128, mup=False, task_name="sp_mlp_digits"),
    "mup_char_lm": lambda: MupTransformer(d_model=128, num_layers=1, task_name="mup_char_lm"),
    # workloads shaped like users' models (offline; issue 14): pre-LN transformer LMs whose validation split is
    # a contiguous held-out tail of the text, residual nets with LayerNorm on small training subsets (they
    # over-fit, so validation loss decides), 1-D CNNs, and a cheap task for 20,000+-step runs
    "transformer_lm_tiny": lambda: TransformerLM(
        num_layers=1, d_model=32, num_heads=2, seq_len=32, batch_size=16, valid_tokens=4096, task_name="transformer_lm_tiny"
    ),
    "transformer_lm_small": lambda: TransformerLM(
        num_layers=2, d_model=64, num_heads=4, seq_len=32, batch_size=8, valid_tokens=4096, task_name="transformer_lm_small"
    ),
    "transformer_lm_medium": lambda: TransformerLM(
        num_layers=3, d_model=128, num_heads=4, seq_len=32, batch_size=4, valid_tokens=2048, task_name="transformer_lm_medium"
    ),
    "conv_lm": lambda: ConvLM(num_layers=3, d_model=32, kernel=3, seq_len=32, batch_size=8, valid_tokens=4096, task_name="conv_lm"),
    "resmlp_digits": lambda: ResidualMLP(width=128, num_blocks=3, train_examples=256, batch_size=64, task_name="resmlp_digits"),
    "resmlp_digits16": lambda: ResidualMLP(
        image_size=16, width=96, num_blocks=2, train_examples=512, batch_size=64, task_name="resmlp_digits16"
    ),
    "resmlp_digits_small": lambda: ResidualMLP(width=32, num_blocks=2, task_name="resmlp_digits_small"),
    "conv1d_digits_seq": lambda: SequenceConvClassifier(batch_size=64, task_name="conv1d_digits_seq"),
    "conv1d_digits16_seq": lambda: SequenceConvClassifier(
        image_size=16, train_examples=512, batch_size=32, task_name="conv1d_digits16_seq"
    ),
    "rescnn_digits": lambda: ResidualCNN(channels=(8, 16), batch_size=32, task_name="rescnn_digits"),
    "rescnn_digits16": lambda: ResidualCNN(
        image_size=16, channels=(8, 16), train_examples=512, batch_size=32, task_name="rescnn_digits16"
    ),
}

FAMILIES: dict[str, Callable[[], TaskFamily]] = {
    "quadratic_family": fam.quadratic_family,
    "regression_family": fam.regression_family,
    "mlp_family": fam.mlp_family,
    "digits_mlp_family": fam.digits_mlp_family,
    "cnn_family": fam.cnn_family,
    "digits_cnn_family": fam.digits_cnn_family,
    "char_lm_family": fam.char_lm_family,
    "images16_family": fam.images16_family,
    "mup_mlp_family": mup_mlp_family,
    "sp_mlp_family": lambda: mup_mlp_family(mup=False),
    "mup_char_lm_family": mup_transformer_family,
    "transformer_lm_family": fam.transformer_lm_family,
    "resmlp_family": fam.resmlp_family,
    "conv1d_family": fam.conv1d_family,
    "rescnn_family": fam.rescnn_family,
}


def _cnn16(dataset: str, name: str) -> ConvClassifier:
    return ConvClassifier(dataset=dataset, image_size=16, channels=(8, 16, 32), task_name=name)


def task_names() -> list[str]:
    return sorted(TASKS)


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_task(name: str) -> Task:
    """The registered task called ``name``; unknown names list the valid ones."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}") from None
    return factory()


def get_family(name: str) -> TaskFamily:
    """The registered task family called ``name``; unknown names list the valid ones."""
    try:
        factory = FAMILIES[name]
    except KeyError:
        raise TaskError(f"unknown task family {name!r}; valid families: {', '.join(family_names())}") from None
    return factory()


def with_overrides(task: Task, overrides: Mapping[str, Any], where: str) -> Task:
    """``task`` with some fields of its frozen dataclass replaced (lists become tuples).

    Used by evaluation suites and by training mixtures alike, so a variant (a
    batch size, an activation) is written the same way in both. Errors start
    with ``where`` and name the bad field and the valid ones.
    """
    if not overrides:
        return task
    fields = {f.name for f in dataclasses.fields(task)}
    for key in overrides:
        if key not in fields:
            raise TaskError(f"{where}: unknown override {key!r}; fields of {type(task).__name__}: {', '.join(sorted(fields))}")
    frozen = {str(k): tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(task, **frozen)
    except (TypeError, ValueError) as err:
        raise TaskError(f"{where}: bad overrides ({err})") from None
