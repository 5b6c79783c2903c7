"""Shuffles: both are bijections for every n; the Feistel shuffle is uniform in where each sample
lands and in which samples share a minibatch (chi-square tests that reject a bad shuffle); the sort
shuffle is exactly uniform and unchanged.

The chi-square statistics use the exact covariance of the counts under a uniform permutation:
counts of "sample i in bin k" or "samples i and j in one minibatch" are correlated (every draw puts
each sample in exactly one bin), and their fluctuations lie in one eigenspace of that covariance
with a known eigenvalue (Johnson scheme), so the scaled sum of squares is chi-square with that
space's dimension. The sort shuffle, exact by construction, is the control that they are right.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxae import runner, shuffle, train
from jaxae.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

P_MIN = 1e-4  # a shuffle fails a test when its p-value falls below this


def _keys(seed: int, n: int) -> jax.Array:
    return train.seed_keys(seed, n)


def _draw(fn, n: int, draws: int, seed: int = 0) -> np.ndarray:
    """`draws` permutations of n from `fn(key, n)`, one per key, as an int array [draws, n]."""
    perms = np.asarray(jax.jit(jax.vmap(lambda k: fn(k, n)))(_keys(seed, draws)))
    assert perms.shape == (draws, n)
    return perms


def _positions(perms: np.ndarray) -> np.ndarray:
    """`pos[d, i]`: the position sample i takes in draw d (perm lists samples in visiting order)."""
    draws, n = perms.shape
    pos = np.empty_like(perms)
    pos[np.arange(draws)[:, None], perms] = np.arange(n)[None]
    return pos


def position_pvalue(perms: np.ndarray, n_bins: int) -> float:
    """Chi-square test that each sample is equally likely in each of `n_bins` equal position bins.

    Counts c[i, k] (sample i in bin k) fluctuate, once double-centred, in a space of dimension
    (n-1)(K-1) on which a uniform permutation's covariance per draw is q n / (n-1), q = 1/K.
    """
    draws, n = perms.shape
    assert n % n_bins == 0
    q = 1 / n_bins
    bins = _positions(perms) // (n // n_bins)
    counts = np.zeros((n, n_bins))
    np.add.at(counts, (np.broadcast_to(np.arange(n), bins.shape), bins), 1)
    r = counts - draws * q
    r = r - r.mean(0, keepdims=True) - r.mean(1, keepdims=True) + r.mean()
    stat = np.sum(r**2) / (draws * q * n / (n - 1))
    return float(scipy.stats.chi2.sf(stat, (n - 1) * (n_bins - 1)))


def pair_pvalue(perms: np.ndarray, batch: int, n_samples: int | None = None) -> float:
    """Chi-square test that every pair among the first `n_samples` samples shares a minibatch of
    size `batch` as often as under a uniform permutation.

    Pair counts are projected off the part that per-sample totals explain (the Johnson scheme's
    spaces V0 + V1); the rest (dimension s(s-3)/2) has covariance per draw
    var - 2 cov(pairs sharing a sample) + cov(disjoint pairs).
    """
    draws, n = perms.shape
    s = n if n_samples is None else n_samples
    assert n % batch == 0 and s >= 4
    group = (_positions(perms) // batch)[:, :s]
    counts = np.zeros((s, s))
    for g in range(n // batch):
        member = (group == g).astype(np.float64)
        counts += member.T @ member
    p = (batch - 1) / (n - 1)
    p3 = p * (batch - 2) / (n - 2)
    p4 = p * ((batch - 2) * (batch - 3) + (n - batch) * (batch - 1)) / ((n - 2) * (n - 3))
    eigenvalue = p * (1 - p) - 2 * (p3 - p * p) + (p4 - p * p)
    r = counts - draws * p
    np.fill_diagonal(r, 0)
    row, total = r.sum(1), r.sum() / 2
    explained = (row[:, None] + row[None, :]) / (s - 2) - 2 * total / ((s - 1) * (s - 2))
    upper = np.triu_indices(s, 1)
    stat = np.sum((r - explained)[upper] ** 2) / (draws * eigenvalue)
    return float(scipy.stats.chi2.sf(stat, s * (s - 3) // 2))


SHUFFLES = {"feistel": shuffle.feistel_permutation, "sort": shuffle.sort_permutation}


def _rotation(key: jax.Array, n: int) -> jax.Array:
    """A bad shuffle: a uniformly random rotation. Every position is uniform, pairs are not."""
    start = jax.random.randint(key, (), 0, n)
    return (jnp.arange(n) + start) % n


def _feistel_two_rounds(key: jax.Array, n: int) -> jax.Array:
    """A bad shuffle: the same network with only two rounds."""
    bits = (n - 1).bit_length()
    table = shuffle.feistel_network(
        jnp.arange(1 << bits, dtype=jnp.uint32), shuffle.feistel_round_keys(key, 2), bits
    )
    return shuffle.cycle_walk(table, n, (1 << bits) - n)[:n].astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# Bijection


def _walked(key: jax.Array, n: jax.Array, index_bits: int, rounds: int) -> jax.Array:
    """`feistel_permutation`'s network and walk with n traced (for any n with these index bits)."""
    d = 1 << index_bits
    keys = shuffle.feistel_round_keys(key, rounds)
    table = shuffle.feistel_network(jnp.arange(d, dtype=jnp.uint32), keys, index_bits)
    return shuffle.cycle_walk(table, n, d // 2 - 1)


def test_feistel_is_a_bijection_for_every_n_up_to_2000():
    """Every n in 1..2000, three keys each: all n with the same index bits m share the domain 2^m,
    so each m is one vectorised call with n traced."""
    assert np.asarray(shuffle.feistel_permutation(jax.random.key(0), 1)).tolist() == [0]
    for m in range(1, 12):
        d = 1 << m
        ns = np.arange(d // 2 + 1, min(d, 2000) + 1)
        rounds = shuffle.feistel_rounds(int(ns[0]))
        assert {shuffle.feistel_rounds(int(n)) for n in ns} == {rounds}
        walk = functools.partial(_walked, index_bits=m, rounds=rounds)
        per_key_and_n = jax.vmap(jax.vmap(walk, in_axes=(None, 0)), in_axes=(0, None))
        out = jax.jit(per_key_and_n)(_keys(m, 3), jnp.asarray(ns, jnp.uint32))
        valid = np.arange(d)[None, None, :] < ns[None, :, None]
        got = np.sort(np.where(valid, np.asarray(out).astype(np.int64), d), axis=-1)
        np.testing.assert_array_equal(
            got, np.broadcast_to(np.where(valid, np.arange(d), d), got.shape)
        )


@pytest.mark.parametrize("n", [2, 5, 1000, 1025])
def test_the_vectorised_walk_is_the_production_permutation(n):
    key = jax.random.key(n)
    m = (n - 1).bit_length()
    walked = jax.jit(_walked, static_argnums=(2, 3))(
        key, jnp.uint32(n), m, shuffle.feistel_rounds(n)
    )
    np.testing.assert_array_equal(
        np.asarray(walked)[:n],
        np.asarray(jax.jit(shuffle.feistel_permutation, static_argnums=1)(key, n)),
    )


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 1797])
def test_sort_is_a_bijection(n):
    fn = jax.jit(shuffle.sort_permutation, static_argnums=1)
    for key in _keys(0, 5):
        np.testing.assert_array_equal(np.sort(np.asarray(fn(key, n))), np.arange(n))


