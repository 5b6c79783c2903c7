"""Training: the whole loop is `lax.scan`; many seeds are one sharded `jit(vmap(...))`.

Shape legend: S seeds, N samples, B batch, K minibatches per epoch, D features, H hidden units,
E epochs.

The pieces, from the inside out:

- `train_step`: one minibatch of Adam on one seed, or with `optim.name="lbfgs"` one iteration of
  full-batch L-BFGS (one epoch is one iteration; its line search runs inside the step); a seed
  whose loss or parameters turn non-finite stops updating and keeps its last finite parameters
  (`diverged`).
- `run_epochs`: a scan over epochs, each a fresh permutation of the data (jaxae/shuffle.py) and a
  scan over its minibatches; it returns the per-epoch mean loss as history.
- `make_train(cfg) -> train(key)`: init plus all epochs for one seed, pure;
  `jax.jit(jax.vmap(train))` is a sweep.
- Arms: a state whose leaves carry a leading arm axis A (from a `Hyper` with one value per arm) is
  a sweep inside each seed: the arms share the seed's initial key and its shuffle (computed once),
  and differ only in their hyperparameters.
- `train_seeds`: the host loop. Seed i's key is `fold_in(key(seed), i)`, whatever the number of
  seeds or devices; the seed axis is sharded over `jax.devices()` (of every process, after
  `processes.init_processes`); the loop runs in chunks of epochs so the caller can show progress,
  checkpoint or stop between chunks without changing any result.
- Memory: when all seeds would not fit in the budget (jaxae/memory.py plans it), `train_seeds` and
  `evaluate_seeds` split them into equal batches that do (the last one padded) and run every batch
  through the same compiled program, chunk by chunk; the state of every seed waits on the host
  between chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxae import memory, metrics, shuffle
from jaxae.config import Config
from jaxae.data import ground_truth as data_ground_truth
from jaxae.data import make_data
from jaxae.losses import total_loss
from jaxae.model import Autoencoder, init_params, make_model, unit_rows
from jaxae.optim import line_search_args, make_optimizer


@flax.struct.dataclass
class Hyper:
    """Per-seed settings that leave the program's shapes alone, so seeds in one run may differ."""

    learning_rate: jax.Array  # float32; unused by L-BFGS (its line search sets each step)
    weight_decay: jax.Array  # float32
    sparsity_weight: jax.Array  # float32, beta of the sparsity penalty
    n_active: jax.Array  # int32, hidden units in use; units >= n_active are held at zero
    k: jax.Array  # int32, top-k's k (at most model.k, the program's largest); unused otherwise
    rho: jax.Array  # float32, the KL penalty's target mean activation

    @classmethod
    def from_config(cls, cfg: Config, n_active: int | None = None, **values: float) -> Hyper:
        """The config's own values (all units active unless `n_active` is given); keyword
        `values` (e.g. `k=2`, `rho=0.1`) replace single fields."""
        hyper = cls(
            learning_rate=jnp.float32(cfg.optim.learning_rate),
            weight_decay=jnp.float32(cfg.optim.weight_decay),
            sparsity_weight=jnp.float32(cfg.loss.weight),
            n_active=jnp.int32(cfg.model.n_hidden if n_active is None else n_active),
            k=jnp.int32(cfg.model.n_hidden if cfg.model.k is None else cfg.model.k),
            rho=jnp.float32(cfg.loss.rho),
        )
        return hyper.replace(
            **{name: jnp.asarray(v, getattr(hyper, name).dtype) for name, v in values.items()}
        )


@flax.struct.dataclass
class TrainState:
    """Everything one seed carries from step to step."""

    params: Any
    opt_state: Any
    key: jax.Array  # the seed's shuffle key; epoch e uses fold_in(key, e)
    hyper: Hyper
    diverged: jax.Array  # bool: a non-finite loss or parameter was met; updates stopped there
    since_fired: jax.Array  # int32 [H]: training steps since each unit last fired (dead-unit count)


