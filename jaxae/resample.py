"""Dead-unit resampling: dead and rarely firing units re-aimed at what the model misses.

`resample_dead` is written for one (seed, arm), like `train.train_step`: `train.run_epochs` calls it
at each epoch's end in the first half of training (`loss.resample_dead`), on the epoch's last
minibatches, with the firing rates counted during its steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax

from jaxae.config import Config
from jaxae.model import Autoencoder, hidden_mask, unit_rows

if TYPE_CHECKING:
    from jaxae.train import TrainState


def _column_norms(w_DxH: jax.Array, weight_H: jax.Array) -> jax.Array:
    """The mean norm of the columns with weight 1 (1 if there are none)."""
    norms_H = jnp.linalg.norm(w_DxH, axis=0)
    total = jnp.sum(weight_H)
    return jnp.where(total > 0, jnp.sum(norms_H * weight_H) / jnp.maximum(total, 1), 1.0)


# `loss.resample_least` re-aims a live unit only where the split's direction is new: its |cosine|
# with the busiest unit's decoder row below this. Where the busiest unit codes its own atom well,
# the direction is that atom again, and re-aiming a live unit at it only trades one of its atoms
# for a copy: with L1 at 8 atoms in 8 dimensions, 1 per sample (data seed 1), 4 of 16 seeds
# recovered every atom without this, from a random start or from the oracle one (L1 unrevived:
# 13). Chosen among 0.2-0.95 on that data and on data seeds 0 and 1 of
# scripts/saelens_benchmark.py: at 0.6 all three are at their best (16, 16 and 14 of 16); at 0.4
# the third has 13, at 0.2 the second 11, at 0.8, 0.9 and 0.95 the first 14, 11 and 7.
LEAST_MAX_COS = 0.6


def _split_busiest(
    h_PxH: jax.Array,
    residual_PxD: jax.Array,
    error_P: jax.Array,
    w_HxD: jax.Array,
    rate_H: jax.Array,
    mask_H: jax.Array,
    median_rate: jax.Array,
    share: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where the busiest unit (the highest firing rate) fires on more than `share` times the
    median unit's rate: the direction its part of its worst-reconstructed pool sample plus that
    sample's residual, `h_pb w_b + (x_p - x_hat_p)`, normalised, and True; else False. Third, the
    |cosine| of that direction with the busiest unit's decoder row.

    A unit covering two similar atoms fires on the samples of both (about twice the median
    rate), and with k at the true count a unit re-aimed at the residual alone never enters the
    top k on their samples: the residual is the small part the busy unit misses. This direction is
    the whole atom that the busy unit codes poorly in that sample, so the re-aimed unit takes that
    atom and the busy unit is left with the other one.
    """
    busy = jnp.argmax(jnp.where(mask_H > 0, rate_H, -jnp.inf))
    fires_P = (h_PxH[:, busy] != 0) & jnp.isfinite(error_P)  # padding samples' error is -inf
    p = jnp.argmax(jnp.where(fires_P, error_P, -jnp.inf))
    target_1xD = unit_rows((h_PxH[p, busy] * w_HxD[busy] + residual_PxD[p])[None, :])
    split = (rate_H[busy] > share * median_rate) & jnp.any(fires_P)
    overlap = jnp.abs(jnp.sum(target_1xD[0] * unit_rows(w_HxD[busy][None, :])[0]))
    return target_1xD, split, overlap