def test_walk_lands_after_the_longest_possible_walk():
    """A table whose only cycle through x = 0 passes every out-of-range value first: the walk of
    D - n steps is the longest there is, and it lands."""
    n, d = 3, 16
    table = np.arange(d)
    cycle = [0, *range(n, d), 1]  # 0 -> 3 -> 4 -> ... -> 15 -> 1 -> 0
    for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        table[a] = b
    walked = np.asarray(shuffle.cycle_walk(jnp.asarray(table, jnp.uint32), n, d - n))[:n]
    np.testing.assert_array_equal(walked, [1, 0, 2])


# ------------------------------------------------------------------------------------------------
# Uniformity


@pytest.mark.parametrize("method", ["feistel", "sort"])
@pytest.mark.parametrize(
    ("n", "n_bins", "draws"), [(10, 10, 20000), (100, 100, 5000), (1000, 10, 2000)]
)
def test_positions_are_uniform(method, n, n_bins, draws):
    """Each sample equally likely at each position (n = 10, 100) or in each minibatch (n = 1000)."""
    assert position_pvalue(_draw(SHUFFLES[method], n, draws, seed=n), n_bins) > P_MIN


@pytest.mark.parametrize("method", ["feistel", "sort"])
@pytest.mark.parametrize(
    ("n", "batch", "n_samples", "draws"),
    [(20, 5, None, 20000), (100, 10, None, 5000), (1000, 100, 64, 3000)],
)
def test_minibatch_pairs_are_uniform(method, n, batch, n_samples, draws):
    """Every pair of samples shares a minibatch as often as under a uniform shuffle."""
    perms = _draw(SHUFFLES[method], n, draws, seed=7 * n)
    assert pair_pvalue(perms, batch, n_samples) > P_MIN


