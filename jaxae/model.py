"""The autoencoder: a Flax Linen module D -> H -> D with a choice of activation and initialiser.

Shape legend: B batch, D features, H hidden units.

Parameters are a plain pytree `{"params": {"encoder": {...}, "decoder": {...}}}`, so `init` and
every function of the parameters vmap over seeds. An optional `mask_H` switches hidden units off,
which lets one compiled program train several hidden sizes (units past the size are masked to zero).
"""

from __future__ import annotations

import math
from typing import Any

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


def ng_init(n_hidden: int, n_features: int) -> nn.initializers.Initializer:
    """Ng's CS294A `initializeParameters.m`: `r = sqrt(6) / sqrt(hiddenSize + visibleSize + 1)`,
    `W = rand(...) * 2 * r - r` for both kernels (biases are zero)."""
    bound = math.sqrt(6.0 / (n_hidden + n_features + 1))

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform


def _dense(features: int, fan_in: int, init: str) -> nn.Dense:
    kernel_init, bias_init = _initialisers(init, fan_in, features)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init)


def _initialisers(init: str, fan_in: int, fan_out: int):
    """`(kernel_init, bias_init)` of a layer `fan_in -> fan_out` (`model.init`)."""
    if init == "torch":
        return torch_linear_init(fan_in)
    if init == "ng":
        return ng_init(fan_in, fan_out), nn.initializers.zeros_init()
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()


# How `top_k_mask` finds each row's k-th largest value on CPU (measured at 64 seeds x batch 64):
# up to this many units it counts, for every unit, the units above it (H x H comparisons, fastest
# for tiny widths); beyond, it takes the row maximum k_max times (k_max x H work), which is 2-3x
# faster than `lax.top_k` at widths 48-256. Past `ITERATED_MAX_K` iterations `lax.top_k` wins.
RANK_COUNT_MAX_UNITS = 16
ITERATED_MAX_K = 32


def _max_step(
    carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array], k: jax.Array | int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One round of `_kth_largest`: take each row's maximum out and count it (ties together)."""
    remaining_BxH, kth_Bx1, seen_Bx1, found_Bx1 = carry
    top_Bx1 = jnp.max(remaining_BxH, axis=-1, keepdims=True)
    at_top_BxH = remaining_BxH == top_Bx1
    seen_Bx1 = seen_Bx1 + jnp.sum(at_top_BxH, axis=-1, keepdims=True)
    hit_Bx1 = ~found_Bx1 & (seen_Bx1 >= k)
    kth_Bx1 = jnp.where(hit_Bx1, top_Bx1, kth_Bx1)
    found_Bx1 = found_Bx1 | hit_Bx1
    remaining_BxH = jnp.where(at_top_BxH, -jnp.inf, remaining_BxH)
    return remaining_BxH, kth_Bx1, seen_Bx1, found_Bx1


def _kth_largest(pre_BxH: jax.Array, k: jax.Array | int, k_max: int) -> jax.Array:
    """`kth_Bx1`: the value v of each row at which the units >= v are those with fewer than k units
    strictly above them, by taking the row maximum `k_max` times and counting ties as it goes.

    A row with fewer than k finite entries gets -inf (every entry kept).
    """
    rows = (*pre_BxH.shape[:-1], 1)
    carry = (
        pre_BxH,
        jnp.full(rows, -jnp.inf, pre_BxH.dtype),
        jnp.zeros(rows, jnp.int32),  # units at or above the current maximum
        jnp.zeros(rows, bool),
    )
    for _ in range(k_max):
        carry = _max_step(carry, k)
    return carry[1]


def top_k_mask(pre_BxH: jax.Array, k: jax.Array | int, k_max: int | None = None) -> jax.Array:
    """Boolean `keep_BxH`: the k largest entries of each row (every unit tied with the k-th too).

    `k` may be traced (a per-seed value under `vmap`) as long as it is at most `k_max`, the static
    largest k; one compiled program then serves every k of a sweep. A unit is kept exactly when
    fewer than k units of its row are strictly larger, which is the same as `pre >= k-th largest`;
    the three ways of computing it (see `RANK_COUNT_MAX_UNITS`) agree exactly, ties included.
    """
    h = pre_BxH.shape[-1]
    k_max = h if k_max is None else min(k_max, h)
    if h <= RANK_COUNT_MAX_UNITS:
        above_BxH = jnp.sum(pre_BxH[..., None, :] > pre_BxH[..., :, None], axis=-1)
        return above_BxH < k
    if k_max <= ITERATED_MAX_K:
        return pre_BxH >= _kth_largest(pre_BxH, k, k_max)
    values_BxK = jax.lax.top_k(pre_BxH, k_max)[0]
    index = jnp.broadcast_to(jnp.asarray(k, jnp.int32) - 1, (*pre_BxH.shape[:-1], 1))
    return pre_BxH >= jnp.take_along_axis(values_BxK, index, axis=-1)


