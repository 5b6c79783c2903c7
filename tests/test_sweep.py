"""Sweeps from the command line: the grid and its programs, a swept arm equals its point run alone,
results keyed by grid point, bad specs refused before anything trains, the report, and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import signal
import types
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxae import cli, experiments, report, results, runner, sweep
from jaxae.config import Config, override
from jaxae.report import grid as report_grid

# Tiny runs: two epochs of one epoch per chunk (so a run can stop between them), three seeds; an L1
# penalty, so that the swept loss.weight changes every arm's training.
ARGS = ["--seeds", "3", "--set", "train.chunk_epochs=1", "--set", "train.epochs=2"]
ARGS += ["--set", "loss.sparsity=l1"]
SWEEP = ["--sweep", "optim.learning_rate=1e-3,1e-2", "--sweep", "loss.weight=0,0.5"]
SPECS = ["optim.learning_rate=0.001,0.01", "loss.weight=0,0.5"]
KEYS = [
    "optim.learning_rate=0.001 loss.weight=0",
    "optim.learning_rate=0.001 loss.weight=0.5",
    "optim.learning_rate=0.01 loss.weight=0",
    "optim.learning_rate=0.01 loss.weight=0.5",
]


def _main(*argv: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(list(argv))
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, str]:
    """`jaxae run multiples` over a 2 x 2 grid of learning rate and sparsity weight."""
    out_dir = tmp_path_factory.mktemp("sweep") / "run"
    code, out = _main("run", "multiples", *ARGS, *SWEEP, "--out", str(out_dir))
    assert code == 0
    return out_dir, out


def _metrics(path: Path) -> dict:
    return json.loads((path / results.METRICS).read_text())


# ------------------------------------------------------------------------------------------------
# The grid and its programs


def test_shape_free_fields_become_arms_of_one_program():
    grid = sweep.expand(
        experiments.get("multiples"),
        ["train.epochs=2", "loss.sparsity=l1"],
        ["optim.learning_rate=1e-4,1e-3,1e-2", "loss.weight=0.1,1,10"],
    )
    groups = experiments.groups_of(grid.experiment)
    assert len(groups) == 2  # torch and flax, as without the sweep
    for arms in groups:
        assert len(arms) == 9 and len({a.config for a in arms}) == 1
        assert sorted({dict(a.hyper)["learning_rate"] for a in arms}) == [1e-4, 1e-3, 1e-2]
        assert sorted({dict(a.hyper)["sparsity_weight"] for a in arms}) == [0.1, 1.0, 10.0]
    assert grid.shape_free == ("optim.learning_rate", "loss.weight")
    assert [p.key for p in grid.points[:2]] == [
        "optim.learning_rate=0.0001 loss.weight=0.1",
        "optim.learning_rate=0.0001 loss.weight=1",
    ]
    plan = grid.plan()
    assert len(plan) == 3 and "9 grid points, 18 runs per seed in 2 compiled programs" in plan[0]
    assert plan[1].startswith("  program 1: arm torch at 9 grid points")
    # each point's own arms keep their labels and carry the point's values in their config
    point = grid.points[4].experiment
    assert [a.label for a in point.arms] == ["torch", "flax"]
    assert {a.config.optim.learning_rate for a in point.arms} == {1e-3}
    assert {a.config.loss.weight for a in point.arms} == {1.0}


def test_a_shape_field_is_a_program_per_value():
    grid = sweep.expand(
        experiments.get("multiples"), [], ["train.epochs=2,3", "optim.learning_rate=1e-3,1e-2"]
    )
    groups = experiments.groups_of(grid.experiment)
    assert len(groups) == 4
    assert [g[0].config.train.epochs for g in groups] == [2, 2, 3, 3]
    assert all(len(g) == 2 for g in groups)  # the two learning rates, as arms
    assert grid.shape_free == ("optim.learning_rate",)
    plan = grid.plan()
    assert "a program per value (shapes change): train.epochs" in plan[0]
    assert plan[3] == (
        "  program 3: arm torch at 2 grid points (train.epochs=3 optim.learning_rate=0.001|0.01)"
    )
    assert grid.programs()[0]["points"] == [
        "train.epochs=2 optim.learning_rate=0.001",
        "train.epochs=2 optim.learning_rate=0.01",
    ]


def test_k_and_width_sweeps_build_the_largest_program():
    topk = ["model.activation=topk", "model.n_hidden=4", "train.epochs=2"]
    grid = sweep.expand(experiments.get("multiples"), topk, ["model.k=1,3,2"])
    assert len(experiments.groups_of(grid.experiment)) == 2
    assert {a.config.model.k for a in grid.experiment.arms} == {3}  # the largest swept k
    assert [dict(a.hyper)["k"] for a in grid.experiment.arms] == [1, 1, 3, 3, 2, 2]
    assert [p.experiment.arms[0].config.model.k for p in grid.points] == [1, 3, 2]

    grid = sweep.expand(experiments.get("multiples"), ["train.epochs=2"], ["model.n_hidden=2,1"])
    assert {a.config.model.n_hidden for a in grid.experiment.arms} == {2}
    assert [a.n_active for a in grid.experiment.arms] == [2, 2, 1, 1]
    assert [a.n_hidden for p in grid.points for a in p.experiment.arms] == [2, 2, 1, 1]
    assert grid.shape_free == ("model.n_hidden",)

    # arms with sizes of their own (a hidden-size sweep): the width is each program's shape
    grid = sweep.expand(experiments.get("noise"), ["train.epochs=2"], ["model.n_hidden=10,12"])
    assert len(experiments.groups_of(grid.experiment)) == 2 and grid.shape_free == ()


@pytest.mark.parametrize("value", [1e-4, 3e-3, 0.1 + 0.2, 10.0, 7, True, None, "sigmoid"])
def test_value_text_reads_back_as_the_value(value):
    field = {
        float: "optim.learning_rate",
        int: "train.epochs",
        bool: "model.pre_bias",
        type(None): "model.k",
        str: "model.activation",
    }[type(value)]
    section, _, name = field.partition(".")
    cfg = override(Config(), [f"{field}={sweep.value_text(value)}"])
    assert getattr(getattr(cfg, section), name) == value


# ------------------------------------------------------------------------------------------------
# Training


def test_swept_arms_equal_their_points_run_alone():
    """k traced below the program's largest k, and the learning rate as an arm, give the same
    per-seed parameters as each point's values set with --set and trained alone."""
    one_arm = dataclasses.replace(
        experiments.get("multiples"), arms=experiments.get("multiples").arms[:1]
    )
    sets = ["model.activation=topk", "model.n_hidden=3", "data.n_samples=200", "train.epochs=2"]
    grid = sweep.expand(one_arm, sets, ["model.k=1,3", "optim.learning_rate=1e-3,1e-2"])
    assert len(experiments.groups_of(grid.experiment)) == 1
    out = experiments.run(grid.experiment, 3, seed=1)
    for point, res in zip(grid.points, sweep.point_results(grid, out.results), strict=True):
        alone = experiments.run(experiments.with_overrides(one_arm, sets + point.assignments), 3, 1)
        chex.assert_trees_all_close(
            res["torch"].params, alone.results["torch"].params, rtol=1e-5, atol=1e-6
        )
        assert res["torch"].summary().hyper == alone.results["torch"].summary().hyper == {}


