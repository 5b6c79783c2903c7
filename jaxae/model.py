"""The autoencoder: a Flax Linen module D -> H -> D with a choice of activation and initialiser.

Shape legend: B batch, N samples, K batches, D features, H hidden units.

Parameters are a plain pytree `{"params": {"encoder": {...}, "decoder": {...}}}` (JumpReLU adds
`"jump": {"log_threshold": [H]}`), so `init` and every function of the parameters vmap over seeds.
A tied autoencoder (`model.tied`) has no encoder kernel: its encoder is `{"bias": [H]}` and reads
the decoder rows in use, transposed (`TiedEncoder`).
An optional `mask_H` switches hidden units off, which lets one compiled program train several
hidden sizes (units past the size are masked to zero). The oracle start (`model.init="atoms"`) is
the one initialiser that needs the data: the module carries the true atoms (`atoms`) only to be
initialised (`init_params`); a module that is only applied, as `jaxae.load` builds, has none.

Two activations of the SAE literature are more than a function of each pre-activation:

- BatchTopK (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"): in training, the k x B largest
  (ReLU'd) pre-activations of the whole batch of B rows are kept, so k is an average over the batch
  rather than a count per row. A call without `threshold` does exactly that to the rows it is given
  (so an evaluation on the whole data set is BatchTopK with B = N). For inference the field uses one
  global threshold theta instead, each unit firing where its pre-activation exceeds it:
  `batch_top_k_threshold` estimates theta from the trained parameters and the training data, as
  the mean over training-size batches of the smallest activation each batch keeps (the paper's
  estimate), and `activate(..., threshold=theta)` applies it. It is estimated after training,
  not as a running average during it (SAELens's `topk_threshold`): so the training state holds
  nothing but what the optimizer trains (no extra variable collection to carry through the scan,
  vmap, checkpoints and resumes), and theta describes the final parameters, not an average over
  parameters that were still moving.
- JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"): `h = z H(z - theta)` with a learned
  per-unit threshold `theta = exp(log_threshold)`. The step has no useful derivative, so training
  uses the paper's straight-through estimators (`jump_relu`, `heaviside_step`): a rectangle kernel
  of width `bandwidth` around the threshold gives theta its pseudo-derivative. Only
  pre-activations inside that window move theta, so with the paper's bandwidth and starting
  threshold (both 0.001) on data whose activations are of order 1 the thresholds barely learn
  (measured: median theta 0.002-0.003 after 39,000 steps on 32 atoms of magnitude one in 16
  dimensions); a start near the other atoms' interference (`model.jump_init`) and a wider window
  (`model.jump_bandwidth`) let them.

A third codes by a search rather than a map: "omp" (an MP-SAE, Costa et al. 2025, with the
orthogonal refit) picks, k times, the decoder row most correlated with what is left of the input
and refits the picked rows by least squares (`orthogonal_pursuit`), the encoder being the tied
unit-norm decoder itself. It needs no batch and no threshold; once trained it may code with more
steps (`model.infer_k`, `make_model(..., coding=True)`) than it trained with.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.config import RANKING_ACTIVATIONS, ModelConfig, invalid


def torch_linear_init(
    fan_in: int,
) -> tuple[nn.initializers.Initializer, nn.initializers.Initializer]:
    """PyTorch's `nn.Linear` default: kernel and bias both uniform on +-1/sqrt(fan_in).

    (`kaiming_uniform_(a=sqrt(5))` gives bound sqrt(6 / (6 * fan_in)) = 1/sqrt(fan_in).)
    """
    bound = 1.0 / math.sqrt(fan_in)

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform, uniform


def ng_init(n_hidden: int, n_features: int) -> nn.initializers.Initializer:
    """Ng's CS294A `initializeParameters.m`: `r = sqrt(6) / sqrt(hiddenSize + visibleSize + 1)`,
    `W = rand(...) * 2 * r - r` for both kernels (biases are zero)."""
    bound = math.sqrt(6.0 / (n_hidden + n_features + 1))

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform


def _dense(features: int, fan_in: int, init: str) -> nn.Dense:
    kernel_init, bias_init = _initialisers(init, fan_in, features)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init)


def _initialisers(init: str, fan_in: int, fan_out: int):
    """`(kernel_init, bias_init)` of a layer `fan_in -> fan_out` (`model.init`). For "atoms" both
    are zeros: the module knows no data, so `init_params` puts the atoms in the kernels."""
    if init == "torch":
        return torch_linear_init(fan_in)
    if init == "ng":
        return ng_init(fan_in, fan_out), nn.initializers.zeros_init()
    if init in ("atoms", "data"):
        return nn.initializers.zeros_init(), nn.initializers.zeros_init()
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()


# How `top_k_mask` finds each row's k-th largest value on CPU (measured at 64 seeds x batch 64):
# up to this many units it counts, for every unit, the units above it (H x H comparisons, fastest
# for tiny widths); beyond, it takes the row maximum k_max times (k_max x H work), which is 2-3x
# faster than `lax.top_k` at widths 48-256. Past `ITERATED_MAX_K` iterations `lax.top_k` wins.
RANK_COUNT_MAX_UNITS = 16
ITERATED_MAX_K = 32


def _max_step(
    carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array], k: jax.Array | int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One round of `_kth_largest`: take each row's maximum out and count it (ties together)."""
    remaining_BxH, kth_Bx1, seen_Bx1, found_Bx1 = carry
    top_Bx1 = jnp.max(remaining_BxH, axis=-1, keepdims=True)
    at_top_BxH = remaining_BxH == top_Bx1
    seen_Bx1 = seen_Bx1 + jnp.sum(at_top_BxH, axis=-1, keepdims=True)
    hit_Bx1 = ~found_Bx1 & (seen_Bx1 >= k)
    kth_Bx1 = jnp.where(hit_Bx1, top_Bx1, kth_Bx1)
    found_Bx1 = found_Bx1 | hit_Bx1
    remaining_BxH = jnp.where(at_top_BxH, -jnp.inf, remaining_BxH)
    return remaining_BxH, kth_Bx1, seen_Bx1, found_Bx1


