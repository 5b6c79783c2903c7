"""Using what was trained: `jaxae.load` gives back every seed's autoencoder as the run measured it,
`jaxae export` writes SAELens's on-disk SAE (checked against SAELens's formulas, written out here
in NumPy) or refuses in one line, and `jaxae.use_every_core` gives scripts the CLI's devices."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import chex
import jax
import numpy as np
import pytest
import safetensors.numpy

import jaxae
from jaxae import cli, export, metrics, results, schema
from jaxae import model as model_lib
from jaxae.config import Config

# Tiny `sparse` (every mechanism, 6 atoms in 3 dimensions; the revived top-k arms without their
# resampling, so they share the top-k program: four programs to compile, not five) and a tiny swept
# `offset` made top-k (hidden-size arms 1..4 inside a width-4 model, so arms mask units; arm "1"
# has k=2 above its one unit).
SPARSE_SETS = [
    "data.n_samples=128",
    "data.n_atoms=6",
    "data.n_features=3",
    "model.n_hidden=6",
    "loss.resample_dead=false",
    "loss.resample_rare=0",
    "loss.resample_split=0",
    "loss.dead_steps=100",
]
OFFSET_SETS = ["model.activation=topk", "model.k=2"]
# Tiny `noise` (Gaussian data in 10 dimensions; hidden-size arms "1".."10" inside a width-10 model,
# so every arm but "10" masks units) made BatchTopK or JumpReLU. 512 samples in batches of 100: a
# partial last batch of 12 rows. BatchTopK k=3: arms "1" and "2" have k above their units. JumpReLU
# starts every threshold at 0.3, within the pre-activations (order 1), with a kernel wide enough
# (0.1) for the L0 penalty to move each unit's threshold on its own in two epochs.
NOISE_SETS = ["data.n_samples=512", "optim.learning_rate=0.01"]
BATCHTOPK_SETS = [*NOISE_SETS, "model.activation=batchtopk", "model.k=3"]
JUMPRELU_SETS = [
    *NOISE_SETS,
    "model.activation=jumprelu",
    "loss.sparsity=l0",
    "loss.weight=0.01",
    "model.jump_init=0.3",
    "model.jump_bandwidth=0.1",
]

# Tiny `noise` with tied weights (no encoder kernel stored), a unit-norm decoder and the pre-bias.
TIED_SETS = [
    *NOISE_SETS,
    "model.tied=true",
    "model.unit_norm_decoder=true",
    "model.pre_bias=true",
]


def _sets(assignments: list[str]) -> list[str]:
    return [a for s in assignments for a in ("--set", s)]


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("load") / "sparse"
    argv = ["run", "sparse", "--seeds", "2", "--epochs", "3", "--out", str(out)]
    assert cli.main([*argv, *_sets(SPARSE_SETS)]) == 0
    return out


@pytest.fixture(scope="module")
def offset_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("load") / "offset"
    argv = ["run", "offset", "--seeds", "2", "--epochs", "3", "--out", str(out)]
    sweep = ["--sweep", "optim.learning_rate=0.001,0.003"]
    assert cli.main([*argv, *_sets(OFFSET_SETS), *sweep]) == 0
    return out


@pytest.fixture(scope="module")
def offset_point(offset_sweep: Path) -> Path:
    """The sweep's second grid point: a complete run directory of its own."""
    return offset_sweep / "grid" / "p1"


def _noise_run(tmp_path_factory, name: str, sets: list[str]) -> Path:
    out = tmp_path_factory.mktemp("load") / name
    argv = ["run", "noise", "--seeds", "2", "--epochs", "2", "--out", str(out)]
    assert cli.main([*argv, *_sets(sets)]) == 0
    return out


@pytest.fixture(scope="module")
def batchtopk_run(tmp_path_factory) -> Path:
    return _noise_run(tmp_path_factory, "batchtopk", BATCHTOPK_SETS)


@pytest.fixture(scope="module")
def jumprelu_run(tmp_path_factory) -> Path:
    return _noise_run(tmp_path_factory, "jumprelu", JUMPRELU_SETS)


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory) -> Path:
    return _noise_run(tmp_path_factory, "tied", TIED_SETS)


