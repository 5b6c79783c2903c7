"""`jaxae.optim.make_optimizer` against PyTorch's Adam and AdamW written out in numpy."""

from __future__ import annotations

import functools
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae.config import OptimConfig
from jaxae.optim import make_optimizer

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
