"""BatchTopK and JumpReLU (jaxae/model.py, jaxae/losses.py, jaxae/export.py).

BatchTopK keeps exactly k x B activations of a training batch and, at inference, fires every unit
above one threshold estimated from the training data; JumpReLU's straight-through gradients are the
paper's formulas; both train inside the vmapped loop (seed i in a batch of seeds, with arms, equals
seed i alone), stay at the true atoms from an oracle start (`model.init="atoms"`: every seed at the
atoms of its own data), and export as SAELens's JumpReLU SAE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import jaxae
from jaxae import cli, data, metrics, runner, train
from jaxae.config import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    override,
)
from jaxae.losses import total_loss
from jaxae.model import batch_top_k_relu, heaviside_step, hidden_mask, jump_relu, make_model

D, H = 6, 12


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def kth_largest(values: np.ndarray, n: int) -> float:
    """The n-th largest of `values` (flattened)."""
    return float(np.sort(values.ravel())[::-1][n - 1])


# ------------------------------------------------------------------------------------------------
# BatchTopK: k x B per batch in training


@pytest.mark.parametrize("k", [1, 2, 5])
def test_batch_top_k_keeps_exactly_k_times_b_of_the_batch(k: int) -> None:
    pre = normal(32, H)
    h = np.asarray(batch_top_k_relu(jnp.asarray(pre), k))
    assert np.count_nonzero(h) == k * 32
    cut = kth_largest(pre, k * 32)
    np.testing.assert_array_equal(h, np.where(pre >= cut, pre, 0.0))  # the k x B largest, as is
    assert len(set(np.count_nonzero(h, axis=1).tolist())) > 1  # a count per batch, not per row
    traced = jax.jit(batch_top_k_relu)(jnp.asarray(pre), jnp.int32(k))
    np.testing.assert_array_equal(traced, h)


def test_a_padded_batch_keeps_k_per_real_row_and_no_padding() -> None:
    pre, k, real = normal(32, H), 3, 27
    rows = np.arange(32) < real
    h = np.asarray(batch_top_k_relu(jnp.asarray(pre), k, jnp.asarray(rows)))
    assert np.count_nonzero(h) == k * real and not h[~rows].any()
    np.testing.assert_array_equal(h[rows], batch_top_k_relu(jnp.asarray(pre[rows]), k))


def test_fewer_positive_entries_than_k_times_b_keeps_every_positive_one() -> None:
    pre = -np.abs(normal(8, H))
    pre[0, :3] = [1.0, 2.0, 3.0]
    h = np.asarray(batch_top_k_relu(jnp.asarray(pre), 2))
    np.testing.assert_array_equal(h, np.maximum(pre, 0.0))


def _model(activation: str, **fields: Any):
    extra = {"k": 3} if activation == "batchtopk" else {}
    return make_model(ModelConfig(n_hidden=H, activation=activation, **{**extra, **fields}), D)


def test_the_training_loss_fires_k_per_real_row_of_its_batch() -> None:
    model, k = _model("batchtopk"), 3
    params = model.init(jax.random.key(0), jnp.zeros((1, D)))
    x, w = jnp.asarray(normal(32, D)), jnp.asarray(np.arange(32) < 20, jnp.float32)
    mask = jnp.asarray(np.arange(H) < 10, jnp.float32)  # two units masked: never kept
    _, aux = total_loss(
        params, x, model=model, cfg=LossConfig(), sparsity_weight=0.0, mask_H=mask, w_B=w, k=k
    )
    fired = np.asarray(aux["fired_H"])
    assert fired.sum() == k * 20 and not fired[10:].any()


# ------------------------------------------------------------------------------------------------
# BatchTopK: one threshold at inference


def numpy_threshold(pre: np.ndarray, k: int, batch: int) -> float:
    """Bussmann et al.'s estimate, written out: per batch (the last one partial) the smallest
    activation BatchTopK keeps, i.e. its (k x rows)-th largest; their mean."""
    smallest = [
        kth_largest(np.maximum(pre[i : i + batch], 0.0), k * len(pre[i : i + batch]))
        for i in range(0, len(pre), batch)
    ]
    return float(np.mean(smallest))


def test_the_inference_threshold_is_the_mean_smallest_kept_activation() -> None:
    model, k, batch = _model("batchtopk"), 3, 64
    params = model.init(jax.random.key(1), jnp.zeros((1, D)))
    x = jnp.asarray(normal(4000, D, seed=2))  # 62 full batches and one of 32
    theta = float(model.apply(params, x, batch, method="batch_threshold"))
    pre = np.asarray(model.apply(params, x, method="pre_activations"))
    assert theta == pytest.approx(numpy_threshold(pre, k, batch), rel=1e-6)
    # inference: every unit fires where its pre-activation exceeds theta, whatever the rows given
    _, h = model.apply(params, x, threshold=theta)
    np.testing.assert_array_equal(h, np.where(pre > theta, np.maximum(pre, 0.0), 0.0))
    _, h_few = model.apply(params, x[:5], threshold=theta)
    pre_few = np.asarray(model.apply(params, x[:5], method="pre_activations"))
    np.testing.assert_array_equal(h_few, np.where(pre_few > theta, np.maximum(pre_few, 0.0), 0.0))
    # on the data it came from, theta keeps about k units per row: it is the (1 - k/H) quantile
    # of i.i.d. rows up to one batch's sampling error (measured 3.0 at k = 3)
    l0 = np.count_nonzero(np.asarray(h)) / len(pre)
    assert l0 == pytest.approx(k, rel=0.05)
    # without a threshold, the rows given are one batch (the evaluation on the whole data set)
    _, h_all = model.apply(params, x)
    assert np.count_nonzero(np.asarray(h_all)) == k * len(pre)


# ------------------------------------------------------------------------------------------------
# JumpReLU: the straight-through estimators


def rectangle(u: np.ndarray) -> np.ndarray:
    return ((u > -0.5) & (u < 0.5)).astype(np.float32)


def test_jumprelu_adds_only_its_log_thresholds_to_the_params() -> None:
    """`jump.log_threshold` [H] at log(jump_init); methods that do not encode never look it up (a
    reader that keeps only the encoder and decoder, as `jaxae.load` does, still gets the atoms)."""
    model = _model("jumprelu", jump_init=0.01)
    params = model.init(jax.random.key(6), jnp.zeros((1, D)))
    assert set(params["params"]) == {"encoder", "decoder", "jump"}
    np.testing.assert_allclose(params["params"]["jump"]["log_threshold"], np.log(0.01), rtol=1e-6)
    np.testing.assert_allclose(model.apply(params, method="thresholds"), 0.01, rtol=1e-6)
    without = {"params": {k: v for k, v in params["params"].items() if k != "jump"}}
    np.testing.assert_array_equal(
        model.apply(without, method="decoder_weights"),
        model.apply(params, method="decoder_weights"),
    )
    batchtopk = _model("batchtopk").init(jax.random.key(6), jnp.zeros((1, D)))
    assert set(batchtopk["params"]) == {"encoder", "decoder"}  # its threshold is no parameter


def test_jump_relu_and_step_gradients_are_the_papers_formulas() -> None:
    eps = 0.1
    theta = np.full((4, 5), 0.5, np.float32)
    z = np.array([-1.0, 0.2, 0.46, 0.5, 0.54, 0.56, 0.9, 2.0, 0.0, 0.44] * 2, np.float32)
    z = z.reshape(4, 5)
    g = normal(4, 5, seed=3)
    out, vjp = jax.vjp(lambda z, t: jump_relu(z, t, eps), jnp.asarray(z), jnp.asarray(theta))
    np.testing.assert_array_equal(out, np.where(z > theta, z, 0.0))
    dz, dtheta = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(dz, np.where(z > theta, g, 0.0))
    window = rectangle((z - theta) / eps)
    assert window.sum() == 6  # the kernel sees 0.46, 0.5, 0.54 (twice each), not 0.44 or 0.56
    np.testing.assert_allclose(dtheta, -(theta / eps) * window * g, rtol=1e-6)
    out, vjp = jax.vjp(lambda z, t: heaviside_step(z, t, eps), jnp.asarray(z), jnp.asarray(theta))
    np.testing.assert_array_equal(out, (z > theta).astype(np.float32))
    dz, dtheta = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(dz, 0.0)
    np.testing.assert_allclose(dtheta, -(1.0 / eps) * window * g, rtol=1e-6)


def test_the_l0_penalty_trains_the_log_thresholds_through_the_step() -> None:
    """d/dlog(theta_j) of `weight * mean_b sum_j H(z_bj - theta_j)` is
    `-weight * theta_j / eps * mean_b K((z_bj - theta_j) / eps)`; the penalty leaves every other
    gradient as the reconstruction's (the step passes nothing to z)."""
    eps, weight = 0.5, 0.1
    model = _model("jumprelu", jump_bandwidth=eps, jump_init=0.3)
    params = model.init(jax.random.key(4), jnp.zeros((1, D)))
    x = jnp.asarray(normal(64, D, seed=5))

    def grads(w: float) -> Any:
        def loss(p: Any) -> jax.Array:
            cfg = LossConfig(sparsity="l0", weight=w)
            return total_loss(p, x, model=model, cfg=cfg, sparsity_weight=w)[0]

        return jax.grad(loss)(params)["params"]

    with_l0, plain = grads(weight), grads(0.0)
    pre = np.asarray(model.apply(params, x, method="pre_activations"))
    theta = np.asarray(model.apply(params, method="thresholds"))
    np.testing.assert_allclose(theta, 0.3, rtol=1e-6)
    window = rectangle((pre - theta) / eps).mean(axis=0)
    assert window.min() > 0  # every unit has samples in the kernel
    expected = -weight * theta / eps * window
    got = with_l0["jump"]["log_threshold"] - plain["jump"]["log_threshold"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    for part in ("encoder", "decoder"):
        chex.assert_trees_all_close(with_l0[part], plain[part])


# ------------------------------------------------------------------------------------------------
# Both in the vmapped loop


def _tiny(activation: str) -> Config:
    sparse = {"loss": LossConfig(sparsity="l0", weight=0.01)} if activation == "jumprelu" else {}
    return Config(
        data=DataConfig(
            kind="sparse",
            n_samples=250,  # 8 batches of 32, the last one partial (26 real rows)
            n_features=D,
            n_atoms=H,
            firing="bernoulli",
            firing_p=0.2,
            magnitude="one",
        ),
        model=ModelConfig(
            n_hidden=H,
            activation=activation,
            k=3 if activation == "batchtopk" else None,
            unit_norm_decoder=True,
            tied_init=True,
            pre_bias=True,
            jump_bandwidth=0.05 if activation == "jumprelu" else 0.001,
            jump_init=0.1 if activation == "jumprelu" else 0.001,
        ),
        optim=OptimConfig(learning_rate=3e-3),
        train=TrainConfig(epochs=4, batch_size=32, chunk_epochs=4),
        **sparse,
    )


# two arms per seed: k 2 and 3, or L0 weights 0.01 and 0.1
ARMS = {"batchtopk": ("k", (2, 3)), "jumprelu": ("sparsity_weight", (0.01, 0.1))}


def assert_seed_in_batch_is_seed_alone(
    cfg: Config, hyper_A: train.Hyper, n: int = 4, i: int = 2, seed: int = 3
) -> runner.TrainResult:
    """Train `n` seeds with arms `hyper_A` in one program, then seed `i` alone: the same parameters
    and loss history (to float rounding). Returns the batch's result."""

    def hyper(n: int) -> train.Hyper:
        return jax.tree.map(lambda v: jnp.broadcast_to(v, (n, *v.shape)), hyper_A)

    batch = runner.train_seeds(cfg, n, seed=seed, hyper=hyper(n))
    assert not batch.diverged.any()
    alone = runner.train_seeds(cfg, 1, keys=train.seed_keys(seed, n)[i : i + 1], hyper=hyper(1))
    chex.assert_trees_all_close(
        jax.tree.map(lambda v: v[i : i + 1], batch.state.params),
        alone.state.params,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(batch.history_SxAxE[i], alone.history_SxAxE[0], rtol=1e-5)
    return batch


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_seed_in_a_batch_of_seeds_and_arms_equals_seed_alone(activation: str) -> None:
    cfg = _tiny(activation)
    field, values = ARMS[activation]
    hyper_A = train.stack_arms([train.Hyper.from_config(cfg, **{field: v}) for v in values])
    batch = assert_seed_in_batch_is_seed_alone(cfg, hyper_A)
    # the arms trained apart (their knob changed the run) and JumpReLU's thresholds moved
    params = batch.state.params["params"]
    assert not np.allclose(params["encoder"]["kernel"][:, 0], params["encoder"]["kernel"][:, 1])
    if activation == "jumprelu":
        assert not np.allclose(params["jump"]["log_threshold"], np.log(0.1))


# Oracle start: 8 atoms in 12 dimensions, each firing with probability 1/4 at magnitude one (2 atoms
# per sample on average, from 0 to 8), encoder and decoder start at the true atoms
# (`model.init="atoms"`, biases at zero; JumpReLU's thresholds at 0.5, between a true activation, 1,
# and the interference of another atom, of standard deviation about 1/sqrt(12) = 0.29). With no more
# atoms than dimensions the atoms are an exact optimum (an encoder that inverts them codes every
# sample exactly), so the run should stay there while the tied encoder unlearns its interference.
# Measured after 40 epochs (2,560 steps) on seeds 0-3 (the test runs 0 and 1): GT-MCC 0.9958-0.9963
# for BatchTopK (k=2) and 0.9946-0.9947 for JumpReLU, every atom matched at cosine >= 0.99 and >=
# 0.983; top-k with k=2, whose fixed count per row cannot follow a count that varies, drifts off to
# 0.964 in the same run. The bounds sit between top-k's drift and the measured figures; chance is
# about 0.4.
ORACLE_MIN_GT_MCC = 0.98
ORACLE_MIN_ATOM_COS = 0.95


def _oracle_config(activation: str) -> Config:
    model = {"batchtopk": {"k": 2}, "jumprelu": {"jump_init": 0.5}}[activation]
    loss = LossConfig(sparsity="l0", weight=0.003) if activation == "jumprelu" else LossConfig()
    return Config(
        data=DataConfig(
            kind="sparse",
            n_samples=2048,
            n_features=12,
            n_atoms=8,
            firing="bernoulli",
            firing_p=0.25,
            magnitude="one",
        ),
        model=ModelConfig(
            n_hidden=8,
            activation=activation,
            init="atoms",
            unit_norm_decoder=True,
            pre_bias=True,
            **model,
        ),
        loss=loss,
        optim=OptimConfig(learning_rate=1e-3),
        train=TrainConfig(epochs=40, batch_size=32, chunk_epochs=40),
    )


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_an_oracle_start_stays_at_the_true_atoms(activation: str) -> None:
    cfg, n = _oracle_config(activation), 2
    atoms = data.trained_atoms(cfg)
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (n, 1)), train.Hyper.from_config(cfg))
    state = runner.programs(cfg).init(train.seed_keys(0, n), hyper)  # what train_seeds starts at
    start = metrics.ground_truth_mcc(
        np.asarray(state.params["params"]["decoder"]["kernel"][:, 0]), atoms
    )
    np.testing.assert_allclose(start["gt_mcc"], 1.0, rtol=1e-6)
    res = runner.train_seeds(cfg, n, hyper=hyper)
    decoder = np.asarray(res.state.params["params"]["decoder"]["kernel"][:, 0])
    gt = metrics.ground_truth_mcc(decoder, np.asarray(atoms))
    assert np.all(gt["gt_mcc"] >= ORACLE_MIN_GT_MCC), gt["gt_mcc"]
    assert gt["atom_cos_SxM"].min() >= ORACLE_MIN_ATOM_COS, gt["atom_cos_SxM"].min()


