"""A user's array (`data.kind="array"`): its width and sample count come from the file, so any
preset trains on it without restating them, and its true atoms (`data.atoms`) score it against
the ground truth (GT-MCC) as jaxae's own sparse data are; a bad atoms file is one line and exit
status 2 before anything compiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from jaxae import cli, data, experiments, metrics, results, runner
from jaxae.config import Config, DataConfig, override


def _save(path: Path, value: np.ndarray, **kwargs: Any) -> str:
    np.save(path, value, **kwargs)
    return str(path)


def sparse_array(n: int, n_features: int, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Bernoulli sparse data as jaxae draws it (`x_NxD`, `atoms_MxD`), to stand for a user's."""
    x, atoms = data.sparse(
        jax.random.key(7), n, n_features, n_atoms, firing="bernoulli", firing_p=0.2
    )
    return np.asarray(x), np.asarray(atoms)


@pytest.fixture
def array_file(tmp_path: Path) -> str:
    return _save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(500, 7)))


def test_override_takes_the_width_and_rows_from_the_file(array_file: str) -> None:
    cfg = override(Config(), ["data.kind=array", f"data.path={array_file}"])
    assert (cfg.data.n_features, cfg.data.n_samples) == (7, 400)  # 500 rows, 100 held out
    held = override(Config(), ["data.kind=array", f"data.path={array_file}", "data.heldout=0.1"])
    assert held.data.n_samples == 450
    # sizes set in the same call win, and are checked against the file as before
    fewer = override(Config(), [f"data.path={array_file}", "data.n_samples=100", "data.kind=array"])
    assert (fewer.data.n_features, fewer.data.n_samples) == (7, 100)
    data.check(fewer.data)
    wrong = override(Config(), ["data.kind=array", f"data.path={array_file}", "data.n_features=5"])
    assert wrong.data.n_features == 5
    with pytest.raises(
        ValueError, match=r"^data\.n_features=5 is invalid: allowed is 7, the width"
    ):
        data.check(wrong.data)
    # a later change of another section leaves the fitted sizes alone
    later = override(cfg, ["optim.learning_rate=0.01"])
    assert later.data == cfg.data


def test_override_refuses_a_missing_file_naming_data_path(tmp_path: Path) -> None:
    missing = tmp_path / "none.npy"
    with pytest.raises(ValueError, match=r"^data\.path='.*none\.npy' is invalid: .*no such file"):
        override(Config(), ["data.kind=array", f"data.path={missing}"])


def test_the_sparse_preset_takes_any_width(tmp_path: Path) -> None:
    """The issue's command: `jaxae run sparse --set data.kind=array --set data.path=x.npy --set
    model.n_hidden=32` on a 16-wide array: every arm takes the file's width and rows."""
    x, _ = sparse_array(600, 16, 32)
    path = _save(tmp_path / "x.npy", x)
    sets = ["data.kind=array", f"data.path={path}", "model.n_hidden=32"]
    exp = experiments.with_overrides(experiments.get("sparse"), sets)
    for arm in exp.arms:
        assert (arm.config.data.n_features, arm.config.data.n_samples) == (16, 480), arm.label
        assert arm.config.model.n_hidden == 32


def test_ground_truth_of_an_array_is_its_atoms_file(tmp_path: Path) -> None:
    x, atoms = sparse_array(300, 5, 8)
    path, atoms_path = _save(tmp_path / "x.npy", x), _save(tmp_path / "atoms.npy", atoms)
    cfg = override(Config(), ["data.kind=array", f"data.path={path}", f"data.atoms={atoms_path}"])
    np.testing.assert_array_equal(data.ground_truth(jax.random.key(0), cfg.data), atoms)
    np.testing.assert_array_equal(data.trained_atoms(cfg), atoms)
    plain = override(Config(), ["data.kind=array", f"data.path={path}"])
    assert data.trained_atoms(plain) is None
    # the true atoms as decoder rows score 1 (up to float32 rounding of the file)
    gt = metrics.ground_truth_mcc(atoms[None], np.asarray(data.trained_atoms(cfg)))
    np.testing.assert_allclose(gt["gt_mcc"], 1.0, rtol=1e-6)


