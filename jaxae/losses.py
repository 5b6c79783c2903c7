"""Losses: reconstruction and sparsity terms, each a pure function, and the total `(loss, aux)`.

Shape legend: B batch, D features, H hidden units.

Every term is computed per example (or per unit) and then averaged with optional per-example weights
`w_B`, so a masked, partial last minibatch averages over its real rows only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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


def l0_sparsity(gate_BxH: jax.Array, w_B: jax.Array | None = None) -> jax.Array:
    """Mean over examples of the number of firing units, `sum_j H(z_j - theta_j)` (JumpReLU's L0
    penalty; `gate_BxH` from `Autoencoder.gates`, whose step passes a straight-through gradient
    to the thresholds)."""
    return _weighted_mean(jnp.sum(gate_BxH, axis=-1), w_B)


def auxk_code(pre_BxH: jax.Array, dead_H: jax.Array, k_aux: int) -> jax.Array:
    """The code of the auxiliary top-k loss: dead units' ReLU'd pre-activations, 0 elsewhere.

    Gao et al. take each sample's `k_aux` largest dead pre-activations. Here, with more than
    `k_aux` dead units, the batch keeps the `k_aux` whose mean pre-activation over the batch is
    largest (ties: the lower index), one choice for all its samples: a few elementwise passes
    instead of a top-k per sample. With at most `k_aux` dead units (the usual case: dead units are
    few) both rules keep every dead unit on every sample, so they give the same loss.
    """
    score_H = jnp.where(dead_H, jnp.mean(pre_BxH, axis=0), -jnp.inf)
    unit_H = jnp.arange(score_H.shape[0])
    # ahead_HxH[i, j]: unit j comes before unit i in the ranking.
    ahead_HxH = (score_H[None, :] > score_H[:, None]) | (
        (score_H[None, :] == score_H[:, None]) & (unit_H[None, :] < unit_H[:, None])
    )
    chosen_H = dead_H & (jnp.sum(ahead_HxH, axis=1) < k_aux)
    return jnp.where(chosen_H, jax.nn.relu(pre_BxH), 0.0)


def auxk_loss(
    e_hat_BxD: jax.Array, residual_BxD: jax.Array, w_B: jax.Array | None = None
) -> jax.Array:
    """Auxiliary top-k loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    `e_hat` is `auxk_code(...) @ W_d` (no bias), the dead units' reconstruction of the main model's
    residual `e = x - x_hat`; the loss is `|e_hat - e|^2 / |e|^2` over the batch, so it is
    scale-free. Only dead units get a gradient from it; the caller passes `e` with its gradient
    stopped (and counts the loss only while some unit is dead: with none, `e_hat` is 0 and it is 1).
    """
    error = _weighted_mean(jnp.sum(jnp.square(e_hat_BxD - residual_BxD), axis=-1), w_B)
    energy = _weighted_mean(jnp.sum(jnp.square(residual_BxD), axis=-1), w_B)
    return error / jnp.maximum(energy, jnp.finfo(energy.dtype).tiny)


def sparsity_penalty(
    h_BxH: jax.Array,
    cfg: LossConfig,
    w_B: jax.Array | None = None,
    rho: jax.Array | float | None = None,
) -> jax.Array:
    """The unweighted sparsity term the config names (0 for "none"); `rho` overrides `cfg.rho`.

    "l0" counts the units that fire in `h_BxH` (no gradient: `total_loss` counts JumpReLU's gates
    instead, which carry the straight-through gradient to the thresholds)."""
    if cfg.sparsity == "l0":
        return l0_sparsity((h_BxH != 0).astype(h_BxH.dtype), w_B)
    if cfg.sparsity == "kl":
        return kl_sparsity(h_BxH, cfg.rho if rho is None else rho, w_B)
    if cfg.sparsity == "l1":
        return l1_sparsity(h_BxH, w_B)
    return jnp.zeros((), h_BxH.dtype)


class Forward(NamedTuple):
    """One forward pass of a batch: pre-activations, code, reconstruction and, with the auxiliary
    top-k loss on, the dead units' code decoded (`e_hat`, else None)."""

    pre_BxH: jax.Array
    h_BxH: jax.Array
    x_hat_BxD: jax.Array
    e_hat_BxD: jax.Array | None


