"""The loss terms of `jaxae.losses` against hand computations in numpy, and `total_loss`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import losses
from jaxae.config import LossConfig, ModelConfig
from jaxae.model import make_model

B, D, H = 6, 4, 5
# float32 reductions over <= 30 terms of O(1) values against float64: a few ulps of 1e-7 each.
RTOL = 1e-6


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def f32(a: np.ndarray) -> jax.Array:
    return jnp.asarray(a, jnp.float32)


def f64(a: jax.Array | np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64)


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    """Standard normal samples, rounded to float32 (so float32 inputs hold them exactly)."""
    return f64(f32(rng(seed).normal(size=shape)))


def hidden(seed: int = 0) -> np.ndarray:
    """Sigmoid-like activations in (0, 1), rounded to float32."""
    return f64(f32(rng(seed).uniform(0.01, 0.99, size=(B, H))))


def numpy_kl(h: np.ndarray, rho: float) -> float:
    """The KL penalty in float64, with rho_hat clipped to [1e-6, 1 - 1e-6] as rounded to float32."""
    rho_hat = np.clip(h.mean(axis=0), np.float32(1e-6), np.float32(1 - 1e-6))
    return float(
        np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
    )


def test_mse_is_mean_over_all_elements() -> None:
    x_hat, x = normal(2, B, D, seed=0)
    expected = np.mean((x_hat - x) ** 2)
    got = losses.mse(f32(x_hat), f32(x))
    assert got.shape == ()
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    np.testing.assert_allclose(
        losses.squared_error_per_example(f32(x_hat), f32(x)),
        np.mean((x_hat - x) ** 2, axis=1),
        rtol=RTOL,
    )


def test_mse_is_zero_for_perfect_reconstruction() -> None:
    x = f32(normal(B, D, seed=0))
    assert float(losses.mse(x, x)) == 0.0


def test_weighted_mse_ignores_zero_weight_rows() -> None:
    x_hat, x = normal(2, B, D, seed=1)
    w = np.array([1, 0, 1, 1, 0, 1], np.float32)
    keep = w == 1
    expected = np.mean((x_hat[keep] - x[keep]) ** 2)
    np.testing.assert_allclose(losses.mse(f32(x_hat), f32(x), f32(w)), expected, rtol=RTOL)
    np.testing.assert_allclose(
        losses.mse(f32(x_hat), f32(x), f32(w)),
        losses.mse(f32(x_hat[keep]), f32(x[keep])),
        rtol=RTOL,
    )


def test_weighted_mse_integer_weights_repeat_rows() -> None:
    x_hat, x = normal(2, B, D, seed=2)
    w = np.array([2, 0, 1, 3, 0, 1])
    rows = np.repeat(np.arange(B), w)
    expected = np.mean((x_hat[rows] - x[rows]) ** 2)
    np.testing.assert_allclose(losses.mse(f32(x_hat), f32(x), f32(w)), expected, rtol=RTOL)


@pytest.mark.parametrize("rho", [0.05, 0.3, 0.5, 0.9])
def test_kl_matches_hand_computation(rho: float) -> None:
    h = hidden()
    got = losses.kl_sparsity(f32(h), rho)
    assert got.shape == ()
    np.testing.assert_allclose(got, numpy_kl(h, rho), rtol=1e-5)


def test_kl_clips_saturated_units() -> None:
    h = hidden()
    h[:, 0] = 0.0
    h[:, 1] = 1.0
    got = losses.kl_sparsity(f32(h), 0.1)
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(got, numpy_kl(h, 0.1), rtol=1e-5)


@pytest.mark.parametrize("rho", [0.125, 0.25, 0.5, 0.75])
def test_kl_is_zero_at_target(rho: float) -> None:
    # Offsets that cancel in every column; all values are multiples of 2^-7 below 1, so exact in
    # float32, and so is the column mean.
    offsets = np.array([1.0, -1.0, 0.5, -0.5, 0.0, 0.0])[:, None] * np.arange(1, H + 1) / 64
    h = rho + offsets
    assert np.all((h > 0) & (h < 1))
    np.testing.assert_array_equal(f32(h).mean(axis=0), np.full(H, rho, np.float32))
    assert float(losses.kl_sparsity(f32(h), rho)) == 0.0


@pytest.mark.parametrize("rho", [0.05, 0.3, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_kl_is_positive_away_from_target(rho: float, seed: int) -> None:
    h = hidden(seed)
    assert np.all(np.abs(h.mean(axis=0) - rho) > 1e-3)
    assert float(losses.kl_sparsity(f32(h), rho)) > 0.0


def test_kl_single_unit_off_target_is_positive() -> None:
    h = np.full((B, H), 0.25)
    h[:, 2] = 0.5
    got = float(losses.kl_sparsity(f32(h), 0.25))
    expected = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    assert got > 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_l1_matches_hand_computation() -> None:
    h = normal(B, H, seed=3)
    expected = np.mean(np.sum(np.abs(h), axis=1))
    np.testing.assert_allclose(losses.l1_sparsity(f32(h)), expected, rtol=RTOL)
    h = np.array([[1.0, -2.0, 0.0, 0.5, 0.0], [0.0, 0.0, 3.0, 0.0, -0.5]])
    assert float(losses.l1_sparsity(f32(h))) == 3.5


PENALTIES: dict[str, Callable[..., jax.Array]] = {
    "kl": lambda h, w=None: losses.kl_sparsity(h, 0.2, w),
    "l1": losses.l1_sparsity,
    "mean_activation": losses.mean_activation,
}


@pytest.mark.parametrize("name", PENALTIES)
def test_weighted_penalties_ignore_zero_weight_rows(name: str) -> None:
    h = hidden(5)
    w = np.array([0, 1, 1, 0, 1, 1], np.float32)
    penalty = PENALTIES[name]
    np.testing.assert_allclose(
        penalty(f32(h), f32(w)), penalty(f32(h[w == 1])), rtol=RTOL, atol=1e-7
    )


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (LossConfig(sparsity="none", weight=1.0), lambda h: 0.0),
        (LossConfig(sparsity="l1"), lambda h: np.mean(np.sum(np.abs(h), axis=1))),
        (LossConfig(sparsity="kl", rho=0.3), lambda h: numpy_kl(h, 0.3)),
    ],
    ids=["none", "l1", "kl"],
)
def test_sparsity_penalty_dispatch(
    cfg: LossConfig, expected: Callable[[np.ndarray], float]
) -> None:
    h = hidden(6)
    got = losses.sparsity_penalty(f32(h), cfg)
    assert got.shape == ()
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected(h), rtol=1e-5)


def setup_model(activation: str = "sigmoid") -> tuple[Any, Any, jax.Array]:
    model = make_model(ModelConfig(n_hidden=H, activation=activation), D)
    params = model.init(jax.random.key(0), jnp.zeros((1, D)))
    return model, params, f32(normal(B, D, seed=7))


SPARSITIES = [
    LossConfig(sparsity="none"),
    LossConfig(sparsity="l1"),
    LossConfig(sparsity="kl", rho=0.05),
]


@pytest.mark.parametrize("cfg", SPARSITIES, ids=lambda c: c.sparsity)
def test_zero_weight_gradient_equals_mse_gradient(cfg: LossConfig) -> None:
    model, params, x = setup_model()

    def plain_mse(p: Any) -> jax.Array:
        return losses.mse(model.apply(p, x)[0], x)

    grad_total, aux = jax.jit(
        jax.grad(
            lambda p: losses.total_loss(p, x, model=model, cfg=cfg, sparsity_weight=0.0),
            has_aux=True,
        )
    )(params)
    grad_mse = jax.jit(jax.grad(plain_mse))(params)
    chex.assert_tree_all_finite(grad_total)
    chex.assert_trees_all_close(grad_total, grad_mse, rtol=1e-6, atol=0)
    chex.assert_trees_all_close(aux["mse"], plain_mse(params), rtol=1e-6, atol=0)
    if cfg.sparsity != "none":
        grad_penalty = jax.jit(
            jax.grad(lambda p: losses.sparsity_penalty(model.apply(p, x)[1], cfg))
        )(params)
        assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_penalty)) > 1e-4


@pytest.mark.parametrize("beta", [0.0, 0.01, 1.0, 3.5])
@pytest.mark.parametrize("cfg", SPARSITIES, ids=lambda c: c.sparsity)
def test_total_loss_is_mse_plus_weighted_penalty(cfg: LossConfig, beta: float) -> None:
    model, params, x = setup_model()
    loss, aux = losses.total_loss(params, x, model=model, cfg=cfg, sparsity_weight=beta)
    assert set(aux) == {"mse", "sparsity", "fired_H"}
    x_hat, h = model.apply(params, x)
    np.testing.assert_array_equal(aux["fired_H"], np.sum(np.asarray(model.is_active(h)), axis=0))
    np.testing.assert_allclose(aux["mse"], np.mean((f64(x_hat) - f64(x)) ** 2), rtol=RTOL)
    expected_penalty = {
        "none": 0.0,
        "l1": float(np.mean(np.sum(np.abs(f64(h)), axis=1))),
        "kl": numpy_kl(f64(h), cfg.rho),
    }[cfg.sparsity]
    np.testing.assert_allclose(aux["sparsity"], expected_penalty, rtol=1e-5)
    np.testing.assert_allclose(loss, float(aux["mse"]) + beta * float(aux["sparsity"]), rtol=RTOL)
    assert loss.shape == ()


def test_total_loss_traced_weight_and_row_weights() -> None:
    model, params, x = setup_model()
    cfg = LossConfig(sparsity="l1")
    w = f32(np.array([1, 1, 0, 1, 0, 1]))
    keep = np.asarray(w) == 1

    def loss_at(beta: jax.Array) -> jax.Array:
        return losses.total_loss(params, x, model=model, cfg=cfg, sparsity_weight=beta, w_B=w)[0]

    betas = jnp.array([0.0, 0.5, 2.0])
    batched = jax.jit(jax.vmap(loss_at))(betas)
    for beta, got in zip(np.asarray(betas), np.asarray(batched), strict=True):
        expected, _ = losses.total_loss(
            params, x[keep], model=model, cfg=cfg, sparsity_weight=float(beta)
        )
        np.testing.assert_allclose(got, expected, rtol=RTOL)


# ------------------------------------------------------------------------------------------------
# The auxiliary top-k loss for dead units and per-seed rho


def dead_unit_setup() -> tuple[Any, Any, jax.Array]:
    """A top-2 model whose last unit has a small positive pre-activation on every row, below the
    other units' (bias 5), so it never wins a slot: dead, but revivable."""
    model = make_model(ModelConfig(n_hidden=H, activation="topk", k=2), D)
    params = jax.tree.map(np.array, model.init(jax.random.key(3), jnp.zeros((1, D))))
    params["params"]["encoder"]["kernel"][:, -1] = 0.0
    params["params"]["encoder"]["bias"][:] = 5.0
    params["params"]["encoder"]["bias"][-1] = 0.01
    return model, params, f32(normal(B, D, seed=4))