def test_cli_point_equals_the_run_with_set(swept, tmp_path):
    out_dir, _ = swept
    alone_dir = tmp_path / "alone"
    point = ["--set", "optim.learning_rate=0.01", "--set", "loss.weight=0.5"]
    assert _main("run", "multiples", *ARGS, *point, "--out", str(alone_dir))[0] == 0
    swept_params = results.load_checkpoint(out_dir / "grid" / "p3" / "params")
    alone_params = results.load_checkpoint(alone_dir / "params")
    chex.assert_trees_all_close(swept_params, alone_params, rtol=1e-5, atol=1e-6)
    m, alone = _metrics(out_dir / "grid" / "p3"), _metrics(alone_dir)
    assert set(m) == set(alone)
    for key in ("config", "overrides", "n_seeds", "seed", "hyper", "n_hidden"):
        assert m[key] == alone[key], key
    for label in ("torch", "flax"):
        np.testing.assert_allclose(
            m["arms"][label]["final_loss"], alone["arms"][label]["final_loss"], rtol=1e-5
        )


# ------------------------------------------------------------------------------------------------
# The run directory, the CLI's output and the report


def test_metrics_json_keyed_by_grid_point(swept):
    out_dir, _ = swept
    m = _metrics(out_dir)
    assert "arms" not in m and "final_loss" not in m  # results live under their grid points
    assert m["experiment"] == "multiples" and m["n_seeds"] == 3 and m["sweep"] == SPECS
    grid = m["grid"]
    assert grid["fields"] == ["optim.learning_rate", "loss.weight"]
    assert grid["values"] == {"optim.learning_rate": [0.001, 0.01], "loss.weight": [0.0, 0.5]}
    assert grid["shape_free"] == ["optim.learning_rate", "loss.weight"]
    assert grid["ignored"] == {}  # both arms use both fields
    assert grid["programs"] == [
        {"arms": ["torch"], "points": KEYS},
        {"arms": ["flax"], "points": KEYS},
    ]
    assert list(grid["points"]) == KEYS
    for i, (key, point) in enumerate(grid["points"].items()):
        assert point["index"] == i and point["dir"] == f"grid/p{i}"
        pm = _metrics(out_dir / point["dir"])
        lr, weight = point["values"]["optim.learning_rate"], point["values"]["loss.weight"]
        assert key == f"optim.learning_rate={lr:g} loss.weight={weight:g}"
        assert pm["config"]["optim"]["learning_rate"] == lr
        assert pm["config"]["loss"]["weight"] == weight
        assert pm["overrides"][-2:] == key.split()
        assert point["analysis"] == pm["analysis"]
        assert list(point["arms"]) == ["torch", "flax"]
        for label, arm in point["arms"].items():
            assert arm["convergence_rate"] == pm["arms"][label]["convergence_rate"]
            assert not any(isinstance(v, list) and len(v) == 3 for v in arm.values())
        assert len(pm["arms"]["torch"]["final_loss"]) == 3  # per-seed lists: in the point's own
        with np.load(out_dir / point["dir"] / results.HISTORY) as history:
            assert history["loss_torch"].shape == (3, 2)
    assert m["config"] == _metrics(out_dir / "grid" / "p0")["config"]  # the first point's


