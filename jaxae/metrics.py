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

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.stats
from jax import lax

from jaxae.config import Config, LossConfig
from jaxae.losses import forward, loss_terms
from jaxae.model import Autoencoder, hidden_mask
from jaxae.train import ARM_AXES, TrainState, n_arms, over_arms

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
    k: jax.Array | None = None,
    rho: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Full-data figures of one seed: loss, MSE, FVU, per-unit activity, mean active units (L0).

    A unit is active on a sample when `model.is_active` says so (its pre-activation is positive and,
    for top-k, it is among the k largest).
    """
    fwd = forward(params, x_NxD, model=model, cfg=loss_cfg, mask_H=mask_H, k=k)
    loss, aux = loss_terms(
        params,
        x_NxD,
        fwd,
        model=model,
        cfg=loss_cfg,
        sparsity_weight=sparsity_weight,
        mask_H=mask_H,
        rho=rho,
    )
    active_NxH = model.is_active(fwd.h_BxH) & (mask_H[None, :] > 0)
    return {
        "final_loss": loss,
        "final_mse": aux["mse"],
        "fvu": fvu(fwd.x_hat_BxD, x_NxD),
        "unit_active_fraction": jnp.mean(active_NxH, axis=0),  # share of samples a unit fires on
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
    w = np.asarray(w_SxHxF, np.float64)
    norms = np.linalg.norm(w, axis=-1, keepdims=True)
    return w / np.where(norms == 0, 1.0, norms)


def matched_cosines(a_HxF: np.ndarray, b_GxF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best one-to-one matching of the rows of `a` to rows of `b` on **signed** cosine.

    Hungarian assignment (`scipy.optimize.linear_sum_assignment`) maximising the total cosine of
    unit-normalised rows. Returns `(cos_H, partner_H)`: each row of `a` gets its partner's cosine
    and index; with fewer rows in `b` (G < H) the unmatched rows of `a` get cosine 0 and partner -1.
    The sign counts: a unit matched to its negation scores -1 (with ReLU codes it is another unit).
    """
    cos_HxG = _unit_vectors(a_HxF) @ _unit_vectors(b_GxF).T
    rows, cols = scipy.optimize.linear_sum_assignment(cos_HxG, maximize=True)
    cos_H = np.zeros(cos_HxG.shape[0])
    partner_H = np.full(cos_HxG.shape[0], -1)
    cos_H[rows], partner_H[rows] = cos_HxG[rows, cols], cols
    return cos_H, partner_H


