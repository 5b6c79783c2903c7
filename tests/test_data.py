"""The data generators of `jaxae.data`: exact structure, statistics, determinism, jit and vmap."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import data
from jaxae.config import DataConfig

# One shape for every data set, so that each program compiles once.
N, D, MAX = 20_000, 10, 7


def as_np(x: jax.Array) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def test_multiples_structure(key: jax.Array) -> None:
    x = data.multiples(key, N, D, MAX)
    assert x.shape == (N, D)
    assert x.dtype == jnp.float32
    x = as_np(x)
    x0 = x[:, 0]
    for j in range(D):
        np.testing.assert_array_equal(x[:, j], x0 * (j + 1))
    np.testing.assert_array_equal(x0, np.round(x0))
    # round(U[0,1) * MAX) reaches every integer 0..MAX (the end points with probability 1/(2 MAX)
    # each, so missing one in N draws has probability about 2 * (1 - 1/14)^N, below 1e-600).
    np.testing.assert_array_equal(np.unique(x0), np.arange(MAX + 1))


def test_offset_structure(key: jax.Array) -> None:
    x = data.offset(key, N, D, MAX)
    assert x.shape == (N, D)
    assert x.dtype == jnp.float32
    x = as_np(x)
    x0 = x[:, 1] - x[:, 0]
    for j in range(D):
        np.testing.assert_array_equal(x[:, j] - x[:, 0], j * x0)
    k = x[:, 0] - x0
    for part in (x0, k):
        np.testing.assert_array_equal(part, np.round(part))
        np.testing.assert_array_equal(np.unique(part), np.arange(MAX + 1))
    # x0 and k come from independent keys: their sample correlation has standard error
    # 1/sqrt(N) ~ 0.007, so 0.05 is 7 standard errors.
    assert abs(np.corrcoef(x0, k)[0, 1]) < 0.05


@pytest.mark.parametrize(
    ("kind", "rank"),
    [
        ("multiples", 1),
        ("offset", 2),
        ("gaussian", D),
    ],
)
def test_matrix_rank(key: jax.Array, kind: str, rank: int) -> None:
    x = data.make_data(key, DataConfig(kind=kind, n_samples=N, n_features=D, max_value=200))
    assert np.linalg.matrix_rank(as_np(x).astype(np.float64)) == rank


def test_gaussian_statistics(key: jax.Array) -> None:
    n, d = N, D
    x = data.gaussian(key, n, d)
    assert x.shape == (n, d)
    assert x.dtype == jnp.float32
    x = as_np(x).astype(np.float64)
    # Standard errors for i.i.d. N(0, 1) over m draws: the sample mean has SE 1/sqrt(m), the sample
    # std SE ~ 1/sqrt(2m), a sample correlation SE ~ 1/sqrt(m). Per column m = n, overall m = n*d.
    # Every bound is 5 SE (two-sided tail 6e-7 each).
    se_col, se_all = 1 / np.sqrt(n), 1 / np.sqrt(n * d)
    assert abs(x.mean()) < 5 * se_all
    assert abs(x.std() - 1) < 5 * se_all / np.sqrt(2)
    np.testing.assert_array_less(np.abs(x.mean(axis=0)), 5 * se_col)
    np.testing.assert_array_less(np.abs(x.std(axis=0) - 1), 5 * se_col / np.sqrt(2))
    off_diagonal = np.corrcoef(x, rowvar=False)[~np.eye(d, dtype=bool)]
    np.testing.assert_array_less(np.abs(off_diagonal), 5 * se_col)


GENERATORS = [
    pytest.param(functools.partial(data.multiples, max_value=200), id="multiples"),
    pytest.param(functools.partial(data.offset, max_value=200), id="offset"),
    pytest.param(data.gaussian, id="gaussian"),
]


@pytest.mark.parametrize("generate", GENERATORS)
def test_same_key_same_data(key: jax.Array, generate: Callable[..., jax.Array]) -> None:
    a = generate(key, N, n_features=D)
    b = generate(jax.random.key(0), N, n_features=D)
    np.testing.assert_array_equal(as_np(a), as_np(b))
    c = generate(jax.random.key(1), N, n_features=D)
    assert not np.array_equal(as_np(a), as_np(c))
    assert np.mean(as_np(a) == as_np(c)) < 0.5


@pytest.mark.parametrize("generate", GENERATORS)
def test_jit_matches_eager(key: jax.Array, generate: Callable[..., jax.Array]) -> None:
    eager = generate(key, N, n_features=D)
    jitted = jax.jit(functools.partial(generate, n=N, n_features=D))(key)
    np.testing.assert_array_equal(as_np(jitted), as_np(eager))


@pytest.mark.parametrize(
    "generate",
    [data.multiples, data.offset],
    ids=["multiples", "offset"],
)
def test_jit_static_argnums(key: jax.Array, generate: Callable[..., jax.Array]) -> None:
    eager = generate(key, N, D, 9)
    jitted = jax.jit(generate, static_argnums=(1, 2, 3))(key, N, D, 9)
    np.testing.assert_array_equal(as_np(jitted), as_np(eager))


@pytest.mark.parametrize("generate", GENERATORS)
def test_vmap_over_keys(generate: Callable[..., jax.Array]) -> None:
    keys = [jax.random.key(i) for i in range(3)]
    batched = jax.vmap(functools.partial(generate, n=N, n_features=D))(jnp.stack(keys))
    assert batched.shape == (3, N, D)
    batched = as_np(batched)
    for row, k in zip(batched, keys, strict=True):
        np.testing.assert_array_equal(row, as_np(generate(k, N, n_features=D)))
    assert not np.array_equal(batched[0], batched[1])


@pytest.mark.parametrize(
    ("kind", "generate"),
    [
        ("multiples", functools.partial(data.multiples, max_value=11)),
        ("offset", functools.partial(data.offset, max_value=11)),
        ("gaussian", data.gaussian),
    ],
)
def test_make_data_dispatch(key: jax.Array, kind: str, generate: Callable[..., jax.Array]) -> None:
    x = data.make_data(key, DataConfig(kind=kind, n_samples=N, n_features=D, max_value=11))
    assert x.shape == (N, D)
    assert x.dtype == jnp.float32
    np.testing.assert_array_equal(as_np(x), as_np(generate(key, N, n_features=D)))


# ------------------------------------------------------------------------------------------------
# Sparse superposition with its ground truth

M, ACTIVE = 24, 3


@pytest.mark.parametrize("magnitude", ["halfnormal", "uniform", "exponential"])
def test_sparse_codes_have_exactly_active_distinct_atoms(key: jax.Array, magnitude: str) -> None:
    codes = as_np(data.sparse_codes(key, 5000, M, ACTIVE, magnitude))
    assert codes.shape == (5000, M)
    np.testing.assert_array_equal(np.sum(codes != 0, axis=1), ACTIVE)
    assert np.all(codes >= 0)
    # Every atom is chosen with probability ACTIVE / M: 625 expected per atom, sd ~ 24.
    per_atom = np.sum(codes != 0, axis=0)
    np.testing.assert_array_less(np.abs(per_atom - 5000 * ACTIVE / M), 6 * np.sqrt(625))


def test_sparse_magnitude_distributions(key: jax.Array) -> None:
    """Means of the non-zero coefficients: sqrt(2/pi), 1/2 and 1 (5 standard errors)."""
    for magnitude, mean, sd in [
        ("halfnormal", np.sqrt(2 / np.pi), np.sqrt(1 - 2 / np.pi)),
        ("uniform", 0.5, np.sqrt(1 / 12)),
        ("exponential", 1.0, 1.0),
    ]:
        codes = as_np(data.sparse_codes(key, 5000, M, ACTIVE, magnitude))
        values = codes[codes != 0]
        assert abs(values.mean() - mean) < 5 * sd / np.sqrt(values.size), magnitude


def test_sparse_is_codes_times_unit_norm_atoms(key: jax.Array) -> None:
    x, atoms = data.sparse(key, 500, D, M, ACTIVE)
    atoms = as_np(atoms)
    assert atoms.shape == (M, D)
    np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0, rtol=1e-6)
    _, code_key, _ = jax.random.split(key, 3)
    codes = as_np(data.sparse_codes(code_key, 500, M, ACTIVE))
    np.testing.assert_allclose(as_np(x), codes @ atoms, rtol=1e-5, atol=1e-6)


def test_sparse_noise_is_added_with_its_standard_deviation(key: jax.Array) -> None:
    clean, _ = data.sparse(key, N, D, M, ACTIVE)
    noisy, _ = data.sparse(key, N, D, M, ACTIVE, noise=0.5)
    residual = as_np(noisy) - as_np(clean)
    assert abs(residual.std() - 0.5) < 0.01


def test_sparse_is_deterministic_in_the_key(key: jax.Array) -> None:
    a, atoms_a = data.sparse(key, 100, D, M, ACTIVE)
    b, atoms_b = data.sparse(jax.random.key(0), 100, D, M, ACTIVE)
    np.testing.assert_array_equal(as_np(a), as_np(b))
    np.testing.assert_array_equal(as_np(atoms_a), as_np(atoms_b))
    _, atoms_c = data.sparse(jax.random.key(1), 100, D, M, ACTIVE)
    assert not np.array_equal(as_np(atoms_a), as_np(atoms_c))


def test_make_data_and_ground_truth_of_sparse(key: jax.Array) -> None:
    cfg = DataConfig(kind="sparse", n_samples=100, n_features=D, n_atoms=M, active=ACTIVE)
    x, atoms = data.sparse(key, 100, D, M, ACTIVE)
    np.testing.assert_array_equal(as_np(data.make_data(key, cfg)), as_np(x))
    np.testing.assert_array_equal(as_np(data.ground_truth(key, cfg)), as_np(atoms))
    assert data.ground_truth(key, DataConfig(kind="gaussian")) is None
