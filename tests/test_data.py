"""The data generators of `jaxae.data`: exact structure, statistics, determinism, jit and vmap."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import data
from jaxae.config import DataConfig

ROOT = Path(__file__).resolve().parent.parent

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


# ----------------------------------------------------------------------------------------------
# Sparse codes as the SAE field draws them (SAELens's synthetic data, SynthSAEBench): each atom
# fires independently with its own probability; magnitude "one"

# N_FIRE rows of M atoms. Every bound below is 5 standard errors (two-sided tail 6e-7 each).
N_FIRE = 20_000
# (active, firing_p, zipf): uniform from active, uniform from firing_p, three Zipf exponents
FIRINGS = [
    pytest.param(3, 0.0, 0.0, id="uniform-active"),
    pytest.param(3, 0.1, 0.0, id="uniform-firing_p"),
    pytest.param(3, 0.0, 0.5, id="zipf0.5"),
    pytest.param(3, 0.0, 1.0, id="zipf1"),
    pytest.param(2, 0.0, 1.5, id="zipf1.5"),
]


@functools.cache
def bernoulli_codes(active: int, firing_p: float, zipf: float, seed: int = 0) -> np.ndarray:
    codes = data.sparse_codes(
        jax.random.key(seed), N_FIRE, M, active, "halfnormal", "bernoulli", firing_p, zipf
    )
    return as_np(codes)


def test_firing_probabilities_follow_the_rule() -> None:
    np.testing.assert_allclose(as_np(data.firing_probabilities(M, 3)), 3 / M, rtol=1e-6)
    np.testing.assert_array_equal(as_np(data.firing_probabilities(M, 3, firing_p=0.25)), 0.25)
    for s in (0.5, 1.0, 2.0):
        p = as_np(data.firing_probabilities(M, 1, zipf=s)).astype(np.float64)
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)  # the expected count is `active`
        np.testing.assert_allclose(p / p[0], np.arange(1, M + 1) ** -s, rtol=1e-5)
        assert np.all(np.diff(p) < 0)  # atom 0 the most frequent


@pytest.mark.parametrize(("active", "firing_p", "zipf"), FIRINGS)
def test_bernoulli_firing_rates_match_their_probabilities(
    active: int, firing_p: float, zipf: float
) -> None:
    codes = bernoulli_codes(active, firing_p, zipf)
    assert codes.shape == (N_FIRE, M) and np.all(codes >= 0)
    p = as_np(data.firing_probabilities(M, active, firing_p, zipf)).astype(np.float64)
    rate = np.mean(codes != 0, axis=0)
    np.testing.assert_array_less(np.abs(rate - p), 5 * np.sqrt(p * (1 - p) / N_FIRE))
    # atoms fire independently: the count per row has mean sum p and variance sum p(1 - p)
    count = np.sum(codes != 0, axis=1)
    assert abs(count.mean() - p.sum()) < 5 * np.sqrt(np.sum(p * (1 - p)) / N_FIRE)
    if firing_p == 0:
        np.testing.assert_allclose(p.sum(), active, rtol=1e-6)  # `active` is the expected count
    assert len(np.unique(count)) > 3  # not a fixed count


@pytest.mark.parametrize(("active", "firing_p", "zipf"), FIRINGS)
def test_zero_rows_appear_at_the_rate_no_atom_fires(
    active: int, firing_p: float, zipf: float
) -> None:
    codes = bernoulli_codes(active, firing_p, zipf)
    p = as_np(data.firing_probabilities(M, active, firing_p, zipf)).astype(np.float64)
    none = np.prod(1 - p)  # 0.05 to 0.29 here
    zero_rate = np.mean(np.all(codes == 0, axis=1))
    assert abs(zero_rate - none) < 5 * np.sqrt(none * (1 - none) / N_FIRE)


def test_zero_rows_stay_in_the_data_as_zeros_plus_noise(key: jax.Array) -> None:
    args = (key, N_FIRE, D, M, 1, "one", 0.0, "bernoulli")  # 1 atom expected: 36% zero rows
    clean, _ = data.sparse(*args)
    noisy, _ = data.sparse(key, N_FIRE, D, M, 1, "one", 0.5, "bernoulli")
    _, code_key, noise_key = jax.random.split(key, 3)
    codes = as_np(data.sparse_codes(code_key, N_FIRE, M, 1, "one", "bernoulli"))
    empty = np.all(codes == 0, axis=1)
    assert clean.shape == noisy.shape == (N_FIRE, D)  # no row is dropped
    assert 0.3 < empty.mean() < 0.42  # (1 - 1/24)^24 = 0.36
    np.testing.assert_array_equal(np.all(as_np(clean) == 0, axis=1), empty)
    pure_noise = 0.5 * as_np(jax.random.normal(noise_key, (N_FIRE, D)))
    np.testing.assert_allclose(as_np(noisy)[empty], pure_noise[empty], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("active", "zipf"), [(3, 0.5), (3, 1.0), (2, 1.5)], ids=["zipf0.5", "zipf1", "zipf1.5"]
)
def test_zipf_ranks_hold(active: int, zipf: float) -> None:
    codes = bernoulli_codes(active, 0.0, zipf)
    p = as_np(data.firing_probabilities(M, active, zipf=zipf)).astype(np.float64)
    rate = np.mean(codes != 0, axis=0)
    # More frequent atoms fire more: the mean rates of 4 blocks of 6 consecutive atoms fall with
    # the index. Neighbouring atoms' probabilities can differ by less than their standard errors,
    # the blocks' by more than 5 (asserted first), so a rise between blocks is not sampling noise.
    block_p, block_rate = p.reshape(4, 6).mean(axis=1), rate.reshape(4, 6).mean(axis=1)
    block_se = np.sqrt(p * (1 - p) / N_FIRE).reshape(4, 6)
    block_se = np.sqrt(np.sum(block_se**2, axis=1)) / 6
    gap_se = np.sqrt(block_se[:-1] ** 2 + block_se[1:] ** 2)
    assert np.all(-np.diff(block_p) > 5 * gap_se)
    assert np.all(np.diff(block_rate) < 0)
    # The least-squares slope of log(rate) on log(i + 1) is -s, within 5 standard errors (delta
    # method: var log(rate_i) = (1 - p_i) / (N p_i)); about 0.01 for s = 1.
    x = np.log(np.arange(1, M + 1))
    weight = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    slope = np.sum(weight * np.log(rate))
    slope_se = np.sqrt(np.sum(weight**2 * (1 - p) / (N_FIRE * p)))
    assert abs(slope + zipf) < 5 * slope_se, (slope, slope_se)


def test_exact_firing_is_unchanged(key: jax.Array) -> None:
    """The default firing is the original generator, computed here by hand from the same key."""
    choice_key, size_key = jax.random.split(key)
    u = as_np(jax.random.uniform(choice_key, (500, M)))
    size = np.abs(as_np(jax.random.normal(size_key, (500, ACTIVE))))
    chosen = np.argsort(-u, axis=1, kind="stable")[:, :ACTIVE]  # the ACTIVE largest keys
    expected = np.zeros((500, M), np.float32)
    np.put_along_axis(expected, chosen, size, axis=1)
    codes = as_np(data.sparse_codes(key, 500, M, ACTIVE, firing="exact"))
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(as_np(data.sparse_codes(key, 500, M, ACTIVE)), expected)
    cfg = DataConfig(kind="sparse", n_samples=500, n_features=D, n_atoms=M, active=ACTIVE)
    assert cfg.firing == "exact"
    x, atoms = data.sparse(key, 500, D, M, ACTIVE)
    np.testing.assert_array_equal(as_np(data.make_data(key, cfg)), as_np(x))
    _, code_key, _ = jax.random.split(key, 3)
    expected_x = as_np(data.sparse_codes(code_key, 500, M, ACTIVE)) @ as_np(atoms)
    np.testing.assert_allclose(as_np(x), expected_x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("firing", ["exact", "bernoulli"])
def test_magnitude_one_fires_every_atom_at_one(key: jax.Array, firing: str) -> None:
    codes = as_np(data.sparse_codes(key, 5000, M, ACTIVE, "one", firing))
    assert set(np.unique(codes)) == {0.0, 1.0}
    if firing == "exact":
        np.testing.assert_array_equal(np.sum(codes, axis=1), ACTIVE)
    # the non-zero pattern is the one any magnitude gives: magnitudes have their own key
    np.testing.assert_array_equal(
        codes != 0, as_np(data.sparse_codes(key, 5000, M, ACTIVE, "halfnormal", firing)) != 0
    )


BERNOULLI = DataConfig(
    kind="sparse",
    n_samples=2000,
    n_features=D,
    n_atoms=M,
    active=ACTIVE,
    firing="bernoulli",
    zipf=1.0,
    magnitude="one",
    noise=0.1,
)


def test_bernoulli_data_are_deterministic_in_the_key_under_jit_and_vmap() -> None:
    make = functools.partial(data.make_data, cfg=BERNOULLI)
    a, b = as_np(make(jax.random.key(0))), as_np(make(jax.random.key(0)))
    np.testing.assert_array_equal(a, b)
    c = as_np(make(jax.random.key(1)))
    assert not np.array_equal(a, c) and np.mean(a == c) < 0.5
    # compiled, `codes @ atoms + noise` may fuse or batch its float ops: equal to rounding
    np.testing.assert_allclose(as_np(jax.jit(make)(jax.random.key(0))), a, rtol=1e-5, atol=1e-5)
    keys = [jax.random.key(i) for i in range(3)]
    batched = as_np(jax.vmap(make)(jnp.stack(keys)))  # as data.per_seed draws them
    assert batched.shape == (3, 2000, D)
    for row, k in zip(batched, keys, strict=True):
        np.testing.assert_allclose(row, as_np(make(k)), rtol=1e-5, atol=1e-5)
    # the codes (which atoms fire, and how strongly) are the same bit for bit
    codes = functools.partial(
        data.sparse_codes, n=2000, n_atoms=M, active=ACTIVE, firing="bernoulli", zipf=1.0
    )
    np.testing.assert_array_equal(as_np(jax.jit(codes)(keys[0])), as_np(codes(keys[0])))
    batched_codes = as_np(jax.vmap(codes)(jnp.stack(keys)))
    for row, k in zip(batched_codes, keys, strict=True):
        np.testing.assert_array_equal(row, as_np(codes(k)))
    assert not np.array_equal(batched_codes[0], batched_codes[1])
    x, _ = data.sparse(jax.random.key(0), 2000, D, M, ACTIVE, "one", 0.1, "bernoulli", 0.0, 1.0)
    np.testing.assert_array_equal(a, as_np(x))


def test_firing_leaves_the_ground_truth_unchanged(key: jax.Array) -> None:
    exact = dataclasses.replace(BERNOULLI, firing="exact", zipf=0.0)
    _, atoms = data.sparse(key, 100, D, M, ACTIVE, "one", 0.0, "bernoulli", 0.2)
    _, atoms_exact = data.sparse(key, 100, D, M, ACTIVE)
    np.testing.assert_array_equal(as_np(atoms), as_np(atoms_exact))
    for cfg in (BERNOULLI, exact):
        np.testing.assert_array_equal(as_np(data.ground_truth(key, cfg)), as_np(atoms_exact))


@pytest.mark.parametrize(
    ("setting", "line"),
    [
        (
            "data.firing=maybe",
            "data.firing='maybe' is invalid: allowed is one of 'exact', 'bernoulli'",
        ),
        ("data.firing_p=1.5", "data.firing_p=1.5 is invalid: allowed is a number in [0, 1]"),
    ],
)
def test_cli_refuses_bad_firing_with_one_line_and_exit_2(
    capsys, tmp_path, monkeypatch, setting: str, line: str
) -> None:
    from jaxae import cli

    monkeypatch.chdir(tmp_path)
    argv = ["run", "sparse", "--seeds", "1", "--epochs", "1", "--set", setting]
    code = cli.main([*argv, "--set", "data.firing=bernoulli"] if "firing_p" in setting else argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"jaxae: error: {line}"), err
    assert list(tmp_path.iterdir()) == []  # nothing written


# ----------------------------------------------------------------------------------------------
# Host loaders: digits, natural-image patches, the user's array

DIGITS = DataConfig(kind="digits", n_samples=1438, n_features=64)
PATCHES = DataConfig(kind="patches", n_samples=2000, n_features=64, heldout=0.25)


def test_digits_shapes_range_and_split(key: jax.Array) -> None:
    train, held = data.host_split(key, DIGITS)
    assert train.shape == (1438, 64) and held.shape == (359, 64)
    assert train.dtype == held.dtype == np.float32
    for x in (train, held):
        assert x.min() == 0.0 and x.max() == 1.0  # grey levels 0..16, scaled
        np.testing.assert_array_equal(x * data.DIGITS_LEVELS, np.round(x * data.DIGITS_LEVELS))
    assert data.load_digits().shape == (data.DIGITS_ROWS, data.DIGITS_SIDE**2)
    pool, out = data.split_rows(key, data.DIGITS_ROWS, DIGITS.heldout)
    assert len(out) == 359 and sorted([*pool, *out]) == list(range(data.DIGITS_ROWS))
    np.testing.assert_array_equal(held, data.load_digits()[out])
    np.testing.assert_array_equal(data.make_data(key, DIGITS), train)
    np.testing.assert_array_equal(data.heldout(key, DIGITS), held)


def test_digits_fewer_rows_and_bad_sizes(key: jax.Array) -> None:
    train, _ = data.host_split(key, dataclasses.replace(DIGITS, n_samples=100))
    np.testing.assert_array_equal(train, data.host_split(key, DIGITS)[0][:100])
    with pytest.raises(
        ValueError, match=r"data\.n_samples=1500 is invalid: allowed is at most 1438"
    ):
        data.host_split(key, dataclasses.replace(DIGITS, n_samples=1500))
    with pytest.raises(ValueError, match=r"data\.n_features=10 is invalid: allowed is 64"):
        data.host_split(key, dataclasses.replace(DIGITS, n_features=10))


@pytest.mark.parametrize("cfg", [DIGITS, PATCHES], ids=["digits", "patches"])
def test_host_data_is_deterministic_in_the_data_key(cfg: DataConfig) -> None:
    a = data.host_split(jax.random.key(3), cfg)
    data._host_split.cache_clear()  # a fresh read, not the cached arrays
    b = data.host_split(jax.random.key(3), cfg)
    c = data.host_split(jax.random.key(4), cfg)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not a[0].flags.writeable  # the cached arrays are shared: read-only


def test_patches_follow_ngs_normalisation(key: jax.Array) -> None:
    train, held = data.host_split(key, PATCHES)
    assert train.shape == (2000, 64) and held.shape == (500, 64)
    for x in (train, held):
        assert x.min() >= 0.1 - 1e-6 and x.max() <= 0.9 + 1e-6
    # each patch's mean was removed before clipping: unclipped patches sit at 0.5 on average
    unclipped = np.all((train > 0.1 + 1e-6) & (train < 0.9 - 1e-6), axis=1)
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(train[unclipped].mean(axis=1), 0.5, atol=1e-5)
    # +-3 standard deviations of the training pixels map to 0.1 and 0.9: std ~ 0.8 / 6
    assert 0.09 < train.std() < 0.135


def test_patches_size_and_images(key: jax.Array) -> None:
    cfg = dataclasses.replace(PATCHES, patch_size=5, n_features=25, image="camera,moon")
    train, _ = data.host_split(key, cfg)
    assert train.shape == (2000, 25)
    assert data.fit_to_data(dataclasses.replace(PATCHES, patch_size=12)).n_features == 144
    with pytest.raises(
        ValueError, match=r"data\.patch_size=301 is invalid: allowed is at most 300"
    ):
        data.host_split(key, dataclasses.replace(PATCHES, patch_size=301, n_features=301**2))
    with pytest.raises(ValueError, match=r"data\.n_features=64 is invalid: allowed is 25"):
        data.host_split(key, dataclasses.replace(cfg, n_features=64))


def test_sample_patches_cuts_real_windows(key: jax.Array) -> None:
    image = data.load_image("camera")
    x = data.sample_patches(key, [image], 50, 6)
    windows = np.lib.stride_tricks.sliding_window_view(image, (6, 6)).reshape(-1, 36)
    for patch in x[:5]:
        assert np.any(np.all(windows == patch, axis=1))


def test_bundled_images_are_grey_levels_in_the_unit_interval() -> None:
    for name in data.IMAGE_FILES:
        assert data.image_path(name).is_file(), name  # inside the installed package
        image = data.load_image(name)
        assert image.ndim == 2 and min(image.shape) >= 300, name
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05, name


def test_zca_whitened_patches_have_identity_covariance(key: jax.Array) -> None:
    """On the mean-free subspace (each patch's mean is removed first, so the constant patch has no
    variance) the covariance is the identity: `I - 1 1^T / D`."""
    raw = data.sample_patches(key, [data.load_image(n) for n in ("camera", "grass")], 5000, 8)
    white, held = data.zca(raw[:4000], raw[4000:], eps=0.0)
    cov = np.cov(white, rowvar=False, bias=True)
    np.testing.assert_allclose(cov, np.eye(64) - 1.0 / 64, atol=1e-8)
    # the held-out patches use the training fit: near the identity, not exactly
    cov_held = np.cov(held, rowvar=False, bias=True)
    assert np.abs(np.diag(cov_held) - (1 - 1 / 64)).max() < 0.5
    # a regulariser shrinks the weak directions: eigenvalues lambda / (lambda + eps * mean)
    damped = np.linalg.eigvalsh(np.cov(data.zca(raw, eps=0.1)[0], rowvar=False, bias=True))
    assert damped.max() < 1.0 and damped[1] < 0.5


def test_whitened_loader_output_is_white_up_to_the_rescale(key: jax.Array) -> None:
    cfg = dataclasses.replace(PATCHES, whiten="zca", whiten_eps=0.0)
    train, _ = data.host_split(key, cfg)
    eig = np.linalg.eigvalsh(np.cov(train.astype(np.float64), rowvar=False, bias=True))
    # Whitened pixels are heavy-tailed, so clipping at +-3 standard deviations cuts a few percent
    # of them and bends the spectrum: the constant patch keeps a little variance, and the other
    # directions stay within a factor ~2 of each other (raw patches span orders of magnitude).
    assert eig[0] < 0.1 * eig[-1]
    assert eig[-1] / eig[1] < 2.5
    raw = np.linalg.eigvalsh(np.cov(data.host_split(key, PATCHES)[0], rowvar=False, bias=True))
    assert raw[-1] / raw[1] > 100


# Olshausen & Field's whole-image whitening. Frequencies in cycles per pixel; F0 is the default
# cut-off, 0.8 of Nyquist (0.5 cycles per pixel). The flat band and the stop band of the tests:
F0 = 0.8 * 0.5
FLAT_EDGES = np.linspace(0.05 * F0, 0.9 * F0, 9)  # 8 rings over [0.05, 0.9] * f0
STOP_BAND = (1.2 * F0, 0.5)  # 1.2 * f0 to Nyquist


def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    return np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :])


def _ring_power(image: np.ndarray, edges: np.ndarray, ideal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per ring between `edges`: the mean power of the image's modes (divided mode by mode by the
    ideal output for a 1/f-amplitude image, exp(-2 (f / f0)^4), if `ideal`) and the mode count."""
    f = _radial_frequency(image.shape)
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    if ideal:
        power = power / np.exp(-2.0 * (f / F0) ** 4)
    ring = np.digitize(f.ravel(), edges)
    inside = (ring >= 1) & (ring < len(edges))
    count = np.bincount(ring[inside] - 1, minlength=len(edges) - 1)
    total = np.bincount(ring[inside] - 1, power.ravel()[inside], minlength=len(edges) - 1)
    return total / count, count


