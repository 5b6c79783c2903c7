"""Data sets as pure, jit-able generators `(key, n, ...) -> x_NxD`.

Shape legend: N samples, D features, M ground-truth atoms. Every generator is a pure function of its
key, so the same key gives the same data set on any device and inside or outside `jit`/`vmap`.
The sparse generator also returns its ground truth (`atoms_MxD`), which `ground_truth` rebuilds from
the same key for the metrics.
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


def sparse_dictionary(key: jax.Array, n_atoms: int, n_features: int) -> jax.Array:
    """`atoms_MxD`: M directions uniform on the unit sphere of R^D (normalised Gaussians)."""
    atoms_MxD = jax.random.normal(key, (n_atoms, n_features))
    return atoms_MxD / jnp.linalg.norm(atoms_MxD, axis=-1, keepdims=True)


def _magnitudes(key: jax.Array, shape: tuple[int, ...], magnitude: str) -> jax.Array:
    if magnitude == "halfnormal":
        return jnp.abs(jax.random.normal(key, shape))
    if magnitude == "uniform":
        return jax.random.uniform(key, shape)
    if magnitude == "exponential":
        return jax.random.exponential(key, shape)
    raise ValueError(f"data.magnitude={magnitude!r} is invalid")  # unreachable: config validates


def sparse_codes(
    key: jax.Array, n: int, n_atoms: int = 20, active: int = 3, magnitude: str = "halfnormal"
) -> jax.Array:
    """`codes_NxM`: exactly `active` non-zero coefficients per row.

    The atoms are chosen uniformly without replacement (the `active` largest of M uniform keys) and
    sized by draws from `magnitude`.
    """
    choice_key, size_key = jax.random.split(key)
    _, chosen_NxA = jax.lax.top_k(jax.random.uniform(choice_key, (n, n_atoms)), active)
    coef_NxA = _magnitudes(size_key, (n, active), magnitude)
    return jnp.zeros((n, n_atoms)).at[jnp.arange(n)[:, None], chosen_NxA].set(coef_NxA)


def sparse(
    key: jax.Array,
    n: int,
    n_features: int = 10,
    n_atoms: int = 20,
    active: int = 3,
    magnitude: str = "halfnormal",
    noise: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Sparse superposition: `(x_NxD, atoms_MxD)` with `x = codes @ atoms + noise * N(0, 1)`.

    Each row is the sum of exactly `active` distinct unit-norm atoms (`sparse_codes`), plus
    Gaussian noise of standard deviation `noise` on every feature.
    """
    atom_key, code_key, noise_key = jax.random.split(key, 3)
    atoms_MxD = sparse_dictionary(atom_key, n_atoms, n_features)
    codes_NxM = sparse_codes(code_key, n, n_atoms, active, magnitude)
    x_NxD = codes_NxM @ atoms_MxD + noise * jax.random.normal(noise_key, (n, n_features))
    return x_NxD, atoms_MxD


def ground_truth(key: jax.Array, cfg: DataConfig) -> jax.Array | None:
    """The true dictionary `atoms_MxD` of the data set `make_data(key, cfg)`; None without one."""
    if cfg.kind != "sparse":
        return None
    return sparse_dictionary(jax.random.split(key, 3)[0], cfg.n_atoms, cfg.n_features)


def make_data(key: jax.Array, cfg: DataConfig) -> jax.Array:
    """Draw the data set that `cfg` names, as float32 `x_NxD`."""
    if cfg.kind == "multiples":
        return multiples(key, cfg.n_samples, cfg.n_features, cfg.max_value)
    if cfg.kind == "offset":
        return offset(key, cfg.n_samples, cfg.n_features, cfg.max_value)
    if cfg.kind == "gaussian":
        return gaussian(key, cfg.n_samples, cfg.n_features)
    if cfg.kind == "sparse":
        x_NxD, _ = sparse(
            key,
            cfg.n_samples,
            cfg.n_features,
            cfg.n_atoms,
            cfg.active,
            cfg.magnitude,
            cfg.noise,
        )
        return x_NxD
    raise ValueError(f"data.kind={cfg.kind!r} is invalid")  # unreachable: DataConfig validates
