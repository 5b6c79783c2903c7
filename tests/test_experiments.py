"""Experiments: the registry and its families, the presets, their grouping into programs, and that
arms trained together stay independent."""

from __future__ import annotations

import dataclasses
import importlib
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import config, data, experiments, metrics, runner, schema, train
from jaxae.config import override
from jaxae.experiments import sparse as sparse_family
from jaxae.experiments import tutorial
from tests.imports import ROOT, outside_base


@pytest.fixture(scope="module")
def offset_run() -> experiments.RunOutput:
    exp = experiments.with_overrides(experiments.get("offset"), ["train.epochs=4"])
    return experiments.run(exp, 4, seed=2)


def test_registry_and_unknown_name():
    assert list(experiments.EXPERIMENTS) == [
        "multiples",
        "offset",
        "noise",
        "overcomplete",
        "sparse",
        "sparsity",
        "digits",
        "patches",
    ]
    with pytest.raises(ValueError, match=r"experiment='nope' is invalid: allowed is one of multi"):
        experiments.get("nope")


def test_every_experiment_comes_from_its_family_module():
    for name, exp in experiments.EXPERIMENTS.items():
        assert exp.name == name
        family = importlib.import_module(f"jaxae.experiments.{exp.family}")
        assert exp in family.EXPERIMENTS
    assert experiments.FAMILIES[0] is tutorial
    families = [e.family for e in experiments.EXPERIMENTS.values()]
    assert families == ["tutorial"] * 4 + ["sparse"] * 2 + ["images"] * 2


def test_a_name_registered_twice_raises():
    with pytest.raises(ValueError, match="'noise' is registered twice"):
        experiments._by_name([tutorial.NOISE, tutorial.OFFSET, tutorial.NOISE])


def test_base_imports_no_family_and_no_registry():
    path = ROOT / "jaxae" / "experiments" / "base.py"
    assert outside_base(path, ("jaxae.experiments", "jaxae.report")) == set()


@pytest.mark.parametrize(
    ("name", "n_groups"), [("multiples", 2), ("offset", 1), ("noise", 1), ("overcomplete", 3)]
)
def test_sweeps_share_one_program(name, n_groups):
    assert len(experiments.groups_of(experiments.get(name))) == n_groups


def test_overrides_reach_every_arm_and_are_validated():
    exp = experiments.with_overrides(experiments.get("noise"), ["optim.learning_rate=0.01"])
    assert {arm.config.optim.learning_rate for arm in exp.arms} == {0.01}
    with pytest.raises(ValueError, match=r"model\.n_hidden=4 is invalid"):
        experiments.with_overrides(experiments.get("noise"), ["model.n_hidden=4"])
    with pytest.raises(ValueError, match=r"optim\.learning_rate"):
        experiments.with_overrides(experiments.get("noise"), ["optim.learning_rate=-1"])


def test_run_gives_every_arm_its_seeds(offset_run):
    assert offset_run.finished
    assert list(offset_run.results) == ["1", "2", "3", "4"]
    for label, r in offset_run.results.items():
        chex.assert_shape(r.history_SxE, (4, 4))
        chex.assert_shape(r.figures["fvu"], (4,))
        chex.assert_tree_shape_prefix(r.params, (4,))
        # units past the arm's size are masked: they never fire
        assert np.all(r.figures["unit_active_fraction"][:, int(label) :] == 0)
        summary = r.summary()
        assert summary.n_hidden == int(label)
        assert len(summary.final_loss) == 4
        assert 0.0 <= summary.convergence_ci95[0] <= summary.convergence_rate


