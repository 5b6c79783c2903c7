"""`jaxae.optim.make_optimizer` against PyTorch's Adam and AdamW written out in numpy, and its
L-BFGS against scipy's L-BFGS-B and a closed-form ridge regression."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from jaxae.config import Config, DataConfig, LossConfig, OptimConfig, TrainConfig
from jaxae.optim import decay_mask, kernel_mask, lbfgs_step, line_search_args, make_optimizer


@pytest.fixture(autouse=True)
def _optax_promotion():
    """These tests call optax directly, whose Adam mixes a Python float with its int32 step count:
    under the standard promotion rules, as `train.train_step` calls it (tests/conftest.py sets the
    strict ones)."""
    with jax.numpy_dtype_promotion("standard"):
        yield


STEPS = 5
LR, WD = 0.05, 0.1


def tolerance(lr: float) -> dict[str, float]:
    """How far float32 optax may drift from the float64 reference in `STEPS` steps of size ~lr.

    optax forms the bias corrections 1 - b^t in float32, where 1 - 0.999^t has a relative error up
    to ulp(1) / 1e-3 ~ 6e-5; through the square root that is up to 3e-5 of each step, 1.5e-4 * lr
    over five; plus a few float32 ulps of the O(1) parameters. (With the corrections rounded as
    optax rounds them, the gap is below 2e-7.)
    """
    return {"rtol": 0.0, "atol": 2e-4 * lr + 1e-6}


def make_params(seed: int = 0) -> dict[str, Any]:
    r = np.random.default_rng(seed)
    return {
        "w": r.normal(size=(3, 4)).astype(np.float32),
        "b": r.normal(size=(4,)).astype(np.float32),
        "nested": {"c": r.normal(size=(2,)).astype(np.float32)},
    }


PARAMS = make_params(0)
# One gradient tree per step, stacked on a leading axis; fixed, so the test isolates the optimizer.
GRADS = jax.tree.map(
    lambda *steps: np.stack(steps), *[make_params(seed) for seed in range(1, STEPS + 1)]
)


def numpy_adam(
    params: dict[str, Any],
    grads: dict[str, Any],
    lr: float | list[float],
    wd: float,
    decoupled: bool,
) -> dict[str, Any]:
    """`torch.optim.Adam(lr, weight_decay=wd)` or, if decoupled, `torch.optim.AdamW`, in float64;
    `lr` may be a list, one learning rate per step."""
    lrs = lr if isinstance(lr, list) else [lr] * STEPS
    b1, b2, eps = 0.9, 0.999, 1e-8
    leaves, treedef = jax.tree.flatten(jax.tree.map(lambda a: np.asarray(a, np.float64), params))
    m = [np.zeros_like(p) for p in leaves]
    v = [np.zeros_like(p) for p in leaves]
    grad_leaves = jax.tree.leaves(grads)
    for t in range(1, STEPS + 1):
        for i, p_i in enumerate(leaves):
            g = np.asarray(grad_leaves[i][t - 1], np.float64)
            if not decoupled:
                g = g + wd * p_i
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            step = m_hat / (np.sqrt(v_hat) + eps)
            if decoupled:
                step = step + wd * p_i
            leaves[i] = p_i - lrs[t - 1] * step
    return jax.tree.unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnums=0)  # compiled once per config; overrides are traced
def run(
    cfg: OptimConfig,
    learning_rate: jax.Array | float | None = None,
    weight_decay: jax.Array | float | None = None,
) -> Any:
    """`STEPS` updates of `make_optimizer(cfg, ...)` from `PARAMS` along `GRADS`."""
    opt = make_optimizer(cfg, learning_rate, weight_decay, total_steps=STEPS)

    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], None]:
        p, state = carry
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    params = jax.tree.map(jnp.asarray, PARAMS)
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), GRADS)
    return params


def to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def row(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


@pytest.mark.parametrize("wd", [0.0, WD, 0.5])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_matches_torch_by_hand(decoupled: bool, wd: float) -> None:
    got = run(OptimConfig(learning_rate=LR, weight_decay=wd, decoupled=decoupled))
    chex.assert_tree_all_finite(got)
    chex.assert_trees_all_close(got, numpy_adam(PARAMS, GRADS, LR, wd, decoupled), **tolerance(LR))


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_reference_has_the_other_rule_far_away(decoupled: bool) -> None:
    got = run(OptimConfig(learning_rate=LR, weight_decay=WD, decoupled=decoupled))
    other = numpy_adam(PARAMS, GRADS, LR, WD, not decoupled)
    gaps = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - b)), got, other)
    assert max(jax.tree.leaves(gaps)) > 100 * tolerance(LR)["atol"]


def test_adam_and_adamw_differ_with_weight_decay() -> None:
    adam = run(OptimConfig(learning_rate=LR, weight_decay=WD, decoupled=False))
    adamw = run(OptimConfig(learning_rate=LR, weight_decay=WD, decoupled=True))
    gaps = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), to_numpy(adam), to_numpy(adamw))
    assert all(gap > 1e-3 for gap in jax.tree.leaves(gaps)), gaps


def test_adam_and_adamw_agree_without_weight_decay() -> None:
    adam = run(OptimConfig(learning_rate=LR, weight_decay=0.0, decoupled=False))
    adamw = run(OptimConfig(learning_rate=LR, weight_decay=0.0, decoupled=True))
    chex.assert_trees_all_close(adam, adamw, rtol=1e-7, atol=0)
    moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), to_numpy(adam), PARAMS)
    assert all(gap > LR for gap in jax.tree.leaves(moved))


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_array_overrides_equal_config_floats(decoupled: bool) -> None:
    from_config = run(OptimConfig(learning_rate=LR, weight_decay=WD, decoupled=decoupled))
    from_arrays = run(
        OptimConfig(learning_rate=1.0, weight_decay=0.0, decoupled=decoupled),
        learning_rate=jnp.float32(LR),
        weight_decay=jnp.float32(WD),
    )
    chex.assert_trees_all_close(from_arrays, from_config, rtol=1e-7, atol=0)


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_vmap_over_learning_rates(decoupled: bool) -> None:
    cfg = OptimConfig(learning_rate=1.0, weight_decay=WD, decoupled=decoupled)
    lrs = np.array([1e-3, 1e-2, LR, 0.2], np.float32)
    batched = to_numpy(jax.vmap(lambda lr: run(cfg, learning_rate=lr))(jnp.asarray(lrs)))
    chex.assert_tree_shape_prefix(batched, (len(lrs),))
    for i, lr in enumerate(lrs):
        single = run(cfg, learning_rate=jnp.float32(lr))
        chex.assert_trees_all_close(row(batched, i), single, rtol=1e-6, atol=0)
        chex.assert_trees_all_close(
            single, numpy_adam(PARAMS, GRADS, float(lr), WD, decoupled), **tolerance(float(lr))
        )


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_vmap_over_learning_rates_and_weight_decays(decoupled: bool) -> None:
    cfg = OptimConfig(decoupled=decoupled)
    lrs = np.array([0.01, LR, 0.1], np.float32)
    wds = np.array([0.0, WD, 0.5], np.float32)
    batched = to_numpy(jax.vmap(lambda lr, wd: run(cfg, lr, wd))(lrs, wds))
    for i in range(3):
        expected = numpy_adam(PARAMS, GRADS, float(lrs[i]), float(wds[i]), decoupled)
        chex.assert_trees_all_close(row(batched, i), expected, **tolerance(float(lrs[i])))


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_cosine_schedule_is_adam_with_the_cosine_learning_rate_per_step(ratio: float) -> None:
    """`optim.schedule="cosine"`: step t (0-based) of T uses
    lr * (r + (1 - r) * (1 + cos(pi t / (T - 1))) / 2): the full rate first, `final_lr_ratio` of it
    last; traced rates scale the same."""
    lrs = [
        LR * (ratio + (1 - ratio) * 0.5 * (1 + np.cos(np.pi * t / (STEPS - 1))))
        for t in range(STEPS)
    ]
    want = numpy_adam(PARAMS, GRADS, lrs, WD, decoupled=False)
    cfg = OptimConfig(learning_rate=LR, weight_decay=WD, schedule="cosine", final_lr_ratio=ratio)
    chex.assert_trees_all_close(to_numpy(run(cfg)), want, **tolerance(LR))
    traced = run(cfg, jnp.float32(2 * LR))
    want_traced = numpy_adam(PARAMS, GRADS, [2 * lr for lr in lrs], WD, decoupled=False)
    chex.assert_trees_all_close(to_numpy(traced), want_traced, **tolerance(2 * LR))


def test_a_schedule_without_the_number_of_steps_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("optim.schedule='cosine'")):
        make_optimizer(OptimConfig(schedule="cosine"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("schedule", "linear"), ("final_lr_ratio", -0.1), ("final_lr_ratio", 1.5)],
)
def test_invalid_schedule_settings_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"optim.{field}"):
        OptimConfig(**{field: value})


# ------------------------------------------------------------------------------------------------
# decay_biases: weight decay on the kernels only, the same in Adam and L-BFGS


def layer_params(seed: int = 0) -> dict[str, Any]:
    """A tree named as the autoencoder's parameters are (kernels and biases)."""
    r = np.random.default_rng(seed)

    def layer(shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {
            "kernel": r.normal(size=shape).astype(np.float32),
            "bias": r.normal(size=shape[1:]).astype(np.float32),
        }

    return {"params": {"encoder": layer((3, 2)), "decoder": layer((2, 3))}}


@functools.partial(jax.jit, static_argnums=0)
def run_layers(cfg: OptimConfig) -> Any:
    """`STEPS` updates of `make_optimizer(cfg)` from `layer_params(0)` along fixed gradients."""
    opt = make_optimizer(cfg, total_steps=STEPS)
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[layer_params(s) for s in range(1, STEPS + 1)])

    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], None]:
        p, state = carry
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    params = jax.tree.map(jnp.asarray, layer_params(0))
    return jax.lax.scan(step, (params, opt.init(params)), grads)[0][0]