def _atoms_start(per_seed: bool) -> Config:
    return Config(
        data=DataConfig(kind="sparse", n_samples=64, n_features=D, n_atoms=H, per_seed=per_seed),
        model=ModelConfig(n_hidden=H, activation="topk", k=3, init="atoms", unit_norm_decoder=True),
        train=TrainConfig(epochs=1, batch_size=32),
    )


def _start_params(cfg: Config, keys: jax.Array, hyper_A: train.Hyper) -> Any:
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (keys.shape[0], *v.shape)), hyper_A)
    return runner.programs(cfg).init(keys, hyper).params["params"]


@pytest.mark.parametrize("per_seed", [False, True])
def test_an_atoms_start_puts_every_seed_and_arm_at_its_own_atoms(per_seed: bool) -> None:
    """`model.init="atoms"`: every seed (and arm) starts with its decoder rows at the true atoms of
    the data it trains on (its own with `data.per_seed`), the encoder at their transpose, biases
    zero; so the untrained GT-MCC is 1. Seed i of a batch starts as seed i alone (`train_seeds`
    starts from this program; what follows is the training every start shares)."""
    cfg, n, i = _atoms_start(per_seed), 3, 1
    keys = train.seed_keys(5, n)
    hyper_A = train.stack_arms([train.Hyper.from_config(cfg, k=k) for k in (2, 3)])
    params = _start_params(cfg, keys, hyper_A)
    atoms_SxMxD = np.broadcast_to(data.trained_atoms(cfg, keys), (n, H, D))
    decoder_SxAxHxD = params["decoder"]["kernel"]
    for a in range(2):
        chex.assert_trees_all_close(decoder_SxAxHxD[:, a], atoms_SxMxD, atol=1e-6)
        chex.assert_trees_all_close(
            params["encoder"]["kernel"][:, a], np.swapaxes(atoms_SxMxD, 1, 2), atol=1e-6
        )
        gt = metrics.ground_truth_mcc(np.asarray(decoder_SxAxHxD[:, a]), atoms_SxMxD)
        np.testing.assert_allclose(gt["gt_mcc"], 1.0, rtol=1e-6)
    for layer in ("encoder", "decoder"):
        np.testing.assert_array_equal(params[layer]["bias"], 0.0)
    assert per_seed != np.allclose(atoms_SxMxD[0], atoms_SxMxD[1])  # own atoms, or shared ones
    alone = _start_params(cfg, keys[i : i + 1], hyper_A)
    chex.assert_trees_all_equal(jax.tree.map(lambda v: v[i : i + 1], params), alone)


