"""The images family (`jaxae.experiments.images`, `jaxae.report.images`): arms built from a base,
`--set` reaching the arms that use a field, bad settings refused before compiling, held-out
figures that apply the trained model, and tiny end-to-end runs of each experiment through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from jaxae import cli, data, experiments, metrics, report, results, runner
from jaxae.experiments import images
from jaxae.model import make_model
from tests.test_schema import assert_round_trip

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _arms(exp: experiments.Experiment) -> dict[str, experiments.Arm]:
    return {arm.label: arm for arm in exp.arms}


def test_the_family_is_registered_with_its_pages():
    assert images in experiments.FAMILIES
    for name in ("digits", "patches"):
        exp = experiments.get(name)
        assert exp.family == "images" and exp in images.EXPERIMENTS
        assert report.PAGES[name] is report.images.PAGES[name]
        assert exp.default_seeds is not None


def test_digits_arms_and_programs():
    arms = _arms(experiments.get("digits"))
    assert list(arms) == ["plain", "l1", "topk", "topk_revived", "omp", "kl"]
    assert {a.config.data.kind for a in arms.values()} == {"digits"}
    assert {(a.config.data.n_samples, a.config.data.n_features) for a in arms.values()} == {
        (1438, 64)
    }
    assert all(a.config.model.n_hidden == images.DIGITS_WIDTH > 64 for a in arms.values())
    # plain is the L1 arm's model with no penalty: one program for both
    assert arms["plain"].config == arms["l1"].config
    assert arms["plain"].value("sparsity_weight") == 0.0
    assert arms["l1"].config.model.unit_norm_decoder and arms["l1"].config.loss.sparsity == "l1"
    assert arms["topk"].config.model.k == images.DIGITS_K
    assert arms["kl"].config.model.activation == "sigmoid"
    assert arms["kl"].config.loss.sparsity == "kl"
    revived = arms["topk_revived"].config
    assert (revived.model.activation, revived.model.k) == ("topk", images.DIGITS_K)
    assert revived.model.unit_norm_decoder and revived.model.pre_bias and revived.model.tied
    assert revived.loss.resample_dead and revived.loss.resample_rare > 0
    assert revived.loss.aux_k == 0 and revived.optim.schedule == "cosine"
    pursuit = arms["omp"].config
    assert (pursuit.model.activation, pursuit.model.k) == ("omp", images.PURSUIT_TRAIN_K)
    assert pursuit.model.infer_k == images.DIGITS_K and pursuit.model.init == "data"
    assert pursuit.model.tied and pursuit.model.unit_norm_decoder and pursuit.model.pre_bias
    assert not pursuit.loss.resample_dead and pursuit.loss.resample_rare == 0
    assert len(experiments.groups_of(experiments.get("digits"))) == 5


def test_patches_arms_follow_ngs_exercise():
    arms = _arms(experiments.get("patches"))
    ng = arms["ng"].config
    assert (ng.data.n_features, ng.model.n_hidden, ng.model.activation) == (64, 25, "sigmoid")
    assert (ng.loss.sparsity, ng.loss.rho) == ("kl", 0.01)
    assert ng.data.n_samples == 10_000
    # Ng's cost times 2/D: beta 3 and lambda 1e-4 in jaxae's units
    assert ng.loss.weight == pytest.approx(2 * 3 / 64)
    assert ng.optim.weight_decay == pytest.approx(2 * 1e-4 / 64)
    # as he set it: his initialisation, a sigmoid output layer, decay on W only, full-batch L-BFGS
    # for 400 iterations, on photographs whitened whole
    assert (ng.model.init, ng.model.output) == ("ng", "sigmoid")
    assert (ng.optim.name, ng.optim.decay_biases) == ("lbfgs", False)
    assert (ng.train.epochs, ng.train.batch_size) == (400, ng.data.n_samples)
    assert ng.data.whiten == "olshausen"
    # each variant changes one thing
    adam, zca = arms["ng_adam"].config, arms["ng_zca"].config
    assert adam.optim.name == "adam" and adam.train.batch_size < ng.data.n_samples
    assert dataclasses.replace(adam, optim=ng.optim, train=ng.train) == ng
    assert zca.data.whiten == "zca" and dataclasses.replace(zca, data=ng.data) == ng
    topk = arms["topk"].config
    assert topk.model.activation == "topk" and topk.model.n_hidden > 64
    # the revived top-k: one program sweeping k up to the top-k arm's
    revived = {label: a for label, a in arms.items() if label.startswith("topk_revived")}
    assert list(revived) == [f"topk_revived k={k}" for k in images.PATCHES_REVIVED_KS]
    assert len({a.config for a in revived.values()}) == 1
    cfg = next(iter(revived.values())).config
    assert cfg.loss.resample_dead and cfg.model.n_hidden == topk.model.n_hidden
    assert cfg.model.k == max(images.PATCHES_REVIVED_KS) <= topk.model.k
    assert [a.value("k") for a in revived.values()] == list(images.PATCHES_REVIVED_KS)


def test_set_reaches_the_arms_that_use_a_field():
    digits = _arms(
        experiments.with_overrides(
            experiments.get("digits"),
            ["model.k=4", "loss.aux_k=8", "loss.weight=0.01", "model.n_hidden=96", "loss.rho=0.1"],
        )
    )
    assert digits["topk"].config.model.k == 4 and digits["topk"].config.loss.aux_k == 8
    assert {digits[a].config.model.k for a in ("plain", "l1", "kl")} == {None}
    assert {a.config.model.n_hidden for a in digits.values()} == {96}
    assert digits["kl"].config.loss.weight == digits["l1"].config.loss.weight == 0.01
    assert digits["plain"].value("sparsity_weight") == 0.0
    assert digits["kl"].config.loss.rho == 0.1

    patches = _arms(
        experiments.with_overrides(
            experiments.get("patches"),
            ["model.n_hidden=40", "model.k=5", "data.patch_size=6", "data.image=camera,moon"],
        )
    )
    assert patches["topk"].config.model.n_hidden == 40 and patches["ng"].config.model.n_hidden == 25
    assert patches["topk"].config.model.k == 5 and patches["ng"].config.model.k is None
    for arm in patches.values():
        assert arm.config.data.n_features == 36 and arm.config.data.image == "camera,moon"
    assert patches["ng"].config.loss.weight == pytest.approx(2 * 3 / 36)


def test_any_array_runs_through_a_preset(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 10)))
    exp = experiments.with_overrides(
        experiments.get("digits"), ["data.kind=array", f"data.path={path}"]
    )
    for arm in exp.arms:
        assert (arm.config.data.n_samples, arm.config.data.n_features) == (240, 10)


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the test: a config error must stop the command before anything compiles."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(runner, "train_seeds", refuse)


def _bad_files(tmp_path: Path) -> dict[str, str]:
    np.save(tmp_path / "rank3.npy", np.zeros((4, 3, 2)))
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]] * 10))
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    (tmp_path / "garbage.npy").write_bytes(b"\x00garbage")
    return {name: str(tmp_path / f"{name}.npy") for name in ("rank3", "nan", "objects", "garbage")}


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("patches", ["data.image=lena"], "data.image='lena' is invalid"),
        ("patches", ["data.patch_size=400"], "data.patch_size=400 is invalid: allowed is at most"),
        ("patches", ["data.patch_size=1"], "data.patch_size=1 is invalid"),
        ("patches", ["data.per_seed=true"], "data.per_seed=True is invalid"),
        ("patches", ["data.whiten=maybe"], "data.whiten"),
        ("digits", ["data.heldout=2"], "data.heldout=2.0 is invalid"),
        ("digits", ["data.n_samples=1700"], "data.n_samples=1700 is invalid: allowed is at most"),
        ("digits", ["model.k=200"], "model.k=200 is invalid"),
        ("digits", ["data.kind=array"], "data.path='' is invalid"),
        ("digits", ["data.kind=array", "data.path=/no/such.npy"], "no such file"),
        ("digits", ["data.kind=array", "data.path={rank3}"], "its shape is (4, 3, 2)"),
        ("digits", ["data.kind=array", "data.path={nan}"], "10 of its values are not finite"),
        ("digits", ["data.kind=array", "data.path={objects}"], "allow_pickle=False"),
        ("digits", ["data.kind=array", "data.path={garbage}"], "reading it failed"),
        ("multiples", ["data.kind=digits"], "data.n_features=10 is invalid: allowed is 64"),
    ],
)
def test_bad_settings_exit_2_before_compiling(
    capsys, tmp_path, no_training, name, overrides, message
):
    files = _bad_files(tmp_path)
    argv = ["run", name, "--seeds", "2", "--out", str(tmp_path / "out")]
    for o in overrides:
        argv += ["--set", o.format(**files)]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxae: error: ")
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def fast_baselines():
    """Dictionary learning with two random states and two passes: the test checks the plumbing,
    not the fit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images, "DL_FITS", 2)
        mp.setattr(images, "DL_MAX_ITER", 2)
        yield


