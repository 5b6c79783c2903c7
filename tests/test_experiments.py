"""Experiments: the registry and its families, the presets, their grouping into programs, and that
arms trained together stay independent."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import experiments, train
from jaxae.experiments import tutorial
from tests.imports import ROOT, outside_base


@pytest.fixture(scope="module")
def offset_run() -> experiments.RunOutput:
    exp = experiments.with_overrides(experiments.get("offset"), ["train.epochs=4"])
    return experiments.run(exp, 4, seed=2)


def test_registry_and_unknown_name():
    assert list(experiments.EXPERIMENTS)[:4] == ["multiples", "offset", "noise", "overcomplete"]
    assert list(experiments.EXPERIMENTS)[4:] == ["digits", "patches"]
    with pytest.raises(ValueError, match=r"experiment='nope' is invalid: allowed is one of multi"):
        experiments.get("nope")


def test_every_experiment_comes_from_its_family_module():
    for name, exp in experiments.EXPERIMENTS.items():
        assert exp.name == name
        family = importlib.import_module(f"jaxae.experiments.{exp.family}")
        assert exp in family.EXPERIMENTS
    assert experiments.FAMILIES[0] is tutorial
    assert [e.family for e in experiments.EXPERIMENTS.values()] == ["tutorial"] * 4 + ["images"] * 2


def test_a_name_registered_twice_raises():
    with pytest.raises(ValueError, match="'noise' is registered twice"):
        experiments._by_name([tutorial.NOISE, tutorial.OFFSET, tutorial.NOISE])


def test_base_imports_no_family_and_no_registry():
    path = ROOT / "jaxae" / "experiments" / "base.py"
    assert outside_base(path, ("jaxae.experiments", "jaxae.report")) == set()


@pytest.mark.parametrize(
    ("name", "n_groups"), [("multiples", 2), ("offset", 1), ("noise", 1), ("overcomplete", 1)]
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
        assert summary["n_hidden"] == int(label)
        assert len(summary["final_loss"]) == 4
        assert 0.0 <= summary["convergence_ci95"][0] <= summary["convergence_rate"]


def test_arm_in_a_sweep_equals_the_arm_alone(offset_run):
    """Arm "2" trained beside three other sizes equals the same seeds trained on their own."""
    exp = experiments.with_overrides(experiments.get("offset"), ["train.epochs=4"])
    cfg = exp.arms[1].config
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (4,)), train.Hyper.from_config(cfg, 2))
    alone = train.train_seeds(cfg, 4, seed=2, hyper=hyper)
    chex.assert_trees_all_close(
        offset_run.results["2"].params, jax.device_get(alone.state.params), rtol=1e-5, atol=1e-6
    )


def test_sweep_analysis_reports_every_size(offset_run):
    exp = experiments.get("offset")
    analysis = exp.analyse(exp, offset_run.results)
    assert list(analysis) == ["1", "2", "3", "4"]
    floors = [analysis[h]["pca_floor_fvu"] for h in analysis]
    assert floors[0] > 1e-4 and max(floors[1:]) < 1e-12  # the data have rank 2


def test_overcomplete_control_is_identical():
    exp = experiments.with_overrides(experiments.get("overcomplete"), ["train.epochs=2"])
    out = experiments.run(exp, 3)
    analysis = exp.analyse(exp, out.results)
    assert analysis["pairs"] == 3
    for part in ("encoder", "decoder"):
        assert len(analysis["cross_seed_similarity"][part]) == 3
        np.testing.assert_allclose(analysis["control_similarity"][part], 1.0, atol=1e-6)


def test_stopped_run_resumes_to_the_same_result(offset_run):
    exp = experiments.with_overrides(
        experiments.get("offset"), ["train.epochs=4", "train.chunk_epochs=1"]
    )
    stopped = experiments.run(exp, 4, seed=2, callback=lambda g, p: p.epochs_done == 2)
    assert not stopped.finished and stopped.groups[0].epochs_done == 2
    resumed = experiments.run(exp, 4, seed=2, resume=stopped.groups)
    for label, r in offset_run.results.items():
        np.testing.assert_array_equal(resumed.results[label].figures["fvu"], r.figures["fvu"])