def kernels(tree: Any) -> list[Any]:
    """The leaves `decay_biases=False` decays."""
    flags = jax.tree.leaves(kernel_mask(tree))
    return [leaf for leaf, kernel in zip(jax.tree.leaves(tree), flags, strict=True) if kernel]


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_adam_without_bias_decay_decays_the_kernels_only(decoupled: bool) -> None:
    """Adam works elementwise, so with `decay_biases=False` every kernel follows the run that
    decays everything and every bias the run without decay."""
    cfg = OptimConfig(learning_rate=LR, weight_decay=0.5, decoupled=decoupled)
    masked = to_numpy(run_layers(dataclasses.replace(cfg, decay_biases=False)))
    decay_all = to_numpy(run_layers(cfg))
    no_decay = to_numpy(run_layers(dataclasses.replace(cfg, weight_decay=0.0)))
    flags = jax.tree.leaves(kernel_mask(masked))
    assert flags == [False, True, False, True]  # decoder bias, kernel, encoder bias, kernel
    leaves = map(jax.tree.leaves, (masked, decay_all, no_decay))
    for got, all_, none, kernel in zip(*leaves, flags, strict=True):
        np.testing.assert_allclose(got, all_ if kernel else none, rtol=1e-6, atol=1e-7)
        assert np.max(np.abs(all_ - none)) > 1e-3  # the decay matters for every leaf


