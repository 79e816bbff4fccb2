"""Client-style models and data for :mod:`lopt.eval.client_check`, written as a user would.

Plain ``flax.linen`` modules, independent of the project's task code (which
the optimizers were meta-trained and chosen on), and data a user has at hand:
scikit-learn's bundled 8x8 digits and the project's offline text corpus read
as characters. Each maker returns ``(module, {"x", "y", "vx", "vy"})`` with
integer labels, the validation split disjoint from the training one.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

DIGITS_TRAIN = 1200  # of sklearn's 1,797 digits; the other 597 are the validation split
CONTEXT = 64
VALID_WINDOWS = 256  # the first 16,384 characters of the corpus's held-out tail: 20 evaluations a run stay cheap


def digits(rows: bool = False) -> dict[str, np.ndarray]:
    """8x8 digits scaled to [0, 1], a fixed shuffle; ``rows``: each image as 8 time steps of 8 features."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x = (d.data[order] / 16.0).astype(np.float32)
    if rows:
        x = x.reshape(-1, 8, 8)
    y = d.target[order].astype(np.int32)
    n = DIGITS_TRAIN
    return {"x": x[:n], "y": y[:n], "vx": x[n:], "vy": y[n:]}


def characters() -> dict[str, np.ndarray]:
    """Next-character prediction on non-overlapping 64-character windows.

    Validation: the first :data:`VALID_WINDOWS` windows of the corpus's held-out tail (contiguous text
    that follows the training text, never seen in training).
    """
    from lopt.tasks.corpus import load_corpus

    def windows(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = (len(tokens) - 1) // CONTEXT
        idx = np.arange(n)[:, None] * CONTEXT + np.arange(CONTEXT)[None, :]
        return tokens[idx].astype(np.int32), tokens[idx + 1].astype(np.int32)

    c = load_corpus()
    x, y = windows(c["train"])
    vx, vy = windows(c["valid"][: VALID_WINDOWS * CONTEXT + 1])
    return {"x": x, "y": y, "vx": vx, "vy": vy}


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, h):
        mask = nn.make_causal_mask(jnp.ones(h.shape[:2]))
        h = h + nn.SelfAttention(num_heads=self.heads, qkv_features=self.width)(nn.LayerNorm()(h), mask=mask)
        return h + nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(nn.LayerNorm()(h))))


class CharTransformer(nn.Module):
    vocab: int = 128
    width: int = 64
    heads: int = 4
    blocks: int = 2

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.width)(tokens)
        h = h + self.param("pos", nn.initializers.normal(0.02), (CONTEXT, self.width))[: tokens.shape[1]]
        for _ in range(self.blocks):
            h = Block(self.width, self.heads)(h)
        return nn.Dense(self.vocab)(nn.LayerNorm()(h))


class ResMLP(nn.Module):
    width: int = 128
    blocks: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width)(x)
        for _ in range(self.blocks):
            h = h + nn.Dense(self.width)(nn.gelu(nn.Dense(self.width)(nn.LayerNorm()(h))))
        return nn.Dense(10)(nn.LayerNorm()(h))


class CNN1D(nn.Module):
    @nn.compact
    def __call__(self, x):  # [batch, time, features]
        h = nn.relu(nn.Conv(32, (3,))(x))
        h = nn.relu(nn.Conv(64, (3,))(h))
        return nn.Dense(10)(h.mean(axis=1))


class GeluMLP(nn.Module):
    width: int = 128

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.width)(x))
        h = nn.gelu(nn.Dense(self.width)(h))
        return nn.Dense(10)(h)


def char_transformer():
    return CharTransformer(), characters()


def resmlp():
    return ResMLP(), digits()


def cnn1d():
    return CNN1D(), digits(rows=True)


def gelu_mlp():
    return GeluMLP(), digits()