def seed_keys(seed: int, n_seeds: int) -> jax.Array:
    """Keys of seeds 0..n-1: `fold_in(key(seed), i)`, so seed i never depends on n."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        jax.random.key(seed), jnp.arange(n_seeds, dtype=jnp.uint32)
    )


def epoch_batches(
    key: jax.Array, n: int, batch_size: int, method: str = "feistel"
) -> tuple[jax.Array, jax.Array | None]:
    """Minibatch indices `idx_KxB` of one shuffled epoch and weights `w_KxB` for a partial batch.

    As `DataLoader(shuffle=True, drop_last=False)`: every sample once per epoch; the last batch is
    padded with repeated indices that get weight 0 (`w` is None when the batch size divides n).
    `method` is the shuffle (`train.shuffle`: "feistel", the config's default, or "sort"; see
    jaxae/shuffle.py).
    """
    perm_N = shuffle.permutation(key, n, method)
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    if pad == 0:
        return perm_N.reshape(n_batches, batch_size), None
    idx = jnp.concatenate([perm_N, perm_N[:pad]]).reshape(n_batches, batch_size)
    w = (jnp.arange(n_batches * batch_size) < n).astype(jnp.float32)
    return idx, w.reshape(n_batches, batch_size)


def steps_per_epoch(cfg: Config) -> int:
    """Optimizer steps per epoch: ceil(N / B), the last batch padded as DataLoader keeps it."""
    return math.ceil(cfg.data.n_samples / cfg.train.batch_size)


def total_steps(cfg: Config) -> int:
    """Optimizer steps of a whole run (what a learning-rate schedule spans)."""
    return cfg.train.epochs * steps_per_epoch(cfg)


def hidden_mask(n_active: jax.Array, n_hidden: int) -> jax.Array:
    """`mask_H`: 1 for the first `n_active` units, 0 after."""
    return (jnp.arange(n_hidden) < n_active).astype(jnp.float32)


def _arm_shape(per_run: jax.Array) -> tuple[int, ...]:
    """() for a plain run, (A,) for a run with an arm axis (a per-run leaf of a seed's state)."""
    return tuple(per_run.shape)


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def init_state(key: jax.Array, hyper: Hyper, *, model: Autoencoder, cfg: Config) -> TrainState:
    """A fresh seed: parameters from `key`, an empty optimizer, its own shuffle key.

    With one `hyper` value per arm (leaves of shape [A]) it returns the arms' states stacked, all
    from the same key.

    With fewer active units than `n_hidden`, the decoder is rescaled by sqrt(H / n_active), so its
    initial scale is that of a model built with `n_active` units (both initialisers scale as
    1 / sqrt(fan_in)).
    """
    if _arm_shape(hyper.n_active):
        return jax.vmap(lambda h: init_state(key, h, model=model, cfg=cfg))(hyper)
    init_key, shuffle_key = jax.random.split(key)
    params = init_params(model, init_key)
    scale = jnp.sqrt(model.n_hidden / hyper.n_active.astype(jnp.float32))
    decoder = jax.tree.map(lambda p: p * scale, params["params"]["decoder"])
    params = {"params": {**params["params"], "decoder": decoder}}
    opt = make_optimizer(cfg.optim, hyper.learning_rate, hyper.weight_decay, total_steps(cfg))
    return TrainState(
        params=params,
        opt_state=opt.init(params),
        key=shuffle_key,
        hyper=hyper,
        diverged=jnp.zeros((), bool),
        since_fired=jnp.zeros((model.n_hidden,), jnp.int32),
    )


def train_step(
    state: TrainState,
    batch: tuple[jax.Array, jax.Array | None],
    *,
    x_NxD: jax.Array,
    model: Autoencoder,
    cfg: Config,
) -> tuple[TrainState, tuple[jax.Array, jax.Array]]:
    """One optimizer step on the minibatch `x_NxD[idx_B]`; returns the new state and
    `(loss, fired_H)`: the batch loss and on how many of the batch's samples each unit fired.

    An Adam step, or with `optim.name="lbfgs"` one L-BFGS iteration on the full batch: its line
    search evaluates the same batch's loss plus weight decay, inside this (vmapped) program.
    """
    idx_B, w_B = batch
    x_BxD = x_NxD[idx_B]

    def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        return total_loss(
            params,
            x_BxD,
            model=model,
            cfg=cfg.loss,
            sparsity_weight=state.hyper.sparsity_weight,
            mask_H=hidden_mask(state.hyper.n_active, model.n_hidden),
            w_B=w_B,
            rho=state.hyper.rho,
            k=state.hyper.k,
            dead_H=state.since_fired >= cfg.loss.dead_steps,
        )

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    wd = state.hyper.weight_decay
    opt = make_optimizer(cfg.optim, state.hyper.learning_rate, wd, total_steps(cfg))
    if cfg.optim.name == "lbfgs":
        # The line search's objective: this batch's loss (without its terms) plus weight decay.
        extra = line_search_args(
            lambda params: loss_fn(params)[0], loss, grads, state.params, cfg.optim, wd
        )
        updates, opt_state = opt.update(grads, state.opt_state, state.params, **extra)
    else:
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = ~state.diverged & jnp.isfinite(loss) & _all_finite(params)

    def keep(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(ok, new, old)

    state = state.replace(
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        diverged=~ok,
        since_fired=jnp.where(terms["fired_H"] > 0, 0, state.since_fired + 1),
    )
    return state, (loss, terms["fired_H"])


def _column_norms(w_DxH: jax.Array, weight_H: jax.Array) -> jax.Array:
    """The mean norm of the columns with weight 1 (1 if there are none)."""
    norms_H = jnp.linalg.norm(w_DxH, axis=0)
    total = jnp.sum(weight_H)
    return jnp.where(total > 0, jnp.sum(norms_H * weight_H) / jnp.maximum(total, 1), 1.0)


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
    restarts. Adam's moments of a dead unit's weights have already decayed (it had no gradient for
    `dead_steps` steps), so they are left as they are. With more dead units than pool samples the
    last ones share the last sample's direction.
    """
    mask_H = hidden_mask(state.hyper.n_active, model.n_hidden)
    median_rate = jnp.nanmedian(jnp.where(mask_H > 0, rate_H, jnp.nan))
    rare_H = rate_H < cfg.loss.resample_rare * median_rate
    dead_H = ((state.since_fired >= cfg.loss.dead_steps) | rare_H) & (mask_H > 0)
    live_H = ((~dead_H) & (mask_H > 0)).astype(jnp.float32)
    x_hat_PxD, _ = model.apply(state.params, pool_PxD, mask_H, state.hyper.k)
    residual_PxD = pool_PxD - x_hat_PxD
    error_P = jnp.sum(jnp.square(residual_PxD), axis=-1)
    if w_P is not None:
        error_P = jnp.where(w_P > 0, error_P, -jnp.inf)
    n_worst = min(model.n_hidden, pool_PxD.shape[0])
    worst_W = lax.top_k(error_P, n_worst)[1]
    rank_H = jnp.clip(jnp.cumsum(dead_H) - 1, 0, n_worst - 1)  # the i-th dead unit, i-th worst
    direction_HxD = unit_rows(residual_PxD[worst_W[rank_H]])
    p = state.params["params"]
    encoder_DxH, decoder_HxD = p["encoder"]["kernel"], p["decoder"]["kernel"]
    dead_1xH, dead_Hx1 = dead_H[None, :], dead_H[:, None]
    encoder = {
        "kernel": jnp.where(
            dead_1xH, direction_HxD.T * _column_norms(encoder_DxH, live_H), encoder_DxH
        ),
        "bias": jnp.where(dead_H, 0.0, p["encoder"]["bias"]),
    }
    decoder = {
        **p["decoder"],
        "kernel": jnp.where(
            dead_Hx1, direction_HxD * _column_norms(decoder_HxD.T, live_H), decoder_HxD
        ),
    }
    params = {"params": {**p, "encoder": encoder, "decoder": decoder}}
    return state.replace(params=params, since_fired=jnp.where(dead_H, 0, state.since_fired))


def _mean_in_order(loss_K: jax.Array) -> jax.Array:
    """The mean over the leading axis, summed first to last. `jnp.mean` lets XLA pick the order of
    the sum by the shape of the whole batch of seeds, so a seed's recorded loss would change in the
    last bit with the number of seeds trained together."""
    return functools.reduce(jnp.add, list(loss_K)) / loss_K.shape[0]


def run_epochs(
    state: TrainState,
    x_NxD: jax.Array,
    first_epoch: jax.Array,
    *,
    n_epochs: int,
    model: Autoencoder,
    cfg: Config,
) -> tuple[TrainState, jax.Array]:
    """Epochs `first_epoch .. first_epoch + n_epochs - 1` of one seed; returns `(state, loss_E)`.

    `loss_E` is each epoch's mean minibatch loss, NaN once the seed has diverged. Epochs at or past
    `cfg.train.epochs` (the tail of a last, partial chunk) leave the state untouched. With an arm
    axis, every arm takes the same minibatches and `loss_E` is `loss_ExA`.
    """
    n, batch_size = x_NxD.shape[0], cfg.train.batch_size
    arms = _arm_shape(state.diverged)
    step = functools.partial(train_step, x_NxD=x_NxD, model=model, cfg=cfg)
    if arms:
        step = jax.vmap(step, in_axes=(0, None))  # one shuffled batch, every arm's own step
    key = state.key[0] if arms else state.key  # arms share their seed's key

    resample = functools.partial(resample_dead, model=model, cfg=cfg)
    if arms:
        resample = jax.vmap(resample, in_axes=(0, None, 0, None))
    # Firing rates for `resample_rare`, counted over the epoch's training steps.
    count_fired = cfg.loss.resample_dead and cfg.loss.resample_rare > 0

    def plain_step(state: TrainState, batch: tuple) -> tuple[TrainState, jax.Array]:
        state, (loss, _) = step(state, batch)
        return state, loss

    def counted_step(carry: tuple, batch: tuple) -> tuple[tuple, jax.Array]:
        state, fired_H = carry
        state, (loss, fired_now_H) = step(state, batch)
        return (state, fired_H + fired_now_H), loss

    def one_epoch(state: TrainState, epoch_and_key: tuple) -> tuple[TrainState, jax.Array]:
        idx_KxB, w_KxB = epoch_batches(epoch_and_key[1], n, batch_size, cfg.train.shuffle)
        fired_H = jnp.zeros(state.since_fired.shape, jnp.int32)
        if count_fired:
            (state, fired_H), loss_K = lax.scan(counted_step, (state, fired_H), (idx_KxB, w_KxB))
        else:
            state, loss_K = lax.scan(plain_step, state, (idx_KxB, w_KxB))
        loss = jnp.where(state.diverged, jnp.nan, _mean_in_order(loss_K))
        if cfg.loss.resample_dead:
            # The pool of candidate directions: the epoch's last minibatches (a random sample).
            m = min(idx_KxB.shape[0], -(-cfg.loss.resample_pool // batch_size))
            pool_P = idx_KxB[-m:].reshape(-1)
            w_P = None if w_KxB is None else w_KxB[-m:].reshape(-1)
            epoch = epoch_and_key[0]
            due = (epoch < cfg.train.epochs // 2) & ((epoch + 1) % cfg.loss.resample_every == 0)
            state = lax.cond(
                due,
                lambda s: resample(s, x_NxD[pool_P], fired_H / n, w_P),
                lambda s: s,
                state,
            )
        return state, loss

    def guarded_epoch(state: TrainState, epoch_and_key: tuple) -> tuple[TrainState, jax.Array]:
        return lax.cond(
            epoch_and_key[0] < cfg.train.epochs,
            one_epoch,
            lambda state, _: (state, jnp.full(arms, jnp.nan, jnp.float32)),
            state,
            epoch_and_key,
        )

    epochs = first_epoch + jnp.arange(n_epochs)
    # Epoch e shuffles with fold_in(key, e); all of a chunk's keys in one call, outside the loop.
    epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, epochs)
    body = one_epoch if cfg.train.epochs % n_epochs == 0 else guarded_epoch
    return lax.scan(body, state, (epochs, epoch_keys))


def make_train(cfg: Config) -> Callable[..., tuple[TrainState, jax.Array]]:
    """`train(key, x_NxD=None, hyper=None) -> (state, loss_E)`: one whole run of one seed, pure.

    Without `x_NxD` the config's shared data set is used. `jax.jit(jax.vmap(train))(keys)` trains
    many seeds; `train_seeds` does the same with sharding, chunks and progress.
    """
    model = make_model(cfg.model, cfg.data.n_features)
    shared_x = None if cfg.data.per_seed else shared_data(cfg)

    def train(
        key: jax.Array, x_NxD: jax.Array | None = None, hyper: Hyper | None = None
    ) -> tuple[TrainState, jax.Array]:
        if x_NxD is None:
            x_NxD = shared_x if shared_x is not None else seed_data(key, cfg)
        hyper = Hyper.from_config(cfg) if hyper is None else hyper
        state = init_state(key, hyper, model=model, cfg=cfg)
        return run_epochs(
            state, x_NxD, jnp.int32(0), n_epochs=cfg.train.epochs, model=model, cfg=cfg
        )

    return train


def shared_data(cfg: Config) -> jax.Array:
    """The data set all seeds share (unless `data.per_seed`): drawn from `key(data.seed)`."""
    return make_data(jax.random.key(cfg.data.seed), cfg.data)


def _seed_data_key(key: jax.Array, cfg: Config) -> jax.Array:
    return jax.random.fold_in(jax.random.key(cfg.data.seed), jax.random.key_data(key)[-1])


def seed_data(key: jax.Array, cfg: Config) -> jax.Array:
    """A per-seed data set (`data.per_seed`): from `fold_in(key(data.seed), seed's key data)`."""
    return make_data(_seed_data_key(key, cfg), cfg.data)


def ground_truth(cfg: Config, keys: jax.Array | None = None) -> jax.Array | None:
    """The true dictionary of the data set(s) trained on: `atoms_MxD` for shared data, one per
    seed (`atoms_SxMxD`, for `keys`) with `data.per_seed`; None for data without one."""
    shared = data_ground_truth(jax.random.key(cfg.data.seed), cfg.data)
    if shared is None or not cfg.data.per_seed or keys is None:
        return shared
    return jax.vmap(lambda k: data_ground_truth(_seed_data_key(k, cfg), cfg.data))(keys)


class Programs(NamedTuple):
    """The compiled-once functions of a config, vmapped over the seed axis."""

    model: Autoencoder
    init: Callable[[jax.Array, Hyper], TrainState]
    run_chunk: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array]]
    seed_data: Callable[[jax.Array], jax.Array]
    evaluate: Callable[[TrainState, jax.Array], dict[str, jax.Array]]


def evaluate_state(
    state: TrainState, x_NxD: jax.Array, *, model: Autoencoder, cfg: Config
) -> dict[str, jax.Array]:
    """`metrics.evaluate` on the whole data set with the seed's own mask and sparsity weight."""
    if _arm_shape(state.diverged):
        return jax.vmap(lambda s: evaluate_state(s, x_NxD, model=model, cfg=cfg))(state)
    return metrics.evaluate(
        state.params,
        x_NxD,
        model=model,
        loss_cfg=cfg.loss,
        sparsity_weight=state.hyper.sparsity_weight,
        mask_H=hidden_mask(state.hyper.n_active, model.n_hidden),
        k=state.hyper.k,
        rho=state.hyper.rho,
    )


@functools.cache
def programs(cfg: Config) -> Programs:
    """Jitted, vmapped init, chunk runner and evaluation for `cfg`, built once per config."""
    model = make_model(cfg.model, cfg.data.n_features)
    chunk = min(cfg.train.chunk_epochs, cfg.train.epochs)
    x_axis = 0 if cfg.data.per_seed else None
    init = functools.partial(init_state, model=model, cfg=cfg)
    run = functools.partial(run_epochs, n_epochs=chunk, model=model, cfg=cfg)
    return Programs(
        model=model,
        # A loop, not a vmap: XLA:CPU compiles vmapped threefry draws several times slower, and
        # initialisation runs once per seed, so its speed hardly matters.
        init=jax.jit(lambda keys, hyper: lax.map(lambda a: init(*a), (keys, hyper))),
        run_chunk=jax.jit(jax.vmap(run, in_axes=(0, x_axis, None)), donate_argnums=0),
        seed_data=jax.jit(jax.vmap(functools.partial(seed_data, cfg=cfg))),
        evaluate=jax.jit(functools.partial(evaluate_each, model=model, cfg=cfg)),
    )


def evaluate_each(
    states: TrainState, x: jax.Array, *, model: Autoencoder, cfg: Config
) -> dict[str, jax.Array]:
    """`evaluate_state` of every seed of `states` (leading axis S) on `x_NxD`, or with
    `data.per_seed` on its own `x_SxNxD`.

    A loop over seeds, not a vmap: XLA picks vectorised kernels by shape, so a vmapped seed's
    figures would change in the last bit with the number of seeds evaluated together; in a loop
    each seed runs the same program whatever their number, and only one seed's N x D
    intermediates exist at a time.
    """
    evaluate = functools.partial(evaluate_state, model=model, cfg=cfg)
    if cfg.data.per_seed:
        return lax.map(lambda pair: evaluate(*pair), (states, x))
    return lax.map(lambda state: evaluate(state, x), states)


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (every process holds all of them) as global arrays with `sharding`: each process
    puts the rows of its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharding, v, v.shape), tree
    )