def test_lbfgs_objective_adds_the_kernels_decay_and_not_the_biases() -> None:
    """With `decay_biases=False` the L-BFGS objective is loss + wd/2 (|W1|^2 + |W2|^2): its
    value, its function and its gradient (what `add_decayed_weights` hands L-BFGS, bit for bit);
    the biases' gradients have no decay term."""
    wd = 0.3
    cfg = OptimConfig(name="lbfgs", weight_decay=wd, decay_biases=False)
    params = jax.tree.map(jnp.asarray, layer_params(0))
    grads = jax.tree.map(jnp.asarray, layer_params(1))

    def loss_fn(p: Any) -> jax.Array:
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(p))

    extra = line_search_args(loss_fn, loss_fn(params), grads, params, cfg, jnp.float32(wd))
    squares = sum(float(np.sum(np.square(np.float64(w)))) for w in kernels(layer_params(0)))
    want = float(loss_fn(params)) + wd / 2 * squares
    np.testing.assert_allclose(float(extra["value"]), want, rtol=1e-6)
    np.testing.assert_allclose(float(extra["value_fn"](params)), want, rtol=1e-6)
    for layer in ("encoder", "decoder"):
        got, g, p = (t["params"][layer] for t in (extra["grad"], grads, params))
        np.testing.assert_array_equal(got["bias"], g["bias"])
        np.testing.assert_allclose(got["kernel"], g["kernel"] + wd * p["kernel"], rtol=1e-6)
    decay = optax.add_decayed_weights(jnp.float32(wd), decay_mask(cfg))
    chained, _ = decay.update(grads, decay.init(params), params)
    chex.assert_trees_all_equal(chained, extra["grad"])