def _spread(x: np.ndarray) -> float:
    return float(x.max() / x.min())


def _stop_over_flat(white: np.ndarray) -> float:
    """Mean power from 1.2 f0 to Nyquist over the median ring power below f0."""
    stop, _ = _ring_power(white, np.array(STOP_BAND), ideal=False)
    flat, _ = _ring_power(white, FLAT_EDGES, ideal=False)
    return float(stop[0] / np.median(flat))


def _one_over_f_image(key: jax.Array, shape: tuple[int, int]) -> np.ndarray:
    """Stationary noise with a 1/f amplitude spectrum: white Gaussian noise filtered by 1/f."""
    noise = np.asarray(jax.random.normal(key, shape), np.float64)
    f = _radial_frequency(shape)
    amplitude = np.where(f > 0, 1.0 / np.where(f > 0, f, 1.0), 0.0)
    return np.fft.ifft2(np.fft.fft2(noise) * amplitude).real


@pytest.mark.parametrize("shape", [(512, 512), (300, 451)], ids=["square", "non-square"])
def test_olshausen_whitens_a_one_over_f_image_exactly(key: jax.Array, shape) -> None:
    """On a 1/f-amplitude image the ramp f cancels 1/f, so the whitened power is the drawn white
    noise's times exp(-2 (f / f0)^4): divided by that, every ring is flat up to sampling noise."""
    image = _one_over_f_image(key, shape)
    white = data.olshausen_whiten(image, 0.8)
    ratio, modes = _ring_power(white, FLAT_EDGES, ideal=True)
    raw, _ = _ring_power(image, FLAT_EDGES, ideal=False)
    # A ring's mean averages modes/2 independent exponential powers (a real image's spectrum is
    # symmetric), relative standard error s = 1/sqrt(modes/2): 5 s either side of the mean bounds
    # the spread (1 + 5s) / (1 - 5s), ~1.30 on 512 x 512 and ~1.45 on 300 x 451 (measured: 1.03
    # and 1.06). The raw image spans ~75x over the same band.
    s = 1.0 / np.sqrt(modes.min() / 2)
    assert _spread(ratio) < (1 + 5 * s) / (1 - 5 * s) < 1.5
    assert _spread(raw) > 50
    # Above f0 the ideal falls to exp(-2 * 1.2^4) = 0.016 at 1.2 f0 and 0.008 at Nyquist (measured
    # mean over the ring 0.013 of the flat level); without the low-pass it would be ~1.
    assert _stop_over_flat(white) < 0.03