def test_the_tests_reject_bad_shuffles():
    """Identity fails the position test; a random rotation passes it (its positions are uniform) but
    fails the pair test; a two-round network fails both."""
    identity = _draw(lambda k, n: jnp.arange(n), 20, 2000)
    assert position_pvalue(identity, 20) < 1e-12
    rotation = _draw(_rotation, 20, 20000)
    assert position_pvalue(rotation, 20) > P_MIN
    assert pair_pvalue(rotation, 5) < 1e-12
    weak = _draw(_feistel_two_rounds, 20, 20000)
    assert position_pvalue(weak, 20) < 1e-12
    assert pair_pvalue(weak, 5) < 1e-12


def test_whole_sort_permutations_are_uniform():
    """All 24 orders of 4 elements are equally likely (chi-square with 23 degrees of freedom)."""
    draws = 24 * 300
    perms = _draw(shuffle.sort_permutation, 4, draws, seed=2)
    codes = perms @ (4 ** np.arange(4))
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 24
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


# ------------------------------------------------------------------------------------------------
# The sort shuffle: tie handling, and unchanged


def test_tied_pair_is_ordered_by_the_coin():
    """Elements 1 and 2 share their random bits and sit at sorted positions 1 and 2, so bit 0 of
    word 1 (a bit no sort key uses) decides their order."""
    n = 4
    high = np.array([3, 1, 1, 0], np.uint32) << np.uint32(8)  # sorted order: 3, {1, 2}, 0
    orders = set()
    for coin in (0, 1):
        bits = (high | np.array([0, coin, 0, 0], np.uint32))[None]
        perm = np.asarray(shuffle.permutation_from_bits(jnp.asarray(bits)))
        assert sorted(perm.tolist()) == list(range(n))
        orders.add(tuple(perm.tolist()))
    # ascending random keys: element 3 (key 0), then the tied pair, then element 0
    assert orders == {(3, 1, 2, 0), (3, 2, 1, 0)}


def test_full_ties_still_give_a_bijection():
    for n in (3, 7, 100):
        perm = shuffle.permutation_from_bits(jnp.zeros((1, n), jnp.uint32))
        assert sorted(np.asarray(perm).tolist()) == list(range(n))


def test_sort_gives_the_orders_and_results_it_gave_before_feistel():
    """`train.shuffle="sort"` is the shuffle jaxae used before the Feistel one: the same orders and
    the same training results (figures recorded with the code of commit 61989aa)."""
    key = jax.random.key(0)
    assert np.asarray(shuffle.sort_permutation(key, 10)).tolist() == [5, 9, 6, 2, 3, 4, 7, 8, 0, 1]
    first = np.asarray(shuffle.sort_permutation(key, 1000))[:6].tolist()
    assert first == [954, 428, 288, 699, 526, 561]
    cfg = Config(
        data=DataConfig(kind="multiples", n_samples=200),
        model=ModelConfig(n_hidden=2, activation="relu", init="torch"),
        optim=OptimConfig(learning_rate=1e-2, weight_decay=1e-3),
        train=TrainConfig(epochs=6, batch_size=50, chunk_epochs=3, shuffle="sort"),
    )
    res = runner.train_seeds(cfg, 4)
    # Recorded on CPU; an accelerator sums in other orders (scripts/gpu_check.sh runs this there).
    rtol = 1e-5 if jax.default_backend() == "cpu" else 1e-3
    np.testing.assert_allclose(
        res.history_SxAxE[:, 0, -1], [499436.03125, 520174.0, 112629.2890625, 520056.0], rtol=rtol
    )
    feistel = runner.train_seeds(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, shuffle="feistel")), 4
    )
    assert not np.allclose(feistel.history_SxAxE[..., -1], res.history_SxAxE[..., -1])


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method='shuffled'"):
        shuffle.permutation(jax.random.key(0), 5, "shuffled")