# ------------------------------------------------------------------------------------------------
# L-BFGS against scipy on a ridge regression with an unpenalised intercept

RIDGE_WD = 0.1


def ridge_data() -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(0)
    a_NxF = r.normal(size=(40, 4)) * np.array([1.0, 3.0, 0.3, 1.0])  # condition number ~ 100
    y_N = a_NxF @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.7 + 0.1 * r.normal(size=40)
    return a_NxF, y_N


def ridge_loss(params: Any, a_NxF: Any, y_N: Any) -> Any:
    residual_N = a_NxF @ params["kernel"] + params["bias"] - y_N
    return 0.5 * jnp.mean(jnp.square(residual_N))


def test_lbfgs_finds_scipys_ridge_optimum() -> None:
    """`make_optimizer(name="lbfgs", decay_biases=False)` minimises mean squared error / 2 +
    wd/2 |w|^2 (intercept not decayed) to the normal equations' solution and to scipy's L-BFGS-B
    optimum, both within 1e-9, in float64 (a strictly convex quadratic in 5 dimensions: the
    optimum is unique, so any converged method must land on it; 25 iterations are plenty)."""
    a_NxF, y_N = ridge_data()
    n, f = a_NxF.shape
    design = np.hstack([a_NxF, np.ones((n, 1))])
    exact = np.linalg.solve(
        design.T @ design / n + RIDGE_WD * np.diag([1.0] * f + [0.0]), design.T @ y_N / n
    )

    def scipy_objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        residual, w = design @ v - y_N, v[:f]
        value = 0.5 * np.mean(residual**2) + RIDGE_WD / 2 * w @ w
        return value, design.T @ residual / n + RIDGE_WD * np.append(w, 0.0)

    ref = scipy.optimize.minimize(
        scipy_objective,
        np.zeros(f + 1),
        jac=True,
        method="L-BFGS-B",
        options={"maxcor": 10, "ftol": 0.0, "gtol": 1e-13, "maxiter": 200},
    )
    np.testing.assert_allclose(ref.x, exact, rtol=0, atol=1e-9)

    cfg = OptimConfig(name="lbfgs", weight_decay=RIDGE_WD, decay_biases=False)
    with jax.enable_x64(True):
        a, y = jnp.asarray(a_NxF), jnp.asarray(y_N)
        loss_fn = functools.partial(ridge_loss, a_NxF=a, y_N=y)
        opt = make_optimizer(cfg)

        def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], jax.Array]:
            p, state = carry
            value, grads = jax.value_and_grad(loss_fn)(p)
            extra = line_search_args(loss_fn, value, grads, p, cfg, RIDGE_WD)
            updates, state = opt.update(grads, state, p, **extra)
            return (optax.apply_updates(p, updates), state), extra["value"]

        params = {"kernel": jnp.zeros(f), "bias": jnp.zeros(())}
        (params, _), values = jax.jit(
            lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=25)
        )(params)
        got = np.append(np.asarray(params["kernel"]), np.asarray(params["bias"]))
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got, ref.x, rtol=0, atol=1e-9)
    # the line search only ever descends (once converged, by rounding errors alone)
    assert np.all(np.diff(np.asarray(values)) <= 1e-15)


