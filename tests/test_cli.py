"""The command line: bad input is one line and exit 2, runs are written atomically and never
overwritten, and an interrupted run resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxae import cli, experiments, results

ROOT = Path(__file__).resolve().parent.parent


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_experiment(capsys):
    code, out, _ = _main(capsys, "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == [*experiments.EXPERIMENTS, "atlas"]  # the atlas: a grid of `sparse` runs


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["run", "nope"], "experiment='nope'"),
        (["run", "multiples", "--seeds", "0"], "--seeds=0"),
        (["run", "multiples", "--epochs", "-3"], "--epochs=-3"),
        (["run", "multiples", "--set", "model.n_hidden=0"], "model.n_hidden=0"),
        (["run", "multiples", "--set", "model.activation=tanh"], "model.activation='tanh'"),
        (["run", "multiples", "--set", "loss.rho=2"], "loss.rho=2.0"),
        (["run", "multiples", "--set", "train.batch_size=5000"], "train.batch_size=5000"),
        (["run", "multiples", "--set", "nope.x=1"], "nope.x=1"),
        (["run", "multiples", "--set", "optim.learning_rate=fast"], "optim.learning_rate"),
        (["run", "multiples", "--seeds", "many"], "--seeds"),
        (["run"], "experiment name"),
        (["run", "--resume", "/nonexistent/run"], "--resume='/nonexistent/run'"),
        (["frobnicate"], "frobnicate"),
        (["run", "multiples", "--out", "/proc/jaxae-run"], "--out='/proc/jaxae-run'"),
        (["reproduce", "--out", "/proc/jaxae-reproduce"], "cannot be written"),
        (["run", "sparse", "--set", "data.active=100"], "data.active=100"),
        (["run", "sparse", "--set", "data.n_atoms=0"], "data.n_atoms=0"),
        (["run", "sparse", "--set", "data.magnitude=normal"], "data.magnitude='normal'"),
        (["run", "sparse", "--set", "data.noise=-1"], "data.noise=-1.0"),
        (["run", "sparse", "--set", "loss.aux_k=-1"], "loss.aux_k=-1"),
        (["run", "sparse", "--set", "loss.dead_steps=0"], "loss.dead_steps=0"),
        (["run", "sparse", "--set", "loss.aux_weight=-2"], "loss.aux_weight=-2.0"),
        (["run", "sparse", "--set", "loss.resample_dead=maybe"], "loss.resample_dead"),
        (["run", "sparse", "--set", "model.unit_norm_decoder=2"], "model.unit_norm_decoder"),
        (["run", "sparse", "--set", "model.tied_init=x"], "model.tied_init"),
        (["run", "sparse", "--set", "model.tied=x"], "model.tied"),
        (["run", "sparse", "--set", "model.pre_bias=x"], "model.pre_bias"),
        (["run", "sparse", "--set", "model.k=2"], "model.k=2"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, names):
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxae: error: ")
    assert names in err


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--sweep", "loss.weight=0.001,0.1"], "--sweep='loss.weight=0.001,0.1' is invalid"),
        (["--set", "loss.weight=0.5"], "loss.weight=0.5 is invalid"),
    ],
)
def test_a_value_the_arms_would_ignore_exits_2_naming_them(capsys, tmp_path, args, start):
    """The issue's command: sparse's penalised arms keep their own weights and the others have
    no penalty, so every grid point (or the set value) would be a silent copy; refused before
    anything compiles."""
    out_dir = tmp_path / "new" / "run"
    argv = ["run", "sparse", "--seeds", "2", "--epochs", "1", *args, "--out", str(out_dir)]
    code, out, err = _main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"jaxae: error: {start}: allowed is a field no arm fixes for itself (arms kl w=0.03, "
        "kl w=0.1, l1 w=0.01, l1 w=0.03 set their own loss.weight)"
    ]
    assert not (tmp_path / "new").exists()  # nothing written


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--set", "model.k=3"],
            "model.k=3 is invalid: allowed is None unless model.activation is 'topk', "
            "'batchtopk' or 'omp'",
        ),
        (
            ["--sweep", "optim.eps="],
            "--sweep='optim.eps=' is invalid: allowed is a non-empty, comma-separated list of "
            "values",
        ),
    ],
)
def test_console_script_exits_2_without_traceback(tmp_path, args, line):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxae.cli", "run", "multiples", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"jaxae: error: {line}"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_tiny_sparse_run_end_to_end(capsys, tmp_path):
    out_dir = tmp_path / "s"
    sizes = ["data.n_samples=128", "data.n_atoms=6", "data.n_features=3", "model.n_hidden=6"]
    argv = ["run", "sparse", "--seeds", "3", "--epochs", "2", "--out", str(out_dir)]
    code, out, _ = _main(capsys, *argv, *(a for s in sizes for a in ("--set", s)))
    assert code == 0 and "median gt_mcc" in out
    data = json.loads((out_dir / "metrics.json").read_text())
    assert data["family"] == "sparse" and data["n_seeds"] == 3
    for label, arm in data["arms"].items():
        for key in ("gt_mcc", "gt_mcc_null", "fvu", "l0"):
            assert len(arm[key]) == 3, (label, key)
        for key in ("pw_mcc", "pw_mcc_null"):
            assert len(arm[key]) == 3, (label, key)  # 3 pairs of 3 seeds
    atoms = np.load(out_dir / results.GROUND_TRUTH)
    assert atoms.shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0, rtol=1e-5)
    assert data["analysis"]["chosen"]["topk"] in data["arms"]
    assert (out_dir / "report.md").is_file() and (out_dir / "figures" / "tradeoff.png").is_file()


def test_run_writes_the_contract_and_never_overwrites(capsys, tmp_path):
    out_dir = tmp_path / "m"
    code, out, _ = _main(
        capsys, "run", "multiples", "--seeds", "3", "--epochs", "3", "--out", str(out_dir)
    )
    assert code == 0 and "multiples" in out
    data = json.loads((out_dir / "metrics.json").read_text())
    for field in (
        "experiment",
        "config",
        "n_seeds",
        "final_loss",
        "diverged",
        "final_mse",
        "fvu",
        "converged",
        "convergence_rate",
        "convergence_ci95",
        "pca_floor_fvu",
    ):
        assert field in data, field
    assert data["experiment"] == "multiples" and data["n_seeds"] == 3
    assert len(data["final_loss"]) == len(data["diverged"]) == 3
    assert data["config"]["train"]["epochs"] == 3
    timing = {"compile_s", "train_s", "seed_steps_per_s"}
    assert set(data["timing"]) == timing | {"checkpoints", "checkpoint_s", "checkpoint_share"}
    history = np.load(out_dir / "history.npz")
    assert history["loss_torch"].shape == (3, 3)
    params = results.load_checkpoint(out_dir / "params")
    assert np.asarray(params["flax"]["params"]["encoder"]["kernel"]).shape == (3, 10, 1)
    assert (out_dir / "report.md").is_file() and (out_dir / "figures" / "loss.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    again = tmp_path / "again"
    argv = ["run", "multiples", "--seeds", "3", "--epochs", "3", "--out", str(again)]
    assert _main(capsys, *argv)[0] == 0
    repeat = json.loads((again / "metrics.json").read_text())
    # the same command twice: identical but for the clock and the memory (free memory, peak RSS)
    for volatile in ("timing", "memory"):
        data.pop(volatile), repeat.pop(volatile)
    assert repeat == data

    before = (out_dir / "metrics.json").stat().st_mtime_ns
    code, _, err = _main(capsys, "run", "multiples", "--seeds", "3", "--out", str(out_dir))
    assert code == 2 and "already exists" in err
    assert (out_dir / "metrics.json").stat().st_mtime_ns == before


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGTERM a subprocess mid-training, resume it, compare with a run never interrupted."""
    overrides = ["train.epochs=600", "train.chunk_epochs=1"]
    out_dir = tmp_path / "stopped"
    argv = [
        sys.executable,
        "-m",
        "jaxae.cli",
        "run",
        "offset",
        "--seeds",
        "4",
        "--out",
        str(out_dir),
    ]
    for o in overrides:
        argv += ["--set", o]
    # One device everywhere: the same seeds on other devices agree only to float rounding.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    for line in proc.stderr:  # the first chunk has run once this line appears
        if "training" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not out_dir.exists()
    progress = results.read_progress(out_dir)
    assert 0 < progress["groups"][0]["epochs_done"] < 600
    assert progress["groups"][0]["train_s"] > 0 and progress["groups"][0]["seed_steps"] > 0

    code = subprocess.run(
        [sys.executable, "-m", "jaxae.cli", "run", "--resume", str(out_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    ).returncode
    assert code == 0
    assert not results.partial_dir(out_dir).exists()
    resumed = json.loads((out_dir / "metrics.json").read_text())
    assert resumed["timing"]["resumed"] is True
    assert resumed["timing"]["train_s"] > progress["groups"][0]["train_s"]

    exp = experiments.with_overrides(experiments.get("offset"), ["train.epochs=600"])
    whole = experiments.run(exp, 4, devices=jax.devices()[:1])
    for label, r in whole.results.items():
        assert resumed["arms"][label]["final_loss"] == r.figures["final_loss"].tolist()
