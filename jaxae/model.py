"""The autoencoder: a Flax Linen module D -> H -> D with a choice of activation and initialiser.

Shape legend: B batch, D features, H hidden units.

Parameters are a plain pytree `{"params": {"encoder": {...}, "decoder": {...}}}`, so `init` and
every function of the parameters vmap over seeds. An optional `mask_H` switches hidden units off,
which lets one compiled program train several hidden sizes (units past the size are masked to zero).
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.config import ModelConfig


def torch_linear_init(
    fan_in: int,
) -> tuple[nn.initializers.Initializer, nn.initializers.Initializer]:
    """PyTorch's `nn.Linear` default: kernel and bias both uniform on +-1/sqrt(fan_in).

    (`kaiming_uniform_(a=sqrt(5))` gives bound sqrt(6 / (6 * fan_in)) = 1/sqrt(fan_in).)
    """
    bound = 1.0 / math.sqrt(fan_in)

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform, uniform


def _dense(features: int, fan_in: int, init: str) -> nn.Dense:
    kernel_init, bias_init = _initialisers(init, fan_in)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init)


def _initialisers(init: str, fan_in: int):
    if init == "torch":
        return torch_linear_init(fan_in)
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()


# Up to this many hidden units top-k selects by counting larger entries: H^2 comparisons per row in
# one fused loop, 10-50x faster on CPU than lax.top_k's per-row sort (measured at H = 10..32; at
# H = 64 the comparisons no longer fuse and lax.top_k is faster).
RANK_TOP_K_MAX_UNITS = 32


def top_k_relu(pre_BxH: jax.Array, k: int) -> jax.Array:
    """Keep the k largest pre-activations of each row (then ReLU), zero the rest.

    Exact ties at the k-th value keep every tied unit; for continuous inputs that has probability 0.
    Unit i is kept iff fewer than k entries of its row are strictly larger, which is exactly
    `pre_i >= the k-th largest value`: narrow rows count (see `RANK_TOP_K_MAX_UNITS`), wide rows
    compare with `lax.top_k`; both keep the same units.
    """
    if pre_BxH.shape[-1] <= RANK_TOP_K_MAX_UNITS:
        larger_BxH = jnp.sum(pre_BxH[..., None, :] > pre_BxH[..., :, None], axis=-1)
        keep_BxH = larger_BxH < k
    else:
        keep_BxH = pre_BxH >= jax.lax.top_k(pre_BxH, k)[0][..., -1:]
    return jnp.where(keep_BxH, jax.nn.relu(pre_BxH), 0.0)


class Autoencoder(nn.Module):
    """`x -> h = act(W_e x + b_e) -> x_hat = W_d h + b_d`."""

    n_features: int
    n_hidden: int
    activation: str = "relu"
    k: int | None = None
    initializer: str = "torch"  # "torch" or "flax"

    def setup(self) -> None:
        self.encoder = _dense(self.n_hidden, self.n_features, self.initializer)
        self.decoder = _dense(self.n_features, self.n_hidden, self.initializer)

    def encode(self, x_BxD: jax.Array, mask_H: jax.Array | None = None) -> jax.Array:
        """The hidden code `h_BxH`; units where `mask_H` is 0 are held at 0."""
        chex.assert_shape(x_BxD, (..., self.n_features))
        pre_BxH = self.encoder(x_BxD)
        if mask_H is not None:
            mask_H = jnp.broadcast_to(mask_H, pre_BxH.shape)
            # Masked units must never win a top-k slot, so mask before the activation too.
            pre_BxH = jnp.where(mask_H > 0, pre_BxH, -jnp.inf if self.activation == "topk" else 0.0)
        if self.activation == "relu":
            h_BxH = jax.nn.relu(pre_BxH)
        elif self.activation == "sigmoid":
            h_BxH = jax.nn.sigmoid(pre_BxH)
        elif self.activation == "identity":
            h_BxH = pre_BxH
        else:
            h_BxH = top_k_relu(pre_BxH, self.k)
        return h_BxH if mask_H is None else h_BxH * mask_H

    def decode(self, h_BxH: jax.Array) -> jax.Array:
        """The reconstruction `x_hat_BxD`."""
        chex.assert_shape(h_BxH, (..., self.n_hidden))
        return self.decoder(h_BxH)

    def __call__(
        self, x_BxD: jax.Array, mask_H: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Returns `(x_hat_BxD, h_BxH)`."""
        h_BxH = self.encode(x_BxD, mask_H)
        return self.decode(h_BxH), h_BxH


def make_model(cfg: ModelConfig, n_features: int) -> Autoencoder:
    """The module a config describes."""
    return Autoencoder(
        n_features=n_features,
        n_hidden=cfg.n_hidden,
        activation=cfg.activation,
        k=cfg.k,
        initializer=cfg.init,
    )
