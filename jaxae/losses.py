"""Losses: reconstruction and sparsity terms, each a pure function, and the total `(loss, aux)`.

Shape legend: B batch, D features, H hidden units.

Every term is computed per example (or per unit) and then averaged with optional per-example weights
`w_B`, so a masked, partial last minibatch averages over its real rows only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxae.config import LossConfig
from jaxae.model import Autoencoder

# Mean activations are clipped this far inside (0, 1) so the KL stays finite.
_KL_EPS = 1e-6


def _weighted_mean(v_B: jax.Array, w_B: jax.Array | None) -> jax.Array:
    if w_B is None:
        return jnp.mean(v_B, axis=0)
    w_B = w_B.reshape(w_B.shape + (1,) * (v_B.ndim - 1))
    return jnp.sum(v_B * w_B, axis=0) / jnp.sum(w_B)


def squared_error_per_example(x_hat_BxD: jax.Array, x_BxD: jax.Array) -> jax.Array:
    """Mean over features of the squared error, one value per example."""
    return jnp.mean(jnp.square(x_hat_BxD - x_BxD), axis=-1)


def mse(x_hat_BxD: jax.Array, x_BxD: jax.Array, w_B: jax.Array | None = None) -> jax.Array:
    """`torch.nn.MSELoss()`: the mean over all B*D elements (equal-width rows, so mean of means)."""
    return _weighted_mean(squared_error_per_example(x_hat_BxD, x_BxD), w_B)


def mean_activation(h_BxH: jax.Array, w_B: jax.Array | None = None) -> jax.Array:
    """`rho_hat_H`: each unit's mean activation over the batch."""
    return _weighted_mean(h_BxH, w_B)


def kl_sparsity(h_BxH: jax.Array, rho: float, w_B: jax.Array | None = None) -> jax.Array:
    """`sum_j KL(rho || rho_hat_j)` between Bernoulli(rho) and Bernoulli(rho_hat_j) (Ng, CS294A)."""
    rho_hat_H = jnp.clip(mean_activation(h_BxH, w_B), _KL_EPS, 1.0 - _KL_EPS)
    kl_H = rho * jnp.log(rho / rho_hat_H) + (1.0 - rho) * jnp.log((1.0 - rho) / (1.0 - rho_hat_H))
    return jnp.sum(kl_H)


def l1_sparsity(h_BxH: jax.Array, w_B: jax.Array | None = None) -> jax.Array:
    """Mean over examples of the L1 norm of the hidden code."""
    return _weighted_mean(jnp.sum(jnp.abs(h_BxH), axis=-1), w_B)


def sparsity_penalty(h_BxH: jax.Array, cfg: LossConfig, w_B: jax.Array | None = None) -> jax.Array:
    """The unweighted sparsity term the config names (0 for "none")."""
    if cfg.sparsity == "kl":
        return kl_sparsity(h_BxH, cfg.rho, w_B)
    if cfg.sparsity == "l1":
        return l1_sparsity(h_BxH, w_B)
    return jnp.zeros((), h_BxH.dtype)


def total_loss(
    params: Any,
    x_BxD: jax.Array,
    *,
    model: Autoencoder,
    cfg: LossConfig,
    sparsity_weight: jax.Array | float,
    mask_H: jax.Array | None = None,
    w_B: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`mse + sparsity_weight * penalty` and `aux` (the terms), for `value_and_grad(has_aux=True)`.

    `sparsity_weight` is an argument (not read from `cfg`) so it can be a traced, vmapped value.
    """
    x_hat_BxD, h_BxH = model.apply(params, x_BxD, mask_H)
    reconstruction = mse(x_hat_BxD, x_BxD, w_B)
    penalty = sparsity_penalty(h_BxH, cfg, w_B)
    loss = reconstruction + sparsity_weight * penalty
    return loss, {"mse": reconstruction, "sparsity": penalty}