def resample_dead(
    state: TrainState,
    pool_PxD: jax.Array,
    rate_H: jax.Array,
    w_P: jax.Array | None = None,
    *,
    model: Autoencoder,
    cfg: Config,
) -> TrainState:
    """Re-aim every dead unit (no firing for `loss.dead_steps` steps) at a missing direction; with
    `loss.resample_rare`, also every unit whose firing rate `rate_H` (the share of the epoch's
    samples it fired on) is below that share of the median unit's.

    The n dead units take, in order, the residuals `x - x_hat` of the n worst-reconstructed samples
    of the pool `pool_PxD` (samples with weight `w_P` 0 are padding and never chosen), normalised:
    the decoder row becomes that direction (at the mean norm of the live rows), the encoder column
    the same direction at the live columns' mean norm, the encoder bias 0, and the unit's dead count
    restarts (a tied model, `model.tied`, has no encoder kernel: its encoder follows the decoder
    rows). Adam's moments of a dead unit's weights have already decayed (it had no gradient for
    `dead_steps` steps), so they are left as they are. With more dead units than pool samples the
    last ones share the last sample's direction. With `loss.resample_split`, the first of them
    may instead split the busiest unit (`_split_busiest`); with `loss.resample_least` too, when
    the busiest unit is due a split but no unit is dead or rare, the least-firing unit is
    re-aimed to take that split, if its direction is new (`LEAST_MAX_COS`): an L1 code has no
    dead unit to spare (a unit that merged two atoms leaves a third unit coding a mixture, alive
    and firing often enough).
    """
    mask_H = hidden_mask(state.hyper.n_active, model.n_hidden)
    median_rate = jnp.nanmedian(jnp.where(mask_H > 0, rate_H, jnp.nan))
    rare_H = rate_H < cfg.loss.resample_rare * median_rate
    dead_H = ((state.since_fired >= cfg.loss.dead_steps) | rare_H) & (mask_H > 0)
    x_hat_PxD, h_PxH = model.apply(state.params, pool_PxD, mask_H, state.hyper.k)
    residual_PxD = pool_PxD - x_hat_PxD
    error_P = jnp.sum(jnp.square(residual_PxD), axis=-1)
    if w_P is not None:
        error_P = jnp.where(w_P > 0, error_P, -jnp.inf)
    if cfg.loss.resample_split > 0:  # the first re-aimed unit splits the busiest one
        w_HxD = model.apply(state.params, method=model.decoder_weights)
        target_1xD, split, overlap = _split_busiest(
            h_PxH,
            residual_PxD,
            error_P,
            w_HxD,
            rate_H,
            mask_H,
            median_rate,
            cfg.loss.resample_split,
        )
        if cfg.loss.resample_least:  # no unit to re-aim: the least-firing one splits it
            least_H = jnp.arange(model.n_hidden) == jnp.argmin(
                jnp.where(mask_H > 0, rate_H, jnp.inf)
            )
            new = split & (overlap < LEAST_MAX_COS) & ~jnp.any(dead_H)
            dead_H = dead_H | (least_H & new)
    live_H = ((~dead_H) & (mask_H > 0)).astype(jnp.float32)
    n_worst = min(model.n_hidden, pool_PxD.shape[0])
    worst_W = lax.top_k(error_P, n_worst)[1]
    rank_H = jnp.clip(jnp.cumsum(dead_H) - 1, 0, n_worst - 1)  # the i-th dead unit, i-th worst
    direction_HxD = unit_rows(residual_PxD[worst_W[rank_H]])
    if cfg.loss.resample_split > 0:
        first_Hx1 = (dead_H & (rank_H == 0) & split)[:, None]
        direction_HxD = jnp.where(first_Hx1, target_1xD, direction_HxD)
    p = state.params["params"]
    decoder_HxD = p["decoder"]["kernel"]
    dead_1xH, dead_Hx1 = dead_H[None, :], dead_H[:, None]
    encoder = {**p["encoder"], "bias": jnp.where(dead_H, 0.0, p["encoder"]["bias"])}
    if not model.tied:  # a tied encoder reads the decoder rows: re-aiming them re-aims it
        encoder_DxH = p["encoder"]["kernel"]
        encoder["kernel"] = jnp.where(
            dead_1xH, direction_HxD.T * _column_norms(encoder_DxH, live_H), encoder_DxH
        )
    decoder = {
        **p["decoder"],
        "kernel": jnp.where(
            dead_Hx1, direction_HxD * _column_norms(decoder_HxD.T, live_H), decoder_HxD
        ),
    }
    params = {"params": {**p, "encoder": encoder, "decoder": decoder}}
    return state.replace(params=params, since_fired=jnp.where(dead_H, 0, state.since_fired))
