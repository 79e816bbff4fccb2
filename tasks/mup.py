"""muP-parametrized MLP and transformer tasks: models whose good step sizes do not move with width.

Why: a learned optimizer meta-trained on small models sees only small
widths. Under the standard parametrization the right update size shrinks as
width grows, so the optimizer over-steps on wide models. Under the Maximal
Update Parametrization (muP) each layer's init and update are scaled with
width so that one set of step sizes is right at every width; a learned
optimizer that applies the muP update factors (``lopt/mup.py``) then
generalizes from width 32-128 to widths in the thousands (the muLO recipe).

All factors are *relative to a base width* (``width_mult = width /
base_width``), so at ``width == base_width`` a muP model is the standard model
with a zero-initialized readout. For a dense weight ``w`` of shape
``(fan_in, fan_out)``, with ``gain`` 2 for ReLU/GELU and 1 otherwise:

===============  =====================  ===================  ==================
layer            init                    forward multiplier   update factor
===============  =====================  ===================  ==================
input            N(0, gain / fan_in)     1                    1
embeddings       as the standard model   1                    1
hidden (both     N(0, gain / fan_in)     1                    base_fan_in / fan_in
dims ~ width)                                                 (= 1 / width_mult)
readout          zeros                   1 / width_mult       1
biases, norms    zeros / ones            1                    1
===============  =====================  ===================  ==================

The transformer additionally scales attention scores by
``sqrt(base_head_dim) / head_dim`` (1/d instead of 1/sqrt(d), equal to the
usual 1/sqrt(d) at the base width) and zero-initializes the query projection
(uniform attention at init, whatever the width). Number of heads is fixed, so
the head dimension grows with width.

The update factors are exposed by :meth:`mup_scales` (a pytree of Python
floats shaped like the params, for ``LearnedOptimizer.init(...,
update_scales=...)`` via :func:`lopt.mup.update_scales_for`). Which leaves are
"hidden" is decided the way muP defines it, not by name: a matrix whose fan-in
*and* fan-out both change between the base width and this width.

With ``mup=False`` the same classes build the standard parametrization (readout
initialized like any dense layer, no multiplier, 1/sqrt(d) attention) and
``mup_scales`` is all ones: the baseline of the muP comparison, with identical
shapes and data.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lopt.tasks import layers
from lopt.tasks.base import Params, TaskError, TaskFamily
from lopt.tasks.char_lm import CharTransformerLM
from lopt.tasks.supervised import ClassificationTask


def width_scales(shapes: Params, base_shapes: Params) -> Params:
    """Per-leaf muP update factor: ``base_fan_in / fan_in`` for hidden matrices, else 1.

    A leaf is a hidden matrix when it has rank >= 2 and both its last two dims
    (fan-in, fan-out) differ from the same leaf at the base width.
    """

    def one(s, b) -> float:
        s, b = tuple(s.shape), tuple(b.shape)
        if len(s) >= 2 and s[-2] != b[-2] and s[-1] != b[-1]:
            return float(b[-2]) / float(s[-2])
        return 1.0

    return jax.tree.map(one, shapes, base_shapes)


def _check_like(task_name: str, given: Params, expected: Params) -> None:
    """Raise a one-line TaskError unless ``given`` has the task's param structure and shapes."""
    if jax.tree.structure(given) != jax.tree.structure(expected):
        raise TaskError(f"{task_name}: mup_scales got a pytree that is not this task's parameters")
    for (path, g), e in zip(jax.tree_util.tree_flatten_with_path(given)[0], jax.tree.leaves(expected)):
        if tuple(jnp.shape(g)) != tuple(e.shape):
            name = jax.tree_util.keystr(path)
            raise TaskError(f"{task_name}: parameter {name} has shape {tuple(jnp.shape(g))}, expected {e.shape}")


