"""Seeds in batches: a memory budget too small for all seeds at once splits them into equal batches
(the last padded) whose results are one big batch's bit for bit, in training, evaluation, stop and
resume; the estimate behind the split grows linearly with seeds and bounds the compiled program.

On one device, with at most 8 seeds per batch: XLA:CPU compiles the same per-seed arithmetic for
every seed count in that size class (see `memory.PROBE_SEEDS`), so equality is exact.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import chex
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from jaxae import cli, experiments, memory, runner, schema, train
from jaxae.report import base as report_base
from jaxae.report import tutorial as report_tutorial
from tests.test_train import TINY

ONE = jax.devices()[:1]
N_SEEDS = 8


def _budget(plan: dict, seeds_per_device: int) -> int:
    """A budget (bytes per device) that holds exactly `seeds_per_device` seeds of a plan."""
    return int(plan["fixed_bytes"] + plan["per_seed_bytes"] * seeds_per_device) + 1


def _host(state: train.TrainState) -> train.TrainState:
    return jax.device_get(state.replace(key=jax.random.key_data(state.key)))


@pytest.fixture(scope="module")
def whole() -> runner.TrainResult:
    """TINY on 8 seeds in one batch: the reference."""
    return runner.train_seeds(TINY, N_SEEDS, devices=ONE)


def test_small_budget_trains_in_batches_equal_to_one_batch(whole):
    assert whole.memory["batches"] == 1
    progress = []

    def callback(p: runner.Progress) -> None:
        done = p.history_SxAxE[..., : p.epochs_done]
        progress.append(
            (p.epochs_done, p.epochs_total, p.state.diverged.shape, np.isnan(done).sum())
        )

    batched = runner.train_seeds(
        TINY, N_SEEDS, devices=ONE, memory_budget=_budget(whole.memory, 3), callback=callback
    )
    # 8 seeds at 3 per batch: 3 + 3 + 2, the last padded to 3, one program for all three
    assert (batched.memory["batches"], batched.memory["batch_seeds"]) == (3, 3)
    chex.assert_trees_all_equal(_host(batched.state), _host(whole.state))
    np.testing.assert_array_equal(batched.history_SxAxE, whole.history_SxAxE)
    # one callback per chunk, each after every batch ran it: every seed's epochs are counted
    assert progress == [(3, 6, (N_SEEDS, 1), 0), (6, 6, (N_SEEDS, 1), 0)]


def test_stop_in_batches_resumes_to_the_same_run(whole):
    budget = _budget(whole.memory, 3)
    stopped = runner.train_seeds(
        TINY, N_SEEDS, devices=ONE, memory_budget=budget, callback=lambda p: True
    )
    assert not stopped.finished and stopped.epochs_done == 3
    history = stopped.history_SxAxE
    assert np.isnan(history[..., 3:]).all() and np.isfinite(history[..., :3]).all()
    for resume_budget in (budget, None):  # resumed in batches, and in one batch
        resumed = runner.train_seeds(
            TINY,
            N_SEEDS,
            devices=ONE,
            memory_budget=resume_budget,
            resume=(stopped.state, stopped.history_SxAxE, stopped.epochs_done),
        )
        chex.assert_trees_all_equal(_host(resumed.state), _host(whole.state))
        np.testing.assert_array_equal(resumed.history_SxAxE, whole.history_SxAxE)


def test_evaluation_in_batches_equals_one_batch(whole):
    figures, plan = runner.evaluate_seeds(TINY, whole.state, whole.x, devices=ONE)
    assert plan.n_batches == 1
    small, small_plan = runner.evaluate_seeds(
        TINY, whole.state, whole.x, devices=ONE, memory_budget=_budget(dataclasses.asdict(plan), 3)
    )
    assert (small_plan.n_batches, small_plan.batch_seeds) == (3, 3)
    chex.assert_trees_all_equal(small, figures)
    chex.assert_shape(figures["unit_active_fraction"], (N_SEEDS, 1, TINY.model.n_hidden))


def test_per_seed_data_and_arms_in_batches_equal_one_batch():
    """3 seeds x 2 arms (6 runs, so still in the small size class) against batches of 2 seeds."""
    cfg = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, per_seed=True))
    n = 3
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (n, 2)), train.Hyper.from_config(cfg))
    rates = jnp.asarray([1e-2, 3e-3], jnp.float32)
    hyper = hyper.replace(learning_rate=jnp.broadcast_to(rates, (n, 2)))
    one = runner.train_seeds(cfg, n, devices=ONE, hyper=hyper)
    batched = runner.train_seeds(
        cfg, n, devices=ONE, hyper=hyper, memory_budget=_budget(one.memory, 2)
    )
    assert (batched.memory["batches"], batched.memory["batch_seeds"]) == (2, 2)
    chex.assert_trees_all_equal(_host(batched.state), _host(one.state))
    np.testing.assert_array_equal(batched.history_SxAxE, one.history_SxAxE)
    np.testing.assert_array_equal(np.asarray(batched.x), np.asarray(one.x))
    chex.assert_shape(batched.history_SxAxE, (n, 2, TINY.train.epochs))


def test_experiment_run_in_batches_equals_one_batch():
    """A group of 4 arms (hidden sizes) trained in batches of 2 seeds x 4 arms, then evaluated,
    against one batch of 3 seeds x 4 arms (one size class of XLA:CPU's; a single seed x 4 arms is
    another)."""
    exp = experiments.with_overrides(
        experiments.get("offset"), ["data.n_samples=200", "train.epochs=2", "train.chunk_epochs=1"]
    )
    ref = experiments.run(exp, 3, devices=ONE)
    out = experiments.run(exp, 3, devices=ONE, memory_budget=_budget(ref.memory["train"], 2))
    assert out.memory["train"]["batches"] == 2 and ref.memory["train"]["batches"] == 1
    for label, r in ref.results.items():
        b = out.results[label]
        chex.assert_trees_all_equal(b.params, r.params)
        chex.assert_trees_all_equal(b.figures, r.figures)
        np.testing.assert_array_equal(b.history_SxE, r.history_SxE)


def test_estimate_grows_linearly_and_bounds_the_compiled_program(monkeypatch):
    def plan(probe: int, n_seeds: int) -> memory.MemoryPlan:
        monkeypatch.setattr(memory, "PROBE_SEEDS", probe)
        return runner.training_memory(TINY, n_seeds, devices=ONE)

    compiled = {n: plan(n, n).bytes_at(n) for n in (16, 32, 64)}  # the program at n seeds
    growth = [(compiled[32] - compiled[16]) / 16, (compiled[64] - compiled[32]) / 32]
    assert growth[1] == pytest.approx(growth[0], rel=0.1)  # linear in seeds
    estimate = plan(16, 64)  # measured at 16 seeds, extrapolated to 64
    assert estimate.probe_seeds == 16 and estimate.n_batches == 1
    step = estimate.bytes_at(64) - estimate.bytes_at(32)
    assert step == pytest.approx(32 * estimate.per_seed_bytes)
    assert compiled[64] <= estimate.bytes_at(64) <= 1.1 * compiled[64]


def test_budget_below_one_seed_raises():
    with pytest.raises(ValueError, match=r"memory budget=1000 bytes per device is invalid"):
        runner.train_seeds(TINY, N_SEEDS, devices=ONE, memory_budget=1000)
    with pytest.raises(ValueError, match="memory_budget=0 is invalid"):
        memory.device_memory_budget(ONE, 0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("6GiB", 6 * 2**30),
        ("512MiB", 512 * 2**20),
        ("8G", 8 * 10**9),
        ("2e9", 2 * 10**9),
        ("100", 100),
    ],
)
def test_parse_bytes(text, value):
    assert memory.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "5 parsecs"])
def test_parse_bytes_refuses_what_is_not_a_size(text):
    with pytest.raises(
        ValueError, match=rf"JAXAE_MEMORY_BUDGET={re.escape(repr(text))} is invalid"
    ):
        memory.parse_bytes(text)


def test_budget_from_the_environment_and_its_default(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "3MiB")
    assert memory.device_memory_budget(ONE) == 3 * 2**20
    assert memory.device_memory_budget(ONE, 5000) == 5000  # the argument wins
    monkeypatch.delenv(memory.MEMORY_BUDGET_ENV)
    share = memory.HOST_MEMORY_FRACTION * memory.host_available_bytes()
    assert 0.5 * share < memory.device_memory_budget(ONE) < 1.5 * share


def test_cli_refuses_a_bad_budget_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "lots")
    assert cli.main(["run", "multiples", "--seeds", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "JAXAE_MEMORY_BUDGET='lots' is invalid" in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# The report at a large seed count


def test_seed_spread_draws_dots_up_to_a_limit_then_a_histogram():
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots()
    report_base.seed_spread(ax, 0, np.linspace(1, 2, 50), log=False, rng=rng)
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 50
    many = np.geomspace(1e-6, 1.0, report_base.MAX_SEED_DOTS + 1)
    report_base.seed_spread(ax, 1, many, log=True, rng=rng)
    assert len(ax.collections) == 2
    histogram = ax.collections[1].get_paths()[0].vertices
    assert histogram[:, 1].min() == pytest.approx(1e-6) and histogram[:, 1].max() == pytest.approx(
        1
    )
    plt.close(fig)


def test_fvu_figure_at_a_hundred_thousand_seeds(tmp_path):
    n = 100_000
    fvu = np.random.default_rng(1).lognormal(-3, 2, n).tolist()
    arm = SimpleNamespace(fvu=fvu, pca_floor_fvu=0.01, fvu_quantiles=schema.Quantiles.of(fvu))
    m = SimpleNamespace(
        section="§",
        experiment="x",
        n_seeds=n,
        primary=SimpleNamespace(reconstruction_tol=0.1),
        arms={"1": arm, "2": arm},
    )
    report_tutorial.plot_fvu_vs_hidden(m, tmp_path / "fvu.png")
    assert (tmp_path / "fvu.png").stat().st_size > 0


def test_the_report_says_which_pairs_of_seeds_it_compares():
    seeds = SimpleNamespace(pw_seeds=experiments.SIMILARITY_SEEDS)
    m = SimpleNamespace(n_seeds=100_000, arms={"seeds": seeds})
    assert "every pair among seeds 0-99 of the 100,000" in report_tutorial._pair_sample(m)
    m = SimpleNamespace(n_seeds=50, arms={"seeds": SimpleNamespace(pw_seeds=50)})
    assert report_tutorial._pair_sample(m) == ""


def test_memory_summary_names_batches_and_budget():
    plan = {
        "per_seed_bytes": 14_000.0,
        "all_seeds_bytes": 1.4e9,
        "batch_bytes": 7e8,
        "batch_seeds": 50_000,
        "batches": 2,
    }
    memory = {"budget_bytes": 2**30, "train": plan, "process_peak_rss_bytes": 3 * 2**30}
    text = report_base.memory_summary(memory)
    assert "budget 1,024 MiB" in text and "2 batches of 50,000 seeds" in text
    assert "train 13.7 KiB per seed" in text and "3,072 MiB" in text
    assert report_base.memory_summary({}) == ""


if __name__ == "__main__":
    sys.exit(pytest.main([str(Path(__file__))]))
