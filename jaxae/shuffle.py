"""Per-epoch shuffles: the order in which one epoch visits the samples.

Shape legend: N samples, D the Feistel domain 2^m >= N (m index bits), R rounds.

`permutation(key, n, method)` draws a permutation of `0..n-1` from one key, by the method that
`train.shuffle` names:

- `"sort"` (`sort_permutation`): an exactly uniform random permutation (each of the n! orders
  equally likely, up to a tie event of probability < 2^-16), from integer sorts of random words.
- `"feistel"` (`feistel_permutation`, the default): a keyed pseudo-random permutation, a Feistel
  network over the index bits cycle-walked into `0..n-1`. It is a bijection for every n, and in
  what minibatch training sees of an order it is indistinguishable from uniform by the chi-square
  tests of tests/test_shuffle.py (where each sample lands; which pairs of samples share a
  minibatch). It is *not* uniform over the n! orders: a few dozen 32-bit round keys reach far fewer
  than n! permutations (and with halves of two bits or more, a Feistel network makes only even
  permutations of its domain).
  It needs no sort and no integer division, so on CPU it costs a fraction of a sort.

The two methods give different orders from the same key, so switching changes which minibatches a
run sees (and so its numbers), never their distribution.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxae.config import SHUFFLES


def permutation(key: jax.Array, n: int, method: str = "feistel") -> jax.Array:
    """A permutation `perm_N` (int32) of `0..n-1` drawn from `key` by `method` (see `SHUFFLES`)."""
    if method == "feistel":
        return feistel_permutation(key, n)
    if method == "sort":
        return sort_permutation(key, n)
    raise ValueError(f"method={method!r} is invalid: allowed is one of {', '.join(SHUFFLES)}")


def feistel_rounds(n: int) -> int:
    """Rounds of the network for `n` samples: 8, or 24 on domains of 32 or fewer indices.

    A round re-draws one half of the index from a hash of the other; halves of one to three bits
    leave few hash functions to draw from, so small domains need more rounds before positions and
    minibatch pairs look uniform. Measured with the chi-square tests of tests/test_shuffle.py over
    10^5 keys: 8 rounds show biases at n = 5..30 and none at n = 33..1000 (nor over 3 * 10^5 keys
    at n = 40..120); 24 rounds show none at n = 5..17. Small n are cheap anyway.
    """
    return 8 if (n - 1).bit_length() >= 6 else 24


def feistel_round_keys(key: jax.Array, rounds: int) -> jax.Array:
    """Round keys `k_Rx2` (uint32): the multiplier and the offset of each round's hash."""
    return jax.random.bits(key, (rounds, 2), jnp.uint32)


def feistel_network(x: jax.Array, keys_Rx2: jax.Array, index_bits: int) -> jax.Array:
    """A keyed bijection of `0..2^index_bits - 1`, applied to `x` (uint32, any shape).

    The index is split into a high half of `index_bits - index_bits // 2` bits and a low half of
    `index_bits // 2` bits. Round r XORs one half (the low one for even r, the high one for odd r)
    with a hash of the other: the top bits of `a_r * other + b_r` (mod 2^32, `a_r` odd), the
    multiply-add-shift hash. Each round is its own inverse, so the network is a bijection whatever
    the keys; halves of unequal width are fine because no round moves bits between them.
    """
    low_bits = index_bits // 2
    high_bits = index_bits - low_bits
    high, low = x >> low_bits, x & jnp.uint32((1 << low_bits) - 1)
    for r in range(keys_Rx2.shape[0]):
        multiplier, offset = keys_Rx2[r, 0] | jnp.uint32(1), keys_Rx2[r, 1]
        if r % 2 == 1:
            high = high ^ ((low * multiplier + offset) >> (32 - high_bits))
        elif low_bits:
            low = low ^ ((high * multiplier + offset) >> (32 - low_bits))
    return (high << low_bits) | low


def cycle_walk(table_D: jax.Array, n: jax.Array | int, max_out: int) -> jax.Array:
    """`walked_D`: for each x < n, the first value below n along `table[x], table[table[x]], ...`

    `table_D` is a permutation of `0..D-1` and `max_out >= D - n` (static) bounds how many of its
    values lie outside `0..n-1`; `n` may be traced. Entries of the result at x >= n are meaningless.

    Why this is a permutation of `0..n-1` and why it always lands: the cycle through x < n returns
    to x, so it meets `0..n-1` again; between two such meetings it visits only distinct values >= n,
    at most `D - n` of them. Restricted to `0..n-1`, "next value below n on the cycle" is a
    bijection (its inverse walks the cycles backwards).

    How, in a fixed number of steps and without a data-dependent loop: pointer jumping over the out
    of range values u (the last `max_out` entries of the domain). `jump[u]` starts as `table[u]`;
    each step replaces a `jump[u]` that is still >= n by `jump[jump[u]]`, so after j steps it is the
    first value below n among the next 2^j of u's cycle, if there is one. ceil(log2 max_out) steps
    cover the longest walk, then one lookup finishes every x whose `table[x]` was out of range.
    """
    d = table_D.shape[0]
    if max_out == 0:
        return table_D
    first_out = d - max_out  # out-of-range values u >= n are at jump[u - first_out]

    def slot(v: jax.Array) -> jax.Array:
        return jnp.where(v >= n, v - first_out, 0)

    def step(_: int, jump: jax.Array) -> jax.Array:
        return jnp.where(jump >= n, jump[slot(jump)], jump)

    jump = lax.fori_loop(0, (max_out - 1).bit_length(), step, table_D[first_out:])
    return jnp.where(table_D >= n, jump[slot(table_D)], table_D)


