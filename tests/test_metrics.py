"""Metrics: FVU, the PCA floor, convergence intervals and cross-seed unit matching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    np.testing.assert_allclose(metrics.matched_similarity(a, -a[perm]), -np.ones(8), atol=1e-12)


def test_pairwise_similarity_counts_every_pair_once():
    w = np.random.default_rng(2).normal(size=(5, 4, 3))
    sims = metrics.pairwise_matched_similarity(w)
    assert sims.shape == (10,)
    assert np.all(np.abs(sims) <= 1.0 + 1e-12)
    assert metrics.pairwise_matched_similarity(w, max_pairs=3).shape == (3,)


def test_dead_units_counts_only_units_in_use():
    activity = np.array([[0.0, 0.5, 0.0, 0.0], [0.2, 0.0, 0.1, 0.0]])
    np.testing.assert_array_equal(metrics.dead_units(activity, np.array([2, 4])), [1, 2])
