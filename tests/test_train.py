"""Training: seeds are independent of batching and devices, the step compiles once, divergence stays
with its seed, chunks and resumes change nothing (the shuffles are tested in test_shuffle.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from jaxae import data, resample, runner, train
from jaxae.config import Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from jaxae.losses import total_loss
from jaxae.model import make_model
from jaxae.optim import objective_with_decay

TINY = Config(
    data=DataConfig(kind="multiples", n_samples=200),
    model=ModelConfig(n_hidden=2, activation="relu", init="torch"),
    optim=OptimConfig(learning_rate=1e-2, weight_decay=1e-3),
    train=TrainConfig(epochs=6, batch_size=50, chunk_epochs=3),
)


def _tiny(**train_fields) -> Config:
    return dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, **train_fields))


def _close(a, b) -> None:
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def base() -> runner.TrainResult:
    """TINY on seeds 0..3: the reference several tests compare against (compiled once)."""
    return runner.train_seeds(TINY, 4)


def test_seed_in_batch_equals_seed_alone():
    batch = runner.train_seeds(TINY, 8, seed=3)
    keys = train.seed_keys(3, 8)
    for i in (0, 5, 7):
        alone = runner.train_seeds(TINY, 1, keys=keys[i : i + 1])
        _close(jax.tree.map(lambda v, i=i: v[i : i + 1], batch.state.params), alone.state.params)
        np.testing.assert_allclose(batch.history_SxAxE[i], alone.history_SxAxE[0], rtol=1e-5)


def test_seed_keys_do_not_depend_on_count():
    np.testing.assert_array_equal(
        jax.random.key_data(train.seed_keys(7, 3)), jax.random.key_data(train.seed_keys(7, 10))[:3]
    )


def test_make_train_matches_host_loop():
    key = train.seed_keys(0, 1)
    state, loss_SxExA = jax.jit(jax.vmap(train.make_train(TINY)))(key)
    looped = runner.train_seeds(TINY, 1, seed=0)
    _close(state.params, looped.state.params)
    np.testing.assert_allclose(np.moveaxis(loss_SxExA, 1, -1), looped.history_SxAxE, rtol=1e-5)


def test_outputs_have_shapes_and_are_finite(base):
    res = base
    # one arm: the config's own values
    chex.assert_shape(res.history_SxAxE, (4, 1, TINY.train.epochs))
    chex.assert_tree_shape_prefix(res.state.params, (4, 1))
    chex.assert_shape(res.state.key, (4,))  # the seed's shuffle key, shared by its arms
    chex.assert_tree_all_finite(res.state.params)
    assert np.all(np.isfinite(res.history_SxAxE))
    assert res.finished and not res.diverged.any()
    assert set(res.timing) == {"compile_s", "train_s", "seed_steps_per_s"}
    assert all(v > 0 for v in res.timing.values())


def test_step_traces_once(monkeypatch):
    counted = chex.assert_max_traces(train.train_step, n=1)
    monkeypatch.setattr(train, "train_step", counted)
    cfg = _tiny(epochs=7, chunk_epochs=2)  # four chunks, the last one partial
    runner.programs.cache_clear()
    try:
        runner.train_seeds(cfg, 3, seed=0)
        runner.train_seeds(cfg, 3, seed=1)
    finally:
        runner.programs.cache_clear()
        chex.clear_trace_counter()


def test_chunking_changes_nothing(base):
    """TINY runs 6 epochs in chunks of 3; one chunk of 4 (the last one partial) must agree."""
    chunked = runner.train_seeds(_tiny(chunk_epochs=4), 4)
    chex.assert_trees_all_equal(base.state.params, chunked.state.params)
    np.testing.assert_array_equal(base.history_SxAxE, chunked.history_SxAxE)


def test_stop_and_resume_equals_uninterrupted(base):
    whole = base
    stopped = runner.train_seeds(TINY, 4, callback=lambda p: p.epochs_done >= 3)
    assert not stopped.finished and stopped.epochs_done == 3
    assert np.isnan(stopped.history_SxAxE[:, 3:]).all()
    resumed = runner.train_seeds(
        TINY, 4, resume=(stopped.state, stopped.history_SxAxE, stopped.epochs_done)
    )
    chex.assert_trees_all_equal(whole.state.params, resumed.state.params)
    np.testing.assert_array_equal(whole.history_SxAxE, resumed.history_SxAxE)


def test_diverging_seed_is_isolated(base):
    cfg = TINY
    lrs = jnp.asarray([1e-2, 1e12, 1e-2, 1e-2], jnp.float32)
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, 1)), train.Hyper.from_config(cfg))
    hyper = hyper.replace(learning_rate=lrs[:, None])
    res = runner.train_seeds(cfg, 4, hyper=hyper)
    np.testing.assert_array_equal(res.diverged[:, 0], [False, True, False, False])
    chex.assert_tree_all_finite(res.state.params)
    assert np.isnan(res.history_SxAxE[1, 0, -1])
    calm = base
    keep = np.array([0, 2, 3])
    _close(
        jax.tree.map(lambda v: v[keep], res.state.params),
        jax.tree.map(lambda v: v[keep], calm.state.params),
    )


def test_arms_share_the_seed_and_equal_their_own_runs(base):
    """Two arms per seed (learning rates) in one program: each equals a plain run with its value,
    and the arm with TINY's own value is TINY's run."""
    cfg = TINY
    lrs = jnp.asarray([cfg.optim.learning_rate, 3e-3], jnp.float32)
    one = train.Hyper.from_config(cfg)
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, 2)), one).replace(
        learning_rate=jnp.broadcast_to(lrs, (4, 2))
    )
    res = runner.train_seeds(cfg, 4, hyper=hyper)
    chex.assert_shape(res.history_SxAxE, (4, 2, cfg.train.epochs))
    chex.assert_tree_shape_prefix(res.state.params, (4, 2))
    assert res.diverged.shape == (4, 2)
    _close(jax.tree.map(lambda v: v[:, :1], res.state.params), base.state.params)
    np.testing.assert_allclose(res.history_SxAxE[:, :1], base.history_SxAxE, rtol=1e-5)
    other = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, 1)), one).replace(
        learning_rate=jnp.full((4, 1), 3e-3, jnp.float32)
    )
    alone = runner.train_seeds(cfg, 4, hyper=other)
    _close(jax.tree.map(lambda v: v[:, 1:], res.state.params), alone.state.params)


def test_partial_last_batch_covers_every_sample_once():
    idx, w = train.epoch_batches(jax.random.key(0), 250, 100)
    chex.assert_shape(idx, (3, 100))
    chex.assert_shape(w, (3, 100))
    np.testing.assert_array_equal(np.sort(np.asarray(idx)[np.asarray(w) > 0]), np.arange(250))
    res = runner.train_seeds(
        dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, n_samples=250)), 2
    )
    chex.assert_tree_all_finite(res.state.params)


def test_per_seed_data_differs_between_seeds():
    cfg = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, per_seed=True))
    res = runner.train_seeds(cfg, 3)
    chex.assert_shape(res.x, (3, 200, 10))
    assert not np.array_equal(res.x[0], res.x[1])
    np.testing.assert_array_equal(res.x[2], data.seed_data(train.seed_keys(0, 3)[2], cfg))


def test_tiny_run_learns():
    cfg = _tiny(epochs=40, chunk_epochs=40)
    res = runner.train_seeds(cfg, 8)
    first, last = res.history_SxAxE[..., 0], res.history_SxAxE[..., -1]
    assert np.median(last) < 0.1 * np.median(first)


def _tied(cfg: Config) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tied=True))


def test_a_tied_run_learns():
    """`model.tied`: no encoder kernel is trained; the run learns as the untied one does
    (`test_tiny_run_learns`) and stays finite."""
    res = runner.train_seeds(_tied(_tiny(epochs=40, chunk_epochs=40)), 8)
    assert set(res.state.params["params"]["encoder"]) == {"bias"}
    chex.assert_tree_all_finite(res.state.params)
    assert not res.diverged.any()
    first, last = res.history_SxAxE[..., 0], res.history_SxAxE[..., -1]
    assert np.median(last) < 0.1 * np.median(first)


def test_a_tied_seed_in_batch_equals_seed_alone():
    cfg = _tied(TINY)
    batch = runner.train_seeds(cfg, 8, seed=3)
    keys = train.seed_keys(3, 8)
    for i in (0, 6):
        alone = runner.train_seeds(cfg, 1, keys=keys[i : i + 1])
        _close(jax.tree.map(lambda v, i=i: v[i : i + 1], batch.state.params), alone.state.params)
        np.testing.assert_allclose(batch.history_SxAxE[i], alone.history_SxAxE[0], rtol=1e-5)


def test_bad_seed_count_raises():
    with pytest.raises(ValueError, match="n_seeds"):
        runner.train_seeds(TINY, 0)


_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from tests.test_train import TINY
    from jaxae import runner
    res = runner.train_seeds(TINY, 6, seed=11)
    leaves = [np.asarray(v).tolist() for v in jax.tree.leaves(res.state.params)]
    one = runner.train_seeds(TINY, 1, seed=11)
    json.dump({"devices": len(jax.devices()), "leaves": leaves,
               "history": res.history_SxAxE.tolist(),
               "one_seed_devices": len(one.state.diverged.sharding.device_set),
               "one_seed_history": one.history_SxAxE.tolist()}, sys.stdout)
    """
)


