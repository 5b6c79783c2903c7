"""Data sets as pure, jit-able generators `(key, n, ...) -> x_NxD`.

Shape legend: N samples, D features. Every generator is a pure function of its key, so the same key
gives the same data set on any device and inside or outside `jit`/`vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxae.config import DataConfig


def multiples(key: jax.Array, n: int, n_features: int = 10, max_value: int = 200) -> jax.Array:
    """§1.2: rows `x0 * (1, 2, ..., D)` with `x0 = round(U[0,1) * max_value)`, a rank-1 data set."""
    x0_N = jnp.round(jax.random.uniform(key, (n,)) * max_value)
    return x0_N[:, None] * jnp.arange(1, n_features + 1, dtype=jnp.float32)[None, :]


def offset(key: jax.Array, n: int, n_features: int = 10, max_value: int = 200) -> jax.Array:
    """§1.3: `multiples` plus a per-sample offset `k = round(U[0,1) * max_value)` on every feature.

    Rows are `x0 * (1..D) + k * (1..1)`: two numbers per sample, so the data have rank 2.
    """
    multiples_key, offset_key = jax.random.split(key)
    k_N = jnp.round(jax.random.uniform(offset_key, (n,)) * max_value)
    return multiples(multiples_key, n, n_features, max_value) + k_N[:, None]


def gaussian(key: jax.Array, n: int, n_features: int = 10) -> jax.Array:
    """§1.4/§1.5: i.i.d. standard normal features, incompressible by construction."""
    return jax.random.normal(key, (n, n_features))


def make_data(key: jax.Array, cfg: DataConfig) -> jax.Array:
    """Draw the data set that `cfg` names, as float32 `x_NxD`."""
    if cfg.kind == "multiples":
        return multiples(key, cfg.n_samples, cfg.n_features, cfg.max_value)
    if cfg.kind == "offset":
        return offset(key, cfg.n_samples, cfg.n_features, cfg.max_value)
    if cfg.kind == "gaussian":
        return gaussian(key, cfg.n_samples, cfg.n_features)
    raise ValueError(f"data.kind={cfg.kind!r} is invalid")  # unreachable: DataConfig validates
