"""Metrics: how well each seed reconstructs, how far from the linear optimum, do seeds agree.

Shape legend: S seeds, N samples, D features, H hidden units.

Definitions used everywhere in jaxae:

- `fvu` (fraction of variance unexplained) = sum of squared reconstruction errors / sum of squared
  deviations of the data from its feature means. 0 is perfect; 1 is no better than predicting the
  mean.
- `pca_floor_fvu(x, h)` = the FVU of the best rank-h affine reconstruction of x (PCA with h
  components, from an SVD of the centred data): a hard lower bound for any autoencoder whose decoder
  is linear (affine) in an h-dimensional code.
- `converged` = `fvu <= pca_floor_fvu(x, h) + convergence_tol(x, h)`: the seed reached the best that
  its hidden size allows. The tolerance is a tenth (`CONVERGENCE_FRACTION`) of the variance share of
  the weakest principal component an h-unit model has to capture (component min(h, rank)). So a
  seed counts as converged only if it uses all of its units: one that leaves a needed direction
  unexplained stays above the floor by that direction's whole share. (A fixed absolute tolerance
  cannot do this across data sets: the offset data's second direction carries 0.56% of the
  variance, Gaussian data's tenth about 8%.)
- `reconstructs` = `fvu <= reconstruction_tol(x)`, the same rule with every principal direction of
  the data needed: the seed reproduces the data (the tutorial's sense of "converges"), missing less
  than a tenth of the weakest direction's variance.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.stats

from jaxae.config import LossConfig
from jaxae.losses import total_loss
from jaxae.model import Autoencoder

# `converged`: within this fraction of the weakest needed component's variance share of the floor.
CONVERGENCE_FRACTION = 0.1
# Principal components with a smaller variance share than this count as absent (float32 data).
RANK_TOL = 1e-9


def fvu(x_hat_NxD: jax.Array, x_NxD: jax.Array) -> jax.Array:
    """Fraction of variance unexplained (see module docstring)."""
    residual = jnp.sum(jnp.square(x_hat_NxD - x_NxD))
    total = jnp.sum(jnp.square(x_NxD - jnp.mean(x_NxD, axis=0, keepdims=True)))
    return residual / total


def component_shares(x_NxD: np.ndarray) -> np.ndarray:
    """Each principal component's share of the total variance, largest first."""
    x = np.asarray(x_NxD, np.float64)
    energy = np.square(np.linalg.svd(x - x.mean(axis=0), compute_uv=False))
    return energy / energy.sum()


def pca_floor_fvu(x_NxD: np.ndarray, n_components: int) -> float:
    """FVU of the best rank-`n_components` affine reconstruction (Eckart-Young on centred data)."""
    return float(component_shares(x_NxD)[n_components:].sum())


def convergence_tol(x_NxD: np.ndarray, n_components: int) -> float:
    """`CONVERGENCE_FRACTION` x the share of component min(h, rank); see the module docstring."""
    shares = component_shares(x_NxD)
    needed = shares[: max(1, n_components)]
    return float(CONVERGENCE_FRACTION * needed[needed > RANK_TOL].min(initial=shares[0]))


def reconstruction_tol(x_NxD: np.ndarray) -> float:
    """The FVU below which a seed `reconstructs` x: `convergence_tol` with all components needed."""
    return convergence_tol(x_NxD, np.asarray(x_NxD).shape[-1])


def evaluate(
    params: Any,
    x_NxD: jax.Array,
    *,
    model: Autoencoder,
    loss_cfg: LossConfig,
    sparsity_weight: jax.Array,
    mask_H: jax.Array,
) -> dict[str, jax.Array]:
    """Full-data figures of one seed: loss, MSE, FVU, per-unit activity, mean active units (L0)."""
    loss, aux = total_loss(
        params, x_NxD, model=model, cfg=loss_cfg, sparsity_weight=sparsity_weight, mask_H=mask_H
    )
    x_hat_NxD, h_NxH = model.apply(params, x_NxD, mask_H)
    active_NxH = (h_NxH != 0) & (mask_H[None, :] > 0)
    return {
        "final_loss": loss,
        "final_mse": aux["mse"],
        "fvu": fvu(x_hat_NxD, x_NxD),
        "unit_active_fraction": jnp.mean(
            active_NxH, axis=0
        ),  # H: share of samples where unit fires
        "l0": jnp.mean(jnp.sum(active_NxH, axis=-1)),
    }


def dead_units(unit_active_fraction_SxH: np.ndarray, n_active_S: np.ndarray) -> np.ndarray:
    """Per seed, the number of in-use hidden units that are zero on every sample."""
    h = unit_active_fraction_SxH.shape[-1]
    in_use = np.arange(h)[None, :] < np.asarray(n_active_S)[:, None]
    return np.sum((unit_active_fraction_SxH == 0) & in_use, axis=-1)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sound near 0 and 1, unlike the Wald one)."""
    if n == 0:
        return (0.0, 1.0)
    z = scipy.stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # In exact arithmetic the interval contains p (its ends are 0 and 1 at p = 0 and 1); clamp so
    # rounding cannot push an end past the estimate.
    return (float(max(0.0, min(p, centre - half))), float(min(1.0, max(p, centre + half))))


def quantiles(values: np.ndarray, qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Named quantiles (`q10`, `q50`, ...) of the finite values; NaN when there are none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return {
        f"q{round(q * 100)}": (float(np.quantile(v, q)) if v.size else float("nan")) for q in qs
    }


def _unit_vectors(w_SxHxF: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(w_SxHxF, axis=-1, keepdims=True)
    return w_SxHxF / np.where(norms == 0, 1.0, norms)


def matched_similarity(a_HxF: np.ndarray, b_HxF: np.ndarray) -> np.ndarray:
    """Cosine similarities of hidden units after the best one-to-one matching (Hungarian, on |cos|).

    Units are rows (one weight vector per hidden unit). The sign is kept, so a unit matched to its
    negation scores -1; with ReLU units a flipped unit is a different unit.
    """
    cos_HxH = _unit_vectors(a_HxF) @ _unit_vectors(b_HxF).T
    rows, cols = scipy.optimize.linear_sum_assignment(-np.abs(cos_HxH))
    return cos_HxH[rows, cols]


def pairwise_matched_similarity(w_SxHxF: np.ndarray, max_pairs: int | None = None) -> np.ndarray:
    """Mean matched cosine similarity for every pair of seeds (i < j), as a flat array.

    `max_pairs` keeps the first pairs in a fixed order (row-major over i < j) to bound the cost.
    """
    s = w_SxHxF.shape[0]
    out = []
    for i in range(s):
        for j in range(i + 1, s):
            out.append(float(np.mean(matched_similarity(w_SxHxF[i], w_SxHxF[j]))))
            if max_pairs is not None and len(out) >= max_pairs:
                return np.asarray(out)
    return np.asarray(out)