def test_cli_prints_the_programs_and_each_point(swept):
    _, out = swept
    lines = out.splitlines()
    assert lines[0].startswith("multiples: sweep of 4 grid points, 8 runs per seed in 2 compiled")
    assert lines[1].startswith("  program 1: arm torch at 4 grid points")
    assert lines[2].startswith("  program 2: arm flax at 4 grid points")
    for key in KEYS:
        assert any(line.strip().startswith(key) for line in lines), key
    assert any(line.startswith("  best for torch: ") for line in lines)
    assert any("seed-steps/s" in line for line in lines)


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_report_draws_every_point_and_the_summary(swept, tmp_path):
    out_dir, _ = swept
    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    for figures in copy.rglob("figures"):
        shutil.rmtree(figures)
    (copy / "report.md").unlink()
    assert _main("report", str(copy))[0] == 0  # `jaxae report` re-renders a swept run
    text = (copy / "report.md").read_text()
    assert (copy / "figures" / report_grid.GRID_FIGURE).is_file()
    assert "](figures/grid.png)" in text
    for i, key in enumerate(KEYS):
        assert f"## Grid point {key}" in text
        assert (copy / f"grid/p{i}" / "report.md").is_file()
        for name in ("loss.png", "convergence.png"):
            assert (copy / f"grid/p{i}" / "figures" / name).is_file()
            assert f"](grid/p{i}/figures/{name})" in text
    for target in _LINK.findall(text):
        assert (copy / target).is_file(), target
    # the table: every point's main metric per arm, read from the point's metrics.json
    rate = _metrics(copy / "grid" / "p2")["arms"]["flax"]["convergence_rate"]
    row = next(line for line in text.splitlines() if line.startswith(f"| {KEYS[2]} |"))
    assert f"{rate:.3g}" in row


def test_main_metric_per_family():
    assert report.main_metric({"family": "tutorial"}) is report.tutorial.MAIN_METRIC
    assert report.main_metric({"family": "sparse"}) is report.sparse.MAIN_METRIC
    assert report.main_metric({"family": "images"}).higher_is_better is False
    fallback = report.main_metric({"family": "elsewhere"})
    assert fallback is report_grid.FINAL_LOSS
    arm = types.SimpleNamespace(final_loss=[3.0, None, 1.0, 2.0])
    assert fallback.value(types.SimpleNamespace(arms={"a": arm}), "a") == 2.0


# ------------------------------------------------------------------------------------------------
# No silent copies: a swept or set value is never lost on an arm

SPARSE_OWN = "arms kl w=0.03, kl w=0.1, l1 w=0.01, l1 w=0.03 set their own loss.weight"