def _ridge_lbfgs(
    start: Any, iterations: int, progress_tol: float
) -> tuple[Any, Any, jax.Array, jax.Array]:
    """`iterations` of `lbfgs_step` on the ridge problem from `start`, in float64 (call under
    `jax.enable_x64`): final params, optimizer state, `stopped`, and the objective (mean squared
    error / 2 + wd / 2 |w|^2) at the start of each iteration."""
    cfg = OptimConfig(
        name="lbfgs", weight_decay=RIDGE_WD, decay_biases=False, progress_tol=progress_tol
    )
    a_NxF, y_N = (jnp.asarray(v) for v in ridge_data())
    loss_fn = functools.partial(ridge_loss, a_NxF=a_NxF, y_N=y_N)
    opt = make_optimizer(cfg)

    def step(carry: tuple[Any, Any, jax.Array], _: None) -> tuple[Any, jax.Array]:
        p, state, stopped = carry
        value, grads = jax.value_and_grad(loss_fn)(p)
        carry = lbfgs_step(
            opt, grads, state, p, value_fn=loss_fn, value=value, cfg=cfg,
            weight_decay=RIDGE_WD, stopped=stopped,
        )  # fmt: skip
        return carry, value + RIDGE_WD / 2 * jnp.sum(jnp.square(p["kernel"]))

    init = (start, opt.init(start), jnp.zeros((), bool))
    (params, state, stopped), values = jax.lax.scan(step, init, None, length=iterations)
    return params, state, stopped, values


def _ridge_start(scale: float) -> Any:
    """Parameters all at `scale`, float64 under `jax.enable_x64`."""
    return {"kernel": jnp.full((4,), scale, float), "bias": jnp.asarray(scale, float)}


def test_lbfgs_stops_where_its_progress_ends_and_stays() -> None:
    """minFunc's stop: once an iteration lowers the objective by less than `progress_tol` the
    seed is `stopped` at the optimum, and later iterations change nothing, bit for bit. A stop on
    the objective's value resolves the parameters to about the square root of its precision
    (`sqrt(2 * 1e-16 / 0.19)`, 0.19 the Hessian's smallest eigenvalue here): 1e-7."""
    with jax.enable_x64(True):
        run = jax.jit(_ridge_lbfgs, static_argnums=(1, 2))
        params_60, state_60, stopped_60, values = run(_ridge_start(0.0), 60, 1e-16)
        params_90, state_90, stopped_90, _ = run(_ridge_start(0.0), 90, 1e-16)
        early = run(_ridge_start(0.0), 5, 1e-16)
    assert bool(stopped_60) and bool(stopped_90) and not bool(early[2])
    chex.assert_trees_all_equal((params_60, state_60), (params_90, state_90))
    a_NxF, y_N = ridge_data()
    n, f = a_NxF.shape
    design = np.hstack([a_NxF, np.ones((n, 1))])
    exact = np.linalg.solve(
        design.T @ design / n + RIDGE_WD * np.diag([1.0] * f + [0.0]), design.T @ y_N / n
    )
    got = np.append(np.asarray(params_60["kernel"]), np.asarray(params_60["bias"]))
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-7)
    exact_value = 0.5 * np.mean((design @ exact - y_N) ** 2) + RIDGE_WD / 2 * exact[:f] @ exact[:f]
    np.testing.assert_allclose(np.asarray(values)[-1], exact_value, rtol=1e-15)
    # the objective never rises, and is constant from the stop on
    assert np.all(np.diff(np.asarray(values)) <= 0)