def matched_similarity(a_HxF: np.ndarray, b_HxF: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with its matched row of `b` (see `matched_cosines`)."""
    return matched_cosines(a_HxF, b_HxF)[0]


# A true atom counts as recovered when some unit's direction is matched to it at least this closely.
RECOVERED_COSINE = 0.9
# Two units are "shared" between seeds (Paulo & Belrose 2025) when both their decoder and encoder
# directions agree beyond this cosine.
SHARED_COSINE = 0.7


def ground_truth_mcc(w_SxHxD: np.ndarray, atoms_MxD: np.ndarray) -> dict[str, np.ndarray]:
    """Ground-truth MCC of every seed: its unit directions matched to the true atoms.

    Each atom is matched to one unit (Hungarian, signed cosine, maximising the total; more units
    than atoms is fine, and with fewer the unmatched atoms score 0). Per seed: `gt_mcc`, the mean
    matched cosine over the atoms, and `recovered`, the share of atoms matched at cosine >=
    `RECOVERED_COSINE`. `atom_cos_SxM` keeps every atom's matched cosine. `atoms_MxD` may carry a
    leading seed axis (a data set per seed).
    """
    atoms_SxMxD = np.broadcast_to(atoms_MxD, (len(w_SxHxD), *np.shape(atoms_MxD)[-2:]))
    atom_cos_SxM = np.stack(
        [
            matched_cosines(a_MxD, w_HxD)[0]
            for a_MxD, w_HxD in zip(atoms_SxMxD, w_SxHxD, strict=True)
        ]
    )
    return {
        "gt_mcc": atom_cos_SxM.mean(axis=-1),
        "recovered": (atom_cos_SxM >= RECOVERED_COSINE).mean(axis=-1),
        "atom_cos_SxM": atom_cos_SxM,
    }


def seed_pairs(n_seeds: int, max_pairs: int | None = None) -> np.ndarray:
    """Pairs `(i, j)`, i < j, row-major; the first `max_pairs` of them if given: `pairs_Px2`."""
    i, j = np.triu_indices(n_seeds, k=1)
    pairs = np.stack([i, j], axis=-1)
    return pairs if max_pairs is None else pairs[:max_pairs]


def pairwise_mcc(
    decoder_SxHxD: np.ndarray,
    encoder_SxHxD: np.ndarray | None = None,
    max_pairs: int | None = None,
) -> dict[str, np.ndarray]:
    """Cross-seed agreement for every pair of seeds (`seed_pairs` order), matched on the decoder.

    Per pair: `pw_mcc`, the mean matched decoder cosine (PW-MCC); with encoders, `pw_mcc_encoder`
    (matched on the encoder on its own) and `shared`, the share of units whose decoder match also
    agrees in the encoder, both beyond `SHARED_COSINE` (Paulo & Belrose 2025).
    """
    pairs = seed_pairs(len(decoder_SxHxD), max_pairs)
    out: dict[str, list[float]] = {"pw_mcc": [], "pw_mcc_encoder": [], "shared": []}
    enc = None if encoder_SxHxD is None else _unit_vectors(encoder_SxHxD)
    for i, j in pairs:
        cos_H, partner_H = matched_cosines(decoder_SxHxD[i], decoder_SxHxD[j])
        out["pw_mcc"].append(float(cos_H.mean()))
        if enc is None:
            continue
        out["pw_mcc_encoder"].append(float(matched_similarity(enc[i], enc[j]).mean()))
        matched = partner_H >= 0
        enc_cos_H = np.zeros_like(cos_H)
        enc_cos_H[matched] = np.sum(enc[i][matched] * enc[j][partner_H[matched]], axis=-1)
        out["shared"].append(float(np.mean((cos_H > SHARED_COSINE) & (enc_cos_H > SHARED_COSINE))))
    return {k: np.asarray(v) for k, v in out.items() if v or k == "pw_mcc"}


def random_unit_mcc_chance(n_units: int, dim: int, n_atoms: int | None = None) -> float:
    """Expected mean matched cosine between two sets of independent random unit vectors.

    A Monte Carlo estimate (fixed generator, 200 draws) of the chance level of `pairwise_mcc` (two
    sets of `n_units`) or of `ground_truth_mcc` (`n_atoms` atoms against `n_units` units) when no
    direction is learned: what matching alone finds.
    """
    rng = np.random.default_rng(0)
    m = n_units if n_atoms is None else n_atoms
    draws = [
        matched_similarity(rng.normal(size=(m, dim)), rng.normal(size=(n_units, dim))).mean()
        for _ in range(200)
    ]
    return float(np.mean(draws))


# ----------------------------------------------------------------------------------------------
# Filters as images: are they oriented, are they local?

# `orientation_concentration` zero-pads each filter to this many times its side before the FFT, so
# the spectrum of an 8x8 filter is sampled finely enough for its angles.
SPECTRUM_PAD = 4


def _centred_filters(f_NxPxP: np.ndarray) -> np.ndarray:
    f = np.asarray(f_NxPxP, np.float64)
    return f - f.mean(axis=(-2, -1), keepdims=True)


def orientation_concentration(f_NxPxP: np.ndarray) -> np.ndarray:
    """How concentrated each filter's 2-D power spectrum is in orientation, in [0, 1].

    The filter (its mean removed) is zero-padded to `SPECTRUM_PAD` times its side and Fourier
    transformed; every frequency (k_x, k_y) but 0 votes for its orientation theta = atan2(k_y, k_x)
    with its power. The score is the length of the mean doubled-angle vector,
    `|sum P e^(2i theta)| / sum P`: 1 when all power lies on one line through the origin, near 0
    when it is spread over all orientations. On 8x8 pixels the patch's edges spread even a pure
    grating's power (it scores ~0.85, a Gabor patch ~0.8); white noise scores ~0.13. Doubling the
    angle makes theta and theta + pi (the same orientation) agree.
    """
    f = _centred_filters(f_NxPxP)
    n = SPECTRUM_PAD * f.shape[-1]
    power = np.square(np.abs(np.fft.fft2(f, s=(n, n))))
    k_y, k_x = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    vote = np.exp(2j * np.arctan2(k_y, k_x))
    vote[0, 0] = 0.0  # the mean (zero after centring) has no orientation
    total = power.sum(axis=(-2, -1)) - power[..., 0, 0]
    return np.abs(np.sum(power * vote, axis=(-2, -1))) / np.maximum(total, np.finfo(float).tiny)


def spatial_concentration(f_NxPxP: np.ndarray) -> np.ndarray:
    """How concentrated each filter's energy is in space: 1 - spread / spread of uniform energy.

    With p = w^2 / sum w^2 over the pixels (mean removed), the spread is the root mean square
    distance of the energy from its centroid, `sqrt(sum p |r - r_mean|^2)`; uniform energy over a
    P x P patch has spread `sqrt((P^2 - 1) / 6)`. 0: energy everywhere (white noise, PCA's global
    components); towards 1: energy in a few neighbouring pixels (a Gabor with sigma 1.5 on 8x8:
    ~0.5). A filter whose energy sits in opposite corners scores below 0.
    """
    f = _centred_filters(f_NxPxP)
    side = f.shape[-1]
    energy = np.square(f)
    p = energy / np.maximum(energy.sum(axis=(-2, -1), keepdims=True), np.finfo(float).tiny)
    r_y, r_x = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    mean_y = np.sum(p * r_y, axis=(-2, -1))[..., None, None]
    mean_x = np.sum(p * r_x, axis=(-2, -1))[..., None, None]
    spread = np.sqrt(np.sum(p * (np.square(r_y - mean_y) + np.square(r_x - mean_x)), axis=(-2, -1)))
    return 1.0 - spread / np.sqrt((side * side - 1) / 6.0)


# ----------------------------------------------------------------------------------------------
# Trained states: every arm of a seed, every seed


def evaluate_state(
    state: TrainState, x_NxD: jax.Array, *, model: Autoencoder, cfg: Config
) -> dict[str, jax.Array]:
    """`metrics.evaluate` of every arm of a seed on its whole data set, each with its own mask and
    sparsity weight: figures with a leading arm axis."""

    def one(state: TrainState) -> dict[str, jax.Array]:
        return _evaluate_arm(state, x_NxD, model=model, cfg=cfg)

    return over_arms(one, n_arms(state), in_axes=ARM_AXES)(state)


def _evaluate_arm(
    state: TrainState, x_NxD: jax.Array, *, model: Autoencoder, cfg: Config
) -> dict[str, jax.Array]:
    return evaluate(
        state.params,
        x_NxD,
        model=model,
        loss_cfg=cfg.loss,
        sparsity_weight=state.hyper.sparsity_weight,
        mask_H=hidden_mask(state.hyper.n_active, model.n_hidden),
        k=state.hyper.k,
        rho=state.hyper.rho,
    )


def evaluate_each(
    states: TrainState, x: jax.Array, *, model: Autoencoder, cfg: Config
) -> dict[str, jax.Array]:
    """`evaluate_state` of every seed of `states` (leading axis S) on `x_NxD`, or with
    `data.per_seed` on its own `x_SxNxD`.

    A loop over seeds, not a vmap: XLA picks vectorised kernels by shape, so a vmapped seed's
    figures would change in the last bit with the number of seeds evaluated together; in a loop
    each seed runs the same program whatever their number, and only one seed's N x D
    intermediates exist at a time.
    """
    evaluate = functools.partial(evaluate_state, model=model, cfg=cfg)
    if cfg.data.per_seed:
        return lax.map(lambda pair: evaluate(*pair), (states, x))
    return lax.map(lambda state: evaluate(state, x), states)