def test_an_atoms_start_on_an_array_is_its_atoms_file(tmp_path: Path) -> None:
    """A user's atoms (rows of any length) as the decoder kernel; with `unit_norm_decoder` the
    encoder starts at the unit rows in use, transposed."""
    atoms = normal(H, D, seed=8) * np.arange(1.0, H + 1, dtype=np.float32)[:, None]
    codes = np.abs(normal(300, H, seed=9)) * (normal(300, H, seed=10) > 1.0)
    np.save(tmp_path / "x.npy", codes @ atoms)
    np.save(tmp_path / "atoms.npy", atoms)
    sets = [f"data.path={tmp_path / 'x.npy'}", f"data.atoms={tmp_path / 'atoms.npy'}"]
    model = ["model.init=atoms", f"model.n_hidden={H}", "model.unit_norm_decoder=true"]
    cfg = override(Config(train=TrainConfig(batch_size=32)), ["data.kind=array", *sets, *model])
    hyper_A = train.stack_arms([train.Hyper.from_config(cfg)])
    params = _start_params(cfg, train.seed_keys(0, 2), hyper_A)
    chex.assert_trees_all_close(params["decoder"]["kernel"][:, 0], np.stack([atoms, atoms]))
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    chex.assert_trees_all_close(
        params["encoder"]["kernel"][:, 0], np.stack([unit.T, unit.T]), atol=1e-6
    )