def test_arm_in_a_sweep_equals_the_arm_alone(offset_run):
    """Arm "2" trained beside three other sizes equals the same seeds trained on their own."""
    exp = experiments.with_overrides(experiments.get("offset"), ["train.epochs=4"])
    cfg = exp.arms[1].config
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, 1)), train.Hyper.from_config(cfg, 2))
    alone = runner.train_seeds(cfg, 4, seed=2, hyper=hyper)
    chex.assert_trees_all_close(
        offset_run.results["2"].params,
        jax.device_get(jax.tree.map(lambda v: v[:, 0], alone.state.params)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_sweep_analysis_reports_every_size(offset_run):
    exp = experiments.get("offset")
    analysis = exp.analyse(exp, offset_run.results)
    assert list(analysis) == ["1", "2", "3", "4"]
    floors = [analysis[h].pca_floor_fvu for h in analysis]
    assert floors[0] > 1e-4 and max(floors[1:]) < 1e-12  # the data have rank 2


def test_a_tied_models_encoder_rows_are_its_decoder_rows():
    """A tied tree (`model.tied`) has no encoder kernel: its encoder rows are the decoder's."""
    kernel_SxHxD = np.random.default_rng(0).normal(size=(2, 3, 4))
    tied = {
        "params": {
            "encoder": {"bias": np.zeros((2, 3))},
            "decoder": {"kernel": kernel_SxHxD, "bias": np.zeros((2, 4))},
        }
    }
    np.testing.assert_array_equal(experiments.encoder_rows(tied), kernel_SxHxD)
    untied = {"params": {**tied["params"], "encoder": {"kernel": np.swapaxes(-kernel_SxHxD, 1, 2)}}}
    np.testing.assert_array_equal(experiments.encoder_rows(untied), -kernel_SxHxD)


def test_overcomplete_control_is_identical_and_agreement_has_its_chance_level():
    exp = experiments.with_overrides(experiments.get("overcomplete"), ["train.epochs=2"])
    out = experiments.run(exp, 3)
    analysis = exp.analyse(exp, out.results)
    assert analysis.pairs == 3
    for part in ("encoder", "decoder"):
        np.testing.assert_allclose(analysis.control_similarity[part], 1.0, atol=1e-6)
    assert set(analysis.agreement) == {"seeds", "topk", "kl"}
    for label, r in out.results.items():
        for key in ("pw_mcc", "pw_mcc_null", "pw_mcc_encoder", "shared", "shared_null"):
            assert len(getattr(r.measures, key)) == 3, (label, key)
        assert r.measures.gt_mcc is None  # Gaussian data: no ground truth
    # the chance level is the untrained weights' agreement: the same for every arm of these seeds
    # whose models start alike (relu and top-k share the initialiser)
    np.testing.assert_allclose(
        out.results["seeds"].measures.pw_mcc_null, out.results["topk"].measures.pw_mcc_null
    )


# ------------------------------------------------------------------------------------------------
# The sparse family


def test_sparse_presets_one_program_per_mechanism():
    sparse = experiments.get("sparse")
    groups = experiments.groups_of(sparse)
    assert [g[0].label.split()[0] for g in groups] == ["relu", "topk", "topk_revive", "kl", "l1"]
    assert [a.label for a in groups[1]] == ["topk k=3", "topk k=4"]
    for arms in groups:
        assert len({a.config for a in arms}) == 1
        assert all(a.config.model.n_hidden == a.config.data.n_atoms for a in arms)
    assert len(experiments.groups_of(experiments.get("sparsity"))) == 4
    assert sparse.default_seeds == 64


def test_sparse_overrides_reach_every_arm():
    """The data's sizes and the width may change; the arms follow and stay valid."""
    exp = experiments.with_overrides(
        experiments.get("sparse"),
        ["data.n_atoms=12", "data.n_features=6", "data.active=4", "model.n_hidden=12"],
    )
    for arm in exp.arms:
        assert arm.config.data.n_atoms == 12 and arm.config.model.n_hidden == 12
        assert arm.config.loss.aux_k <= 12
    assert [a.label for a in exp.arms if a.label.startswith("topk ")] == ["topk k=4", "topk k=5"]
    narrow = experiments.with_overrides(experiments.get("sparse"), ["model.n_hidden=2"])
    assert all(a.value("k") <= 2 for a in narrow.arms if a.label.startswith("topk"))
    # --set reaches every arm: k belongs to the top-k programs, so setting it is an error
    with pytest.raises(ValueError, match=r"model\.k=2 is invalid: allowed is None unless"):
        experiments.with_overrides(experiments.get("sparse"), ["model.k=2"])
    sparse = experiments.get("sparse")
    topk_only = dataclasses.replace(
        sparse, arms=tuple(experiments.groups_of(sparse)[1]), build=None
    )
    assert {
        a.config.model.k for a in experiments.with_overrides(topk_only, ["model.k=6"]).arms
    } == {6}
    with pytest.raises(ValueError, match=r"model\.k=2 is invalid: allowed is at least 4"):
        experiments.with_overrides(topk_only, ["model.k=2"])


@pytest.fixture(scope="module")
def sparse_run() -> experiments.RunOutput:
    exp = experiments.with_overrides(
        experiments.get("sparse"),
        [
            "train.epochs=3",
            "data.n_samples=256",
            "data.n_atoms=8",
            "data.n_features=4",
            "model.n_hidden=8",
        ],
    )
    return experiments.run(exp, 3, seed=1)


def test_sparse_run_measures_every_arm(sparse_run):
    exp = sparse_run.experiment
    assert list(sparse_run.results) == [a.label for a in exp.arms]
    for r in sparse_run.results.values():
        assert r.ground_truth.shape == (8, 4)
        for key in ("gt_mcc", "gt_mcc_null", "recovered"):
            chex.assert_shape(np.asarray(getattr(r.measures, key)), (3,))
        for key in ("pw_mcc", "pw_mcc_null", "shared"):
            chex.assert_shape(np.asarray(getattr(r.measures, key)), (3,))
        summary = r.summary()
        assert len(summary.l0) == 3 and summary.gt_mcc is not None
    for label in ("topk k=3", "topk k=4"):  # top-k then ReLU: at most k units fire
        assert np.all(sparse_run.results[label].figures["l0"] <= int(label[-1]))
    analysis = exp.analyse(exp, sparse_run.results)
    assert set(analysis.chosen) == {"relu", "topk", "topk_revive", "kl", "l1"}
    assert analysis.best in analysis.chosen.values()


def test_sparse_analysis_sets_dictionary_learning_beside_the_mechanisms(sparse_run):
    """scikit-learn's dictionary learning on the arms' training data: the arms' width, OMP with
    `data.active` non-zeros, `DL_FITS` fits; GT-MCC per fit (the stored atoms against the true
    ones, as the mechanisms' seeds), PW-MCC per pair of fits; typed in metrics.json."""
    analysis = sparse_run.analysis
    dl = analysis.dictionary_learning
    fits = sparse_family.DL_FITS
    assert (dl.width, dl.k, dl.fits) == (8, 3, fits)
    assert (dl.passes, dl.batch_size) == (sparse_family.DL_PASSES, sparse_family.DL_BATCH)
    atoms = analysis.arrays["dictionary_learning_atoms"]
    chex.assert_shape(atoms, (fits, 8, 4))
    assert len(dl.gt_mcc) == len(dl.heldout_fvu) == len(dl.fit_s) == fits
    assert len(dl.pw_mcc) == dl.pw_pairs == fits * (fits - 1) // 2
    for value in (*dl.gt_mcc, *dl.pw_mcc, dl.gt_mcc_null_median, dl.pw_mcc_null_median):
        assert -1.0 <= value <= 1.0
    for share in (dl.gt_share, dl.pw_share, dl.recovered_median):
        assert 0.0 <= share <= 1.0
    assert dl.gt_share_ci95[0] <= dl.gt_share <= dl.gt_share_ci95[1]
    truth = sparse_run.results["relu"].ground_truth
    np.testing.assert_allclose(
        dl.gt_mcc, metrics.ground_truth_mcc(atoms, truth)["gt_mcc"], rtol=0, atol=1e-5
    )
    assert dl.gt_share == np.mean(np.asarray(dl.gt_mcc) >= sparse_family.AGREE)
    assert dl.gt_mcc_median == pytest.approx(np.median(dl.gt_mcc))
    cfg = sparse_run.experiment.arms[0].config
    assert dl.heldout_samples == data.heldout_count(cfg.data)
    assert all(0.0 <= f < 2.0 for f in dl.heldout_fvu) and dl.l0_median <= 3
    assert dl.fit_s_total == pytest.approx(sum(dl.fit_s)) and dl.baseline_s >= dl.fit_s_total
    # beside the mechanisms, not one of them: the choice, the best and the cures are theirs
    assert set(analysis.cured) == set(analysis.chosen.values())
    encoded = json.loads(json.dumps(schema.encode(analysis)))
    assert "arrays" not in encoded and encoded["dictionary_learning"]["gt_mcc"] == dl.gt_mcc
    assert schema.decode(sparse_family.Analysis, encoded).dictionary_learning == dl
    # `sparsity` (the knob curves) leaves it out
    assert experiments.get("sparsity").analyse is sparse_family.analyse
    plain = sparse_family.analyse(sparse_run.experiment, sparse_run.results)
    assert plain.dictionary_learning is None and plain.arrays == {}
    assert "dictionary_learning" not in schema.encode(plain)


def test_sparse_analysis_describes_its_draw_of_atoms(sparse_run):
    """The draw's coherence (largest |cosine| between two true atoms, from the arms' own ground
    truth) and its atoms' usage: with exact firing every sample fires `active` atoms, so the
    counts sum to samples x active; another data seed is another draw."""
    draw = sparse_run.analysis.draw
    truth = np.asarray(sparse_run.results["relu"].ground_truth, np.float64)
    cos = np.abs(truth @ truth.T) - np.eye(len(truth)) * 2.0
    assert draw.coherence == pytest.approx(cos.max(), abs=1e-6)
    cfg = sparse_run.experiment.arms[0].config
    used = np.asarray(data.atom_usage(jax.random.key(cfg.data.seed), cfg.data))
    assert used.sum() == cfg.data.n_samples * cfg.data.active
    assert (draw.least_used, draw.mean_used) == (used.min(), pytest.approx(used.mean()))
    other = sparse_family.draw_of(override(cfg, ["data.seed=5"]))
    assert other.coherence != draw.coherence
    assert sparse_family.draw_of(override(cfg, ["data.per_seed=true"])) is None
    encoded = json.loads(json.dumps(schema.encode(sparse_run.analysis)))
    assert schema.decode(sparse_family.Analysis, encoded).draw == draw


def test_dictionary_learning_without_a_ground_truth_has_pw_mcc_only(sparse_run, tmp_path):
    """On an array without `data.atoms` there is nothing to recover: GT-MCC is absent (and left
    out of metrics.json), PW-MCC across fits is there, scored on the file's held-out rows."""
    relu = sparse_run.results["relu"]
    path = tmp_path / "x.npy"
    np.save(path, relu.x)
    cfg = config.override(relu.arm.config, ["data.kind=array", f"data.path={path}"])
    array = dataclasses.replace(
        relu,
        arm=dataclasses.replace(relu.arm, config=cfg),
        x=np.asarray(data.shared_data(cfg)),
        ground_truth=None,
    )
    dl, atoms = sparse_family.dictionary_learning({"relu": array})
    assert dl.gt_mcc is None and dl.gt_share is None and dl.cured is None
    assert len(dl.pw_mcc) == dl.pw_pairs == sparse_family.DL_FITS * (sparse_family.DL_FITS - 1) // 2
    assert dl.heldout_samples == len(relu.x) - cfg.data.n_samples
    assert atoms.shape == (sparse_family.DL_FITS, 8, 4)
    assert not {"gt_mcc", "gt_share", "cured"} & set(schema.encode(dl))


@pytest.mark.parametrize("label", ["topk k=3", "topk_revive k=3"])
def test_topk_arm_in_a_k_sweep_equals_the_static_k_run(sparse_run, label):
    """`topk k=3`, trained as an arm of the k sweep (k traced, program k = 4), equals a program
    built with k = 3 alone; so does the resampled one (its firing rates are the arm's own, its
    pool of directions the seed's shared minibatches)."""
    exp = sparse_run.experiment
    arm = next(a for a in exp.arms if a.label == label)
    cfg = experiments.with_(arm.config, model={"k": 3})
    alone = runner.train_seeds(cfg, 3, seed=1)
    chex.assert_trees_all_close(
        sparse_run.results[label].params,
        jax.device_get(jax.tree.map(lambda v: v[:, 0], alone.state.params)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_stopped_run_resumes_to_the_same_result(offset_run):
    exp = experiments.with_overrides(
        experiments.get("offset"), ["train.epochs=4", "train.chunk_epochs=1"]
    )
    stopped = experiments.run(exp, 4, seed=2, callback=lambda g, p: p.epochs_done == 2)
    assert not stopped.finished and stopped.groups[0].epochs_done == 2
    resumed = experiments.run(exp, 4, seed=2, resume=stopped.groups)
    for label, r in offset_run.results.items():
        np.testing.assert_array_equal(resumed.results[label].figures["fvu"], r.figures["fvu"])
    # Training time and seed-steps/s count both sessions: every step of every arm and seed once.
    first, second = stopped.timing, resumed.timing
    assert resumed.timing["resumed"] and "resumed" not in first
    assert second["train_s"] > first["train_s"] > 0
    seed_steps = second["seed_steps_per_s"] * second["train_s"]
    steps_per_epoch = train.steps_per_epoch(exp.arms[0].config)
    np.testing.assert_allclose(seed_steps, 4 * len(exp.arms) * 4 * steps_per_epoch, rtol=1e-9)