def last_unit_grads(cfg: LossConfig, dead: jax.Array) -> dict[str, np.ndarray]:
    model, params, x = dead_unit_setup()
    grads = jax.grad(
        lambda p: losses.total_loss(p, x, model=model, cfg=cfg, sparsity_weight=0.0, dead_H=dead)[0]
    )(params)["params"]
    return {
        "encoder": np.asarray(grads["encoder"]["kernel"])[:, -1],
        "encoder_bias": np.asarray(grads["encoder"]["bias"])[-1:],
        "decoder": np.asarray(grads["decoder"]["kernel"])[-1],
    }


def test_auxk_gives_a_dead_unit_a_gradient_and_nothing_else_does() -> None:
    dead = jnp.arange(H) == H - 1
    model, params, x = dead_unit_setup()
    _, h = model.apply(params, x)
    assert np.all(np.asarray(h)[:, -1] == 0)  # the unit never fires
    with_aux = last_unit_grads(LossConfig(aux_k=1), dead)
    assert all(np.any(np.abs(g) > 1e-6) for g in with_aux.values()), with_aux
    for cfg, mask in [(LossConfig(aux_k=0), dead), (LossConfig(aux_k=1), jnp.zeros(H, bool))]:
        for g in last_unit_grads(cfg, mask).values():
            np.testing.assert_array_equal(g, 0.0)