def forward(
    params: Any,
    x_BxD: jax.Array,
    *,
    model: Autoencoder,
    cfg: LossConfig,
    mask_H: jax.Array | None = None,
    w_B: jax.Array | None = None,
    k: jax.Array | None = None,
    dead_H: jax.Array | None = None,
) -> Forward:
    """The forward pass `loss_terms` scores. The batch's rows (those of non-zero weight in `w_B`)
    are BatchTopK's batch; `dead_H` switches the auxiliary top-k code on where `cfg.aux_k > 0`, its
    decoding in the same matmul as the main code's."""
    pre_BxH = model.apply(params, x_BxD, mask_H, method="pre_activations")
    rows_B = None if w_B is None else w_B > 0  # BatchTopK: the padding of a last batch keeps none
    h_BxH = model.apply(params, pre_BxH, mask_H, k, None, rows_B, method="activate")
    if cfg.aux_k > 0 and dead_H is not None:
        code_BxH = auxk_code(pre_BxH, dead_H, cfg.aux_k)
        x_hat_BxD, e_hat_BxD = model.apply(params, h_BxH, code_BxH, method="decode_pair")
        return Forward(pre_BxH, h_BxH, x_hat_BxD, e_hat_BxD)
    return Forward(pre_BxH, h_BxH, model.apply(params, h_BxH, method="decode"), None)


def loss_terms(
    params: Any,
    x_BxD: jax.Array,
    fwd: Forward,
    *,
    model: Autoencoder,
    cfg: LossConfig,
    sparsity_weight: jax.Array | float,
    mask_H: jax.Array | None = None,
    w_B: jax.Array | None = None,
    rho: jax.Array | float | None = None,
    dead_H: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`mse + sparsity_weight * penalty (+ aux_weight * auxk)` of a forward pass, and its terms;
    "l0" counts JumpReLU's gates. `terms["fired_H"]` counts the (non-zero-weight) rows of the batch
    each unit fired on, for the caller's dead-unit and firing-rate counts."""
    reconstruction = mse(fwd.x_hat_BxD, x_BxD, w_B)
    if cfg.sparsity == "l0":
        penalty = l0_sparsity(model.apply(params, fwd.pre_BxH, mask_H, method="gates"), w_B)
    else:
        penalty = sparsity_penalty(fwd.h_BxH, cfg, w_B, rho)
    loss = reconstruction + sparsity_weight * penalty
    terms = {"mse": reconstruction, "sparsity": penalty}
    if fwd.e_hat_BxD is not None:
        residual_BxD = jax.lax.stop_gradient(x_BxD - fwd.x_hat_BxD)
        terms["auxk"] = jnp.where(jnp.any(dead_H), auxk_loss(fwd.e_hat_BxD, residual_BxD, w_B), 0.0)
        loss = loss + cfg.aux_weight * terms["auxk"]
    fired_BxH = model.is_active(fwd.h_BxH)
    if w_B is not None:
        fired_BxH = fired_BxH & (w_B[:, None] > 0)
    terms["fired_H"] = jnp.sum(fired_BxH, axis=0, dtype=jnp.int32)
    return loss, terms


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
    """`loss_terms` of `forward`, for `value_and_grad(has_aux=True)`.

    `sparsity_weight`, `rho` and `k` are arguments (not read from the configs) so they can be
    traced, per-seed values. `dead_H` (units that have not fired for `cfg.dead_steps` steps)
    switches the auxiliary top-k loss on where `cfg.aux_k > 0`.
    """
    fwd = forward(params, x_BxD, model=model, cfg=cfg, mask_H=mask_H, w_B=w_B, k=k, dead_H=dead_H)
    return loss_terms(
        params,
        x_BxD,
        fwd,
        model=model,
        cfg=cfg,
        sparsity_weight=sparsity_weight,
        mask_H=mask_H,
        w_B=w_B,
        rho=rho,
        dead_H=dead_H,
    )