def _gather(tree: Any) -> Any:
    """Arrays as host numpy arrays, whole on every process. Arrays that span processes are first
    replicated over their mesh, by one collective program for the whole tree (`_replicate`)."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(v, "is_fully_addressable", True) for v in leaves):
        return jax.device_get(tree)
    everywhere = _replicate(leaves[0].sharding.mesh)(tree)
    return jax.tree.map(lambda v: np.asarray(v.addressable_data(0)), everywhere)


@functools.cache
def _replicate(mesh: jax.sharding.Mesh) -> Callable[[Any], Any]:
    """The identity with its outputs replicated on every device of `mesh` (compiled once per
    shape: `multihost_utils.process_allgather` would compile one program per leaf)."""
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))


def _to_host(state: TrainState) -> TrainState:
    """Writable host copies of every leaf; the key as its raw data (`key_data`)."""
    raw = state.replace(key=jax.random.key_data(state.key))
    return jax.tree.map(np.array, _gather(raw))


def _from_host(host: TrainState, impl: Any, sharding: NamedSharding | None = None) -> TrainState:
    """`_to_host` undone: placed with `sharding` (or left on the host), the key wrapped again."""
    placed = host if sharding is None else _place(host, sharding)
    return placed.replace(key=jax.random.wrap_key_data(placed.key, impl=impl))


def _rows(tree: Any, lo: int, n: int) -> Any:
    """Rows `lo .. lo + n - 1` of every leaf, padded by repeating the last (copies to drop)."""

    def rows(v: np.ndarray) -> np.ndarray:
        part = v[lo : lo + n]
        extra = n - part.shape[0]
        return part if extra == 0 else np.concatenate([part, np.repeat(part[-1:], extra, axis=0)])

    return jax.tree.map(rows, tree)


def _abstract(tree: Any, n: int, sharding: NamedSharding) -> Any:
    """Shapes and dtypes of `tree` with `n` rows, placed with `sharding`: what a program compiles
    for."""
    return jax.tree.map(
        lambda v: jax.ShapeDtypeStruct((n, *v.shape[1:]), v.dtype, sharding=sharding), tree
    )


class Progress(NamedTuple):
    """What the host loop hands its callback after each chunk."""

    epochs_done: int
    epochs_total: int
    # leading axis = the run's seeds (padding removed); host arrays when trained in batches
    state: TrainState
    history_SxE: np.ndarray  # loss per seed and epoch; NaN for epochs not yet run


@dataclasses.dataclass
class TrainResult:
    """The outcome of `train_seeds`: stacked per-seed state and history, and how long it took."""

    cfg: Config
    seed: int
    n_seeds: int
    state: TrainState  # leading axis S; numpy leaves (the key a jax array) if trained in batches
    history_SxE: np.ndarray
    x: jax.Array  # the data trained on: x_NxD, or x_SxNxD with data.per_seed
    epochs_done: int
    timing: dict[str, float]
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)  # memory.MemoryPlan.to_dict()

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.cfg.train.epochs

    @property
    def diverged(self) -> np.ndarray:
        return np.asarray(self.state.diverged)


def _pad_seeds(tree: Any, n_total: int) -> Any:
    """Repeat the last seed so the seed axis divides the device count (the copies are dropped)."""

    def pad(leaf: jax.Array) -> jax.Array:
        extra = n_total - leaf.shape[0]
        if extra == 0:
            return leaf
        return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def train_seeds(
    cfg: Config,
    n_seeds: int,
    seed: int = 0,
    *,
    hyper: Hyper | None = None,
    keys: jax.Array | None = None,
    devices: list[jax.Device] | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    resume: tuple[TrainState, np.ndarray, int] | None = None,
    compiler_options: dict[str, Any] | None = None,
    memory_budget: int | None = None,
) -> TrainResult:
    """Train seeds `0..n_seeds-1` of `cfg` as one sharded program, chunk by chunk.

    `hyper`, if given, holds per-seed values with a leading axis S (e.g. a learning-rate sweep), or
    [S, A] for A arms per seed that share its key and shuffle (state and history then carry the
    arm axis after the seed axis);
    `keys`, if given, replaces `seed_keys(seed, n_seeds)` (e.g. to train a chosen subset of seeds).
    `callback(progress)` runs after every chunk; returning True stops the run at that chunk boundary
    (the result then has `finished == False` and can be resumed). `resume=(state, history, epochs)`
    continues such a run and ends with the same parameters as an uninterrupted one.
    `compiler_options` are XLA options for compiling the training program (e.g.
    `{"xla_cpu_prefer_vector_width": 512}`; scripts/benchmark.py compares some). Fewer seeds than
    devices use only as many devices as seeds: a device without a seed of its own would only run a
    padding copy in lockstep.

    `memory_budget` (bytes per device; default `device_memory_budget`) bounds what one device
    trains at once. When all seeds would not fit, they train in equal batches (the plan is
    `TrainResult.memory`): every chunk of epochs runs batch after batch through one compiled
    program, so the callback still comes once per chunk with every seed's epochs done, and a stop
    and resume work as before. A seed's result does not depend on its batch: it equals one big
    batch's bit for bit when both have seeds per device in the same size class (see
    `memory.PROBE_SEEDS`).

    After `processes.init_processes`, the seeds are sharded over the devices of every process:
    every process calls this with the same arguments, keeps every seed's state on the host and
    returns the same result; process 0's callback decides a stop for all.
    """
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds <= 0:
        raise ValueError(f"n_seeds={n_seeds!r} is invalid: allowed is a positive integer")
    multi = jax.process_count() > 1
    devices = _seed_devices(devices, n_seeds)
    progs = programs(cfg)
    mesh = jax.sharding.Mesh(np.array(devices), ("seed",))
    by_seed = NamedSharding(mesh, PartitionSpec("seed"))
    replicated = NamedSharding(mesh, PartitionSpec())
    total, chunk = cfg.train.epochs, min(cfg.train.chunk_epochs, cfg.train.epochs)

    keys = seed_keys(seed, n_seeds) if keys is None else keys
    if keys.shape != (n_seeds,):
        raise ValueError(f"keys has shape {keys.shape}: allowed is ({n_seeds},), one per seed")

    t0 = time.perf_counter()
    if resume is None:
        if hyper is None:
            hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (n_seeds,)), Hyper.from_config(cfg))
        state = progs.init(keys, hyper)
        history = np.full((*state.diverged.shape, total), np.nan, np.float32)
        epochs_done = 0
    else:
        state, history, epochs_done = resume
        history = np.array(history, np.float32)
    impl = jax.random.key_impl(state.key)
    if cfg.data.per_seed:
        x_one = jax.eval_shape(progs.seed_data, keys[:1])
    else:
        x = x_one = shared_data(cfg)
        x_dev = _place(np.asarray(x), replicated)
    plan, run_chunk = _chunk_program(
        cfg, state, x_one, n_seeds, devices, memory_budget, compiler_options
    )
    batch = plan.batch_seeds
    # One batch on one process: the state stays on the devices from chunk to chunk.
    resident = plan.n_batches == 1 and not multi
    if cfg.data.per_seed:
        x = seed_data_batches(cfg, keys, batch) if not resident else progs.seed_data(keys)
        if resident:
            x_dev = jax.device_put(_pad_seeds(x, batch), by_seed)
    if resident:
        state = jax.device_put(_pad_seeds(state, batch), by_seed)
    else:
        host = _to_host(state)
    compile_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    while epochs_done < total:
        n_new = min(chunk, total - epochs_done)
        epoch = np.int32(epochs_done)
        if resident:
            state, loss = run_chunk(state, x_dev, epoch)  # loss [S, C] or [S, C, A]
            _record(history, np.asarray(loss)[:n_seeds], 0, epochs_done, n_new)
        else:  # batch after batch, each through the same program, the states back to the host
            for lo in range(0, n_seeds, batch):
                x_arg = _place(_rows(x, lo, batch), by_seed) if cfg.data.per_seed else x_dev
                placed = _from_host(_rows(host, lo, batch), impl, by_seed)
                out, loss = run_chunk(placed, x_arg, epoch)
                out, loss = _gather((out.replace(key=jax.random.key_data(out.key)), loss))
                hi = min(lo + batch, n_seeds)
                for dst, src in zip(jax.tree.leaves(host), jax.tree.leaves(out), strict=True):
                    dst[lo:hi] = src[: hi - lo]
                _record(history, loss[: hi - lo], lo, epochs_done, n_new)
        epochs_done += n_new
        stop = False
        if callback is not None:
            seeds_state = (
                jax.tree.map(lambda leaf: leaf[:n_seeds], state)
                if resident
                else _from_host(jax.tree.map(np.copy, host), impl)
            )
            stop = bool(callback(Progress(epochs_done, total, seeds_state, history)))
        if multi:  # process 0 decides for all, so that none waits for the others in vain
            stop = bool(multihost_utils.broadcast_one_to_all(np.int32(stop)))
        if stop and epochs_done < total:
            break
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t1
    steps = (epochs_done - (0 if resume is None else resume[2])) * math.ceil(
        cfg.data.n_samples / cfg.train.batch_size
    )
    return TrainResult(
        cfg=cfg,
        seed=seed,
        n_seeds=n_seeds,
        state=jax.tree.map(lambda leaf: leaf[:n_seeds], state)
        if resident
        else _from_host(host, impl),
        history_SxE=history,
        x=x,
        epochs_done=epochs_done,
        timing={
            "compile_s": compile_s,
            "train_s": train_s,
            # every arm of every seed is a run of its own
            "seed_steps_per_s": history[..., 0].size * steps / train_s
            if train_s > 0
            else float("nan"),
        },
        memory={**plan.to_dict(), **memory.peak_memory()},
    )


def _seed_devices(devices: Sequence[jax.Device] | None, n_seeds: int) -> list[jax.Device]:
    """The devices that carry the seed axis: `devices` (default: every process's), on one process
    no more than there are seeds; in a multi-process run every process keeps its share."""
    devices = list(jax.devices() if devices is None else devices)
    return devices if jax.process_count() > 1 else devices[:n_seeds]


def _chunk_program(
    cfg: Config,
    state: Any,
    x_one: Any,
    n_seeds: int,
    devices: list[jax.Device],
    memory_budget: int | None,
    compiler_options: dict[str, Any] | None,
) -> tuple[memory.MemoryPlan, jax.stages.Compiled]:
    """The batches of `train_seeds` and its chunk program compiled for one batch. `state` (or its
    shapes) gives the shapes of a seed; `x_one` those of the shared data set `x_NxD`, or with
    `data.per_seed` of one seed's `x_1xNxD`."""
    progs = programs(cfg)
    mesh = jax.sharding.Mesh(np.array(devices), ("seed",))
    by_seed = NamedSharding(mesh, PartitionSpec("seed"))
    budget = memory.device_memory_budget(devices, memory_budget)
    if (
        jax.process_count() > 1
        and memory_budget is None
        and not os.environ.get(memory.MEMORY_BUDGET_ENV)
    ):
        # Every process must cut the same batches: the smallest budget of any, in KiB (int32).
        kib = np.int32(min(budget // 1024, 2**31 - 1))
        budget = 1024 * int(np.min(multihost_utils.process_allgather(kib)))
    replicated = NamedSharding(mesh, PartitionSpec())
    x_shared = jax.ShapeDtypeStruct(x_one.shape, x_one.dtype, sharding=replicated)

    def compile_at(per_device: int) -> jax.stages.Compiled:
        n = per_device * len(devices)
        x_arg = _abstract(x_one, n, by_seed) if cfg.data.per_seed else x_shared
        lowered = progs.run_chunk.lower(_abstract(state, n, by_seed), x_arg, np.int32(0))
        return lowered.compile(compiler_options=compiler_options)

    fixed = 0 if cfg.data.per_seed else math.prod(x_one.shape) * x_one.dtype.itemsize
    return memory.plan_batches(
        compile_at, n_seeds=n_seeds, n_devices=len(devices), fixed_bytes=fixed, budget=budget
    )


def training_memory(
    cfg: Config,
    n_seeds: int,
    *,
    hyper: Hyper | None = None,
    devices: list[jax.Device] | None = None,
    memory_budget: int | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> memory.MemoryPlan:
    """The batches `train_seeds` would cut for `n_seeds` seeds of `cfg`, and its memory estimate
    (`MemoryPlan.bytes_at`), from compiling its program for a few seeds; nothing is trained.
    `hyper` with an arm axis ([S, A] leaves) sizes a run with arms."""
    one = (
        jax.tree.map(lambda v: jnp.broadcast_to(v, (1,)), Hyper.from_config(cfg))
        if hyper is None
        else jax.tree.map(lambda v: v[:1], hyper)
    )
    progs = programs(cfg)
    state = jax.eval_shape(progs.init, seed_keys(0, 1), one)
    x_one = (
        jax.eval_shape(progs.seed_data, seed_keys(0, 1)) if cfg.data.per_seed else shared_data(cfg)
    )
    devices = _seed_devices(devices, n_seeds)
    return _chunk_program(cfg, state, x_one, n_seeds, devices, memory_budget, compiler_options)[0]


def _record(history: np.ndarray, loss: np.ndarray, lo: int, first: int, n_new: int) -> None:
    """Write a chunk's losses `[b, C]` (`[b, C, A]` with arms) of seeds `lo..lo+b-1` into the
    history `[S, E]` (`[S, A, E]`) at epochs `first..first+n_new-1`."""
    history[lo : lo + loss.shape[0], ..., first : first + n_new] = np.moveaxis(
        loss[:, :n_new], 1, -1
    )


def seed_data_batches(cfg: Config, keys: jax.Array, batch: int) -> np.ndarray:
    """Per-seed data sets (`data.per_seed`) `x_SxNxD` of `keys` on the host, drawn `batch` seeds
    at a time on the default device (each seed's set is the one `train_seeds` trains it on)."""
    progs = programs(cfg)
    parts = []
    for lo in range(0, keys.shape[0], batch):
        part = np.asarray(progs.seed_data(_pad_seeds(keys[lo : lo + batch], batch)))
        parts.append(part[: keys.shape[0] - lo])
    return np.concatenate(parts)


def evaluate_seeds(
    cfg: Config,
    state: TrainState,
    x: jax.Array | np.ndarray,
    *,
    devices: list[jax.Device] | None = None,
    memory_budget: int | None = None,
) -> tuple[dict[str, np.ndarray], memory.MemoryPlan]:
    """`evaluate_state` of every seed (and arm) of `state` on its whole data set, in batches.

    `x` is the shared `x_NxD` or, with `data.per_seed`, `x_SxNxD`. Every device loops over its
    share of the seeds (`evaluate_each`, so a seed's figures are the same whatever the number of
    seeds); the seeds are split into batches as `train_seeds` splits them (`plan_batches`, with
    the same budget), over `devices` (default: this process's own: in a multi-process run, the
    analysis runs on process 0 alone). Returns host arrays with a leading seed axis, and the plan.
    """
    progs = programs(cfg)
    n_seeds = int(state.diverged.shape[0])
    devices = list(jax.local_devices() if devices is None else devices)[:n_seeds]
    mesh = jax.sharding.Mesh(np.array(devices), ("seed",))
    by_seed = NamedSharding(mesh, PartitionSpec("seed"))
    replicated = NamedSharding(mesh, PartitionSpec())
    x = np.asarray(x)
    fixed = 0 if cfg.data.per_seed else x.nbytes
    budget = memory.device_memory_budget(devices, memory_budget)
    key = (cfg, n_seeds, jax.tree.structure(state), tuple(devices), x.shape)
    key += tuple((v.shape[1:], v.dtype) for v in jax.tree.leaves(state))
    compiled = _EVALUATE_PROGRAMS.setdefault(key, {})  # seeds per device -> program

    def compile_at(per_device: int) -> jax.stages.Compiled:
        if per_device not in compiled:
            n = per_device * len(devices)
            x_arg = (
                _abstract(x, n, by_seed)
                if cfg.data.per_seed
                else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
            )
            x_spec = PartitionSpec("seed") if cfg.data.per_seed else PartitionSpec()
            each_device = jax.shard_map(  # every device loops over its own seeds
                progs.evaluate,
                mesh=mesh,
                in_specs=(PartitionSpec("seed"), x_spec),
                out_specs=PartitionSpec("seed"),
            )
            lowered = jax.jit(each_device).lower(_abstract(state, n, by_seed), x_arg)
            compiled[per_device] = lowered.compile()
        return compiled[per_device]

    plan, evaluate = memory.plan_batches(
        compile_at, n_seeds=n_seeds, n_devices=len(devices), fixed_bytes=fixed, budget=budget
    )
    host, impl = _to_host(state), jax.random.key_impl(state.key)
    x_dev = None if cfg.data.per_seed else jax.device_put(x, replicated)
    parts = []
    for lo in range(0, n_seeds, plan.batch_seeds):
        x_arg = jax.device_put(_rows(x, lo, plan.batch_seeds), by_seed) if x_dev is None else x_dev
        figures = evaluate(_from_host(_rows(host, lo, plan.batch_seeds), impl, by_seed), x_arg)
        parts.append(jax.tree.map(lambda v, lo=lo: np.asarray(v)[: n_seeds - lo], figures))
    return jax.tree.map(lambda *v: np.concatenate(v), *parts), plan


# Compiled evaluation programs by config, shapes and devices, then seeds per device: a run
# evaluates its trained and its untrained weights with the same programs.
_EVALUATE_PROGRAMS: dict[tuple, dict[int, jax.stages.Compiled]] = {}