def test_a_field_an_arm_fixes_is_refused_for_sweep_and_set():
    """sparse's penalised arms keep their own weights, so a swept or set weight would be lost on
    them (and the unpenalised arms have none): both are refused, naming the arms."""
    sparse = experiments.get("sparse")
    own = re.escape(f"allowed is a field no arm fixes for itself ({SPARSE_OWN})")
    with pytest.raises(
        ValueError, match=rf"^--sweep='loss\.weight=0\.001,0\.1' is invalid: {own}$"
    ):
        sweep.expand(sparse, ["train.epochs=1"], ["loss.weight=0.001,0.1"])
    with pytest.raises(ValueError, match=rf"^loss\.weight=0\.5 is invalid: {own}$"):
        experiments.with_overrides(sparse, ["loss.weight=0.5"])
    with pytest.raises(ValueError, match=r"^loss\.weight=0\.5 is invalid: .*kl w=0\.03"):
        sweep.expand(sparse, ["loss.weight=0.5"], ["optim.learning_rate=1e-3,1e-2"])
    # top-k arms with their own k: a swept k would be lost; a set k is the program's (allowed)
    topk = dataclasses.replace(sparse, arms=tuple(experiments.groups_of(sparse)[1]), build=None)
    with pytest.raises(ValueError, match=r"arms topk k=3, topk k=4 set their own model\.k\)$"):
        sweep.expand(topk, [], ["model.k=4,5"])
    assert {a.config.model.k for a in experiments.with_overrides(topk, ["model.k=6"]).arms} == {6}


@pytest.mark.parametrize(
    ("name", "sets", "spec", "why"),
    [
        (
            "multiples",
            [],
            "loss.weight=0.1,1",
            'read only with a penalty (loss.sparsity other than "none")',
        ),
        (
            "multiples",
            ["loss.sparsity=l1"],
            "loss.rho=0.1,0.2",
            'read only with loss.sparsity="kl"',
        ),
        # without a penalty the sparse arms' own weights are unused, not fixed
        ("sparse", ["loss.sparsity=none"], "loss.weight=0.001,0.1", "loss.sparsity other than"),
        ("sparse", [], "loss.aux_weight=0.01,0.03", "read only with the auxiliary top-k loss"),
        # tied weights have no encoder kernel to start at the decoder's transpose
        ("multiples", ["model.tied=true"], "model.tied_init=false,true", "model.tied false"),
    ],
)
def test_a_field_no_arm_uses_is_refused(name, sets, spec, why):
    field = spec.partition("=")[0]
    message = f"--sweep={spec!r} is invalid: allowed is a field some arm uses (no arm of {name} "
    message += f"uses {field}: "
    with pytest.raises(ValueError, match=re.escape(message) + ".*" + re.escape(why)):
        sweep.expand(experiments.get(name), sets, [spec])


def test_arms_that_do_not_use_a_swept_field_are_the_same_at_every_value(tmp_path):
    """Beside an L1 arm, a plain ReLU arm and an L1 model whose own weight is 0 (digits' `plain`)
    do not use loss.weight: the sweep goes ahead, the plan names them, they keep their training
    (identical results at every point) while the L1 arm's changes."""
    cfg = override(experiments.get("multiples").config, ["train.epochs=2", "data.n_samples=200"])
    l1 = override(cfg, ["loss.sparsity=l1"])
    exp = dataclasses.replace(
        experiments.get("multiples"),
        arms=(
            experiments.Arm("relu", cfg),
            experiments.Arm("l1", l1),
            experiments.Arm("plain", l1, hyper=(("sparsity_weight", 0.0),)),
        ),
    )
    assert (
        experiments.with_overrides(exp, ["loss.weight=0.5"]).arms[2].value("sparsity_weight") == 0
    )
    grid = sweep.expand(exp, [], ["loss.weight=0.1,3"])
    assert grid.ignored == (("loss.weight", ("relu", "plain")),)
    assert (
        grid.plan()[-1]
        == "  arms relu, plain do not use loss.weight: the same at each of its values"
    )
    out = experiments.run(grid.experiment, 2, seed=0)
    first, second = sweep.point_results(grid, out.results)
    for label in ("relu", "plain"):
        np.testing.assert_array_equal(
            first[label].figures["final_loss"], second[label].figures["final_loss"]
        )
    assert [r["plain"].summary().hyper for r in (first, second)] == [{"sparsity_weight": 0.0}] * 2
    assert not np.array_equal(first["l1"].figures["final_loss"], second["l1"].figures["final_loss"])
    data = sweep.write_run(tmp_path / "run", out, grid, [])
    lines = report_grid.summary_lines(data, tmp_path / "run", report.main_metric(data))
    assert "  relu: the same at every grid point (it reads no swept field)" in lines
    assert any(line.startswith("  best for l1: loss.weight=") for line in lines)
    assert not any(line.startswith(("  best for relu", "  best for plain")) for line in lines)


