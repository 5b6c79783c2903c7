"""`jaxae.baselines`: scikit-learn's PCA and dictionary learning, as `images` and `sparse` fit them.

Tiny sparse data (8 atoms in 4 dimensions) and two passes: the tests check what the fits return
and that they are reproducible, not how well they fit.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import numpy as np
import pytest
import sklearn.decomposition

from jaxae import baselines, data, metrics
from jaxae.experiments import images

WIDTH, K, FITS = 8, 2, 3
FAST = baselines.DictionaryFit(alpha=0.1, batch_size=16, max_iter=2, fit_algorithm="cd")


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    x, _ = data.sparse(jax.random.key(0), 320, n_features=4, n_atoms=WIDTH, active=K)
    x = np.asarray(x, np.float64)
    return x[:256], x[256:]


def _fit(split, fit: baselines.DictionaryFit = FAST, key: int = 1) -> baselines.DictionaryLearning:
    train, held = split
    return baselines.dictionary_baseline(
        train, held, WIDTH, K, FITS, "random", jax.random.key(key), fit
    )


def test_dictionary_learning_shapes_and_ranges(split):
    dl = _fit(split)
    assert dl.atoms.shape == dl.starts.shape == (FITS, WIDTH, 4)
    assert dl.firing.shape == (FITS, WIDTH) and dl.examples.shape == (FAST.examples, 4)
    assert len(dl.heldout_fvu) == len(dl.fit_s) == FITS and min(dl.fit_s) > 0
    assert len(dl.pw_mcc) == len(dl.pw_mcc_start) == FITS * (FITS - 1) // 2
    assert all(-1.0 <= v <= 1.0 for v in dl.pw_mcc + dl.pw_mcc_start)
    assert all(l0 <= K for l0 in dl.heldout_l0)  # OMP with K non-zeros
    np.testing.assert_allclose(np.linalg.norm(dl.starts, axis=-1), 1.0)  # random unit directions
    assert dl.pw_mcc_median == pytest.approx(np.median(dl.pw_mcc))


def test_dictionary_learning_is_deterministic_in_random_state(split):
    """The same random states and start key give the same atoms; each state its own."""
    first, second = _fit(split), _fit(split)
    np.testing.assert_array_equal(first.atoms, second.atoms)
    np.testing.assert_array_equal(first.starts, second.starts)
    assert first.heldout_fvu == second.heldout_fvu
    assert not np.allclose(first.atoms[0], first.atoms[1])
    other = _fit(split, key=2)  # another start key: other starts, other atoms
    assert not np.allclose(first.starts, other.starts)
    assert not np.allclose(first.atoms, other.atoms)


def test_orienting_flips_atoms_to_their_codes_sign_and_keeps_the_fit(split):
    """An atom used with negative codes is its negation used with positive ones: the same fit,
    the same reconstructions, every atom's held-out codes summing to at least zero."""
    plain = _fit(split, dataclasses.replace(FAST, centre=False))
    oriented = _fit(split, dataclasses.replace(FAST, centre=False, orient=True))
    np.testing.assert_allclose(np.abs(oriented.atoms), np.abs(plain.atoms))
    np.testing.assert_allclose(oriented.heldout_fvu, plain.heldout_fvu)
    np.testing.assert_allclose(oriented.examples, plain.examples)
    flips = np.sign(np.sum(oriented.atoms * plain.atoms, axis=-1))
    assert set(np.unique(flips)) <= {-1.0, 1.0} and (flips < 0).any()
    _, held = split
    code = sklearn.decomposition.sparse_encode(
        held, oriented.atoms[0], algorithm="omp", n_nonzero_coefs=K
    )
    assert np.all(code.sum(axis=0) >= -1e-9)


def test_defaults_are_scikit_learns():
    """`images` fits with scikit-learn's own settings: `SKLEARN_DEFAULTS` must stay them."""
    params = inspect.signature(sklearn.decomposition.MiniBatchDictionaryLearning).parameters
    d = baselines.SKLEARN_DEFAULTS
    for name in ("alpha", "batch_size", "max_iter", "fit_algorithm"):
        assert getattr(d, name) == params[name].default, name
    assert d.early_stopping and d.centre and not d.orient


def test_images_fits_through_baselines(split, monkeypatch):
    """`images.dictionary_baseline` is the shared one at scikit-learn's defaults, its passes
    capped by `images.DL_MAX_ITER` (read at call time, so tests may lower it)."""
    monkeypatch.setattr(images, "DL_MAX_ITER", 1)
    train, held = split
    ours = images.dictionary_baseline(train, held, WIDTH, K, 2)
    fit = baselines.DictionaryFit(max_iter=1, examples=images.N_EXAMPLES)
    shared = baselines.dictionary_baseline(train, held, WIDTH, K, 2, fit=fit)
    np.testing.assert_array_equal(ours.atoms, shared.atoms)
    assert ours.start == "svd" and ours.examples.shape == (images.N_EXAMPLES, 4)
    assert images.DictionaryLearning is baselines.DictionaryLearning


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alpha", 0.0, "alpha=0.0 is invalid: allowed is a positive number"),
        ("batch_size", 0, "batch_size=0 is invalid: allowed is a positive integer"),
        ("max_iter", 1.5, "max_iter=1.5 is invalid"),
        ("fit_algorithm", "omp", "fit_algorithm='omp' is invalid: allowed is 'lars' or 'cd'"),
    ],
)
def test_bad_fit_settings_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        baselines.DictionaryFit(**{field: value})


def test_pca_baseline_reaches_zero_with_every_component(split):
    train, held = split
    pca = baselines.pca_baseline(train, held)
    curve = pca["heldout_fvu_by_components"]
    assert len(curve) == 4 and curve[-1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(curve) <= 1e-9)  # more components never reconstruct worse
    full = baselines.pca_reconstruction(pca, held, 4)
    assert float(metrics.fvu(full, held)) == pytest.approx(0.0, abs=1e-6)