def _kth_largest(pre_BxH: jax.Array, k: jax.Array | int, k_max: int) -> jax.Array:
    """`kth_Bx1`: the value v of each row at which the units >= v are those with fewer than k units
    strictly above them, by taking the row maximum `k_max` times and counting ties as it goes.

    A row with fewer than k finite entries gets -inf (every entry kept).
    """
    rows = (*pre_BxH.shape[:-1], 1)
    carry = (
        pre_BxH,
        jnp.full(rows, -jnp.inf, pre_BxH.dtype),
        jnp.zeros(rows, jnp.int32),  # units at or above the current maximum
        jnp.zeros(rows, bool),
    )
    for _ in range(k_max):
        carry = _max_step(carry, k)
    return carry[1]


def top_k_mask(pre_BxH: jax.Array, k: jax.Array | int, k_max: int | None = None) -> jax.Array:
    """Boolean `keep_BxH`: the k largest entries of each row (every unit tied with the k-th too).

    `k` may be traced (a per-seed value under `vmap`) as long as it is at most `k_max`, the static
    largest k; one compiled program then serves every k of a sweep. A unit is kept exactly when
    fewer than k units of its row are strictly larger, which is the same as `pre >= k-th largest`;
    the three ways of computing it (see `RANK_COUNT_MAX_UNITS`) agree exactly, ties included.
    """
    h = pre_BxH.shape[-1]
    k_max = h if k_max is None else min(k_max, h)
    if h <= RANK_COUNT_MAX_UNITS:
        above_BxH = jnp.sum(pre_BxH[..., None, :] > pre_BxH[..., :, None], axis=-1)
        return above_BxH < k
    if k_max <= ITERATED_MAX_K:
        return pre_BxH >= _kth_largest(pre_BxH, k, k_max)
    values_BxK = jax.lax.top_k(pre_BxH, k_max)[0]
    index = jnp.broadcast_to(jnp.asarray(k, jnp.int32) - 1, (*pre_BxH.shape[:-1], 1))
    return pre_BxH >= jnp.take_along_axis(values_BxK, index, axis=-1)


def top_k_relu(pre_BxH: jax.Array, k: jax.Array | int, k_max: int | None = None) -> jax.Array:
    """Keep the k largest pre-activations of each row (then ReLU), zero the rest.

    Exact ties at the k-th value keep every tied unit; for continuous inputs that has probability 0.
    Unit i is kept iff fewer than k entries of its row are strictly larger, which is exactly
    `pre_i >= the k-th largest value`: narrow rows count (see `RANK_TOP_K_MAX_UNITS`), wide rows
    compare with `lax.top_k`; both keep the same units.
    """
    keep_BxH = top_k_mask(pre_BxH, k, k_max)
    return jnp.where(keep_BxH, jax.nn.relu(pre_BxH), 0.0)