def _code_figures(run: Any, arm: str, seed: int, x: np.ndarray) -> tuple[float, float]:
    x_hat, h = run.autoencoder(arm, seed)(x)
    sigmoid = run.configs[arm].model.activation == "sigmoid"
    active = np.asarray(h) > 0.5 if sigmoid else np.asarray(h) != 0
    return float(metrics.fvu(x_hat, x)), float(np.mean(np.sum(active, axis=-1)))


# (not BatchTopK: its recorded figures are its training rule's over the whole data set; see
# test_batchtopk_encodes_with_its_inference_threshold)
@pytest.mark.parametrize("which", ["sparse_run", "offset_point", "jumprelu_run", "tied_run"])
def test_every_seed_reproduces_its_recorded_fvu_and_l0(request, which):
    run = jaxae.load(request.getfixturevalue(which))
    x = run.data()
    for arm in run.arms:
        recorded = run.metrics.arms[arm]
        for seed in range(run.n_seeds):
            fvu, l0 = _code_figures(run, arm, seed, x)
            # the recorded figures come from the full-width masked model: float rounding only
            assert fvu == pytest.approx(recorded.fvu[seed], rel=1e-5, abs=1e-7), (arm, seed)
            assert l0 == pytest.approx(recorded.l0[seed], abs=1e-6), (arm, seed)


def test_the_run_knows_its_experiment_arms_and_configs(sparse_run: Path, offset_point: Path):
    run = jaxae.load(sparse_run)
    m = json.loads((sparse_run / results.METRICS).read_text())
    assert run.experiment == "sparse" and run.arms == tuple(m["arms"]) and run.n_seeds == 2
    assert run.config == Config.from_dict(m["config"]) == run.configs["relu"]
    assert run.configs["topk k=3"].model.activation == "topk"
    assert run.configs["kl w=0.03"].loss.sparsity == "kl"
    assert (run.k("topk k=3"), run.k("topk k=4"), run.k("relu")) == (3, 4, None)
    assert run.metrics.arms["relu"].gt_mcc == m["arms"]["relu"]["gt_mcc"]  # metrics.json, typed
    assert results._jsonable(schema.write(run.metrics)) == results._jsonable(m)
    assert np.shape(run.params["l1 w=0.01"]["params"]["decoder"]["kernel"]) == (2, 6, 3)
    np.testing.assert_array_equal(run.ground_truth, np.load(sparse_run / results.GROUND_TRUTH))
    ae = run.autoencoder("topk k=3", 1)
    assert (ae.n_features, ae.n_hidden, ae.k, ae.seed) == (3, 6, 3, 1)
    np.testing.assert_allclose(np.linalg.norm(ae.atoms, axis=-1), 1.0, rtol=1e-6)  # unit-norm

    point = jaxae.load(offset_point)
    assert point.config.optim.learning_rate == 0.003 and point.config.model.activation == "topk"
    assert [point.n_hidden(a) for a in point.arms] == [1, 2, 3, 4]
    # arm "1" trained k=2 on one unit in use: every unit it has is kept
    assert point.autoencoder("1").k == 1 and point.autoencoder("3").k == 2
    assert point.autoencoder("2").atoms.shape == (2, 10)  # the masked units are dropped