def test_atoms_belong_to_array_data_only() -> None:
    with pytest.raises(ValueError, match=r"^data\.atoms='a\.npy' is invalid: allowed is '' unless"):
        DataConfig(kind="sparse", atoms="a.npy")
    with pytest.raises(ValueError, match=r"^data\.atoms=3 is invalid: allowed is a path"):
        DataConfig(kind="array", path="x.npy", atoms=3)


BAD_ATOMS = {
    "missing": (lambda p: None, "no such file"),
    "rank1": (lambda p: _save(p, np.ones(5)), r"its shape is \(5,\)"),
    "width": (lambda p: _save(p, np.ones((8, 4))), r"atoms M x 5, as wide as the data"),
    "nonfinite": (lambda p: _save(p, np.array([[1.0, np.nan, 0, 0, 0]])), "1 of its values"),
    "pickled": (
        lambda p: _save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True),
        "allow_pickle=False",
    ),
    "zero_row": (lambda p: _save(p, np.eye(3, 5)[[0, 1, 2, 2]] * [[1], [1], [0], [1]]), "rows 2"),
    "strings": (lambda p: _save(p, np.array([["a"] * 5])), "its dtype is <U1"),
}


@pytest.mark.parametrize("case", list(BAD_ATOMS))
def test_a_bad_atoms_file_is_refused_naming_data_atoms(tmp_path: Path, case: str) -> None:
    write, reason = BAD_ATOMS[case]
    path = tmp_path / "atoms.npy"
    write(path)
    with pytest.raises(
        ValueError, match=rf"^data\.atoms='{path}' is invalid: allowed is .*{reason}"
    ):
        data.load_atoms(str(path), 5)


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the test: a config error must stop the command before anything compiles."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(runner, "train_seeds", refuse)


@pytest.mark.parametrize("case", ["missing", "width", "nonfinite"])
def test_the_cli_refuses_a_bad_atoms_file_in_one_line(
    capsys, tmp_path: Path, no_training, case: str
) -> None:
    x, _ = sparse_array(100, 5, 8)
    path, atoms = _save(tmp_path / "x.npy", x), tmp_path / "atoms.npy"
    BAD_ATOMS[case][0](atoms)
    out = tmp_path / "out"
    sets = ["data.kind=array", f"data.path={path}", f"data.atoms={atoms}", "model.n_hidden=8"]
    code = cli.main(["run", "sparse", "--seeds", "2", "--out", str(out), *_flags(sets)])
    stdout, stderr = capsys.readouterr()
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"jaxae: error: data.atoms='{atoms}' is invalid: allowed is ")
    assert not out.exists()


def _flags(assignments: list[str]) -> list[str]:
    return [a for s in assignments for a in ("--set", s)]


def test_a_users_array_with_its_atoms_runs_the_sparse_preset_end_to_end(capsys, tmp_path: Path):
    """Through the CLI on a 4-wide array of 6 atoms (a width no preset names): every arm is
    scored against the file's atoms, which the run keeps as its ground truth."""
    x, atoms = sparse_array(300, 4, 6)
    path, atoms_path = _save(tmp_path / "x.npy", x), _save(tmp_path / "atoms.npy", atoms)
    out = tmp_path / "run"
    sets = [
        "data.kind=array",
        f"data.path={path}",
        f"data.atoms={atoms_path}",
        "model.n_hidden=6",
        # the revived top-k arms without their resampling share the top-k program (as in
        # tests/test_load.py): four programs to compile, not five
        "loss.resample_dead=false",
        "loss.resample_rare=0",
        "loss.resample_split=0",
        "loss.dead_steps=100",
    ]
    argv = ["run", "sparse", "--seeds", "2", "--epochs", "2", "--out", str(out), *_flags(sets)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = json.loads((out / results.METRICS).read_text())
    assert (m["config"]["data"]["n_features"], m["config"]["data"]["n_samples"]) == (4, 240)
    np.testing.assert_array_equal(np.load(out / results.GROUND_TRUTH), atoms)
    for label, arm in m["arms"].items():
        gt = np.asarray(arm["gt_mcc"])
        assert gt.shape == (2,) and np.all((gt > 0) & (gt <= 1)), label
        assert len(arm["gt_mcc_null"]) == 2 and len(arm["recovered"]) == 2