# +inf as int32 bits: the largest bit pattern of a non-negative, non-NaN float32. The bit patterns
# of non-negative floats are ordered as the floats are, so `_kth_largest_bits` bisects on integers.
_INF_BITS = 0x7F800000
# Bisection steps that narrow [0, _INF_BITS] (fewer than 2^31 patterns) to one.
_BISECTION_STEPS = 31


def _kth_largest_bits(bits_C: jax.Array, target: jax.Array) -> jax.Array:
    """The largest t with at least `target` entries `>= t` among the non-negative `bits_C`: the
    `target`-th largest entry (exactly), by bisection. 31 passes of compare-and-count over the
    batch cost less on CPU than `lax.top_k` of the flattened batch, and `target` may be traced."""
    lo, hi = jnp.int32(0), jnp.int32(_INF_BITS)
    for _ in range(_BISECTION_STEPS):
        mid = lo + (hi - lo + 1) // 2
        enough = jnp.sum(bits_C >= mid, dtype=jnp.int32) >= target
        lo, hi = jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)
    return lo


def batch_top_k_mask(
    pre_BxH: jax.Array, k: jax.Array | int, rows_B: jax.Array | None = None
) -> jax.Array:
    """Boolean `keep_BxH`: the k x B largest positive entries of the whole batch (BatchTopK), B the
    rows in use (`rows_B`: the real rows of a padded last batch; their padding is never kept),
    every entry tied with the (k x B)-th too. With fewer than k x B positive entries, every
    positive one. `k` may be traced (a per-seed value under `vmap`)."""
    chex.assert_rank(pre_BxH, 2)
    h_BxH = jax.nn.relu(pre_BxH)
    n_rows = pre_BxH.shape[0]
    if rows_B is not None:
        h_BxH = jnp.where(jnp.broadcast_to(rows_B[:, None], h_BxH.shape), h_BxH, 0.0)
        n_rows = jnp.sum(rows_B, dtype=jnp.int32)
    bits_BxH = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(h_BxH), jnp.int32)
    kth = _kth_largest_bits(bits_BxH.reshape(-1), jnp.asarray(k, jnp.int32) * n_rows)
    return (bits_BxH >= kth) & (h_BxH > 0)


def batch_top_k_relu(
    pre_BxH: jax.Array, k: jax.Array | int, rows_B: jax.Array | None = None
) -> jax.Array:
    """BatchTopK: keep the k x B largest pre-activations of the batch (then ReLU), zero the rest.

    With at least k x B positive entries exactly k x B stay non-zero (ties aside, which continuous
    inputs do not have); a row may keep more than k units and another fewer.
    """
    return jnp.where(batch_top_k_mask(pre_BxH, k, rows_B), pre_BxH, 0.0)