# ------------------------------------------------------------------------------------------------
# Export: both are SAELens JumpReLU SAEs

# Tiny swept `offset` runs (hidden-size arms 1..4 inside a width-4 model, so arms mask units):
# BatchTopK with k=2, and JumpReLU with thresholds starting at 100 (offset's pre-activations are in
# the hundreds), so that they cut some activations and not others.
EXPORT_SETS = {
    "batchtopk": ["model.activation=batchtopk", "model.k=2"],
    "jumprelu": [
        "model.activation=jumprelu",
        "model.jump_init=100",
        "loss.sparsity=l0",
        "loss.weight=0.01",
    ],
}


@pytest.fixture(scope="module")
def offset_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mechanisms")
    for name, sets in EXPORT_SETS.items():
        argv = ["run", "offset", "--seeds", "2", "--epochs", "3", "--out", str(root / name)]
        assert cli.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    return {name: root / name for name in EXPORT_SETS}


def saelens_jumprelu_encode(cfg: dict[str, Any], w: dict[str, np.ndarray], x: np.ndarray):
    """SAELens's `JumpReLUSAE.encode` (sae-lens 6.54.12, sae_lens/saes/jumprelu_sae.py), with
    normalize_activations "none": `relu(hidden_pre) * (hidden_pre > threshold)`."""
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    hidden_pre = sae_in @ w["W_enc"] + w["b_enc"]
    return np.maximum(hidden_pre, 0.0) * (hidden_pre > w["threshold"])


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_export_is_saelens_jumprelu_sae(capsys, tmp_path, offset_runs, activation: str) -> None:
    run_dir, arm, seed, h = offset_runs[activation], "3", 1, 3  # arm "3": one masked unit
    out = tmp_path / "sae"
    argv = ["export", str(run_dir), "--arm", arm, "--seed", str(seed), "--format", "saelens"]
    code = cli.main([*argv, str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert stdout.startswith(f"{out}: SAELens jumprelu SAE, d_in=10, d_sae=3")
    cfg = json.loads((out / "cfg.json").read_text())
    w = safetensors.numpy.load_file(out / "sae_weights.safetensors")
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg
    shapes = {k: v.shape for k, v in w.items()}
    assert shapes == {
        "W_enc": (10, h),
        "b_enc": (h,),
        "W_dec": (h, 10),
        "b_dec": (10,),
        "threshold": (h,),
    }

    run = jaxae.load(run_dir)
    arm_cfg = run.configs[arm]
    model = make_model(arm_cfg.model, arm_cfg.data.n_features)  # the trained, masked width 4
    params = jax.tree.map(lambda v: jnp.asarray(v[seed]), run.params[arm])
    mask = hidden_mask(jnp.int32(h), arm_cfg.model.n_hidden)
    x_train = run.data(arm)
    x = np.concatenate([x_train[:256], normal(256, 10, seed=6) * 300]).astype(np.float32)
    if activation == "jumprelu":
        log_threshold = np.asarray(run.params[arm]["params"]["jump"]["log_threshold"][seed])
        np.testing.assert_allclose(w["threshold"], np.exp(log_threshold[:h]), rtol=1e-6)
        x_hat, codes = model.apply(params, jnp.asarray(x), mask)
    else:
        pre = np.asarray(model.apply(params, jnp.asarray(x_train), mask, method="pre_activations"))
        theta = numpy_threshold(pre, 2, arm_cfg.train.batch_size)
        assert cfg["metadata"]["jaxae"]["batchtopk"]["threshold"] == pytest.approx(theta, rel=1e-5)
        np.testing.assert_allclose(w["threshold"], theta, rtol=1e-5)
        x_hat, codes = model.apply(params, jnp.asarray(x), mask, None, jnp.float32(theta))
    codes = np.asarray(codes)
    assert not codes[:, h:].any()  # the masked unit, dropped from the export
    acts = saelens_jumprelu_encode(cfg, w, x)
    assert 0 < np.count_nonzero(acts) < acts.size  # the threshold cuts some activations
    np.testing.assert_array_equal(acts != 0, codes[:, :h] != 0)  # the same units fire
    # float32 in another summation order than XLA's: rounding relative to the largest terms
    tol = {"rtol": 1e-5, "atol": 1e-6 * float(np.abs(x).max())}
    np.testing.assert_allclose(acts, codes[:, :h], **tol)
    np.testing.assert_allclose(acts @ w["W_dec"] + w["b_dec"], x_hat, **tol)
