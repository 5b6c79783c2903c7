"""Metrics: FVU, the PCA floor, convergence intervals and cross-seed unit matching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special

from jaxae import metrics


def test_fvu_is_zero_for_perfect_and_one_for_the_mean(key):
    x = jax.random.normal(key, (100, 5))
    assert float(metrics.fvu(x, x)) == 0.0
    mean = jnp.broadcast_to(jnp.mean(x, axis=0, keepdims=True), x.shape)
    np.testing.assert_allclose(float(metrics.fvu(mean, x)), 1.0, rtol=1e-6)


def test_pca_floor_matches_a_least_squares_projection():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for h in range(7):
        basis = vt[:h].T
        recon = centred @ basis @ basis.T + x.mean(axis=0)
        by_hand = np.sum((recon - x) ** 2) / np.sum(centred**2)
        np.testing.assert_allclose(metrics.pca_floor_fvu(x, h), by_hand, atol=1e-10)


def test_pca_floor_is_zero_for_rank_one_data():
    x = np.outer(np.arange(50.0), np.arange(1.0, 11.0))
    assert metrics.pca_floor_fvu(x, 1) < 1e-20
    assert metrics.pca_floor_fvu(x, 0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    # Reference values from the Wilson formula with z = 1.959964.
    [(0, 10, (0.0, 0.27753)), (5, 10, (0.23659, 0.76341)), (10, 10, (0.72247, 1.0))],
)
def test_wilson_interval(k, n, expected):
    np.testing.assert_allclose(metrics.wilson_interval(k, n), expected, atol=1e-5)


def test_quantiles_skip_non_finite_values():
    q = metrics.quantiles(np.array([1.0, 2.0, 3.0, np.nan, np.inf]))
    assert q["q50"] == 2.0
    assert np.isnan(metrics.quantiles(np.array([np.nan]))["q50"])


def test_matching_undoes_a_permutation_of_units():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 5))
    perm = rng.permutation(8)
    np.testing.assert_allclose(metrics.matched_similarity(a, a[perm] * 3.0), np.ones(8), atol=1e-12)
    # Signed matching: negated orthonormal units match nothing (every cosine is 0 or -1).
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    assert np.all(metrics.matched_similarity(q, -q[perm]) <= 1e-12)


def test_pairwise_similarity_counts_every_pair_once():
    w = np.random.default_rng(2).normal(size=(5, 4, 3))
    sims = metrics.pairwise_mcc(w)["pw_mcc"]
    assert sims.shape == (10,)
    assert np.all(np.abs(sims) <= 1.0 + 1e-12)
    assert metrics.pairwise_mcc(w, max_pairs=3)["pw_mcc"].shape == (3,)


def test_dead_units_counts_only_units_in_use():
    activity = np.array([[0.0, 0.5, 0.0, 0.0], [0.2, 0.0, 0.1, 0.0]])
    np.testing.assert_array_equal(metrics.dead_units(activity, np.array([2, 4])), [1, 2])


# ------------------------------------------------------------------------------------------------
# Ground-truth and cross-seed matching


def test_permuted_rescaled_copy_of_the_atoms_scores_one():
    rng = np.random.default_rng(3)
    atoms = rng.normal(size=(12, 6))
    w = np.stack([atoms[rng.permutation(12)] * rng.uniform(0.1, 5.0, (12, 1)) for _ in range(3)])
    g = metrics.ground_truth_mcc(w, atoms)
    np.testing.assert_allclose(g["gt_mcc"], 1.0, atol=1e-12)
    np.testing.assert_array_equal(g["recovered"], 1.0)
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    flipped = metrics.ground_truth_mcc(-basis[None, rng.permutation(6)], basis)
    assert np.all(flipped["gt_mcc"] <= 1e-12) and np.all(flipped["recovered"] == 0)


def test_rectangular_matching_more_units_than_atoms():
    rng = np.random.default_rng(4)
    atoms = rng.normal(size=(5, 8))
    units = np.concatenate([rng.normal(size=(7, 8)), atoms[::-1] * 2.0])[rng.permutation(12)]
    g = metrics.ground_truth_mcc(units[None], atoms)
    np.testing.assert_allclose(g["gt_mcc"], [1.0], atol=1e-12)
    # Fewer units than atoms: the unmatched atoms score 0.
    few = metrics.ground_truth_mcc(atoms[None, :3], atoms)
    np.testing.assert_allclose(few["atom_cos_SxM"][0], [1, 1, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(few["gt_mcc"], [0.6], atol=1e-12)


def expected_max_cosine(n_units: int, dim: int) -> float:
    """E[max of the cosines of one fixed direction with n independent uniform directions in R^dim].

    The cosine t has density c (1 - t^2)^((dim - 3) / 2) on [-1, 1]; E[max] = 1 - int F(t)^n dt.
    """
    c = 1.0 / scipy.special.beta(0.5, (dim - 1) / 2)

    def cdf(t: float) -> float:
        return scipy.integrate.quad(lambda u: c * (1 - u * u) ** ((dim - 3) / 2), -1, t)[0]

    return 1.0 - scipy.integrate.quad(lambda t: cdf(t) ** n_units, -1, 1)[0]


@pytest.mark.parametrize(("n_units", "dim"), [(1, 5), (10, 10), (32, 16)])
def test_random_dictionaries_score_their_analytic_chance(n_units, dim):
    """One true atom against random units: gt_mcc is the largest of n cosines, whose mean has the
    closed form above; 4,000 random seeds agree within 5 standard errors."""
    rng = np.random.default_rng(n_units)
    atoms = rng.normal(size=(1, dim))
    g = metrics.ground_truth_mcc(rng.normal(size=(4000, n_units, dim)), atoms)["gt_mcc"]
    expected = expected_max_cosine(n_units, dim)
    assert abs(g.mean() - expected) < 5 * g.std() / np.sqrt(g.size), (g.mean(), expected)


def test_pairwise_mcc_and_shared_units():
    rng = np.random.default_rng(5)
    dec = rng.normal(size=(4, 6, 9))
    enc = rng.normal(size=(4, 6, 9))
    same = metrics.pairwise_mcc(np.stack([dec[0]] * 3), np.stack([enc[0]] * 3))
    for key in ("pw_mcc", "pw_mcc_encoder", "shared"):
        np.testing.assert_allclose(same[key], 1.0, atol=1e-12)
    assert same["pw_mcc"].shape == (3,)
    # Same decoders, unrelated encoders: decoders agree, but no unit is shared.
    mixed = metrics.pairwise_mcc(np.stack([dec[0]] * 4), enc)
    np.testing.assert_allclose(mixed["pw_mcc"], 1.0, atol=1e-12)
    assert np.all(mixed["shared"] < 0.5)
    random = metrics.pairwise_mcc(dec, enc, max_pairs=4)
    assert random["pw_mcc"].shape == (4,) and np.all(random["pw_mcc"] < 0.9)
    np.testing.assert_array_equal(metrics.seed_pairs(4, 4), [[0, 1], [0, 2], [0, 3], [1, 2]])


def gabor(side: int, theta: float, sigma: float = 1.5, wavelength: float = 4.0) -> np.ndarray:
    """A Gabor patch: a grating at angle `theta` under a Gaussian envelope, centred."""
    r_y, r_x = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    c = (side - 1) / 2
    along = (r_x - c) * np.cos(theta) + (r_y - c) * np.sin(theta)
    envelope = np.exp(-((r_x - c) ** 2 + (r_y - c) ** 2) / (2 * sigma**2))
    return envelope * np.cos(2 * np.pi * along / wavelength)


def test_a_gabor_filter_is_oriented_and_local_white_noise_is_neither():
    gabors = np.stack([gabor(8, theta) for theta in np.linspace(0, np.pi, 8, endpoint=False)])
    noise = np.random.default_rng(0).normal(size=(2000, 8, 8))
    o_gabor, o_noise = (metrics.orientation_concentration(f) for f in (gabors, noise))
    l_gabor, l_noise = (metrics.spatial_concentration(f) for f in (gabors, noise))
    assert o_gabor.min() > 0.75 and l_gabor.min() > 0.45
    assert o_noise.mean() < 0.2 and l_noise.mean() < 0.05
    assert np.quantile(o_noise, 0.99) < o_gabor.min()
    assert np.quantile(l_noise, 0.99) < l_gabor.min()
    # the score is about concentration, not a preferred angle
    np.testing.assert_allclose(o_gabor, o_gabor[0], atol=0.02)


def test_orientation_and_locality_limits():
    grating = np.tile(np.cos(np.pi * np.arange(8) / 2), (8, 1))  # vertical stripes
    # a grating's power lies on one line, spread only by the patch's edges (8 pixels)
    assert metrics.orientation_concentration(grating[None])[0] > 0.8
    assert abs(metrics.spatial_concentration(grating[None])[0]) < 0.05  # energy everywhere
    dot = np.zeros((1, 8, 8))
    dot[0, 3:5, 3:5] = [[1, -1], [-1, 1]]  # energy in four neighbouring pixels
    assert metrics.spatial_concentration(dot)[0] > 0.75  # 1 - sqrt(1/2) / sqrt(63/6)
    # scale and sign do not matter
    f = np.random.default_rng(1).normal(size=(3, 8, 8))
    for fn in (metrics.orientation_concentration, metrics.spatial_concentration):
        np.testing.assert_allclose(fn(-5.0 * f), fn(f), rtol=1e-10)