def _cli_run(out: Path, name: str, *argv: str) -> dict[str, Any]:
    assert cli.main(["run", name, "--out", str(out), *argv]) == 0
    return json.loads((out / results.METRICS).read_text())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, fast_baselines) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    _cli_run(out, "digits", "--seeds", "3", "--epochs", "2")
    return out


@pytest.fixture(scope="module")
def patches_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("patches") / "run"
    sets = [
        "data.n_samples=400",
        "data.image=camera,grass",
        "data.patch_size=6",
        "model.n_hidden=24",
        "model.k=3",
        "loss.rho=0.05",
        "loss.weight=0.2",
    ]
    _cli_run(
        out, "patches", "--seeds", "3", "--epochs", "2", *[a for s in sets for a in ("--set", s)]
    )
    return out


def _assert_report(run_dir: Path, figures: set[str]) -> str:
    assert {p.name for p in (run_dir / report.FIGURES).iterdir()} == figures
    for path in (run_dir / report.FIGURES).iterdir():
        assert path.read_bytes()[:8] == PNG_MAGIC
    text = (run_dir / report.REPORT).read_text()
    assert {Path(t).name for t in LINK.findall(text)} == figures
    assert text == report.report_markdown(run_dir)
    return text


def test_digits_end_to_end(digits_run: Path):
    m = json.loads((digits_run / results.METRICS).read_text())
    assert m["experiment"] == "digits" and m["n_seeds"] == 3
    assert m["versions"]["scikit-learn"] and m["versions"]["scikit-image"]
    for label, a in m["arms"].items():
        assert len(a["heldout_fvu"]) == 3 and a["heldout_samples"] == 359, label
        assert len(a["pw_mcc"]) == len(a["pw_mcc_null"]) == 3 and a["pairs"] == 3
        assert len(a["filters"]["encoder"]["orientation"]) == 3
    dl = m["analysis"]["dictionary_learning"]
    assert dl["fits"] == 2 and len(dl["pw_mcc"]) == 1 and dl["k"] == images.DIGITS_K
    assert m["analysis"]["pca"]["components"] == images.DIGITS_K
    arrays = report.base.read_arrays(digits_run)
    assert arrays["grid_rows_topk"].shape == (2, images.DIGITS_WIDTH, 64)
    assert arrays["examples_x"].shape == (images.N_EXAMPLES, 64)
    assert "arrays" not in m["analysis"]
    text = _assert_report(
        digits_run,
        {
            "loss.png",
            "fvu_l0.png",
            "reconstructions.png",
            *(
                f"filters_{n}.png"
                for n in ("plain", "l1", "topk", "topk_revived", "omp", "kl", "dictionary_learning")
            ),
        },
    )
    for label, a in m["arms"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        q = a["heldout_fvu_quantiles"]
        assert f"| {q['q50']:.3f} [{q['q10']:.3f}, {q['q90']:.3f}] |" in row
        assert f"{a['pw_mcc_mean']:.3f} ({a['pw_mcc_null_mean']:.3f})" in row
    assert f"{dl['pw_mcc_mean']:.3f} ({dl['pw_mcc_start_mean']:.3f})" in text
    random_start = m["analysis"]["dictionary_learning_random"]
    assert random_start["start"] == "random" and random_start["fits"] == 2
    assert f"{random_start['pw_mcc_mean']:.3f} ({random_start['pw_mcc_start_mean']:.3f})" in text
    data_start = m["analysis"]["dictionary_learning_data"]
    assert data_start["start"] == "data" and data_start["fits"] == 2
    assert f"{data_start['pw_mcc_mean']:.3f} ({data_start['pw_mcc_start_mean']:.3f})" in text
    # the pursuit codes held-out digits with infer_k = k non-zeros, as dictionary learning's OMP
    assert m["arms"]["omp"]["heldout_l0"] == pytest.approx([images.DIGITS_K] * 3)
    judged = m["analysis"]["against_dictionary_learning"]
    # the arms as sparse as dictionary learning's OMP codes: the top-k and pursuit arms (L0 = k)
    assert {"topk", "topk_revived", "omp"} <= set(judged["arms"]) and "plain" not in judged["arms"]
    assert judged["dl_pw_mcc_median"] == random_start["pw_mcc_median"]
    assert "**Verdict.** The arm whose seeds agree most is" in text


def test_heldout_fvu_is_the_trained_model_on_the_heldout_split(digits_run: Path):
    """Recompute seed 1's held-out FVU of the top-k arm from its checkpoint, by hand."""
    m = json.loads((digits_run / results.METRICS).read_text())
    exp = experiments.with_overrides(experiments.get("digits"), m["overrides"])
    cfg = next(a for a in exp.arms if a.label == "topk").config
    params = jax.tree.map(lambda v: v[1], results.load_checkpoint(digits_run / "params")["topk"])
    held = data.heldout(jax.random.key(cfg.data.seed), cfg.data)
    x_hat, _ = make_model(cfg.model, 64).apply(params, held)
    expected = float(metrics.fvu(x_hat, held))
    assert m["arms"]["topk"]["heldout_fvu"][1] == pytest.approx(expected, rel=1e-4)


def test_digits_verdict_follows_the_numbers(digits_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    shutil.copytree(digits_run, run_dir)
    m = json.loads((run_dir / results.METRICS).read_text())
    for a in m["arms"].values():
        a["pw_mcc_mean"], a["pw_mcc_null_mean"] = 0.3, 0.3
    m["arms"]["topk"]["pw_mcc_mean"] = 0.95
    judged = m["analysis"]["against_dictionary_learning"]
    judged.update(
        best="topk_revived",
        pw_mcc_median=0.9,
        dl_pw_mcc_median=0.8,
        agrees_as_well=True,
        heldout_fvu_median=0.2,
        dl_heldout_fvu_median=0.1,
        fvu_within_margin=False,
    )
    results.write_json(run_dir / results.METRICS, m)
    text = report.report_markdown(run_dir)
    assert "The arm whose seeds agree most is `topk` (pw_mcc 0.950, chance 0.300;" in text
    assert "the best is `topk_revived`: its seeds agree at a median pw_mcc of 0.900" in text
    assert "at least as well as dictionary learning from random starts (0.800;" in text
    assert "held-out FVU of 0.200, not within 0.02 of dictionary learning's 0.100" in text
    judged.update(agrees_as_well=False, fvu_within_margin=True)
    results.write_json(run_dir / results.METRICS, m)
    text = report.report_markdown(run_dir)
    assert "less well than dictionary learning" in text and ", within 0.02 of" in text


def test_images_metrics_round_trip_through_their_types(digits_run: Path, patches_run: Path):
    for run_dir in (digits_run, patches_run):
        assert_round_trip(run_dir)


def test_patches_end_to_end(patches_run: Path):
    m = json.loads((patches_run / results.METRICS).read_text())
    cfg = m["config"]
    assert cfg["data"]["image"] == "camera,grass" and cfg["data"]["n_features"] == 36
    assert m["arms"]["topk"]["n_hidden"] == 24 and m["arms"]["ng"]["n_hidden"] == 25
    analysis = m["analysis"]
    assert analysis["image_side"] == 6
    assert analysis["random_filters"]["filters"] == images.RANDOM_FILTERS
    # the patches are mean-free: the constant component is dropped from PCA's filters
    assert analysis["pca_filters"]["filters"] == 35
    text = _assert_report(
        patches_run,
        {
            "loss.png",
            "orientation_locality.png",
            "filters_baselines.png",
            "filters_recipes.png",
            *(f"filters_{n}.png" for n in ("ng", "ng_adam", "ng_zca", "topk")),
            # the revived arm's k sweep, within the top-k arm's k = 3
            *(f"filters_topk_revived_k{k}.png" for k in (2, 3)),
        },
    )
    for label, a in m["arms"].items():
        encoder = a["filters"]["encoder"]
        row = f"| {label}, encoder, trained | {encoder['mean']['orientation']:.3f} |"
        assert row in text
        shares = [encoder[f"{n}_share"] for n in ("oriented", "noise")]
        assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for v in shares)
        assert f"`{label}`: " in text
    for baseline in ("random_filters", "pca_filters"):
        assert 0 <= analysis[baseline]["noise_share"] <= 1
    # random filters are noise-like by construction: below both 90% quantiles for most of them
    assert analysis["random_filters"]["noise_share"] > 0.7
    assert f"| PCA components, 35 filters | {analysis['pca_filters']['orientation']:.3f} |" in text


def test_an_array_of_any_width_runs_without_image_figures(tmp_path, fast_baselines):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(150, 10)).astype(np.float32))
    out = tmp_path / "run"
    m = _cli_run(
        out,
        "digits",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--set",
        "data.kind=array",
        "--set",
        f"data.path={path}",
        "--set",
        "model.n_hidden=16",
        "--set",
        "model.k=2",
    )
    assert m["config"]["data"]["n_features"] == 10 and m["analysis"]["image_side"] is None
    assert m["arms"]["topk"]["heldout_samples"] == 30
    assert "filters" not in m["arms"]["topk"]
    _assert_report(out, {"loss.png", "fvu_l0.png"})