def threshold_relu(pre_BxH: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """BatchTopK at inference: `relu(pre) * (pre > threshold)`, the threshold one global value or
    one per unit (SAELens's JumpReLU SAE at inference, which BatchTopK SAEs are saved as)."""
    theta = jnp.broadcast_to(threshold, pre_BxH.shape)
    return jnp.where(pre_BxH > theta, jax.nn.relu(pre_BxH), 0.0)


def batch_top_k_threshold(pre_NxH: jax.Array, k: jax.Array | int, batch_size: int) -> jax.Array:
    """BatchTopK's inference threshold theta: the mean, over the batches of `batch_size` rows of
    `pre_NxH` in order (the last one partial, as training keeps it), of the smallest activation
    BatchTopK keeps in each batch (Bussmann et al.: the average minimum positive activation).

    The rows are the training data's, whose order is already random (drawn i.i.d., or a random
    split of a file), so consecutive rows make batches like the training ones. A batch that keeps
    no positive activation has no minimum and is left out; with none at all theta is 0.
    """
    n, h = pre_NxH.shape
    batch_size = min(batch_size, n)
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    pre_KxBxH = jnp.pad(pre_NxH, ((0, pad), (0, 0))).reshape(n_batches, batch_size, h)
    rows_KxB = (jnp.arange(n_batches * batch_size) < n).reshape(n_batches, batch_size)

    def smallest_kept(pre_and_rows: tuple[jax.Array, jax.Array]) -> jax.Array:
        pre_BxH, rows_B = pre_and_rows
        h_BxH = batch_top_k_relu(pre_BxH, k, rows_B)
        return jnp.min(jnp.where(h_BxH > 0, h_BxH, jnp.inf))

    smallest_K = jax.lax.map(smallest_kept, (pre_KxBxH, rows_KxB))
    found_K = jnp.isfinite(smallest_K)
    total = jnp.sum(jnp.where(found_K, smallest_K, 0.0))
    n_found = jnp.maximum(jnp.sum(found_K), 1).astype(total.dtype)
    return jnp.where(jnp.any(found_K), total / n_found, 0.0)


# Added to the diagonal of each pursuit's Gram system, so two equal decoder rows (a singular
# system) still give finite coefficients.
PURSUIT_RIDGE = 1e-6


def orthogonal_pursuit(
    corr_BxH: jax.Array,
    gram_HxH: jax.Array,
    k: jax.Array | int,
    k_max: int,
    mask_H: jax.Array | None = None,
) -> jax.Array:
    """Orthogonal matching pursuit (Pati et al. 1993) of each row, in correlation space: the code
    `h_BxH` with at most k non-zeros whose `h @ W` is the least-squares fit of x on the k rows of W
    (unit vectors) it picks greedily, one at a time, each the row most correlated (in absolute
    value) with the residual so far.

    `corr_BxH = x @ W.T` and `gram_HxH = W @ W.T`; the residual's correlations after a fit `a` on
    the picked rows S are `corr - a @ gram[S]`, so x itself is never needed. `k` may be traced (a
    per-seed value under `vmap`) up to the static `k_max`: every one of the `k_max` steps picks a
    row, and the final fit uses the first k. Picks are made without gradient (an argmax has
    none); the coefficients are differentiable in x and W through the least-squares solve. With
    k = 1 it is plain matching pursuit's first step: the most correlated row, times its
    correlation. Units where `mask_H` is 0 are never picked.
    """
    chex.assert_rank(corr_BxH, 2)
    n_rows, h = corr_BxH.shape
    k_max = min(k_max, h)
    open_BxH = jnp.ones_like(corr_BxH, bool)
    if mask_H is not None:
        open_BxH = open_BxH & (jnp.broadcast_to(mask_H, corr_BxH.shape) > 0)
    picked: list[jax.Array] = []
    coef_BxT = jnp.zeros((n_rows, 0), corr_BxH.dtype)
    residual_BxH = corr_BxH
    for t in range(k_max):
        score_BxH = jnp.where(open_BxH, jnp.abs(jax.lax.stop_gradient(residual_BxH)), -jnp.inf)
        j_B = jnp.argmax(score_BxH, axis=-1)
        picked.append(j_B)
        open_BxH = open_BxH & (jnp.arange(h)[None, :] != j_B[:, None])
        idx_BxT = jnp.stack(picked, axis=-1)
        in_fit_T = jnp.arange(t + 1) < k
        coef_BxT = _fit_picked(corr_BxH, gram_HxH, idx_BxT, in_fit_T)
        rows_BxTxH = gram_HxH[idx_BxT]
        residual_BxH = corr_BxH - jnp.einsum("bt,bth->bh", coef_BxT, rows_BxTxH)
    onehot_BxTxH = jax.nn.one_hot(jnp.stack(picked, axis=-1), h, dtype=corr_BxH.dtype)
    return jnp.einsum("bt,bth->bh", coef_BxT, onehot_BxTxH)


def _fit_picked(
    corr_BxH: jax.Array, gram_HxH: jax.Array, idx_BxT: jax.Array, in_fit_T: jax.Array
) -> jax.Array:
    """`coef_BxT`: the least-squares coefficients of each row on its picked rows `idx_BxT`, those
    outside the fit (`in_fit_T` False: steps past k) held at 0 by an identity row in the system."""
    n_rows, t = idx_BxT.shape
    sub_BxTxT = jnp.take_along_axis(gram_HxH[idx_BxT], idx_BxT[:, None, :], axis=-1)
    both_BxTxT = jnp.broadcast_to(in_fit_T[:, None] & in_fit_T[None, :], sub_BxTxT.shape)
    eye_BxTxT = jnp.broadcast_to(jnp.eye(t, dtype=corr_BxH.dtype), sub_BxTxT.shape)
    sub_BxTxT = jnp.where(both_BxTxT, sub_BxTxT, eye_BxTxT) + PURSUIT_RIDGE * eye_BxTxT
    rhs_BxT = jnp.take_along_axis(corr_BxH, idx_BxT, axis=-1)
    rhs_BxT = jnp.where(jnp.broadcast_to(in_fit_T, (n_rows, t)), rhs_BxT, 0.0)
    return jnp.linalg.solve(sub_BxTxT, rhs_BxT[..., None])[..., 0]


def _rectangle(u: jax.Array) -> jax.Array:
    """The rectangle kernel `1{|u| < 1/2}` of the JumpReLU paper's pseudo-derivatives."""
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jump_relu(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """JumpReLU `z H(z - theta)` (same shapes), with the paper's straight-through gradients:
    d/dz = H(z - theta) and d/dtheta = -(theta / bandwidth) K((z - theta) / bandwidth), K the
    rectangle kernel (Rajamanoharan et al. 2024, eqs. 11-12)."""
    return jnp.where(z > theta, z, 0.0)


def _jump_relu_fwd(z: jax.Array, theta: jax.Array, bandwidth: float) -> tuple[jax.Array, Any]:
    return jump_relu(z, theta, bandwidth), (z, theta)


def _jump_relu_bwd(bandwidth: float, res: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    z, theta = res
    window = _rectangle((z - theta) / bandwidth)
    return jnp.where(z > theta, g, 0.0), -(theta / bandwidth) * window * g


jump_relu.defvjp(_jump_relu_fwd, _jump_relu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside_step(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """The step `H(z - theta)` (1.0 where z > theta, same shapes), with the paper's
    straight-through gradients: d/dz = 0 and d/dtheta = -(1 / bandwidth) K((z - theta) /
    bandwidth), so an L0 penalty `sum_j H(z_j - theta_j)` trains the thresholds."""
    return (z > theta).astype(z.dtype)


def _step_fwd(z: jax.Array, theta: jax.Array, bandwidth: float) -> tuple[jax.Array, Any]:
    return heaviside_step(z, theta, bandwidth), (z, theta)


def _step_bwd(bandwidth: float, res: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    z, theta = res
    return jnp.zeros_like(z), -(1.0 / bandwidth) * _rectangle((z - theta) / bandwidth) * g


heaviside_step.defvjp(_step_fwd, _step_bwd)


class JumpThreshold(nn.Module):
    """JumpReLU's per-unit threshold `theta_H = exp(log_threshold)`, a parameter (log-scale keeps it
    positive). Its own submodule, so the other methods of the autoencoder never look it up."""

    n_hidden: int
    init: float = 0.001  # `model.jump_init`, the starting threshold of every unit

    def setup(self) -> None:
        start = nn.initializers.constant(math.log(self.init))
        self.log_threshold = self.param("log_threshold", start, (self.n_hidden,))

    def __call__(self) -> jax.Array:
        return jnp.exp(self.log_threshold)


def hidden_mask(n_active: jax.Array, n_hidden: int) -> jax.Array:
    """`mask_H`: 1 for the first `n_active` units, 0 after."""
    return (jnp.arange(n_hidden) < n_active).astype(jnp.float32)


def unit_rows(w_HxD: jax.Array) -> jax.Array:
    """Rows scaled to unit length (a zero row stays zero)."""
    norm_Hx1 = jnp.linalg.norm(w_HxD, axis=-1, keepdims=True)
    return w_HxD / jnp.where(norm_Hx1 > 0, norm_Hx1, 1.0)


class Decoder(nn.Module):
    """`h -> h @ W_d + b_d`, as `nn.Dense` (same parameters, same initial values), with the option
    of using W_d's rows as unit vectors (`unit_norm`): a reparameterisation, so every optimizer step
    already sees the normalised weights and no projection step is needed."""

    n_features: int
    n_hidden: int
    initializer: str = "torch"
    unit_norm: bool = False
    sigmoid: bool = False  # the output through a sigmoid (`model.output="sigmoid"`)

    def setup(self) -> None:
        kernel_init, bias_init = _initialisers(self.initializer, self.n_hidden, self.n_features)
        self.kernel = self.param("kernel", kernel_init, (self.n_hidden, self.n_features))
        self.bias = self.param("bias", bias_init, (self.n_features,))

    def weights(self) -> jax.Array:
        """The decoder matrix `w_HxD` in use: one row (a dictionary direction) per hidden unit."""
        return unit_rows(self.kernel) if self.unit_norm else self.kernel

    def output(self, y_BxD: jax.Array) -> jax.Array:
        """The output layer on `h @ W_d`: plus the bias, then the sigmoid if there is one."""
        x_BxD = y_BxD + jnp.broadcast_to(self.bias, y_BxD.shape)
        return jax.nn.sigmoid(x_BxD) if self.sigmoid else x_BxD

    def __call__(self, h_BxH: jax.Array) -> jax.Array:
        return self.output(h_BxH @ self.weights())

    def pair(self, h_BxH: jax.Array, aux_BxH: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(output(h @ W_d), aux @ W_d)`: two codes through one matmul (one larger product costs
        less than two small ones), the second without the bias (the auxiliary loss is linear: it
        needs a linear output layer, which `Config` checks)."""
        y_2BxD = jnp.concatenate([h_BxH, aux_BxH]) @ self.weights()
        x_BxD, aux_x_BxD = jnp.split(y_2BxD, 2)
        return self.output(x_BxD), aux_x_BxD


class TiedEncoder(nn.Module):
    """The encoder of a tied autoencoder (`model.tied`; Makhzani & Frey 2013): `x -> x @ w_DxH +
    b_e` with `w_DxH` the decoder rows in use, transposed, handed over at every call, so its one
    parameter is its own bias `b_e`.

    The bias starts as the untied encoder's does: `nn.Dense`'s bias initialiser of the same
    `initializer`, from the same key (a Dense draws its kernel first, so at init that draw is made
    and left unused). A tied model thus starts with the biases and decoder of an untied one of the
    same key, and as the same function as one with `tied_init`.
    """

    n_hidden: int
    fan_in: int  # D, the encoder's fan-in (its bias's bound under "torch")
    initializer: str = "torch"

    def setup(self) -> None:
        _, bias_init = _initialisers(self.initializer, self.fan_in, self.n_hidden)
        if self.is_initializing():
            self.make_rng("params")  # the untied kernel's draw, so the bias gets the Dense's key
        self.bias = self.param("bias", bias_init, (self.n_hidden,))

    def __call__(self, x_BxD: jax.Array, w_DxH: jax.Array) -> jax.Array:
        pre_BxH = self.correlations(x_BxD, w_DxH)
        return pre_BxH + jnp.broadcast_to(self.bias, pre_BxH.shape)

    def correlations(self, x_BxD: jax.Array, w_DxH: jax.Array) -> jax.Array:
        """`x @ w_DxH` without the bias: a pursuit's correlations (`activation="omp"`). The bias
        is still made, and left unused, so every tied model has the same parameters."""
        return x_BxD @ w_DxH


class Autoencoder(nn.Module):
    """`x -> h = act(W_e (x - b_pre) + b_e) -> x_hat = out(W_d h + b_d)`, `out` the identity or a
    sigmoid (`output`).

    `b_pre` is the decoder bias with `pre_bias`, else 0. For "topk" and "batchtopk", `k` (the
    module field) is the largest k the program supports and every call may pass a smaller, possibly
    traced, `k`; "batchtopk" applies to the rows of a call together unless the call passes its
    inference `threshold` (see the module docstring). "jumprelu" learns a threshold per unit.
    With `tied`, `W_e` is the decoder rows in use, transposed, at every step (`TiedEncoder`).
    "omp" codes by orthogonal matching pursuit over the (tied, unit-norm) decoder rows, `k` steps,
    on the correlations `W_e (x - b_pre)` (no encoder bias).
    """

    n_features: int
    n_hidden: int
    activation: str = "relu"
    k: int | None = None  # the largest k of the program (for "omp": of training and coding)
    initializer: str = "torch"  # `model.init`: "torch", "flax", "ng", "atoms" or "data"
    # "atoms" only: `atoms_HxD`, the true dictionary `init_params` starts the decoder at (handed
    # over by `train.init_arms`, one seed at a time; None in a module that is only applied)
    atoms: jax.Array | None = None
    # "data" only: the decoder bias to start at (the training mean; `atoms` then holds the
    # starting rows, `jaxae.data.data_start`)
    start_bias: jax.Array | None = None
    unit_norm_decoder: bool = False
    pre_bias: bool = False
    tied_init: bool = False
    tied: bool = False  # `model.tied`: the encoder kernel is the decoder rows in use, transposed
    output: str = "linear"  # `model.output`: "linear" or "sigmoid"
    jump_bandwidth: float = 0.001  # `model.jump_bandwidth`: JumpReLU's kernel width epsilon
    jump_init: float = 0.001  # `model.jump_init`: JumpReLU's starting threshold

    def setup(self) -> None:
        if self.tied:
            self.encoder = TiedEncoder(self.n_hidden, self.n_features, self.initializer)
        else:
            self.encoder = _dense(self.n_hidden, self.n_features, self.initializer)
        self.decoder = Decoder(
            self.n_features,
            self.n_hidden,
            self.initializer,
            self.unit_norm_decoder,
            sigmoid=self.output == "sigmoid",
        )
        if self.activation == "jumprelu":
            self.jump = JumpThreshold(self.n_hidden, self.jump_init)

    def pre_activations(self, x_BxD: jax.Array, mask_H: jax.Array | None = None) -> jax.Array:
        """`pre_BxH`, the encoder's output; masked units read -inf for top-k and BatchTopK (they
        never win a slot) and 0 otherwise."""
        chex.assert_shape(x_BxD, (..., self.n_features))
        if self.pre_bias:
            x_BxD = x_BxD - jnp.broadcast_to(self.decoder.bias, x_BxD.shape)
        if self.activation == "omp":  # the pursuit's correlations: no encoder bias
            pre_BxH = self.encoder.correlations(x_BxD, self.encoder_weights())
        elif self.tied:
            pre_BxH = self.encoder(x_BxD, self.encoder_weights())
        else:
            pre_BxH = self.encoder(x_BxD)
        if mask_H is None:
            return pre_BxH
        mask_H = jnp.broadcast_to(mask_H, pre_BxH.shape)
        masked = -jnp.inf if self.activation in RANKING_ACTIVATIONS else 0.0
        return jnp.where(mask_H > 0, pre_BxH, masked)

    def activate(
        self,
        pre_BxH: jax.Array,
        mask_H: jax.Array | None = None,
        k: jax.Array | None = None,
        threshold: jax.Array | None = None,
        rows_B: jax.Array | None = None,
    ) -> jax.Array:
        """The hidden code `h_BxH` from pre-activations; units where `mask_H` is 0 are held at 0.

        BatchTopK only: `threshold` (theta, `batch_threshold`) is inference, each unit firing where
        its pre-activation exceeds it; without it the rows are one batch, of which `rows_B` (bool)
        marks the real rows (a padded last batch's padding is never kept).
        """
        k = self.k if k is None else k
        if self.activation == "relu":
            h_BxH = jax.nn.relu(pre_BxH)
        elif self.activation == "sigmoid":
            h_BxH = jax.nn.sigmoid(pre_BxH)
        elif self.activation == "identity":
            h_BxH = pre_BxH
        elif self.activation == "jumprelu":
            theta_BxH = jnp.broadcast_to(self.jump(), pre_BxH.shape)
            h_BxH = jump_relu(pre_BxH, theta_BxH, self.jump_bandwidth)
        elif self.activation == "batchtopk" and threshold is not None:
            h_BxH = threshold_relu(pre_BxH, threshold)
        elif self.activation == "batchtopk":
            h_BxH = batch_top_k_relu(pre_BxH, k, rows_B)
        elif self.activation == "omp":
            w_HxD = self.decoder_weights()
            h_BxH = orthogonal_pursuit(pre_BxH, w_HxD @ w_HxD.T, k, self.k, mask_H)
        else:
            h_BxH = top_k_relu(pre_BxH, k, self.k)
        return h_BxH if mask_H is None else h_BxH * jnp.broadcast_to(mask_H, h_BxH.shape)

    def gates(self, pre_BxH: jax.Array, mask_H: jax.Array | None = None) -> jax.Array:
        """JumpReLU only: `H(pre - theta)` per unit (1.0 where it fires), with the straight-through
        gradient to theta (`heaviside_step`): what an L0 penalty counts."""
        theta_BxH = jnp.broadcast_to(self.jump(), pre_BxH.shape)
        gate_BxH = heaviside_step(pre_BxH, theta_BxH, self.jump_bandwidth)
        return gate_BxH if mask_H is None else gate_BxH * jnp.broadcast_to(mask_H, pre_BxH.shape)

    def thresholds(self) -> jax.Array:
        """JumpReLU only: the learned thresholds `theta_H`."""
        return self.jump()

    def batch_threshold(
        self,
        x_NxD: jax.Array,
        batch_size: int,
        mask_H: jax.Array | None = None,
        k: jax.Array | None = None,
    ) -> jax.Array:
        """BatchTopK only: the inference threshold theta from training data `x_NxD` in batches of
        `batch_size` (the training batch size; `batch_top_k_threshold`)."""
        pre_NxH = self.pre_activations(x_NxD, mask_H)
        return batch_top_k_threshold(pre_NxH, self.k if k is None else k, batch_size)

    def encode(
        self,
        x_BxD: jax.Array,
        mask_H: jax.Array | None = None,
        k: jax.Array | None = None,
        threshold: jax.Array | None = None,
    ) -> jax.Array:
        """The hidden code `h_BxH`; units where `mask_H` is 0 are held at 0. `threshold`:
        BatchTopK's inference threshold (without it, BatchTopK over the rows given)."""
        return self.activate(self.pre_activations(x_BxD, mask_H), mask_H, k, threshold)

    def is_active(self, h_BxH: jax.Array) -> jax.Array:
        """Whether each unit fires: its pre-activation is positive (h > 0.5 for sigmoid, h != 0
        otherwise, so a masked or top-k-dropped unit never counts)."""
        return h_BxH > 0.5 if self.activation == "sigmoid" else h_BxH != 0

    def decode(self, h_BxH: jax.Array) -> jax.Array:
        """The reconstruction `x_hat_BxD`."""
        chex.assert_shape(h_BxH, (..., self.n_hidden))
        return self.decoder(h_BxH)

    def decode_pair(self, h_BxH: jax.Array, aux_BxH: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(x_hat_BxD, aux_BxH @ W_d)`: the reconstruction and a second code's decoding without
        the bias (the auxiliary top-k loss's), in one matmul."""
        chex.assert_equal_shape([h_BxH, aux_BxH])
        return self.decoder.pair(h_BxH, aux_BxH)

    def decoder_weights(self) -> jax.Array:
        """`w_HxD`, the decoder rows in use (unit vectors with `unit_norm_decoder`)."""
        return self.decoder.weights()

    def encoder_weights(self) -> jax.Array:
        """`w_DxH`, the encoder kernel in use: its own, or with `tied` the decoder rows in use,
        transposed."""
        if self.tied:
            return self.decoder_weights().T
        return self.encoder.variables["params"]["kernel"]

    def __call__(
        self,
        x_BxD: jax.Array,
        mask_H: jax.Array | None = None,
        k: jax.Array | None = None,
        threshold: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns `(x_hat_BxD, h_BxH)`."""
        h_BxH = self.encode(x_BxD, mask_H, k, threshold)
        return self.decode(h_BxH), h_BxH


def _at_atoms(model: Autoencoder, params: Any) -> Any:
    """`params` with the decoder kernel at `model.atoms`: the oracle start (`model.init`)."""
    if model.atoms is None:
        raise invalid(
            "model.init",
            model.initializer,
            "'atoms' only with the data's true atoms handed to the model "
            "(`Autoencoder(atoms=atoms_HxD)`, as `train.init_arms` does)",
        )
    atoms_HxD = jnp.asarray(model.atoms, jnp.float32)
    chex.assert_shape(atoms_HxD, (model.n_hidden, model.n_features))
    decoder = {**params["params"]["decoder"], "kernel": atoms_HxD}
    if model.start_bias is not None:
        decoder["bias"] = jnp.asarray(model.start_bias, jnp.float32)
    return {"params": {**params["params"], "decoder": decoder}}


def init_params(model: Autoencoder, key: jax.Array) -> Any:
    """`model.init`, then, with `tied_init`, the encoder kernel set to the decoder rows in use,
    transposed (so each unit starts by reading the direction it writes). The oracle start
    (`initializer="atoms"`) puts the decoder kernel at the true atoms and ties the encoder the same
    way, biases zero: where a run that recovers the atoms would end, to test whether it stays. A
    `tied` model has no encoder kernel to set: its encoder reads the decoder rows at every call,
    so it already starts (and stays) that way. The data start (`initializer="data"`) is the same
    with training rows for atoms and the decoder bias at their mean (`start_bias`)."""
    params = model.init(key, jnp.zeros((1, model.n_features)))
    if model.initializer in ("atoms", "data"):
        params = _at_atoms(model, params)
    elif not model.tied_init:
        return params
    if model.tied:
        return params
    w_HxD = model.apply(params, method="decoder_weights")
    encoder = {**params["params"]["encoder"], "kernel": w_HxD.T}
    return {"params": {**params["params"], "encoder": encoder}}


def make_model(cfg: ModelConfig, n_features: int, coding: bool = False) -> Autoencoder:
    """The module a config describes: as it trains, or with `coding` as the trained model codes
    data (a pursuit's `model.infer_k` steps in place of the k it trains with)."""
    return Autoencoder(
        n_features=n_features,
        n_hidden=cfg.n_hidden,
        activation=cfg.activation,
        k=cfg.code_k() if coding else cfg.k,
        initializer=cfg.init,
        unit_norm_decoder=cfg.unit_norm_decoder,
        pre_bias=cfg.pre_bias,
        tied_init=cfg.tied_init,
        tied=cfg.tied,
        output=cfg.output,
        jump_bandwidth=cfg.jump_bandwidth,
        jump_init=cfg.jump_init,
    )