def test_a_stopped_seed_leaves_the_others_as_they_run_alone() -> None:
    """Under `vmap`, a seed started at the optimum stops at once and stays there, and the
    seed beside it, still descending (8 iterations), runs as it does alone. A seed that stops
    after its first iteration (a tolerance no step beats: its improving step is taken, then
    nothing) keeps that step exactly."""
    a_NxF, y_N = ridge_data()
    design = np.hstack([a_NxF, np.ones((len(y_N), 1))])
    penalty = RIDGE_WD * np.diag([1.0] * a_NxF.shape[1] + [0.0])
    exact = np.linalg.solve(design.T @ design / len(y_N) + penalty, design.T @ y_N / len(y_N))
    with jax.enable_x64(True):
        near = {"kernel": jnp.asarray(exact[:-1]), "bias": jnp.asarray(exact[-1])}
        far = _ridge_start(2.0)
        starts = jax.tree.map(lambda *v: jnp.stack(v), near, far)
        both = jax.jit(jax.vmap(lambda s: _ridge_lbfgs(s, 8, 1e-16)))(starts)
        alone = jax.jit(lambda s: _ridge_lbfgs(s, 8, 1e-16))(far)
        frozen = jax.jit(lambda s: _ridge_lbfgs(s, 30, 1e6))(far)
        first = jax.jit(lambda s: _ridge_lbfgs(s, 1, 1e6))(far)
    assert [bool(v) for v in both[2]] == [True, False]
    chex.assert_trees_all_close(jax.tree.map(lambda v: v[0], both[0]), near, rtol=1e-12)
    chex.assert_trees_all_close(jax.tree.map(lambda v: v[1], both[0]), alone[0], rtol=1e-12)
    assert bool(frozen[2]) and bool(first[2])
    chex.assert_trees_all_equal(frozen[0], first[0])
    assert not np.array_equal(np.asarray(first[0]["bias"]), np.asarray(far["bias"]))


# ------------------------------------------------------------------------------------------------
# Config: what L-BFGS refuses


def lbfgs_config(**sections: dict[str, Any]) -> Config:
    """A full-batch L-BFGS config (64 samples, batch 64) with `sections`' fields changed."""
    return Config(
        data=DataConfig(n_samples=64),
        loss=LossConfig(**sections.get("loss", {})),
        optim=OptimConfig(name="lbfgs", **sections.get("optim", {})),
        train=TrainConfig(**{"batch_size": 64, **sections.get("train", {})}),
    )


def test_lbfgs_full_batch_config_constructs() -> None:
    cfg = lbfgs_config(optim={"memory_size": 5, "weight_decay": 1e-3, "decay_biases": False})
    assert cfg.optim.name == "lbfgs" and cfg.optim.memory_size == 5
    assert OptimConfig().name == "adam" and OptimConfig().decay_biases


@pytest.mark.parametrize(
    ("sections", "field", "says"),
    [
        ({"train": {"batch_size": 32}}, "train.batch_size", "data.n_samples=64"),
        ({"optim": {"schedule": "cosine"}}, "optim.schedule", "no learning rate"),
        ({"optim": {"decoupled": True}}, "optim.decoupled", "learning rate"),
        ({"loss": {"resample_dead": True}}, "loss.resample_dead", "curvature"),
        ({"optim": {"memory_size": 0}}, "optim.memory_size", "positive integer"),
        ({"optim": {"progress_tol": -1.0}}, "optim.progress_tol", "a finite number >= 0"),
        ({"optim": {"decay_biases": 1}}, "optim.decay_biases", "true or false"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_lbfgs_refuses_what_it_cannot_do(
    sections: dict[str, dict[str, Any]], field: str, says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(field) + ".*" + re.escape(says)):
        lbfgs_config(**sections)


def test_unknown_optimizer_names_the_field() -> None:
    with pytest.raises(ValueError, match=re.escape("optim.name='sgd'") + ".*'adam', 'lbfgs'"):
        OptimConfig(name="sgd")