def numpy_auxk_code(pre: np.ndarray, dead: np.ndarray, k_aux: int) -> np.ndarray:
    """Gao et al.'s code, each sample's k_aux largest dead pre-activations (ReLU'd), when at most
    k_aux units are dead; with more, the k_aux dead units of largest batch-mean pre-activation."""
    if dead.sum() > k_aux:
        score = np.where(dead, pre.mean(axis=0), -np.inf)
        chosen = np.zeros_like(dead)
        chosen[np.argsort(-score, kind="stable")[:k_aux]] = True
        dead = chosen
    masked = np.where(dead, pre, -np.inf)
    top = np.argsort(-masked, axis=1)[:, :k_aux]
    code = np.zeros_like(pre)
    rows = np.arange(len(pre))[:, None]
    code[rows, top] = np.maximum(masked[rows, top], 0.0)
    return code


@pytest.mark.parametrize(
    "dead",
    [
        [True, False, True, False, False],  # as many dead units as k_aux: Gao et al.'s loss
        [False, False, False, True, False],  # fewer
        [True, False, True, True, True],  # more: the two of largest batch-mean pre-activation
    ],
)
def test_auxk_matches_hand_computation(dead: list[bool]) -> None:
    pre = normal(B, H, seed=5)
    dead = np.array(dead)
    residual, decoder = normal(B, D, seed=6), normal(H, D, seed=7)
    code = losses.auxk_code(f32(pre), jnp.asarray(dead), 2)
    np.testing.assert_allclose(code, numpy_auxk_code(pre, dead, 2), rtol=1e-6)
    e_hat = f32(code) @ f32(decoder)
    got = losses.auxk_loss(e_hat, f32(residual))
    expected = np.sum((np.asarray(e_hat, np.float64) - residual) ** 2) / np.sum(residual**2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_auxk_code_is_zero_without_dead_units() -> None:
    code = losses.auxk_code(f32(normal(B, H, seed=5)), jnp.zeros(H, bool), 2)
    np.testing.assert_array_equal(code, 0.0)


def test_decode_pair_is_two_decodes() -> None:
    model, params, x = dead_unit_setup()
    h, aux = model.apply(params, x)[1], f32(normal(B, H, seed=8))
    x_hat, e_hat = model.apply(params, h, aux, method="decode_pair")
    np.testing.assert_allclose(x_hat, model.apply(params, h, method="decode"), rtol=1e-6, atol=1e-6)
    w = model.apply(params, method="decoder_weights")
    np.testing.assert_allclose(e_hat, aux @ w, rtol=1e-6, atol=1e-6)


def test_auxk_adds_its_weighted_term_to_the_total() -> None:
    model, params, x = dead_unit_setup()
    dead = jnp.arange(H) == H - 1
    cfg = LossConfig(aux_k=1, aux_weight=0.25)
    loss, aux = losses.total_loss(params, x, model=model, cfg=cfg, sparsity_weight=0.0, dead_H=dead)
    assert float(aux["auxk"]) > 0
    np.testing.assert_allclose(loss, aux["mse"] + 0.25 * aux["auxk"], rtol=RTOL)
    fired = np.sum(np.asarray(model.apply(params, x)[1]) != 0, axis=0)
    assert fired[-1] == 0
    np.testing.assert_array_equal(aux["fired_H"], fired)


def test_traced_rho_equals_the_config_rho() -> None:
    h = f32(hidden(3))
    for rho in (0.02, 0.3):
        traced = jax.jit(lambda r: losses.sparsity_penalty(h, LossConfig(sparsity="kl"), rho=r))
        np.testing.assert_allclose(
            traced(jnp.float32(rho)),
            losses.sparsity_penalty(h, LossConfig(sparsity="kl", rho=rho)),
            rtol=1e-6,
        )
