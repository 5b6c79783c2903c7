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
from jaxae.model import Autoencoder, top_k_relu

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


def auxk_loss(
    pre_BxH: jax.Array,
    dead_H: jax.Array,
    residual_BxD: jax.Array,
    decoder_HxD: jax.Array,
    k_aux: int,
    w_B: jax.Array | None = None,
) -> jax.Array:
    """Auxiliary top-k loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    The `k_aux` largest pre-activations among dead units (ReLU'd) reconstruct the main model's
    residual `e = x - x_hat` through the decoder (no bias); the loss is `|e_hat - e|^2 / |e|^2`
    summed over the batch, so it is scale-free, and 0 when no unit is dead. Only dead units get a
    gradient from it; the caller passes `e` with its gradient stopped.
    """
    dead_pre_BxH = jnp.where(jnp.broadcast_to(dead_H, pre_BxH.shape), pre_BxH, -jnp.inf)
    # Dead units are few, so the k_aux largest are found in as many rounds as there are dead units.
    e_hat_BxD = top_k_relu(dead_pre_BxH, k_aux, k_aux, early_exit=True) @ decoder_HxD
    error = _weighted_mean(jnp.sum(jnp.square(e_hat_BxD - residual_BxD), axis=-1), w_B)
    energy = _weighted_mean(jnp.sum(jnp.square(residual_BxD), axis=-1), w_B)
    ratio = error / jnp.maximum(energy, jnp.finfo(energy.dtype).tiny)
    return jnp.where(jnp.any(dead_H), ratio, 0.0)


def sparsity_penalty(
    h_BxH: jax.Array,
    cfg: LossConfig,
    w_B: jax.Array | None = None,
    rho: jax.Array | float | None = None,
) -> jax.Array:
    """The unweighted sparsity term the config names (0 for "none"); `rho` overrides `cfg.rho`."""
    if cfg.sparsity == "kl":
        return kl_sparsity(h_BxH, cfg.rho if rho is None else rho, w_B)
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
    rho: jax.Array | float | None = None,
    k: jax.Array | None = None,
    dead_H: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`mse + sparsity_weight * penalty (+ aux_weight * auxk)` and `aux`, for
    `value_and_grad(has_aux=True)`.

    `sparsity_weight`, `rho` and `k` are arguments (not read from the configs) so they can be
    traced, per-seed values. `dead_H` (units that have not fired for `cfg.dead_steps` steps)
    switches the auxiliary top-k loss on where `cfg.aux_k > 0`. `aux["fired_H"]` says which units
    fired on a (non-zero-weight) row of this batch, for the caller's dead-unit count.
    """
    x_hat_BxD, h_BxH, pre_BxH = model.apply(params, x_BxD, mask_H, k, method="forward")
    reconstruction = mse(x_hat_BxD, x_BxD, w_B)
    penalty = sparsity_penalty(h_BxH, cfg, w_B, rho)
    loss = reconstruction + sparsity_weight * penalty
    terms = {"mse": reconstruction, "sparsity": penalty}
    if cfg.aux_k > 0 and dead_H is not None:
        residual_BxD = jax.lax.stop_gradient(x_BxD - x_hat_BxD)
        decoder_HxD = model.apply(params, method="decoder_weights")
        terms["auxk"] = auxk_loss(pre_BxH, dead_H, residual_BxD, decoder_HxD, cfg.aux_k, w_B)
        loss = loss + cfg.aux_weight * terms["auxk"]
    fired_BxH = model.is_active(h_BxH)
    if w_B is not None:
        fired_BxH = fired_BxH & (w_B[:, None] > 0)
    terms["fired_H"] = jnp.any(fired_BxH, axis=0)
    return loss, terms