def top_k_relu(pre_BxH: jax.Array, k: jax.Array | int, k_max: int | None = None) -> jax.Array:
    """Keep the k largest pre-activations of each row (then ReLU), zero the rest.

    Exact ties at the k-th value keep every tied unit; for continuous inputs that has probability 0.
    Unit i is kept iff fewer than k entries of its row are strictly larger, which is exactly
    `pre_i >= the k-th largest value`: narrow rows count (see `RANK_TOP_K_MAX_UNITS`), wide rows
    compare with `lax.top_k`; both keep the same units.
    """
    keep_BxH = top_k_mask(pre_BxH, k, k_max)
    return jnp.where(keep_BxH, jax.nn.relu(pre_BxH), 0.0)


def unit_rows(w_HxD: jax.Array) -> jax.Array:
    """Rows scaled to unit length (a zero row stays zero)."""
    norm_Hx1 = jnp.linalg.norm(w_HxD, axis=-1, keepdims=True)
    return w_HxD / jnp.where(norm_Hx1 > 0, norm_Hx1, 1.0)


class Decoder(nn.Module):
    """`h -> h @ W_d + b_d`, as `nn.Dense` (same parameters, same initial values), with the option
    of using W_d's rows as unit vectors (`unit_norm`): a reparameterisation, so every optimizer step
    already sees the normalised weights and no projection step is needed."""

    n_features: int
    n_hidden: int
    initializer: str = "torch"
    unit_norm: bool = False
    sigmoid: bool = False  # the output through a sigmoid (`model.output="sigmoid"`)

    def setup(self) -> None:
        kernel_init, bias_init = _initialisers(self.initializer, self.n_hidden, self.n_features)
        self.kernel = self.param("kernel", kernel_init, (self.n_hidden, self.n_features))
        self.bias = self.param("bias", bias_init, (self.n_features,))

    def weights(self) -> jax.Array:
        """The decoder matrix `w_HxD` in use: one row (a dictionary direction) per hidden unit."""
        return unit_rows(self.kernel) if self.unit_norm else self.kernel

    def output(self, y_BxD: jax.Array) -> jax.Array:
        """The output layer on `h @ W_d`: plus the bias, then the sigmoid if there is one."""
        x_BxD = y_BxD + jnp.broadcast_to(self.bias, y_BxD.shape)
        return jax.nn.sigmoid(x_BxD) if self.sigmoid else x_BxD

    def __call__(self, h_BxH: jax.Array) -> jax.Array:
        return self.output(h_BxH @ self.weights())

    def pair(self, h_BxH: jax.Array, aux_BxH: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(output(h @ W_d), aux @ W_d)`: two codes through one matmul (one larger product costs
        less than two small ones), the second without the bias (the auxiliary loss is linear: it
        needs a linear output layer, which `Config` checks)."""
        y_2BxD = jnp.concatenate([h_BxH, aux_BxH]) @ self.weights()
        x_BxD, aux_x_BxD = jnp.split(y_2BxD, 2)
        return self.output(x_BxD), aux_x_BxD


class Autoencoder(nn.Module):
    """`x -> h = act(W_e (x - b_pre) + b_e) -> x_hat = out(W_d h + b_d)`, `out` the identity or a
    sigmoid (`output`).

    `b_pre` is the decoder bias with `pre_bias`, else 0. For "topk", `k` (the module field) is the
    largest k the program supports and every call may pass a smaller, possibly traced, `k`.
    """

    n_features: int
    n_hidden: int
    activation: str = "relu"
    k: int | None = None
    initializer: str = "torch"  # `model.init`: "torch", "flax" or "ng"
    unit_norm_decoder: bool = False
    pre_bias: bool = False
    tied_init: bool = False
    output: str = "linear"  # `model.output`: "linear" or "sigmoid"

    def setup(self) -> None:
        self.encoder = _dense(self.n_hidden, self.n_features, self.initializer)
        self.decoder = Decoder(
            self.n_features,
            self.n_hidden,
            self.initializer,
            self.unit_norm_decoder,
            sigmoid=self.output == "sigmoid",
        )

    def pre_activations(self, x_BxD: jax.Array, mask_H: jax.Array | None = None) -> jax.Array:
        """`pre_BxH`, the encoder's output; masked units read -inf for top-k (they never win a
        slot) and 0 otherwise."""
        chex.assert_shape(x_BxD, (..., self.n_features))
        if self.pre_bias:
            x_BxD = x_BxD - jnp.broadcast_to(self.decoder.bias, x_BxD.shape)
        pre_BxH = self.encoder(x_BxD)
        if mask_H is None:
            return pre_BxH
        mask_H = jnp.broadcast_to(mask_H, pre_BxH.shape)
        return jnp.where(mask_H > 0, pre_BxH, -jnp.inf if self.activation == "topk" else 0.0)

    def activate(
        self, pre_BxH: jax.Array, mask_H: jax.Array | None = None, k: jax.Array | None = None
    ) -> jax.Array:
        """The hidden code `h_BxH` from pre-activations; units where `mask_H` is 0 are held at 0."""
        if self.activation == "relu":
            h_BxH = jax.nn.relu(pre_BxH)
        elif self.activation == "sigmoid":
            h_BxH = jax.nn.sigmoid(pre_BxH)
        elif self.activation == "identity":
            h_BxH = pre_BxH
        else:
            h_BxH = top_k_relu(pre_BxH, self.k if k is None else k, self.k)
        return h_BxH if mask_H is None else h_BxH * jnp.broadcast_to(mask_H, h_BxH.shape)

    def encode(
        self, x_BxD: jax.Array, mask_H: jax.Array | None = None, k: jax.Array | None = None
    ) -> jax.Array:
        """The hidden code `h_BxH`; units where `mask_H` is 0 are held at 0."""
        return self.activate(self.pre_activations(x_BxD, mask_H), mask_H, k)

    def is_active(self, h_BxH: jax.Array) -> jax.Array:
        """Whether each unit fires: its pre-activation is positive (h > 0.5 for sigmoid, h != 0
        otherwise, so a masked or top-k-dropped unit never counts)."""
        return h_BxH > 0.5 if self.activation == "sigmoid" else h_BxH != 0

    def decode(self, h_BxH: jax.Array) -> jax.Array:
        """The reconstruction `x_hat_BxD`."""
        chex.assert_shape(h_BxH, (..., self.n_hidden))
        return self.decoder(h_BxH)

    def decode_pair(self, h_BxH: jax.Array, aux_BxH: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(x_hat_BxD, aux_BxH @ W_d)`: the reconstruction and a second code's decoding without
        the bias (the auxiliary top-k loss's), in one matmul."""
        chex.assert_equal_shape([h_BxH, aux_BxH])
        return self.decoder.pair(h_BxH, aux_BxH)

    def decoder_weights(self) -> jax.Array:
        """`w_HxD`, the decoder rows in use (unit vectors with `unit_norm_decoder`)."""
        return self.decoder.weights()

    def __call__(
        self, x_BxD: jax.Array, mask_H: jax.Array | None = None, k: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Returns `(x_hat_BxD, h_BxH)`."""
        h_BxH = self.encode(x_BxD, mask_H, k)
        return self.decode(h_BxH), h_BxH


def init_params(model: Autoencoder, key: jax.Array) -> Any:
    """`model.init`, then, with `tied_init`, the encoder kernel set to the decoder rows in use,
    transposed (so each unit starts by reading the direction it writes)."""
    params = model.init(key, jnp.zeros((1, model.n_features)))
    if not model.tied_init:
        return params
    w_HxD = model.apply(params, method="decoder_weights")
    encoder = {**params["params"]["encoder"], "kernel": w_HxD.T}
    return {"params": {**params["params"], "encoder": encoder}}


def make_model(cfg: ModelConfig, n_features: int) -> Autoencoder:
    """The module a config describes."""
    return Autoencoder(
        n_features=n_features,
        n_hidden=cfg.n_hidden,
        activation=cfg.activation,
        k=cfg.k,
        initializer=cfg.init,
        unit_norm_decoder=cfg.unit_norm_decoder,
        pre_bias=cfg.pre_bias,
        tied_init=cfg.tied_init,
        output=cfg.output,
    )