def test_olshausen_flattens_a_real_photograph() -> None:
    """The camera photograph's spectrum is steeper than 1/f at low frequencies, so the whitened one
    is not flat to sampling noise: divided by exp(-2 (f / f0)^4) its rings fall from 2.4x to 0.7x
    their median over [0.05, 0.9] f0, a spread of 3.47 (the raw photograph's: 282)."""
    image = data.load_image("camera")
    white = data.olshausen_whiten(image, 0.8)
    ratio, _ = _ring_power(white, FLAT_EDGES, ideal=True)
    raw, _ = _ring_power(image, FLAT_EDGES, ideal=False)
    assert _spread(ratio) < 4.0  # measured 3.47: the bound it meets, not a sampling bound
    assert _spread(raw) > 50 * _spread(ratio)  # whitening shrinks the spread 81x
    # measured 0.0097 (the raw photograph's 0.107): the low-pass removes the top frequencies
    assert _stop_over_flat(white) < 0.03


@pytest.mark.parametrize("name", ["camera", "chelsea"])  # 512 x 512 and 300 x 451
def test_olshausen_whitened_photograph_is_standardised(name: str) -> None:
    image = data.load_image(name)
    white = data.olshausen_whiten(image, 0.8)
    chex.assert_shape(white, image.shape)
    assert white.dtype == np.float64 and np.all(np.isfinite(white))
    assert abs(white.mean()) < 1e-12  # the filter is 0 at f = 0
    np.testing.assert_allclose(white.std(), 1.0, rtol=1e-12)
    # deterministic, blind to the photograph's brightness and contrast, and cached read-only
    np.testing.assert_array_equal(white, data.olshausen_whiten(image, 0.8))
    np.testing.assert_allclose(data.olshausen_whiten(3.0 * image + 0.5, 0.8), white, atol=1e-10)
    cached = data.whitened_image(name, 0.8)
    np.testing.assert_array_equal(cached, white)
    assert cached is data.whitened_image(name, 0.8) and not cached.flags.writeable
    assert not np.allclose(data.olshausen_whiten(image, 0.5), white, atol=0.1)


