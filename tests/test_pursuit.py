"""Orthogonal matching pursuit as the encoder (`model.activation="omp"`) and the data start
(`model.init="data"`): jaxae/model.py, jaxae/data.py, jaxae/train.py.

The pursuit's codes are scikit-learn's `orthogonal_mp` on the same unit-norm dictionary; its k may
be traced; masked units are never picked; it trains inside the vmapped loop (seed i in a batch of
seeds equals seed i alone) and codes with `model.infer_k` once trained. The data start puts each
seed's decoder rows at its own distinct training rows minus their mean.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.linear_model

from jaxae import cli, data, runner, train
from jaxae.config import Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from jaxae.model import hidden_mask, init_params, make_model, orthogonal_pursuit, unit_rows
from tests.test_mechanisms import assert_seed_in_batch_is_seed_alone

D, H = 10, 24


def _dictionary(seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=(H, D))
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def _pursue(x_BxD: np.ndarray, w_HxD: np.ndarray, k, k_max: int, mask_H=None) -> np.ndarray:
    w = jnp.asarray(w_HxD, jnp.float32)
    corr = jnp.asarray(x_BxD, jnp.float32) @ w.T
    return np.asarray(orthogonal_pursuit(corr, w @ w.T, k, k_max, mask_H))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_the_pursuit_is_scikit_learns_orthogonal_mp(k: int) -> None:
    w = _dictionary()
    x = np.random.default_rng(1).normal(size=(16, D))
    expected = sklearn.linear_model.orthogonal_mp(w.T, x.T, n_nonzero_coefs=k).T
    got = _pursue(x, w, k, k)
    np.testing.assert_array_equal(got != 0, expected != 0)  # the same atoms, picked the same way
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert np.all(np.count_nonzero(got, axis=-1) == k)
    # the fit is least squares on the picked rows: the residual is orthogonal to every one of them
    residual = x - got @ w
    np.testing.assert_allclose((residual @ w.T)[got != 0], 0.0, atol=1e-4)


def test_one_step_is_the_most_correlated_row_times_its_correlation() -> None:
    w = _dictionary()
    x = np.random.default_rng(2).normal(size=(8, D))
    corr = x @ w.T
    j = np.argmax(np.abs(corr), axis=-1)
    expected = np.zeros_like(corr)
    expected[np.arange(8), j] = corr[np.arange(8), j]
    np.testing.assert_allclose(_pursue(x, w, 1, 1), expected, rtol=1e-4, atol=1e-5)


def test_a_traced_k_below_the_static_largest_is_that_k() -> None:
    w = _dictionary()
    x = np.random.default_rng(3).normal(size=(8, D))
    w32 = jnp.asarray(w, jnp.float32)
    corr = jnp.asarray(x, jnp.float32) @ w32.T
    run = jax.jit(lambda k: orthogonal_pursuit(corr, w32 @ w32.T, k, 6))
    for k in (1, 2, 6):
        np.testing.assert_allclose(run(jnp.int32(k)), _pursue(x, w, k, k), rtol=1e-5, atol=1e-6)


def test_masked_units_are_never_picked() -> None:
    w = _dictionary()
    x = np.random.default_rng(4).normal(size=(32, D))
    mask = hidden_mask(jnp.int32(H // 2), H)
    h = _pursue(x, w, 4, 4, mask)
    assert not np.any(h[:, H // 2 :])
    np.testing.assert_allclose(h[:, : H // 2], _pursue(x, w[: H // 2], 4, 4), rtol=1e-4, atol=1e-5)


def _omp_model(k: int = 2, infer_k: int | None = 4) -> ModelConfig:
    return ModelConfig(
        n_hidden=H,
        activation="omp",
        k=k,
        infer_k=infer_k,
        tied=True,
        unit_norm_decoder=True,
        pre_bias=True,
    )


def test_the_pursuit_autoencoder_trains_through_its_coefficients() -> None:
    """Finite gradients that reach the decoder rows and bias; no encoder kernel; the trained model
    codes with `infer_k` non-zeros and trains with k."""
    cfg = _omp_model()
    model = make_model(cfg, D)
    params = init_params(model, jax.random.key(0))
    assert set(params["params"]["encoder"]) == {"bias"}
    x = jnp.asarray(np.random.default_rng(5).normal(size=(16, D)), jnp.float32)

    def loss(p):
        x_hat, _ = model.apply(p, x)
        return jnp.mean((x_hat - x) ** 2)

    grads = jax.grad(loss)(params)["params"]
    chex.assert_tree_all_finite(grads)
    assert np.abs(grads["decoder"]["kernel"]).sum() > 0
    assert np.abs(grads["decoder"]["bias"]).sum() > 0
    _, h_train = model.apply(params, x)
    _, h_code = make_model(cfg, D, coding=True).apply(params, x)
    assert np.all(np.count_nonzero(h_train, -1) == 2)
    assert np.all(np.count_nonzero(h_code, -1) == 4)
    # the code is the pursuit over the unit rows in use, of x minus the decoder bias
    w = unit_rows(params["params"]["decoder"]["kernel"])
    x_centred = np.asarray(x) - np.asarray(params["params"]["decoder"]["bias"])
    np.testing.assert_allclose(h_code, _pursue(x_centred, np.asarray(w), 4, 4), atol=1e-5)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tied": False}, "model.tied"),
        ({"unit_norm_decoder": False}, "model.unit_norm_decoder"),
        ({"infer_k": 0}, "model.infer_k"),
        ({"infer_k": H + 1}, "model.infer_k"),
        ({"infer_k": 2.5}, "model.infer_k"),
        ({"k": None}, "model.k"),
    ],
)
def test_bad_pursuit_settings_name_their_field(fields: dict, field: str) -> None:
    base = {
        "n_hidden": H,
        "activation": "omp",
        "k": 2,
        "tied": True,
        "unit_norm_decoder": True,
        **fields,
    }
    with pytest.raises(ValueError, match=rf"^{field}="):
        ModelConfig(**base)


def test_infer_k_belongs_to_the_pursuit_only() -> None:
    with pytest.raises(ValueError, match=r"^model.infer_k=4 is invalid: .*'omp'"):
        ModelConfig(n_hidden=H, activation="topk", k=2, infer_k=4)
    with pytest.raises(ValueError, match=r"^loss.aux_k="):
        Config(model=_omp_model(), loss=LossConfig(aux_k=4))


def _tiny(init: str = "data") -> Config:
    return Config(
        data=DataConfig(kind="sparse", n_samples=96, n_features=D, n_atoms=16, active=2),
        model=ModelConfig(
            n_hidden=H,
            activation="omp",
            k=2,
            infer_k=3,
            tied=True,
            unit_norm_decoder=True,
            pre_bias=True,
            init=init,
        ),
        optim=OptimConfig(learning_rate=3e-3),
        train=TrainConfig(epochs=3, batch_size=32, chunk_epochs=3),
    )


def test_seed_in_a_batch_equals_seed_alone() -> None:
    """From the default start: a unit started at a training row (`model.init="data"`) codes that
    row exactly, so its gradient there is round-off, which Adam scales to a full step; the two
    programs' round-off then differs in the fourth digit after a few steps (measured: 1e-4)."""
    cfg = _tiny("torch")
    hyper_A = train.stack_arms([train.Hyper.from_config(cfg, k=k) for k in (1, 2)])
    batch = assert_seed_in_batch_is_seed_alone(cfg, hyper_A, n=3, i=1, seed=2)
    kernel = np.asarray(batch.state.params["params"]["decoder"]["kernel"])
    assert not np.allclose(kernel[:, 0], kernel[:, 1])  # k = 1 and k = 2 trained apart


