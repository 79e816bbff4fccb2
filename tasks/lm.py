"""Character language models on the bundled corpus, sized like small real ones.

Both models here reuse :class:`~lopt.tasks.char_lm.CharTransformerLM`'s data
path, loss and traced hyperparameters by subclassing it (so whatever the base
class learns, e.g. whole-split validation, they get too):

* :class:`TransformerLM` is the pre-LayerNorm causal transformer itself, plus
  ``valid_tokens``: the validation split is the *first* ``valid_tokens``
  characters of the corpus's held-out tail (:mod:`lopt.tasks.corpus`), still
  one contiguous piece of text the model never trains on. Why a cap: the tail
  is ~50k characters, and a forward pass of a 600k-parameter model over all of
  it at every evaluation point would cost more than the training run.
* :class:`ConvLM` is a causal 1-D CNN language model (a small WaveNet/ByteNet):
  token + position embedding, ``num_layers`` pre-LN residual blocks of a
  causal dilated convolution (dilation ``2**i``, so the receptive field grows
  exponentially with depth) and a GELU channel MLP, final LN, linear read-out.
  ``d_model`` is its channel width; ``num_heads`` is unused.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lopt.tasks import layers
from lopt.tasks.base import Data, Params, TaskError
from lopt.tasks.char_lm import CharTransformerLM, scaled_dense


@dataclasses.dataclass(frozen=True)
class TransformerLM(CharTransformerLM):
    valid_tokens: int | None = None  # None: the whole held-out tail

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.valid_tokens is not None and self.valid_tokens < self.seq_len + 2:
            raise TaskError(f"valid_tokens must be >= seq_len + 2 = {self.seq_len + 2}, got {self.valid_tokens}")

    @property
    def name(self) -> str:
        return self.task_name or f"transformer_lm_{self.num_layers}x{self.d_model}_seq{self.seq_len}"

    def describe(self) -> str:
        tail = "" if self.valid_tokens is None else f", valid = first {self.valid_tokens} chars of the held-out tail"
        return "pre-LN causal " + super().describe().replace("char transformer LM", "char transformer") + tail

    def load_data(self) -> Data:
        data = super().load_data()
        if self.valid_tokens is not None:
            data["valid"] = {k: v[: self.valid_tokens] for k, v in data["valid"].items()}
        return data


@dataclasses.dataclass(frozen=True)
class ConvLM(TransformerLM):
    kernel: int = 3
    num_heads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel < 1:
            raise TaskError(f"kernel must be >= 1, got {self.kernel}")

    @property
    def name(self) -> str:
        return self.task_name or f"conv_lm_{self.num_layers}x{self.d_model}_k{self.kernel}_seq{self.seq_len}"

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel - 1) * (2**self.num_layers - 1)

    def describe(self) -> str:
        tail = "" if self.valid_tokens is None else f", valid = first {self.valid_tokens} chars of the held-out tail"
        return (
            f"causal dilated 1-D CNN char LM, {self.num_layers} pre-LN blocks x {self.d_model} ch, kernel "
            f"{self.kernel} (receptive field {self.receptive_field}), seq {self.seq_len}, batch {self.batch_size}{tail}"
        )

    keys_per_block: ClassVar[int] = 3

    def _block_init(self, keys, scale: jax.Array) -> Params:
        """A causal conv block in place of attention: LN, dilated conv, LN, MLP."""
        d, hidden = self.d_model, self.mlp_ratio * self.d_model
        return {
            "ln1": layers.layer_norm_init(d),
            "conv": scaled_dense(layers.conv1d_init(next(keys), self.kernel, d, d, 2.0), scale),
            "ln2": layers.layer_norm_init(d),
            "mlp_in": scaled_dense(layers.dense_init(next(keys), d, hidden, 2.0), scale),
            "mlp_out": scaled_dense(layers.dense_init(next(keys), hidden, d), scale),
        }

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        t = inputs.shape[1]
        x = jnp.take(params["embed"], inputs, axis=0) + params["pos"][:t]
        for i in range(self.num_layers):
            p = params[f"block_{i}"]
            h = layers.conv1d(p["conv"], layers.layer_norm(p["ln1"], x), dilation=2**i, causal=True)
            x = x + jax.nn.gelu(h)
            x = x + layers.dense(p["mlp_out"], jax.nn.gelu(layers.dense(p["mlp_in"], layers.layer_norm(p["ln2"], x))))
        return layers.dense(params["head"], layers.layer_norm(params["final_ln"], x))