def test_olshausen_patches_follow_ngs_normalisation(key: jax.Array) -> None:
    cfg = dataclasses.replace(PATCHES, whiten="olshausen")
    train, held = data.host_split(key, cfg)
    plain, _ = data.host_split(key, PATCHES)
    assert train.shape == plain.shape == (2000, 64) and held.shape == (500, 64)
    for x in (train, held):
        assert x.min() >= 0.1 - 1e-6 and x.max() <= 0.9 + 1e-6
    assert not np.allclose(train, plain, atol=0.05)

    def adjacent_correlation(x: np.ndarray) -> float:
        x_Nx8x8 = x.reshape(-1, 8, 8).astype(np.float64)
        return float(np.corrcoef(x_Nx8x8[:, :, :-1].ravel(), x_Nx8x8[:, :, 1:].ravel())[0, 1])

    # Neighbouring pixels decorrelate (measured 0.74 -> 0.58; the low-pass below Nyquist and the
    # clipping keep some correlation, ZCA's patches reach ~0.03)
    assert adjacent_correlation(train) < adjacent_correlation(plain) - 0.1


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("whiten", True, "one of 'none', 'zca', 'olshausen'"),
        ("whiten", "ZCA", "one of 'none', 'zca', 'olshausen'"),
        ("whiten_f0", 0.0, "a number in (0, 1]"),
        ("whiten_f0", 1.5, "a number in (0, 1]"),
        ("whiten_f0", float("nan"), "a number in (0, 1]"),
        ("whiten_f0", True, "a number in (0, 1]"),
        ("whiten_f0", "0.8", "a number in (0, 1]"),
    ],
)
def test_whitening_settings_are_validated(field: str, value, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        DataConfig(kind="patches", **{field: value})
    message = str(info.value)
    assert message.startswith(f"data.{field}={value!r} is invalid: allowed is "), message
    assert allowed in message
    assert DataConfig(kind="patches", whiten="olshausen", whiten_f0=1).whiten_f0 == 1


NO_NETWORK = """
import socket, sys

def refuse(*args, **kwargs):
    raise RuntimeError("a loader tried to use the network")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import jax
from jaxae import data
from jaxae.config import DataConfig

key = jax.random.key(0)
for cfg in (
    DataConfig(kind="digits", n_samples=1438, n_features=64),
    DataConfig(kind="patches", n_samples=200, n_features=64, whiten="zca"),
    DataConfig(kind="patches", n_samples=200, n_features=64, whiten="olshausen"),
):
    train, held = data.host_split(key, cfg)
    assert len(train) and len(held)
for name in data.IMAGE_FILES:
    data.load_image(name)
print("ok")
"""


def test_loaders_never_touch_the_network(tmp_path) -> None:
    """Every loader in a fresh interpreter whose sockets refuse to connect (so a download, or a
    lookup of one, fails the test)."""
    proc = subprocess.run(
        [sys.executable, "-c", NO_NETWORK], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def _save(path, value, **kwargs) -> str:
    np.save(path, value, **kwargs)
    return str(path)


def test_array_loader_reads_a_users_file(tmp_path, key: jax.Array) -> None:
    x = np.arange(200 * 6, dtype=np.float64).reshape(200, 6)
    path = _save(tmp_path / "x.npy", x)
    cfg = data.fit_to_data(DataConfig(kind="array", path=path))
    assert (cfg.n_samples, cfg.n_features) == (160, 6)
    train, held = data.host_split(key, cfg)
    assert train.shape == (160, 6) and held.shape == (40, 6) and train.dtype == np.float32
    rows = {tuple(r) for r in np.concatenate([train, held])}
    assert rows == {tuple(r) for r in x.astype(np.float32)}


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: None, "no such file"),
        (lambda p: _save(p, np.zeros(5)), r"its shape is \(5,\)"),
        (lambda p: _save(p, np.zeros((2, 3, 4))), r"its shape is \(2, 3, 4\)"),
        (lambda p: _save(p, np.array([[1.0, np.nan], [0.0, np.inf]])), "2 of its values"),
        (
            lambda p: _save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True),
            "allow_pickle=False",
        ),
        (lambda p: p.write_bytes(b"not an array at all"), "reading it failed"),
        (lambda p: np.savez(p.with_suffix(".npz"), a=np.zeros((3, 3))) or _rename(p), "npz"),
        (lambda p: _save(p, np.array([["a", "b"]])), "its dtype is <U1"),
    ],
    ids=["missing", "rank1", "rank3", "nonfinite", "pickled", "garbage", "npz", "strings"],
)
def test_array_loader_refuses_bad_files(tmp_path, write, reason: str) -> None:
    path = tmp_path / "x.npy"
    write(path)
    with pytest.raises(
        ValueError, match=rf"^data\.path='{path}' is invalid: allowed is .*{reason}"
    ):
        data.load_array(str(path))


def _rename(path) -> None:
    path.with_suffix(".npz").rename(path)


def test_host_kinds_refuse_per_seed_and_bad_settings() -> None:
    with pytest.raises(ValueError, match=r"data\.per_seed=True is invalid"):
        DataConfig(kind="digits", per_seed=True)
    with pytest.raises(ValueError, match=r"data\.image='lena' is invalid: allowed is 'all' or"):
        DataConfig(kind="patches", image="lena")
    with pytest.raises(ValueError, match=r"data\.patch_size=1 is invalid"):
        DataConfig(kind="patches", patch_size=1)
    with pytest.raises(ValueError, match=r"data\.heldout=1\.0 is invalid"):
        DataConfig(kind="digits", heldout=1.0)
    with pytest.raises(ValueError, match=r"data\.path='' is invalid"):
        DataConfig(kind="array")
    assert DataConfig(image="camera, moon").images() == ("camera", "moon")


class _Trap:
    """Unpickling this object would create `path`: proof that a loader unpickled a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_array_loader_never_unpickles(tmp_path) -> None:
    marker = tmp_path / "unpickled"
    path = _save(tmp_path / "trap.npy", np.array([[_Trap(str(marker))]], object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"data\.path="):
        data.load_array(path)
    assert not marker.exists()