def feistel_permutation(key: jax.Array, n: int) -> jax.Array:
    """A keyed pseudo-random permutation of `0..n-1` (see the module docstring for its guarantees).

    The network (`feistel_network`, `feistel_rounds(n)` rounds keyed from `key`) permutes the domain
    `0..D-1`, D = 2^m the smallest power of two >= n, and `cycle_walk` folds it into `0..n-1`. Cost:
    the rounds on D < 2n indices (XOR, shift, 32-bit multiply-add), a few small gathers, one gather
    of n. No sort, no integer division, no data-dependent loop.
    """
    if n == 1:
        return jnp.zeros((1,), jnp.int32)
    index_bits = (n - 1).bit_length()
    d = 1 << index_bits
    keys_Rx2 = feistel_round_keys(key, feistel_rounds(n))
    table_D = feistel_network(jnp.arange(d, dtype=jnp.uint32), keys_Rx2, index_bits)
    return cycle_walk(table_D, jnp.uint32(n), d - n)[:n].astype(jnp.int32)


def _sort_rounds(n: int) -> int:
    """Sorting rounds for `sort_permutation(n)`: enough random bits that a three-way tie among the
    keys (the only event after which the permutation is not exactly uniform) has probability below
    2^-16.
    """
    random_bits = 32 - max(1, (n - 1).bit_length())
    triples = math.comb(n, 3)
    rounds = 1
    while triples > 2.0 ** (2 * rounds * random_bits - 16):
        rounds += 1
    return rounds


def sort_permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of `0..n-1`: `jax.random.permutation`, ~5x faster on CPU.

    Each round sorts one uint32 array whose high bits are random and whose low bits hold the current
    position: XLA:CPU sorts a single integer array on a fast path, while `jax.random.permutation`
    sorts key-value pairs through a general comparator. Rounds compose like one sort on a longer
    random key (later rounds break earlier ties by earlier order). A pair of elements still tied
    after the last round is swapped on a fair coin, so pair ties cost nothing in uniformity; only a
    three-way tie (probability < 2^-16, see `_sort_rounds`) keeps its earlier order.
    """
    # One draw for all rounds: on CPU every threefry call is a loop of its own, so calls are few.
    return permutation_from_bits(jax.random.bits(key, (_sort_rounds(n), n), jnp.uint32))


def permutation_from_bits(bits_RxN: jax.Array) -> jax.Array:
    """The permutation `sort_permutation` makes from its random words (R rounds of N uint32).

    Deterministic in `bits_RxN`, so its tie handling can be tested with hand-made words.
    """
    n = bits_RxN.shape[1]
    index_bits = max(1, (n - 1).bit_length())
    low = jnp.uint32((1 << index_bits) - 1)
    position_N = jnp.arange(n, dtype=jnp.uint32)
    perm_N = position_N
    for r, bits_N in enumerate(bits_RxN):
        sorted_N = lax.sort((bits_N & ~low) | position_N)
        perm_N = sorted_N & low if r == 0 else perm_N[sorted_N & low]
    if n < 2:
        return perm_N.astype(jnp.int32)
    # Isolated tied pairs at sorted positions (i, i+1) of the last round are swapped on a fair coin:
    # bit 0 of word i of the draw, which no sort key used, so it is independent of the whole order.
    random_N = sorted_N & ~low
    tied = random_N[:-1] == random_N[1:]  # n-1
    isolated = tied & ~jnp.pad(tied[:-1], (1, 0)) & ~jnp.pad(tied[1:], (0, 1))
    coin = (bits_RxN[-1, :-1] & 1) == 1
    swap = isolated & coin
    swap_next = jnp.pad(swap, (0, 1))  # element i takes i+1
    swap_prev = jnp.pad(swap, (1, 0))  # element i takes i-1
    shifted_up = jnp.pad(perm_N[1:], (0, 1))
    shifted_down = jnp.pad(perm_N[:-1], (1, 0))
    perm_N = jnp.where(swap_next, shifted_up, jnp.where(swap_prev, shifted_down, perm_N))
    return perm_N.astype(jnp.int32)