@pytest.mark.parametrize(
    ("which", "arm"),
    [
        ("sparse_run", "topk k=3"),
        ("offset_point", "3"),
        ("batchtopk_run", "7"),  # three masked units
        ("jumprelu_run", "7"),
    ],
)
def test_autoencoders_are_every_seed_at_once(request, which, arm):
    run = jaxae.load(request.getfixturevalue(which))
    x = run.data()[:64]
    every = run.autoencoders(arm)
    assert every.n_seeds == run.n_seeds and every.seed is None
    seeds = [run.autoencoder(arm, i) for i in range(run.n_seeds)]
    stacked = jax.tree.map(lambda *v: np.stack(v), *[ae(x) for ae in seeds])
    chex.assert_trees_all_close(every(x), stacked, rtol=1e-6, atol=1e-6)
    h_SxNxH = every.encode(x)
    chex.assert_trees_all_close(h_SxNxH, stacked[1], rtol=1e-6, atol=1e-6)
    per_seed = np.stack([ae.decode(h) for ae, h in zip(seeds, h_SxNxH, strict=True)])
    chex.assert_trees_all_close(every.decode(h_SxNxH), per_seed, rtol=1e-6, atol=1e-6)
    shared = np.stack([ae.decode(h_SxNxH[0]) for ae in seeds])  # one code for every seed
    chex.assert_trees_all_close(every.decode(h_SxNxH[0]), shared, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(every.atoms, np.stack([ae.atoms for ae in seeds]))


def test_bad_requests_are_clear_value_errors(sparse_run: Path, offset_sweep: Path, tmp_path):
    cases = [
        (tmp_path / "nope", r"run_dir='.*nope' is invalid: allowed is a run directory"),
        (
            offset_sweep,
            r"allowed is one grid point's run directory, e\.g\. .*grid/p0 \(a sweep of 2 grid",
        ),
        (tmp_path, r"allowed is a run directory with metrics\.json"),
    ]
    stopped = tmp_path / "stopped"
    (tmp_path / "stopped.partial").mkdir()
    cases.append((stopped, r"stopped and is saved in .*stopped\.partial; finish it with `jaxae"))
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            jaxae.load(path)
    run = jaxae.load(sparse_run)
    with pytest.raises(ValueError, match=r"arm='nope' is invalid: allowed is one of 'relu', "):
        run.autoencoder("nope", 0)
    for seed in (2, -1, True, 1.5):
        with pytest.raises(
            ValueError, match=r"seed=.* is invalid: allowed is an integer in 0\.\.1"
        ):
            run.autoencoder("relu", seed)
    ae = run.autoencoder("relu", 0)
    with pytest.raises(ValueError, match=r"x\.shape=\(4, 5\) is invalid: allowed is \[N, 3\]"):
        ae.encode(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"h\.shape=\(4,\) is invalid: allowed is \[N, 6\] or \[2"):
        run.autoencoders("relu").decode(np.zeros(4))


# ------------------------------------------------------------------------------------------------
# BatchTopK and JumpReLU arms


def _full_model(run: Any, arm: str, seed: int) -> tuple[Any, Any, np.ndarray]:
    """The arm's full-width model as it trained (`make_model`), seed `seed`'s params from the
    checkpoint and the arm's mask: what `load` must agree with, independent of its slicing."""
    cfg = run.configs[arm]
    params = jax.tree.map(lambda v: np.asarray(v)[seed], run.params[arm])
    mask_H = (np.arange(cfg.model.n_hidden) < run.n_hidden(arm)).astype(np.float32)
    return model_lib.make_model(cfg.model, cfg.data.n_features), params, mask_H


@pytest.mark.parametrize("arm", ["10", "7", "2"])  # no masked unit; three; eight, k above its two
def test_batchtopk_encodes_with_its_inference_threshold(batchtopk_run: Path, arm: str):
    run = jaxae.load(batchtopk_run)
    cfg = run.configs[arm]
    assert cfg.model.activation == "batchtopk" and run.k(arm) == 3
    assert run.autoencoder(arm).k == min(3, run.n_hidden(arm))
    x = run.data(arm)
    every = run.autoencoders(arm)
    assert np.shape(every.threshold) == (run.n_seeds,)
    for seed in range(run.n_seeds):
        ae = run.autoencoder(arm, seed)
        model, params, mask_H = _full_model(run, arm, seed)
        # theta from the trained (masked, full-width) model on the run's data, its k and batch size
        theta = model.apply(
            params, x, cfg.train.batch_size, mask_H, run.k(arm), method="batch_threshold"
        )
        # (float32: the masked full-width, the narrower and the vmapped matmuls round apart, by
        # about 1e-6)
        np.testing.assert_allclose(ae.threshold, theta, rtol=1e-5)
        assert float(ae.threshold) > 0
        np.testing.assert_allclose(every.threshold[seed], ae.threshold, rtol=1e-5)
        # the model's own encode with that threshold: the units in use, the masked ones zero
        h = model.apply(params, x, mask_H, None, ae.threshold, method="encode")
        h_NxH = np.asarray(ae.encode(x))
        np.testing.assert_allclose(h_NxH, h[:, : ae.n_hidden], rtol=1e-6, atol=1e-6)
        assert not np.any(h[:, ae.n_hidden :])
        x_hat, codes = ae(x)
        np.testing.assert_allclose(codes, h_NxH, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(x_hat, ae.decode(h_NxH), rtol=1e-6, atol=1e-6)
        # the inference rule: a row's code is its own, whatever rows it is encoded with (training's
        # rule, the k x B largest of the rows given, is not)
        np.testing.assert_allclose(ae.encode(x[:1]), h_NxH[:1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ae.encode(x[7:19]), h_NxH[7:19], rtol=1e-6, atol=1e-6)


def test_batchtopk_fires_about_k_units_on_its_training_data(batchtopk_run: Path):
    """Where the training rule keeps exactly k units per row on average (the arm had at least
    k x N positive pre-activations on the data: its recorded l0, over the whole data set, is k),
    the inference threshold fires about k too: within 10% of k.

    Why 10%: each batch's own threshold keeps exactly k x B of its entries; theta is the mean of 6
    of them (5 batches of 100 rows, one of 12), each the (kB)-th largest of B x H entries, whose
    count at a fixed threshold varies by about sqrt(kB (1 - k/H)): 5% of kB for the full batches,
    14% for the 12-row one (which weighs 1/6 in the mean), so theta fires about 3% of k off (one
    standard deviation); 10% is three of them. Measured: at most 3.1% off (3.09 units of 3)."""
    run = jaxae.load(batchtopk_run)
    x = run.data()
    checked = 0
    for arm in run.arms:
        k, recorded = run.k(arm), run.metrics.arms[arm]
        for seed in range(run.n_seeds):
            if recorded.l0[seed] != k:  # fewer than k x N positive pre-activations
                continue
            h_NxH = np.asarray(run.autoencoder(arm, seed).encode(x))
            l0 = float(np.mean(np.sum(h_NxH != 0, axis=-1)))
            assert l0 == pytest.approx(k, rel=0.1), (arm, seed, l0)
            checked += 1
    assert checked >= 4  # measured: 7 (arms "7" to "10"; seed 1 of "7" has fewer positives)


@pytest.mark.parametrize("arm", ["10", "7", "2"])
def test_jumprelu_encodes_with_its_learned_thresholds(jumprelu_run: Path, arm: str):
    run = jaxae.load(jumprelu_run)
    cfg = run.configs[arm]
    assert cfg.model.activation == "jumprelu" and run.k(arm) is None
    x = run.data(arm).astype(np.float32)
    h = run.n_hidden(arm)
    for seed in range(run.n_seeds):
        ae = run.autoencoder(arm, seed)
        assert ae.k is None and ae.threshold is None and ae.n_hidden == h
        p = jax.tree.map(lambda v, i=seed: np.asarray(v, np.float64)[i], run.params[arm]["params"])
        theta_H = np.exp(p["jump"]["log_threshold"][:h])
        assert h == 1 or np.ptp(theta_H) > 1e-3  # each unit learned its own threshold
        pre = x @ p["encoder"]["kernel"][:, :h] + p["encoder"]["bias"][:h]
        expected = np.maximum(pre, 0.0) * (pre > theta_H)
        # not vacuous: some positive pre-activations are below their unit's threshold
        assert np.any((pre > 0) & (pre <= theta_H))
        np.testing.assert_allclose(ae.encode(x), expected, rtol=1e-5, atol=1e-5)
        model, params, mask_H = _full_model(run, arm, seed)
        np.testing.assert_allclose(
            ae.encode(x), model.apply(params, x, mask_H, method="encode")[:, :h], atol=1e-6
        )


# ------------------------------------------------------------------------------------------------
# SAELens's formulas, from its source (sae-lens 6.54.12, sae_lens/saes/sae.py `process_sae_in`,
# sae_lens/saes/standard_sae.py `StandardSAE.encode`/`decode`, sae_lens/saes/topk_sae.py `TopK`,
# `TopKSAE.encode`/`decode`), with normalize_activations "none" and no rescaling by decoder norm.


def saelens_encode(cfg: dict[str, Any], w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    hidden_pre = sae_in @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        return np.maximum(hidden_pre, 0.0)
    assert cfg["architecture"] == "topk" and cfg["rescale_acts_by_decoder_norm"] is False
    top = np.argsort(-hidden_pre, axis=-1)[..., : cfg["k"]]  # torch.topk(x, k): the k largest
    acts = np.zeros_like(hidden_pre)
    np.put_along_axis(acts, top, np.maximum(np.take_along_axis(hidden_pre, top, -1), 0.0), -1)
    return acts


def saelens_decode(w: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
    return acts @ w["W_dec"] + w["b_dec"]


def _export(capsys, run_dir: Path, out: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["export", str(run_dir), "--format", "saelens", *args, str(out)])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


# float32 with another summation order than XLA's: agreement to about 1e-6 of values of order 1-10
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize(
    ("which", "arm", "seed", "architecture", "pre_bias"),
    [
        ("sparse_run", "relu", 1, "standard", False),
        ("sparse_run", "l1 w=0.01", 0, "standard", True),  # ReLU, unit-norm decoder
        ("sparse_run", "topk k=3", 1, "topk", True),  # unit-norm decoder
        ("offset_point", "3", 0, "topk", False),  # one masked unit
        ("offset_point", "1", 1, "topk", False),  # three masked units, k above its one unit
    ],
)
def test_export_is_what_saelens_computes(
    request, capsys, tmp_path, which, arm, seed, architecture, pre_bias
):
    run_dir = request.getfixturevalue(which)
    out = tmp_path / "sae"
    code, stdout, stderr = _export(capsys, run_dir, out, "--arm", arm, "--seed", str(seed))
    assert code == 0, stderr
    assert stdout.startswith(f"{out}: SAELens {architecture} SAE")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # no staging left behind
    cfg = json.loads((out / "cfg.json").read_text())
    w = safetensors.numpy.load_file(out / "sae_weights.safetensors")

    run = jaxae.load(run_dir)
    ae = run.autoencoder(arm, seed)
    d, h = ae.n_features, ae.n_hidden
    assert cfg["architecture"] == architecture and cfg["apply_b_dec_to_input"] is pre_bias
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["normalize_activations"]) == (
        d,
        h,
        "float32",
        "none",
    )
    assert cfg.get("k") == ae.k
    meta = cfg["metadata"]
    assert meta["sae_lens_version"] == export.SAELENS_VERSION
    assert (meta["jaxae"]["arm"], meta["jaxae"]["seed"]) == (arm, seed)
    assert meta["jaxae"]["dropped_units"] == run.configs[arm].model.n_hidden - h
    shapes = {k: v.shape for k, v in w.items()}
    assert shapes == {"W_enc": (d, h), "b_enc": (h,), "W_dec": (h, d), "b_dec": (d,)}
    assert {v.dtype for v in w.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(w["W_dec"], ae.atoms)  # the rows in use, norms folded in

    x = np.concatenate([run.data()[:256], np.random.default_rng(0).normal(size=(256, d)) * 3])
    x_hat, codes = ae(x)
    acts = saelens_encode(cfg, w, x.astype(np.float32))
    np.testing.assert_allclose(acts, codes, **TOL)
    np.testing.assert_array_equal(acts != 0, np.asarray(codes) != 0)  # the same units fire
    np.testing.assert_allclose(saelens_decode(w, acts), x_hat, **TOL)


@pytest.mark.parametrize(("arm", "seed"), [("10", 0), ("3", 1)])  # "3": seven masked units
def test_a_tied_export_encodes_with_the_decoder_transposed(
    tied_run: Path, capsys, tmp_path, arm, seed
):
    """A tied arm stores no encoder kernel; its SAE's `W_enc` is `W_dec` (the rows in use)
    transposed, and SAELens's formulas give the loaded autoencoder's codes."""
    out = tmp_path / "sae"
    code, _, stderr = _export(capsys, tied_run, out, "--arm", arm, "--seed", str(seed))
    assert code == 0, stderr
    cfg = json.loads((out / "cfg.json").read_text())
    w = safetensors.numpy.load_file(out / "sae_weights.safetensors")
    run = jaxae.load(tied_run)
    assert set(run.params[arm]["params"]["encoder"]) == {"bias"}
    ae = run.autoencoder(arm, seed)
    assert cfg["apply_b_dec_to_input"] is True and cfg["d_sae"] == ae.n_hidden == int(arm)
    assert "W_dec transposed" in cfg["metadata"]["jaxae"]["encoder"]
    np.testing.assert_array_equal(w["W_dec"], ae.atoms)
    np.testing.assert_allclose(np.linalg.norm(w["W_dec"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(w["W_enc"], w["W_dec"].T)
    np.testing.assert_array_equal(
        w["b_enc"], run.params[arm]["params"]["encoder"]["bias"][seed, : int(arm)]
    )
    x = run.data()[:256]
    x_hat, codes = ae(x)
    acts = saelens_encode(cfg, w, x.astype(np.float32))
    np.testing.assert_allclose(acts, codes, **TOL)
    np.testing.assert_allclose(saelens_decode(w, acts), x_hat, **TOL)
    # the report drew its encoder weights (the decoder rows in use, transposed) too
    assert (tied_run / "figures" / "weights.png").is_file()


def test_exports_of_every_other_kind_are_refused_in_one_line(
    capsys, tmp_path, sparse_run: Path, offset_sweep: Path
):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        (sparse_run, ["--arm", "kl w=0.03"], "its activation is 'sigmoid' with a KL penalty"),
        (sparse_run, ["--arm", "nope"], "arm='nope' is invalid: allowed is one of 'relu', "),
        (sparse_run, ["--arm", "relu", "--seed", "2"], "seed=2 is invalid"),
        (sparse_run, ["--arm", "relu", "--seed", "-1"], "seed=-1 is invalid"),
        (sparse_run, [], "--arm is missing: the run has 9 arms"),
        (sparse_run, ["--arm", "relu", "--format", "torch"], "--format='torch' is invalid"),
        (tmp_path / "nope", ["--arm", "relu"], "run_dir="),
        (offset_sweep, ["--arm", "1"], "one grid point's run directory"),
    ]
    for run_dir, args, message in cases:
        code = cli.main(["export", str(run_dir), *args, str(tmp_path / "sae")])
        stdout, stderr = capsys.readouterr()
        assert code == 2 and stdout == "", (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("jaxae: error: ")
        assert message in stderr, (args, stderr)
    code, stdout, stderr = _export(capsys, sparse_run, taken, "--arm", "relu")
    assert code == 2 and stdout == ""
    assert stderr.strip() == (
        f"jaxae: error: OUT={str(taken)!r} is invalid: it already exists; allowed is a new path "
        "(an export never overwrites)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_a_sigmoid_output_layer_is_refused(sparse_run: Path, tmp_path, monkeypatch):
    """No preset trains a ReLU or top-k arm with a sigmoid output; the check stands alone."""
    run = jaxae.load(sparse_run)
    cfg = run.configs["relu"]
    sigmoid = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, output="sigmoid"))
    monkeypatch.setitem(run.configs, "relu", sigmoid)
    with pytest.raises(ValueError, match=r"its output layer is a sigmoid .*allowed is an arm with"):
        export.export_saelens(run, "relu", 0, tmp_path / "sae")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Every core for library users


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**environ, "JAX_PLATFORMS": "cpu", **env},
        check=True,
    )
    return proc.stdout.strip()


def test_use_every_core_gives_a_script_the_clis_devices():
    cores = len(os.sched_getaffinity(0))
    plain = "import jaxae, jax, sys; print(jax.device_count())"
    assert _python(plain) == "1"  # XLA's default: one CPU device, whatever the cores
    asked = "import jaxae; jaxae.use_every_core(); import jax; print(jax.device_count())"
    assert _python(asked) == str(cores)
    # an explicit setting wins; importing jaxae starts no JAX
    assert _python(asked, XLA_FLAGS="--xla_force_host_platform_device_count=3") == "3"
    assert _python("import sys, jaxae; print('jax' in sys.modules)") == "False"
    assert cli.use_every_core is jaxae.use_every_core  # the one the CLI calls


def test_use_every_core_warns_once_jax_has_started(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # restored after the test, whatever the call sets
    jax.numpy.zeros(1).block_until_ready()
    with pytest.warns(RuntimeWarning, match=r"after JAX started"):
        jaxae.use_every_core()
    assert "xla_force_host_platform_device_count" in os.environ["XLA_FLAGS"]
    assert "--xla_cpu_multi_thread_eigen=false" in os.environ["XLA_FLAGS"]
