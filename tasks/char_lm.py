"""A small character-level transformer language model on standard-library source.

Pre-LayerNorm decoder-only transformer: token + learned position embeddings,
``num_layers`` blocks of causal multi-head self-attention and a GELU MLP, a
final LayerNorm and a linear read-out to the 128 ASCII codes. The loss is the
mean next-character cross-entropy, so ``loss_scale = log(128)``.

A batch is ``batch_size`` windows of ``seq_len + 1`` characters starting at
keyed random offsets (inside jit, see :mod:`lopt.tasks.sampling`). Traced
hyperparameters: ``init_scale`` (multiplies every initial weight matrix and
embedding) and ``data_fraction`` (prefix of the training text windows start in).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from lopt.tasks import layers, sampling
from lopt.tasks.base import (
    Batch, Data, HParams, Params, Task, TaskError, check_split, mean_over_rows, tree_hparams_like,
)
from lopt.tasks.corpus import VOCAB_SIZE, load_corpus
from lopt.tasks.supervised import log_uniform, softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class CharTransformerLM(Task):
    seq_len: int = 32
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: int = 4
    batch_size: int = 32
    init_scale_range: tuple[float, float] = (0.5, 2.0)
    data_fraction_range: tuple[float, float] = (0.1, 1.0)
    task_name: str = ""

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise TaskError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")

    @property
    def name(self) -> str:
        return self.task_name or f"char_lm_{self.num_layers}x{self.d_model}_seq{self.seq_len}"

    @property
    def loss_scale(self) -> float:
        return math.log(VOCAB_SIZE)

    def data_summary(self) -> str:
        return "stdlib source text"

    def describe(self) -> str:
        return (
            f"char transformer LM, {self.num_layers} layer(s) x d{self.d_model}, "
            f"{self.num_heads} heads, seq {self.seq_len}, batch {self.batch_size}"
        )

    # ------------------------------------------------------------- hparams
    def default_hparams(self) -> HParams:
        return tree_hparams_like({"init_scale": 1.0, "data_fraction": 1.0})

    def sample_hparams(self, key: jax.Array) -> HParams:
        k1, k2 = jax.random.split(key)
        return {
            "init_scale": log_uniform(k1, *self.init_scale_range),
            "data_fraction": jax.random.uniform(k2, (), jnp.float32, *self.data_fraction_range),
        }

    # ------------------------------------------------------------- model
    # Keys each block's init draws; part of the task's definition (the split of the init key depends on it).
    keys_per_block: ClassVar[int] = 4

    def init(self, key: jax.Array, hparams: HParams | None = None) -> Params:
        scale = self._hp(hparams)["init_scale"]
        d = self.d_model
        keys = iter(jax.random.split(key, 3 + self.keys_per_block * self.num_layers))
        params = {
            "embed": layers.normal(next(keys), (VOCAB_SIZE, d)) * scale,
            "pos": 0.1 * layers.normal(next(keys), (self.seq_len, d)) * scale,
            "final_ln": layers.layer_norm_init(d),
            "head": scaled_dense(layers.dense_init(next(keys), d, VOCAB_SIZE), scale),
        }
        for i in range(self.num_layers):
            params[f"block_{i}"] = self._block_init(keys, scale)
        return params

    def _block_init(self, keys, scale: jax.Array) -> Params:
        """One pre-LN block's parameters, drawing ``keys_per_block`` keys from the iterator ``keys``."""
        d, hidden = self.d_model, self.mlp_ratio * self.d_model
        return {
            "ln1": layers.layer_norm_init(d),
            "qkv": scaled_dense(layers.dense_init(next(keys), d, 3 * d), scale),
            "out": scaled_dense(layers.dense_init(next(keys), d, d), scale),
            "ln2": layers.layer_norm_init(d),
            "mlp_in": scaled_dense(layers.dense_init(next(keys), d, hidden, 2.0), scale),
            "mlp_out": scaled_dense(layers.dense_init(next(keys), hidden, d), scale),
        }

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        """Logits ``[batch, seq, VOCAB_SIZE]`` for int token ids ``[batch, seq]``."""
        t = inputs.shape[1]
        x = jnp.take(params["embed"], inputs, axis=0) + params["pos"][:t]
        mask = jnp.tril(jnp.ones((t, t), bool))
        for i in range(self.num_layers):
            p = params[f"block_{i}"]
            x = x + self._attention(p, layers.layer_norm(p["ln1"], x), mask)
            h = jax.nn.gelu(layers.dense(p["mlp_in"], layers.layer_norm(p["ln2"], x)))
            x = x + layers.dense(p["mlp_out"], h)
        return layers.dense(params["head"], layers.layer_norm(params["final_ln"], x))

    def _attention(self, p: Params, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = jnp.split(layers.dense(p["qkv"], x), 3, axis=-1)
        q, k, v = (a.reshape(b, t, h, d // h) for a in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return layers.dense(p["out"], out.reshape(b, t, d))

    def loss_and_aux(self, params: Params, batch: Batch, hparams: HParams | None = None):
        logits = self.apply(params, batch["inputs"])
        loss = softmax_cross_entropy(logits, batch["targets"])
        accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32))
        return loss, {"accuracy": accuracy}

    # ------------------------------------------------------------- data
    def load_data(self) -> Data:
        return {split: {"tokens": jnp.asarray(tokens)} for split, tokens in load_corpus().items()}

    def sample_batch(self, data: Data, key: jax.Array, split: str = "train", hparams: HParams | None = None) -> Batch:
        check_split(split)
        tokens = data[split]["tokens"]
        num_starts = tokens.shape[0] - self.seq_len - 1
        fraction = 1.0 if split == "valid" else self._hp(hparams)["data_fraction"]
        starts = sampling.sample_indices(key, num_starts, self.batch_size, fraction)
        windows = jnp.take(tokens, starts[:, None] + jnp.arange(self.seq_len + 1)[None, :], axis=0)
        windows = windows.astype(jnp.int32)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def valid_windows(self, data: Data) -> Batch:
        """The validation text cut into consecutive windows: every character after the first is a target once.

        Window ``i`` reads characters ``[i*L, i*L + L]`` (``L = seq_len``), so
        consecutive windows share one boundary character (a target in one, the
        first input of the next); a tail shorter than ``L`` is left out.
        """
        tokens = data["valid"]["tokens"]
        num = (tokens.shape[0] - 1) // self.seq_len
        if num < 1:
            raise TaskError(f"validation text of {tokens.shape[0]} characters is shorter than seq_len + 1")
        starts = jnp.arange(num) * self.seq_len
        windows = jnp.take(tokens, starts[:, None] + jnp.arange(self.seq_len + 1)[None, :], axis=0).astype(jnp.int32)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def valid_loss_full(self, params: Params, data: Data, hparams: HParams | None = None):
        """Mean next-character loss over :meth:`valid_windows`, in chunks of about 16k tokens."""
        chunk = max(1, 16384 // self.seq_len)
        fn = lambda batch: self.loss_and_aux(params, batch, hparams)  # noqa: E731
        return mean_over_rows(fn, self.valid_windows(data), chunk)


def scaled_dense(p: dict[str, jax.Array], scale: jax.Array) -> dict[str, jax.Array]:
    """Scale a dense layer's weight matrix (its bias stays zero)."""
    return {"w": p["w"] * scale, "b": p["b"]}
