"""Training, the pure core: one seed's whole run is a `lax.scan`; many seeds are `jit(vmap(...))`.

Shape legend: S seeds, A arms, N samples, B batch, K minibatches per epoch, D features, H hidden
units, E epochs.

The pieces, from the inside out:

- `train_step`: one minibatch of Adam on one seed, or with `optim.name="lbfgs"` one iteration of
  full-batch L-BFGS (one epoch is one iteration; its line search runs inside the step); a seed
  whose loss or parameters turn non-finite stops updating and keeps its last finite parameters
  (`diverged`).
- `resample_dead` (jaxae/resample.py): dead and rarely firing units re-aimed at what the model
  misses, at an epoch's end.
- `run_epochs`: a scan over epochs, each a fresh permutation of the data (jaxae/shuffle.py) and a
  scan over its minibatches; it returns the per-epoch mean loss as history.
- `make_train(cfg) -> train(key)`: one seed's init and epochs, pure; `jit(vmap(train))` sweeps.
- Arms, always: a seed carries A >= 1 arms (a `Hyper` with `[A]` leaves; one arm of the config's
  own values by default), a sweep inside the seed: the arms share the seed's initial key and its
  shuffle (computed once), and differ only in their hyperparameters. `init_state`, `train_step`,
  `resample_dead` and `metrics.evaluate_state`'s figures are written for one (seed, arm);
  `over_arms` maps them over a seed's arms, the one place (`ARM_AXES`: all but the shuffle key).

Seed i's key is `seed_keys(seed, n)[i] = fold_in(key(seed), i)`, whatever the number of seeds.
The host side (devices, sharding, chunks, batches of seeds, resume) is jaxae/runner.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxae import shuffle
from jaxae.config import Config
from jaxae.data import data_start, seed_atoms, seed_data, shared_data
from jaxae.losses import total_loss
from jaxae.model import Autoencoder, hidden_mask, init_params, make_model
from jaxae.optim import lbfgs_step, make_optimizer
from jaxae.resample import resample_dead


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
    # bool: an L-BFGS iteration lowered the objective by at most `optim.progress_tol`; updates
    # stopped there, as minFunc stops (`optim.lbfgs_step`). Always False under Adam.
    stopped: jax.Array
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


# `in_axes`/`out_axes` of a seed's state over its arms: everything but the seed's shuffle key.
ARM_AXES = TrainState(
    params=0, opt_state=0, key=None, hyper=0, diverged=0, stopped=0, since_fired=0
)


def stack_arms(hypers: list[Hyper]) -> Hyper:
    """The hyperparameters of A arms, `[A]` leaves (one arm: `[1]`)."""
    return jax.tree.map(lambda *v: jnp.stack(v), *hypers)


def n_arms(state_or_hyper: TrainState | Hyper) -> int:
    """A, the arms of a seed's state or hyperparameters (the leading axis of its per-arm leaves)."""
    leaf = state_or_hyper.n_active if isinstance(state_or_hyper, Hyper) else state_or_hyper.diverged
    return int(leaf.shape[0])


def as_arms(state: TrainState) -> TrainState:
    """The state of one (seed, arm) as a seed with that one arm: an arm axis of 1 on everything
    but the seed's shuffle key."""
    return _along(ARM_AXES, state, lambda v: v[None])


def arm_of(state: TrainState, a: int) -> TrainState:
    """Arm `a` of a seed's state: the state of one (seed, arm)."""
    return _along(ARM_AXES, state, lambda v: v[a])


def _along(axes: Any, tree: Any, f: Callable[[jax.Array], jax.Array]) -> Any:
    """`f` on every leaf of `tree` under an axis of `axes` (a prefix of it: 0 or None), the
    leaves under None left as they are."""
    return jax.tree.map(
        lambda ax, sub: sub if ax is None else jax.tree.map(f, sub),
        axes,
        tree,
        is_leaf=lambda x: x is None,
    )


def over_arms(fn: Callable, arms: int, in_axes: Any, out_axes: Any = 0) -> Callable:
    """`fn` of one (seed, arm) applied to every arm of a seed: the one place the arm axis is
    vmapped. One arm runs unbatched, its axis taken off the inputs and put back on the outputs:
    a vmap over a single arm compiles to a slower program on CPU (~14% on §1.2), and the unbatched
    one is the plain run's, bit for bit."""
    in_axes = in_axes if isinstance(in_axes, tuple) else (in_axes,)
    if arms > 1:
        return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

    def one(*args: Any) -> Any:
        out = fn(*(_along(ax, a, lambda v: v[0]) for ax, a in zip(in_axes, args, strict=True)))
        return _along(out_axes, out, lambda v: v[None])

    return one


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def init_state(key: jax.Array, hyper: Hyper, *, model: Autoencoder, cfg: Config) -> TrainState:
    """A fresh (seed, arm): parameters from `key`, an empty optimizer, the seed's shuffle key.

    With fewer active units than `n_hidden`, the decoder is rescaled by sqrt(H / n_active), so its
    initial scale is that of a model built with `n_active` units (both initialisers scale as
    1 / sqrt(fan_in)).
    """
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
        stopped=jnp.zeros((), bool),
        since_fired=jnp.zeros((model.n_hidden,), jnp.int32),
    )