class _MupMixin:
    """muP bookkeeping shared by both families (the width field is named by ``_width_field``)."""

    _width_field = "width"

    @property
    def width_mult(self) -> float:
        return getattr(self, self._width_field) / self.base_width

    @property
    def output_multiplier(self) -> float:
        """Factor on the readout's matmul: ``1 / width_mult`` in muP, 1 otherwise."""
        return 1.0 / self.width_mult if self.mup else 1.0

    def _check_mup_fields(self) -> None:
        width = getattr(self, self._width_field)
        for name, value in ((self._width_field, width), ("base_width", self.base_width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TaskError(f"{name} must be a positive integer, got {value!r}")

    def mup_scales(self, params_or_shapes: Params) -> Params:
        """Per-leaf update factors (Python floats) for these params; all ones unless ``mup``.

        Accepts arrays or ``jax.ShapeDtypeStruct`` leaves (e.g. from ``jax.eval_shape``).
        """
        key = jax.random.PRNGKey(0)
        expected = jax.eval_shape(self.init, key)
        _check_like(self.name, params_or_shapes, expected)
        if not self.mup:
            return jax.tree.map(lambda _: 1.0, expected)
        base = dataclasses.replace(self, **{self._width_field: self.base_width})
        return width_scales(expected, jax.eval_shape(base.init, key))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MupMLP(_MupMixin, ClassificationTask):
    """MLP classifier on flattened images: input -> ``num_hidden`` x (width -> width) -> readout.

    Params: ``{"input": dense, "hidden_0": dense, ..., "readout": dense}``
    (each ``{"w": (fan_in, fan_out), "b": (fan_out,)}``).
    """

    width: int = 128
    base_width: int = 32
    num_hidden: int = 1
    activation: str = "relu"
    mup: bool = True
    task_name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_mup_fields()
        layers.activation(self.activation)
        if not isinstance(self.num_hidden, int) or self.num_hidden < 0:
            raise TaskError(f"num_hidden must be a non-negative integer, got {self.num_hidden!r}")

    @property
    def name(self) -> str:
        return self.task_name or f"{'mup' if self.mup else 'sp'}_mlp_{self.dataset}_w{self.width}"

    def describe(self) -> str:
        kind = "muP" if self.mup else "standard-param"
        return (
            f"{kind} MLP, width {self.width} (base {self.base_width}), {self.num_hidden} hidden "
            f"{self.activation} layer(s), {self.data_summary()}, batch {self.batch_size}"
        )

    def init_model(self, key: jax.Array) -> Params:
        g = layers.gain(self.activation)
        keys = jax.random.split(key, self.num_hidden + 2)
        params = {"input": layers.dense_init(keys[0], math.prod(self.input_shape), self.width, g)}
        for i in range(self.num_hidden):
            params[f"hidden_{i}"] = layers.dense_init(keys[i + 1], self.width, self.width, g)
        if self.mup:
            params["readout"] = {
                "w": jnp.zeros((self.width, self.num_classes), jnp.float32),
                "b": jnp.zeros((self.num_classes,), jnp.float32),
            }
        else:
            params["readout"] = layers.dense_init(keys[-1], self.width, self.num_classes)
        return params

    def features(self, params: Params, images: jax.Array) -> jax.Array:
        """Activations of the last hidden layer (what the readout sees)."""
        act = layers.activation(self.activation)
        x = act(layers.dense(params["input"], images.reshape(images.shape[0], -1)))
        for i in range(self.num_hidden):
            x = act(layers.dense(params[f"hidden_{i}"], x))
        return x

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        r = params["readout"]
        return (self.features(params, images) @ r["w"]) * self.output_multiplier + r["b"]


@dataclasses.dataclass(frozen=True)
class MupTransformer(_MupMixin, CharTransformerLM):
    """The character transformer LM of :mod:`lopt.tasks.char_lm` in muP form; ``d_model`` is the width.

    Same params, data and traced hyperparameters as :class:`CharTransformerLM`;
    muP changes the readout (``head``: zeros, multiplier ``1/width_mult``), the
    query third of ``qkv`` (zeros) and the attention scale (module docstring).
    """

    _width_field = "d_model"

    base_width: int = 32
    mup: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_mup_fields()
        if self.base_width % self.num_heads:
            raise TaskError(f"base_width {self.base_width} is not divisible by num_heads {self.num_heads}")

    @property
    def name(self) -> str:
        kind = "mup" if self.mup else "sp"
        return self.task_name or f"{kind}_char_lm_{self.num_layers}x{self.d_model}_seq{self.seq_len}"

    def describe(self) -> str:
        if not self.mup:
            return "standard-param " + super().describe()
        return "muP " + super().describe() + f", base width {self.base_width}"

    def init(self, key, hparams=None) -> Params:
        params = super().init(key, hparams)
        if not self.mup:
            return params
        d = self.d_model
        params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
        for i in range(self.num_layers):
            qkv = params[f"block_{i}"]["qkv"]
            qkv["w"] = qkv["w"].at[:, :d].set(0.0)
        return params

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        if not self.mup:
            return super().apply(params, inputs)
        head = params["head"]
        body = {**params, "head": {"w": head["w"] * self.output_multiplier, "b": head["b"]}}
        return super().apply(body, inputs)

    @property
    def attention_scale(self) -> float:
        """Factor on q.k: ``sqrt(base_head_dim) / head_dim`` in muP, ``1/sqrt(head_dim)`` otherwise."""
        head_dim = self.d_model // self.num_heads
        if not self.mup:
            return 1.0 / math.sqrt(head_dim)
        return math.sqrt(self.base_width // self.num_heads) / head_dim

    def _attention(self, p: Params, x: jax.Array, mask: jax.Array) -> jax.Array:
        # The parent divides by sqrt(head_dim); rescale q so the product is attention_scale.
        head_dim = self.d_model // self.num_heads
        factor = self.attention_scale * math.sqrt(head_dim)
        d = self.d_model
        w = p["qkv"]["w"].at[:, :d].multiply(factor)
        b = p["qkv"]["b"].at[:d].multiply(factor)
        return super()._attention({**p, "qkv": {"w": w, "b": b}}, x, mask)


# ---------------------------------------------------------------- families
META_TRAIN_WIDTHS = (32, 64, 128)
LM_META_TRAIN_WIDTHS = (32, 128)  # two widths keep the transformer family cheap to compile


def mup_mlp_family(mup: bool = True) -> TaskFamily:
    kind = "mup" if mup else "sp"
    return TaskFamily(
        name=f"{kind}_mlp_family",
        tasks=tuple(MupMLP(width=w, mup=mup) for w in META_TRAIN_WIDTHS),
        description=f"{'muP' if mup else 'standard-param'} MLPs on 8x8 digits, widths 32/64/128 (base 32)",
    )


def mup_transformer_family(mup: bool = True) -> TaskFamily:
    kind = "mup" if mup else "sp"
    return TaskFamily(
        name=f"{kind}_char_lm_family",
        tasks=tuple(MupTransformer(d_model=w, num_layers=1, mup=mup) for w in LM_META_TRAIN_WIDTHS),
        description=f"{'muP' if mup else 'standard-param'} 1-layer char transformers, widths 32 and 128 (base 32)",
    )
