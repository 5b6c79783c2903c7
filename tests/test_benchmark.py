"""The benchmark's arithmetic: the matmul FLOP count it reports against XLA's own count, its cases,
and one tiny case end to end in a subprocess."""

from __future__ import annotations

import dataclasses

import pytest

from jaxae import benchmark, train
from jaxae.config import Config, DataConfig, ModelConfig, TrainConfig


def _config(d: int, h: int, n: int = 300, batch: int = 100) -> Config:
    return Config(
        data=DataConfig(kind="gaussian", n_samples=n, n_features=d),
        model=ModelConfig(n_hidden=h),
        train=TrainConfig(epochs=2, batch_size=batch),
    )


@pytest.mark.parametrize(("d", "h"), [(64, 256), (32, 48)])
def test_matmul_flops_are_most_of_xla_count(d, h):
    """10 * B * D * H is what XLA counts for one step, up to the elementwise work (a few %)."""
    cfg = _config(d, h)
    ours = benchmark.matmul_flops_per_seed_step(cfg)
    assert ours == 10 * 100 * d * h
    xla = benchmark.xla_flops_per_seed_step(cfg)
    assert ours <= xla <= 1.1 * ours


def test_steps_per_epoch_counts_the_partial_batch():
    assert train.steps_per_epoch(_config(8, 4, n=1797)) == 18
    assert train.steps_per_epoch(_config(8, 4, n=1000)) == 10


def test_cases_cover_the_issue_and_round_trip():
    names = [c.name for c in benchmark.cases()]
    for s in (1, 64, 256, 1024, 4096):
        assert f"multiples_{s}" in names
    for name in (
        "multiples_sort",
        "multiples_jax_permutation",
        "topk_10",
        "relu_10",
        "wide_64_256",
    ):
        assert name in names
    assert not any(c.compiler_options for c in benchmark.cases(platform="gpu"))
    for case in benchmark.cases(quick=True):
        assert benchmark.Case.from_json(case.to_json()) == case
        assert case.config.train.epochs % case.config.train.chunk_epochs == 0


def test_a_case_runs_in_a_subprocess():
    cfg = dataclasses.replace(_config(6, 3), train=TrainConfig(epochs=3, batch_size=100))
    case = benchmark.Case("tiny", "tiny", cfg, 2)
    got = benchmark.run_in_subprocess({"kind": "case", "case": case.to_json(), "repeats": 2})
    assert "error" not in got, got
    assert got["n_seeds"] == 2 and got["epochs"] == 3 and len(got["train_s_all"]) == 2
    assert got["seed_steps_per_s_best"] > 0 and got["rss_peak_mib"] >= got["rss_start_mib"]
    failed = benchmark.run_in_subprocess({"kind": "no such kind"})
    assert "error" in failed


def test_rounds_merge_every_timed_run():
    base = {"seed_steps_per_s_best": 100.0, "train_s_best": 2.0, "matmul_flops_per_seed_step": 10}
    rounds = [
        {**base, "compile_s": 1.0, "train_s_all": [2.0], "rss_start_mib": 5, "rss_peak_mib": 9},
        {"error": "out of memory"},
        {
            **base,
            "compile_s": 3.0,
            "train_s_all": [4.0, 1.0],
            "rss_start_mib": 4,
            "rss_peak_mib": 8,
        },
    ]
    got = benchmark._merge(rounds)
    assert got["rounds"] == 2 and got["failed_rounds"] == 1
    assert got["train_s_all"] == [2.0, 4.0, 1.0] and got["train_s_best"] == 1.0
    assert got["seed_steps_per_s_best"] == 200.0 and got["seed_steps_per_s_median"] == 100.0
    assert got["gflops_best"] == 200.0 * 10 / 1e9
    assert (got["compile_s"], got["rss_start_mib"], got["rss_peak_mib"]) == (2.0, 4, 9)
    assert benchmark._merge([{"error": "x"}]) == {"error": "x"}