def test_same_run_on_one_and_four_devices():
    """6 seeds over 4 XLA CPU devices (so padded to 8) in a subprocess, against 1 device here; one
    seed there runs on one device, not padded to four."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["devices"] == 4
    here = runner.train_seeds(TINY, 6, seed=11, devices=jax.devices()[:1])
    for leaf, ref in zip(got["leaves"], jax.tree.leaves(here.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["history"], here.history_SxAxE, rtol=1e-5)
    assert got["one_seed_devices"] == 1
    np.testing.assert_allclose(got["one_seed_history"], here.history_SxAxE[:1], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Dead units: the per-unit count of steps without firing, and resampling


SPARSE = Config(
    data=DataConfig(kind="sparse", n_samples=64, n_features=5, n_atoms=8, active=2),
    model=ModelConfig(n_hidden=6, activation="relu", unit_norm_decoder=True),
    loss=LossConfig(dead_steps=3),
    train=TrainConfig(epochs=2, batch_size=16),
)


def _state_with_biases(cfg: Config, bias_H: np.ndarray) -> tuple[train.TrainState, jax.Array]:
    model = make_model(cfg.model, cfg.data.n_features)
    state = train.init_state(jax.random.key(0), train.Hyper.from_config(cfg), model=model, cfg=cfg)
    params = jax.tree.map(np.array, state.params)
    params["params"]["encoder"]["bias"][:] = bias_H
    return state.replace(params=params), data.shared_data(cfg)


def test_since_fired_counts_steps_without_firing():
    """A unit that never fires (bias -100) counts every step; one that always fires (+100) stays
    at 0; the others restart at every step they fire."""
    cfg = SPARSE
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.array([-100.0, 100.0, 0, 0, 0, 0]))
    step = jax.jit(lambda s, idx: train.train_step(s, (idx, None), x_NxD=x, model=model, cfg=cfg))
    for i in range(4):
        idx = jnp.arange(16) + 16 * i
        _, h = model.apply(state.params, x[idx])
        fired = np.sum(np.asarray(h) > 0, axis=0)
        before = np.asarray(state.since_fired)
        state, (_, fired_H) = step(state, idx)
        np.testing.assert_array_equal(fired_H, fired)  # samples of the batch each unit fired on
        np.testing.assert_array_equal(state.since_fired, np.where(fired > 0, 0, before + 1))
    assert int(state.since_fired[0]) == 4 and int(state.since_fired[1]) == 0


def _rates(model, state, x) -> jax.Array:
    return jnp.mean(model.apply(state.params, x)[1] > 0, axis=0)


@pytest.mark.parametrize("padded", [False, True])
def test_resample_re_aims_only_dead_units_at_the_worst_residuals(padded: bool):
    """Dead units take the worst residuals of the pool, in order; a padding sample (weight 0) of
    the pool is never taken, even when it is the worst."""
    cfg = dataclasses.replace(SPARSE, loss=LossConfig(dead_steps=3, resample_dead=True))
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.zeros(6))
    state = state.replace(since_fired=jnp.array([0, 3, 1, 7, 0, 2], jnp.int32))  # 1 and 3 dead
    x_hat, _ = model.apply(state.params, x)
    residual = np.asarray(x - x_hat)
    error = np.sum(residual**2, axis=1)
    w = None
    if padded:
        w = np.ones(len(x), np.float32)
        w[np.argmax(error)] = 0.0
        error = np.where(w > 0, error, -np.inf)
    new = resample.resample_dead(state, x, _rates(model, state, x), w, model=model, cfg=cfg)
    worst = np.argsort(-error)[:2]
    direction = residual[worst] / np.linalg.norm(residual[worst], axis=1, keepdims=True)
    p, q = state.params["params"], new.params["params"]
    dead = np.array([False, True, False, True, False, False])
    np.testing.assert_allclose(
        model.apply(new.params, method="decoder_weights")[dead], direction, rtol=1e-5, atol=1e-6
    )
    enc = np.asarray(q["encoder"]["kernel"])[:, dead].T
    np.testing.assert_allclose(
        enc / np.linalg.norm(enc, axis=1, keepdims=True), direction, atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(q["encoder"]["bias"])[dead], 0.0)
    for layer in ("encoder", "decoder"):
        kernel, old = np.asarray(q[layer]["kernel"]), np.asarray(p[layer]["kernel"])
        live = ~dead if layer == "decoder" else (slice(None), ~dead)
        np.testing.assert_array_equal(kernel[live], old[live])
    np.testing.assert_array_equal(new.since_fired, [0, 0, 1, 0, 0, 2])


def test_resampling_a_tied_model_re_aims_its_decoder_rows_only():
    """A tied model has no encoder kernel: resampling sets the dead units' decoder rows and encoder
    biases, so their encoder (the decoder rows in use, transposed) follows; nothing else moves."""
    cfg = dataclasses.replace(_tied(SPARSE), loss=LossConfig(dead_steps=3, resample_dead=True))
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.linspace(-0.5, 0.5, 6))
    state = state.replace(since_fired=jnp.array([0, 3, 1, 7, 0, 2], jnp.int32))  # 1 and 3 dead
    residual = np.asarray(x - model.apply(state.params, x)[0])
    worst = np.argsort(-np.sum(residual**2, axis=1))[:2]
    direction = residual[worst] / np.linalg.norm(residual[worst], axis=1, keepdims=True)
    new = resample.resample_dead(state, x, _rates(model, state, x), model=model, cfg=cfg)
    p, q = state.params["params"], new.params["params"]
    assert set(q["encoder"]) == {"bias"}
    dead = np.array([False, True, False, True, False, False])
    w = np.asarray(model.apply(new.params, method="decoder_weights"))
    np.testing.assert_allclose(w[dead], direction, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.apply(new.params, method="encoder_weights"), w.T)
    kernel, old = np.asarray(q["decoder"]["kernel"]), np.asarray(p["decoder"]["kernel"])
    np.testing.assert_array_equal(kernel[~dead], old[~dead])
    assert not np.allclose(kernel[dead], old[dead])
    bias = np.asarray(q["encoder"]["bias"])
    np.testing.assert_array_equal(bias[dead], 0.0)
    np.testing.assert_array_equal(bias[~dead], np.asarray(p["encoder"]["bias"])[~dead])
    np.testing.assert_array_equal(q["decoder"]["bias"], p["decoder"]["bias"])
    np.testing.assert_array_equal(new.since_fired, [0, 0, 1, 0, 0, 2])


def test_resample_rare_re_aims_a_unit_that_fires_on_one_sample():
    """`loss.resample_rare`: a unit that fired a step ago (not dead by `dead_steps`) but fires on
    one sample of the data set, far below the median unit's rate, is re-aimed as a dead one;
    without the option, or with units at ordinary rates, nothing changes."""
    cfg = dataclasses.replace(SPARSE, loss=LossConfig(dead_steps=3, resample_dead=True))
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.zeros(6))
    pre_N = np.asarray(x) @ np.asarray(state.params["params"]["encoder"]["kernel"])[:, 0]
    bias = np.zeros(6)
    bias[0] = -np.mean(np.sort(pre_N)[-2:])  # unit 0 fires on its single largest sample only
    state, _ = _state_with_biases(cfg, bias)
    rates = _rates(model, state, x)
    assert rates[0] == 1 / len(pre_N) and np.median(rates) > 0.2
    kernel = model.apply(state.params, method="decoder_weights")

    plain = resample.resample_dead(state, x, rates, model=model, cfg=cfg)
    np.testing.assert_array_equal(model.apply(plain.params, method="decoder_weights"), kernel)
    rare_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, resample_rare=0.3))
    rare = resample.resample_dead(state, x, rates, model=model, cfg=rare_cfg)
    new_kernel = np.asarray(model.apply(rare.params, method="decoder_weights"))
    np.testing.assert_array_equal(new_kernel[1:], kernel[1:])
    residual = np.asarray(x - model.apply(state.params, x)[0])
    worst = residual[np.argmax(np.sum(residual**2, axis=1))]
    np.testing.assert_allclose(new_kernel[0], worst / np.linalg.norm(worst), atol=1e-5)


def test_resample_split_gives_the_first_dead_unit_the_busiest_units_worst_sample():
    """`loss.resample_split`: when the busiest unit fires on more than that multiple of the median
    unit's rate, the first dead unit takes that unit's part of its worst-reconstructed sample
    plus the sample's residual; the next dead unit takes the second-worst residual as before.
    At a rate below the multiple the split is off and resampling is as without the option."""
    loss = LossConfig(dead_steps=3, resample_dead=True, resample_split=1.5)
    cfg = dataclasses.replace(SPARSE, loss=loss)
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.zeros(6))
    state = state.replace(since_fired=jnp.array([0, 3, 1, 7, 0, 2], jnp.int32))  # 1 and 3 dead
    x_hat, h = (np.asarray(v) for v in model.apply(state.params, x))
    residual = np.asarray(x) - x_hat
    error = np.sum(residual**2, axis=1)
    w = np.asarray(model.apply(state.params, method="decoder_weights"))
    busy = 4
    fires = h[:, busy] != 0
    assert 0 < fires.sum() < len(x)
    p = np.flatnonzero(fires)[np.argmax(error[fires])]
    target = h[p, busy] * w[busy] + residual[p]
    second = residual[np.argsort(-error)[1]]
    rates = jnp.array([0.2, 0.0, 0.2, 0.0, 0.5, 0.2])  # the median unit's 0.2; unit 4 at 2.5x
    split = resample.resample_dead(state, x, rates, model=model, cfg=cfg)
    new_w = np.asarray(model.apply(split.params, method="decoder_weights"))
    np.testing.assert_allclose(new_w[1], target / np.linalg.norm(target), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_w[3], second / np.linalg.norm(second), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new_w[[0, 2, 4, 5]], w[[0, 2, 4, 5]])

    calm = rates.at[busy].set(0.29)  # 1.45x the median: no split
    plain_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(loss, resample_split=0.0))
    chex.assert_trees_all_equal(
        resample.resample_dead(state, x, calm, model=model, cfg=cfg).params,
        resample.resample_dead(state, x, rates, model=model, cfg=plain_cfg).params,
    )


@pytest.mark.parametrize("new_direction", [True, False])
def test_resample_least_gives_the_split_to_the_least_firing_unit_when_none_is_dead(
    new_direction: bool, monkeypatch: pytest.MonkeyPatch
):
    """`loss.resample_least`: with no dead or rare unit but the busiest unit due a split in a new
    direction (|cosine| with it below `resample.LEAST_MAX_COS`), the least-firing unit is
    re-aimed at the split's direction (and its dead count restarts); every other unit keeps its
    weights. Without the option, with the busiest unit below the split multiple, with a dead unit
    to take the split, or with the direction not new, resampling is as without it."""
    loss = LossConfig(dead_steps=3, resample_dead=True, resample_split=1.5)
    cfg = dataclasses.replace(SPARSE, loss=loss)
    least_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(loss, resample_least=True))
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.zeros(6))
    state = state.replace(since_fired=jnp.array([0, 1, 1, 2, 0, 2], jnp.int32))  # none dead
    x_hat, h = (np.asarray(v) for v in model.apply(state.params, x))
    residual = np.asarray(x) - x_hat
    error = np.sum(residual**2, axis=1)
    w = np.asarray(model.apply(state.params, method="decoder_weights"))
    busy, least = 4, 2
    fires = h[:, busy] != 0
    p = np.flatnonzero(fires)[np.argmax(error[fires])]
    target = h[p, busy] * w[busy] + residual[p]
    rates = jnp.array([0.2, 0.25, 0.1, 0.2, 0.5, 0.2])  # unit 4 at 2.5x the median's 0.2
    overlap = abs(target @ w[busy]) / (np.linalg.norm(target) * np.linalg.norm(w[busy]))
    # the bound just above or just below this direction's |cosine| with the busy unit
    monkeypatch.setattr(resample, "LEAST_MAX_COS", overlap + (1e-3 if new_direction else -1e-3))
    if not new_direction:
        chex.assert_trees_all_equal(
            resample.resample_dead(state, x, rates, model=model, cfg=least_cfg).params,
            state.params,
        )
        return
    new = resample.resample_dead(state, x, rates, model=model, cfg=least_cfg)
    new_w = np.asarray(model.apply(new.params, method="decoder_weights"))
    np.testing.assert_allclose(new_w[least], target / np.linalg.norm(target), rtol=1e-5, atol=1e-6)
    others = [u for u in range(6) if u != least]
    np.testing.assert_array_equal(new_w[others], w[others])
    np.testing.assert_array_equal(new.since_fired, [0, 1, 0, 2, 0, 2])

    unchanged = resample.resample_dead(state, x, rates, model=model, cfg=cfg)
    chex.assert_trees_all_equal(unchanged.params, state.params)
    calm = rates.at[busy].set(0.29)  # 1.45x the median: no split
    chex.assert_trees_all_equal(
        resample.resample_dead(state, x, calm, model=model, cfg=least_cfg).params, state.params
    )
    dead = state.replace(since_fired=state.since_fired.at[1].set(3))  # unit 1 takes the split
    chex.assert_trees_all_equal(
        resample.resample_dead(dead, x, rates, model=model, cfg=least_cfg).params,
        resample.resample_dead(dead, x, rates, model=model, cfg=cfg).params,
    )


# Rates of rare units, or of the busiest one for its split alone (counted without rare units too).
RATE_USES = {
    "rare": {"resample_rare": 0.9},
    "split": {"resample_split": 1.05, "resample_least": True},
}


@pytest.mark.parametrize("rates_for", list(RATE_USES))
@pytest.mark.parametrize("n_samples", [64, 60])
def test_an_epoch_resamples_from_its_own_firing_counts_and_last_minibatches(
    n_samples: int, rates_for: str
):
    """The loop's resampling equals doing it by hand: the epoch's steps, the units' firing counts
    summed over them (divided by the samples), then `resample_dead` on the pool of the epoch's
    last minibatches (`loss.resample_pool` samples, whole minibatches; padding rows weighted 0)."""
    loss = LossConfig(dead_steps=2, resample_dead=True, resample_pool=20, **RATE_USES[rates_for])
    cfg = dataclasses.replace(
        SPARSE,
        data=dataclasses.replace(SPARSE.data, n_samples=n_samples),
        loss=loss,
        train=TrainConfig(epochs=2, batch_size=16, chunk_epochs=1),
    )
    model = make_model(cfg.model, cfg.data.n_features)
    state, x = _state_with_biases(cfg, np.array([-0.5, 0.3, 0, 0, 0, -0.2]))
    got, _ = jax.jit(
        lambda s: train.run_epochs(s, x, jnp.int32(0), n_epochs=1, model=model, cfg=cfg)
    )(train.as_arms(state))
    got = train.arm_of(got, 0)

    idx_KxB, w_KxB = train.epoch_batches(
        jax.random.fold_in(state.key, 0), n_samples, 16, cfg.train.shuffle
    )
    step = jax.jit(lambda s, b: train.train_step(s, b, x_NxD=x, model=model, cfg=cfg))
    fired = jnp.zeros(6, jnp.int32)
    for i in range(idx_KxB.shape[0]):
        state, (_, fired_now) = step(state, (idx_KxB[i], None if w_KxB is None else w_KxB[i]))
        fired = fired + fired_now
    pool = idx_KxB[-2:].reshape(-1)  # 20 samples: two minibatches of 16
    w_pool = None if w_KxB is None else w_KxB[-2:].reshape(-1)
    expected = resample.resample_dead(
        state, x[pool], fired / n_samples, w_pool, model=model, cfg=cfg
    )
    assert not np.array_equal(
        model.apply(expected.params, method="decoder_weights"),
        model.apply(state.params, method="decoder_weights"),
    )  # the case resamples something
    chex.assert_trees_all_close(got.params, expected.params, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got.since_fired, expected.since_fired)


def test_resampling_in_the_loop_changes_a_run_with_dead_units():
    """With `dead_steps=1` some unit is dead at an epoch's end, so resampling must change the
    trained weights; the run stays finite."""
    cfg = dataclasses.replace(
        SPARSE,
        loss=LossConfig(dead_steps=1, resample_dead=True),
        train=TrainConfig(epochs=4, batch_size=16, chunk_epochs=4),
    )
    plain = dataclasses.replace(cfg, loss=LossConfig(dead_steps=1))
    with_resampling = runner.train_seeds(cfg, 2)
    without = runner.train_seeds(plain, 2)
    chex.assert_tree_all_finite(with_resampling.state.params)
    assert not np.allclose(
        with_resampling.state.params["params"]["decoder"]["kernel"],
        without.state.params["params"]["decoder"]["kernel"],
    )


def test_ground_truth_of_shared_and_per_seed_data():
    shared = data.trained_atoms(SPARSE)
    chex.assert_shape(shared, (8, 5))
    np.testing.assert_allclose(np.linalg.norm(shared, axis=1), 1.0, rtol=1e-5)
    # fewer atoms than features, so a data set lies in the span of its own dictionary only
    few = DataConfig(kind="sparse", n_samples=64, n_features=8, n_atoms=4, active=2, per_seed=True)
    per_seed = dataclasses.replace(SPARSE, data=few)
    keys = train.seed_keys(0, 3)
    atoms = np.asarray(data.trained_atoms(per_seed, keys))
    chex.assert_shape(atoms, (3, 4, 8))
    x = np.asarray(jax.vmap(lambda k: data.seed_data(k, per_seed))(keys))

    def off_span(x_NxD: np.ndarray, a_MxD: np.ndarray) -> float:
        coef = np.linalg.lstsq(a_MxD.T, x_NxD.T, rcond=None)[0]
        return float(np.abs(x_NxD - coef.T @ a_MxD).max())

    for s in range(3):
        assert off_span(x[s], atoms[s]) < 1e-4
        assert off_span(x[s], atoms[(s + 1) % 3]) > 0.1
    assert data.trained_atoms(TINY) is None


# ------------------------------------------------------------------------------------------------
# Full-batch L-BFGS: one epoch is one iteration, its line search inside the vmapped program

LBFGS = Config(
    data=DataConfig(kind="gaussian", n_samples=64, n_features=6),
    model=ModelConfig(n_hidden=3, activation="sigmoid"),
    optim=OptimConfig(name="lbfgs", memory_size=10, weight_decay=1e-3, decay_biases=False),
    train=TrainConfig(epochs=300, batch_size=64, chunk_epochs=300),
)


def _lbfgs(epochs: int, chunk_epochs: int) -> Config:
    return dataclasses.replace(
        LBFGS, train=dataclasses.replace(LBFGS.train, epochs=epochs, chunk_epochs=chunk_epochs)
    )


def test_lbfgs_reaches_scipys_minimum_of_the_same_objective():
    """One seed of `make_train` with L-BFGS for N = 300 iterations against scipy's L-BFGS-B
    (maxiter=N, maxcor=memory_size) from the same initial parameters, on the same objective:
    jaxae's loss plus wd/2 (|W1|^2 + |W2|^2), here in float64 (jaxae trains in float32; its final
    parameters are evaluated in float64).

    The line searches differ (optax's zoom, scipy's Moré-Thuente), so the iterates differ, and
    float32 rounding differences grow through L-BFGS anyway; only the minimum both reach is
    comparable. Measured: jaxae 0.37758155037 (|grad| 2e-7), scipy 0.37758155039 (|grad| 4e-7),
    scipy run to convergence 0.37758155037: relative gaps ~5e-11. At N/4 = 75 they are 1e-3 and
    3e-4 above it, at 200 still 3e-8, so rtol 1e-7 tells a converged run from one that is not,
    with three orders of margin for a different trajectory. Both optimisers' own stops are off
    (scipy's `ftol` and `gtol` 0, jaxae's `optim.progress_tol` None), so both run all N.
    """
    cfg = dataclasses.replace(LBFGS, optim=dataclasses.replace(LBFGS.optim, progress_tol=None))
    key = train.seed_keys(0, 1)[0]
    model = make_model(cfg.model, cfg.data.n_features)
    init = train.init_state(key, train.Hyper.from_config(cfg), model=model, cfg=cfg).params
    state, loss_E = jax.jit(train.make_train(cfg))(key)
    assert not bool(state.diverged) and np.all(np.isfinite(loss_E))
    x_NxD = data.shared_data(cfg)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x_NxD, jnp.float64)
        objective = objective_with_decay(
            lambda p: total_loss(p, x64, model=model, cfg=cfg.loss, sparsity_weight=0.0)[0],
            cfg.optim,
            cfg.optim.weight_decay,
        )
        start, unravel = ravel_pytree(jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), init))
        value_and_grad = jax.jit(jax.value_and_grad(lambda v: objective(unravel(v))))
        ref = scipy.optimize.minimize(
            lambda v: tuple(np.asarray(a) for a in value_and_grad(v)),
            np.asarray(start),
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": cfg.train.epochs,
                "maxcor": cfg.optim.memory_size,
                "ftol": 0.0,
                "gtol": 0.0,
            },
        )
        trained, _ = ravel_pytree(jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), state.params))
        got, grad = value_and_grad(trained)
        first = float(value_and_grad(start)[0])
    assert got.dtype == np.float64 and ref.nit == cfg.train.epochs
    np.testing.assert_allclose(float(got), ref.fun, rtol=1e-7)
    assert np.linalg.norm(np.asarray(grad)) < 1e-5  # a stationary point, not just a low value
    assert float(got) < 0.5 * first


def _gap(a, b) -> float:
    """The largest absolute difference between two trees' leaves."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_lbfgs_seeds_and_arms_vmapped_equal_their_own_runs():
    """Seed i of a vmapped L-BFGS run (each seed's line search a while loop inside the vmapped
    program), run in chunks of 4 iterations (the last one partial), equals seed i alone and the
    one-chunk `make_train`; two weight-decay arms per seed equal plain runs of their values.

    Only 6 iterations, and arms at atol 1e-5: vmapped and plain programs round differently in
    float32 (batched matmuls), and L-BFGS amplifies such differences, as it would any perturbation
    far from a minimum. Measured largest parameter gaps after these 6: seeds 6e-8, arms 1.8e-6
    (vmapped twice; 2.5e-6 after 8 iterations, 1.4e-5 after 12; seeds 5e-7 after 10, 2e-3 after
    60); between the two decays' runs 2.4, so an arm that took the other's steps would show.
    """
    cfg = _lbfgs(epochs=6, chunk_epochs=4)
    batch = runner.train_seeds(cfg, 4, seed=3)
    assert not batch.diverged.any()
    keys = train.seed_keys(3, 4)
    for i in (0, 3):
        alone = runner.train_seeds(cfg, 1, keys=keys[i : i + 1])
        _close(jax.tree.map(lambda v, i=i: v[i : i + 1], batch.state.params), alone.state.params)
        np.testing.assert_allclose(batch.history_SxAxE[i], alone.history_SxAxE[0], rtol=1e-5)
    state, loss_SxExA = jax.jit(jax.vmap(train.make_train(cfg)))(keys)
    _close(state.params, batch.state.params)
    np.testing.assert_allclose(np.moveaxis(loss_SxExA, 1, -1), batch.history_SxAxE, rtol=1e-5)

    one = train.Hyper.from_config(cfg)
    wds = jnp.asarray([cfg.optim.weight_decay, 3e-1], jnp.float32)
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, 2)), one).replace(
        weight_decay=jnp.broadcast_to(wds, (4, 2))
    )
    arms = runner.train_seeds(cfg, 4, seed=3, hyper=hyper)
    chex.assert_tree_shape_prefix(arms.state.params, (4, 2))
    other = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, 1)), one).replace(
        weight_decay=jnp.full((4, 1), wds[1])
    )
    alone = runner.train_seeds(cfg, 4, seed=3, hyper=other)
    for arm, plain in ((0, batch), (1, alone)):
        got = jax.tree.map(lambda v, arm=arm: v[:, arm : arm + 1], arms.state.params)
        chex.assert_trees_all_close(got, plain.state.params, rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            arms.history_SxAxE[:, arm : arm + 1], plain.history_SxAxE, rtol=1e-5
        )
    assert _gap(alone.state.params, batch.state.params) > 0.1  # the decays make a difference
