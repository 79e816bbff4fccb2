"""Task families: named distributions over tasks, for meta-training mixtures.

A family lists its *static* variants (shapes differ, so each variant is its
own compiled, vmapped group); *traced* hyperparameters inside a variant
(init scale, label noise, data fraction, condition number, noise) are drawn by
that variant's ``sample_hparams``. All variants here are small (hundreds to
tens of thousands of parameters) so a mixture meta-trains on a 2-core CPU.
Families whose name does not say otherwise use only offline data (digits,
generated data, standard-library text).
"""

from __future__ import annotations

from lopt.tasks.base import TaskFamily
from lopt.tasks.char_lm import CharTransformerLM
from lopt.tasks.cnn import ConvClassifier
from lopt.tasks.mlp import MLPClassifier
from lopt.tasks.quadratic import Quadratic
from lopt.tasks.regression import LinearRegression


def quadratic_family() -> TaskFamily:
    return TaskFamily(
        name="quadratic_family",
        tasks=tuple(Quadratic(dim=d) for d in (4, 16, 64)),
        description="quadratic bowls, dim 4/16/64 (static); condition 1-1e3, noise, init scale traced",
    )


def mlp_family() -> TaskFamily:
    archs = [((32,), "relu"), ((64,), "tanh"), ((32, 32), "relu"), ((16, 16, 16), "gelu"), ((128,), "silu"), ((64, 32), "elu")]
    return TaskFamily(
        name="mlp_family",
        tasks=tuple(MLPClassifier(hidden=h, activation=a) for h, a in archs),
        description="MLPs on 8x8 digits, depth 1-3, width 16-128, 5 activations; init scale, label noise, data subset traced",
    )


def digits_mlp_family() -> TaskFamily:
    variants = [((32,), "relu", None), ((64, 32), "tanh", None), ((32,), "gelu", 16), ((64,), "relu", 16)]
    return TaskFamily(
        name="digits_mlp_family",
        tasks=tuple(MLPClassifier(hidden=h, activation=a, image_size=s) for h, a, s in variants),
        description="MLPs on digits at 8x8 and 16x16; init scale, label noise, data subset traced",
    )


def cnn_family() -> TaskFamily:
    variants = [((8, 16), "relu"), ((16, 32), "relu"), ((8, 16), "tanh"), ((8, 8, 16), "gelu")]
    return TaskFamily(
        name="cnn_family",
        tasks=tuple(ConvClassifier(channels=c, activation=a) for c, a in variants),
        description="CNNs on 8x8 digits, 2-3 conv layers, 8-32 channels; init scale, label noise, data subset traced",
    )


def digits_cnn_family() -> TaskFamily:
    variants = [((8, 16), "relu", None), ((16, 16), "silu", None), ((8, 16, 32), "relu", 16), ((8, 16, 16), "tanh", 16)]
    return TaskFamily(
        name="digits_cnn_family",
        tasks=tuple(ConvClassifier(channels=c, activation=a, image_size=s) for c, a, s in variants),
        description="CNNs on digits at 8x8 and 16x16; init scale, label noise, data subset traced",
    )


def char_lm_family() -> TaskFamily:
    variants = [(1, 32, 32, 2), (2, 32, 32, 2), (1, 16, 64, 2), (2, 48, 16, 4)]  # layers, d_model, seq_len, heads
    return TaskFamily(
        name="char_lm_family",
        tasks=tuple(
            CharTransformerLM(num_layers=n, d_model=d, seq_len=t, num_heads=h) for n, d, t, h in variants
        ),
        description="char transformers on stdlib source, 1-2 layers, d 16-48, seq 16-64; init scale, data subset traced",
    )


def regression_family() -> TaskFamily:
    return TaskFamily(
        name="regression_family",
        tasks=(
            LinearRegression(dim=8, condition=1.0),
            LinearRegression(dim=32, condition=100.0),
            LinearRegression(dim=64, condition=1000.0),
            MLPClassifier(hidden=(), task_name="logistic_regression_digits"),
        ),
        description="linear least squares (dim 8-64, condition 1-1e3) and logistic regression on digits",
    )


def images16_family() -> TaskFamily:
    datasets = ("mnist", "fashion_mnist", "cifar10", "svhn_cropped")
    return TaskFamily(
        name="images16_family",
        tasks=tuple(ConvClassifier(dataset=d, image_size=16, channels=(8, 16, 32)) for d in datasets),
        description="CNNs on tfds images resized to 16x16 (needs the tfds data once)",
    )


# ---------------------------------------------------------------- users'-workload families (issue 14)
# Small members of the kinds in the `realistic` suite, each a few ms per step on 2 cores, so a
# meta-training mixture can include them. Static variants differ in shape; traced hparams as usual.
# No variant is exactly a task of the held_out or realistic suites (those stay unseen).


def transformer_lm_family() -> TaskFamily:
    from lopt.tasks.lm import TransformerLM

    variants = [(1, 32, 2, 16, 32), (2, 32, 2, 32, 8), (1, 64, 4, 16, 16), (2, 48, 4, 32, 8)]  # L, d, heads, seq, batch
    return TaskFamily(
        name="transformer_lm_family",
        tasks=tuple(
            TransformerLM(num_layers=n, d_model=d, num_heads=h, seq_len=t, batch_size=b, valid_tokens=4096)
            for n, d, h, t, b in variants
        ),
        description="pre-LN char transformers on stdlib source, 1-2 layers, d 32-64; contiguous valid tail",
    )


def resmlp_family() -> TaskFamily:
    from lopt.tasks.resnets import ResidualMLP

    variants = [(32, 2, "relu", None), (64, 1, "relu", 256), (48, 3, "gelu", 512), (64, 2, "silu", None)]
    return TaskFamily(
        name="resmlp_family",
        tasks=tuple(
            ResidualMLP(width=w, num_blocks=n, activation=a, train_examples=sub) for w, n, a, sub in variants
        ),
        description="residual MLPs + LayerNorm on 8x8 digits, 1-3 blocks, width 32-64, some on 256/512-example subsets",
    )


def conv1d_family() -> TaskFamily:
    from lopt.tasks.conv1d import SequenceConvClassifier
    from lopt.tasks.lm import ConvLM

    return TaskFamily(
        name="conv1d_family",
        tasks=(
            SequenceConvClassifier(channels=(16, 32), batch_size=64),
            SequenceConvClassifier(channels=(8, 16, 16), kernel=3, activation="gelu", batch_size=64),
            ConvLM(num_layers=2, d_model=32, seq_len=32, batch_size=16, valid_tokens=4096),
        ),
        description="1-D CNNs: classifiers over the 64-pixel digit sequence and a small causal conv char LM",
    )


def rescnn_family() -> TaskFamily:
    from lopt.tasks.resnets import ResidualCNN

    return TaskFamily(
        name="rescnn_family",
        tasks=(
            ResidualCNN(channels=(8, 16), batch_size=64),
            ResidualCNN(channels=(16,), batch_size=64, activation="silu", train_examples=512),
            ResidualCNN(channels=(8, 16), batch_size=32, blocks_per_stage=2),
        ),
        description="residual CNNs + LayerNorm on 8x8 digits, 1-2 stages, 8-16 channels, batch 32-64",
    )