def test_the_data_start_is_each_seeds_own_training_rows_minus_their_mean() -> None:
    cfg = _tiny()
    n = 3
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (n, 1)), train.Hyper.from_config(cfg))
    params = runner.programs(cfg).init(train.seed_keys(0, n), hyper).params["params"]
    x = np.asarray(data.shared_data(cfg))
    mean = x.mean(axis=0)
    kernel = np.asarray(params["decoder"]["kernel"][:, 0])
    np.testing.assert_allclose(
        params["decoder"]["bias"][:, 0], np.broadcast_to(mean, (n, D)), rtol=1e-5, atol=1e-6
    )
    picked = []
    for s in range(n):
        # each row is a training row minus the mean; no row twice
        distance = np.linalg.norm(kernel[s][:, None, :] - (x - mean)[None], axis=-1)
        np.testing.assert_allclose(distance.min(axis=1), 0.0, atol=1e-5)
        rows = distance.argmin(axis=1)
        assert len(set(rows.tolist())) == H
        picked.append(set(rows.tolist()))
    assert picked[0] != picked[1]  # each seed draws its own rows
    np.testing.assert_array_equal(params["encoder"]["bias"], 0.0)


def test_the_data_start_is_refused_with_given_data() -> None:
    cfg = Config(
        data=DataConfig(kind="sparse", n_samples=96, n_features=D, n_atoms=16, per_seed=True),
        model=_tiny().model,
        train=_tiny().train,
    )
    x = np.zeros((2, 96, D), np.float32)
    with pytest.raises(ValueError, match=r"^model.init='data' is invalid"):
        runner.train_seeds(cfg, 2, x=x)


def test_a_bad_pursuit_setting_exits_2(capsys, tmp_path) -> None:
    argv = ["run", "digits", "--seeds", "2", "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--set", "model.infer_k=0"]) == 2
    err = capsys.readouterr().err
    assert "model.infer_k=0 is invalid" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