def init_arms(key: jax.Array, hyper_A: Hyper, *, model: Autoencoder, cfg: Config) -> TrainState:
    """A fresh seed with A arms (`hyper_A`, `[A]` leaves): every arm from the same key, so they
    start from the same weights and share the seed's shuffle key. With `model.init="atoms"` the
    model first gets the true atoms of the data this seed trains on (`seed_atoms`; the model
    knows no data), so seed i starts the same in any batch of seeds; with `model.init="data"`, the
    rows and mean of that data it starts from (`data_start`)."""
    if cfg.model.init == "atoms":
        model = model.clone(atoms=seed_atoms(key, cfg))
    elif cfg.model.init == "data":
        rows_HxD, mean_D = data_start(key, cfg)
        model = model.clone(atoms=rows_HxD, start_bias=mean_D)
    init = functools.partial(init_state, key, model=model, cfg=cfg)
    return over_arms(init, n_arms(hyper_A), in_axes=0, out_axes=ARM_AXES)(hyper_A)


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
    # optax mixes floats and int32 counts (`1 - b**count`), which strict promotion refuses
    with jax.numpy_dtype_promotion("standard"):
        if cfg.optim.name == "lbfgs":
            # The line search's objective: this batch's loss (without its terms) plus weight decay.
            params, opt_state, stopped = lbfgs_step(
                opt,
                grads,
                state.opt_state,
                state.params,
                value_fn=lambda params: loss_fn(params)[0],
                value=loss,
                cfg=cfg.optim,
                weight_decay=wd,
                stopped=state.stopped,
            )
        else:
            updates, opt_state = opt.update(grads, state.opt_state, state.params)
            params, stopped = optax.apply_updates(state.params, updates), state.stopped
    ok = ~state.diverged & jnp.isfinite(loss) & _all_finite(params)

    def keep(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(ok, new, old)

    state = state.replace(
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        diverged=~ok,
        stopped=stopped,
        since_fired=jnp.where(terms["fired_H"] > 0, 0, state.since_fired + 1),
    )
    return state, (loss, terms["fired_H"])


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
    """Epochs `first_epoch .. first_epoch + n_epochs - 1` of one seed and its A arms; returns
    `(state, loss_ExA)`.

    Every arm takes the same minibatches (the seed's shuffle, computed once). `loss_ExA` is each
    epoch's mean minibatch loss, NaN once the arm has diverged. Epochs at or past
    `cfg.train.epochs` (the tail of a last, partial chunk) leave the state untouched.

    A single arm is carried through the loop without its axis (taken off here, put back at the
    end): as in `over_arms`, the plain program is faster, and an axis of one inside the loop
    still costs a few percent (measured, interleaved runs of 256 seeds: 1-9%).
    """
    epochs = functools.partial(_epochs, x_NxD=x_NxD, first_epoch=first_epoch, n_epochs=n_epochs)
    arms = n_arms(state)
    if arms == 1:
        state, loss_E = epochs(arm_of(state, 0), model=model, cfg=cfg, arms=None)
        return as_arms(state), loss_E[:, None]
    return epochs(state, model=model, cfg=cfg, arms=arms)


def _epochs(
    state: TrainState,
    *,
    x_NxD: jax.Array,
    first_epoch: jax.Array,
    n_epochs: int,
    model: Autoencoder,
    cfg: Config,
    arms: int | None,
) -> tuple[TrainState, jax.Array]:
    """`run_epochs` on a seed's `arms` (a state with an arm axis), or with `arms` None on the
    state of one (seed, arm)."""
    n, batch_size = x_NxD.shape[0], cfg.train.batch_size
    step = functools.partial(train_step, x_NxD=x_NxD, model=model, cfg=cfg)
    resample = functools.partial(resample_dead, model=model, cfg=cfg)
    if arms is not None:  # one shuffled batch, every arm's own step
        step = over_arms(step, arms, in_axes=(ARM_AXES, None), out_axes=(ARM_AXES, 0))
        resample = over_arms(resample, arms, in_axes=(ARM_AXES, None, 0, None), out_axes=ARM_AXES)
    # Firing rates for `resample_rare` and `resample_split`, counted over the epoch's steps.
    count_fired = cfg.loss.resample_dead and (
        cfg.loss.resample_rare > 0 or cfg.loss.resample_split > 0
    )

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
            lambda state, _: (state, jnp.full(state.diverged.shape, jnp.nan, jnp.float32)),
            state,
            epoch_and_key,
        )

    epochs = first_epoch + jnp.arange(n_epochs)
    # Epoch e shuffles with fold_in(key, e); all of a chunk's keys in one call, outside the loop.
    epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(state.key, epochs)
    body = one_epoch if cfg.train.epochs % n_epochs == 0 else guarded_epoch
    return lax.scan(body, state, (epochs, epoch_keys))


def make_train(cfg: Config) -> Callable[..., tuple[TrainState, jax.Array]]:
    """`train(key, x_NxD=None, hyper_A=None) -> (state, loss_ExA)`: one whole run of one seed and
    its arms, pure.

    Without `x_NxD` the config's shared data set is used; without `hyper_A`, one arm of the
    config's own values. `jax.jit(jax.vmap(train))(keys)` trains many seeds;
    `runner.train_seeds` does the same with sharding, chunks and progress.
    """
    model = make_model(cfg.model, cfg.data.n_features)
    shared_x = None if cfg.data.per_seed else shared_data(cfg)

    def train(
        key: jax.Array, x_NxD: jax.Array | None = None, hyper_A: Hyper | None = None
    ) -> tuple[TrainState, jax.Array]:
        if x_NxD is None:
            x_NxD = shared_x if shared_x is not None else seed_data(key, cfg)
        hyper_A = stack_arms([Hyper.from_config(cfg)]) if hyper_A is None else hyper_A
        state = init_arms(key, hyper_A, model=model, cfg=cfg)
        return run_epochs(
            state, x_NxD, jnp.int32(0), n_epochs=cfg.train.epochs, model=model, cfg=cfg
        )

    return train