# ------------------------------------------------------------------------------------------------
# Bad specs


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["multiples", "--sweep", "nope.x=1,2"], "--sweep='nope.x=1,2' is invalid"),
        (["multiples", "--sweep", "optim.nope=1,2"], "a field of optim"),
        (["multiples", "--sweep", "learning_rate=1,2"], "section.field=v1,v2"),
        (["multiples", "--sweep", "optim.learning_rate="], "non-empty"),
        (["multiples", "--sweep", "optim.learning_rate=1e-3,,1e-2"], "non-empty"),
        (
            ["multiples", "--sweep", "loss.weight=1", "--sweep", "loss.weight=2"],
            "loss.weight is swept twice",
        ),
        (["multiples", "--sweep", "optim.learning_rate=1e-3,0.001"], "each value of optim"),
        (["multiples", "--sweep", "optim.learning_rate=1e-3,-1"], "optim.learning_rate=-1.0"),
        (["multiples", "--sweep", "optim.learning_rate=1e-3,fast"], "optim.learning_rate='fast'"),
        (["multiples", "--sweep", "loss.rho=0.1,2"], "loss.rho=2.0"),
        (["multiples", "--sweep", "model.activation=relu,tanh"], "model.activation='tanh'"),
        (
            ["multiples", "--set", "loss.weight=1", "--sweep", "loss.weight=0.1,1"],
            "also given with --set",
        ),
        (["multiples", "--epochs", "3", "--sweep", "train.epochs=2,4"], "--set or --epochs"),
        (["multiples", "--sweep", "model.k=1,2"], "model.k=1 is invalid"),
        (
            [
                *("multiples", "--set", "model.activation=topk", "--set", "model.n_hidden=4"),
                *("--sweep", "model.k=2,5"),
            ],
            "model.k=5 is invalid: allowed is an integer in 1..4",
        ),
        (["offset", "--sweep", "model.n_hidden=4,2"], "model.n_hidden=2 is invalid"),
        (["--resume", "somewhere", "--sweep", "loss.weight=1,2"], "--resume takes no"),
    ],
)
def test_bad_specs_exit_2_before_training(capsys, monkeypatch, tmp_path, argv, names):
    def no_training(*args, **kwargs):
        raise AssertionError("trained despite a bad spec")

    monkeypatch.setattr(runner, "train_seeds", no_training)
    code = cli.main(["run", *argv, "--out", str(tmp_path / "new" / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxae: error: ")
    assert names in err
    assert not (tmp_path / "new").exists()  # nothing written


# ------------------------------------------------------------------------------------------------
# Resume


def test_stopped_swept_run_resumes_to_the_same_result(swept, tmp_path):
    out_dir, _ = swept
    stopped = tmp_path / "stopped"
    args = cli.build_parser().parse_args(["run", "multiples", *ARGS, *SWEEP, "--out", str(stopped)])
    stop = cli.StopFlag()
    stop.signal = signal.SIGTERM  # stop at the first chunk boundary
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.cmd_run(args, stop) == 128 + signal.SIGTERM
    assert not stopped.exists()
    progress = results.read_progress(stopped)
    assert progress["sweep"] == SPECS
    assert [g["epochs_done"] for g in progress["groups"]] == [1]

    assert _main("run", "--resume", str(stopped))[0] == 0
    assert not results.partial_dir(stopped).exists()
    resumed, whole = _metrics(stopped), _metrics(out_dir)
    for m in (resumed, whole):  # the same run twice: identical but for the clock and memory
        m.pop("timing"), m.pop("memory", None)
    assert resumed == whole
    for i in range(len(KEYS)):
        a, b = _metrics(stopped / f"grid/p{i}"), _metrics(out_dir / f"grid/p{i}")
        for label in ("torch", "flax"):
            assert a["arms"][label]["final_loss"] == b["arms"][label]["final_loss"]
    params = results.load_checkpoint(stopped / "grid" / "p1" / "params")
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, params),
        jax.tree.map(np.asarray, results.load_checkpoint(out_dir / "grid" / "p1" / "params")),
    )
