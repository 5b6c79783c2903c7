"""The run directory: metrics.json, history.npz, Orbax checkpoints, written atomically.

A finished run is one directory (see the output contract in README.md). It is written under a
temporary name next to its destination and renamed into place at the end, so a run directory is
either complete or absent; an existing one is never replaced. A run stopped early leaves
`DIR.partial/` (progress.json plus an Orbax checkpoint of every program's state) for `--resume`.
In a multi-process run only process 0 writes either (every process holds every seed's results);
resuming one needs `DIR.partial/` where every process can read it (a shared file system).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

import jaxae
from jaxae import metrics, processes, runner, train
from jaxae.experiments.base import (
    ArmResult,
    Experiment,
    GroupCheckpoint,
    RunOutput,
    group_layout,
    groups_of,
)

METRICS = "metrics.json"
HISTORY = "history.npz"
GROUND_TRUTH = "ground_truth.npy"  # the data's true dictionary (atoms_MxD), for data that has one
# Arrays an analysis returns under `analysis["arrays"]` (baselines' filters, example images) for the
# report to draw: too large for metrics.json, so they get their own file.
ARRAYS = "arrays.npz"
# Packages whose version metrics.json records besides jax, flax and optax: the real-data loaders and
# baselines (scikit-learn's digits, PCA and dictionary learning; scikit-image's photographs).
DATA_PACKAGES = ("scikit-learn", "scikit-image")
PARAMS = "params"
PROGRESS = "progress.json"
STATE = "state"


class RunExistsError(ValueError):
    """The output directory already holds a run (or something else)."""


def partial_dir(out: Path) -> Path:
    """Where a stopped run keeps what it needs to resume."""
    return out.with_name(out.name + ".partial")


def check_writable(out: Path) -> None:
    """Refuse, before any training, to write over an existing run or file, or to train a run that
    could not be written: the parent directory is created (as the run would) and a scratch
    directory is made and removed in it."""
    if out.exists():
        raise RunExistsError(
            f"--out={str(out)!r} is invalid: it already exists; allowed is a new path "
            "(a run directory is never overwritten)"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.check-"))
    except OSError as err:
        raise ValueError(
            f"--out={str(out)!r} is invalid: its directory cannot be written ({err.strerror}); "
            "allowed is a path in a writable directory"
        ) from err


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null: strict JSON has no such numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(path: Path, text: str) -> None:
    """Atomic text write: a temporary file in the same directory, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a result file is for everyone to read
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (NaN and infinities as null)."""
    write_text(path, json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")


def versions() -> dict[str, Any]:
    """Library versions and the devices the run used."""
    devices = jax.devices()
    return {
        "jaxae": jaxae.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        **{name: _version(name) for name in DATA_PACKAGES},
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def _version(package: str) -> str | None:
    """An installed package's version, None if it is not installed (read without importing it)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _host_tree(tree: Any) -> Any:
    """Numpy leaves; typed PRNG keys become their raw uint32 data."""

    def leaf(v: Any) -> np.ndarray:
        if isinstance(v, jax.Array) and jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        return np.asarray(v)

    return jax.tree.map(leaf, tree)


def _checkpointer() -> ocp.StandardCheckpointer:
    """Orbax for this process alone: in a multi-process run process 0 writes and every process
    reads by itself, so none may wait for the others at Orbax's barriers."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"jaxae_process_{me}"
    )
    return ocp.StandardCheckpointer(multiprocessing_options=alone)


def save_checkpoint(path: Path, tree: Any) -> None:
    """An Orbax checkpoint of `tree` (host numpy copy) at `path`."""
    with _checkpointer() as ckptr:
        ckptr.save(path.absolute(), _host_tree(tree))
        ckptr.wait_until_finished()


def load_checkpoint(path: Path, target: Any | None = None) -> Any:
    """Restore a checkpoint written by `save_checkpoint` (into `target`'s structure, if given)."""
    with _checkpointer() as ckptr:
        if target is None:
            return ckptr.restore(path.absolute())
        return ckptr.restore(path.absolute(), _host_tree(target))


def run_header(exp: Experiment, out: RunOutput, overrides: list[str]) -> dict[str, Any]:
    """The first keys of every metrics.json: what was run, on which seeds, with which overrides."""
    return {
        "experiment": exp.name,
        "family": exp.family,
        "section": exp.section,
        "claim": exp.claim,
        "config": exp.config.to_dict(),
        "overrides": list(overrides),
        "n_seeds": out.n_seeds,
        "seed": out.seed,
        "arm_axis": exp.arm_axis,
    }


def metrics_dict(out: RunOutput, analysis: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """metrics.json: the first arm's per-seed figures at the top level, every arm under `arms`."""
    exp, results = out.experiment, out.results
    assert results is not None
    primary = results[exp.arms[0].label].summary()
    data: dict[str, Any] = {
        **run_header(exp, out, overrides),
        "convergence_fraction": metrics.CONVERGENCE_FRACTION,
        **primary,
        "arms": {label: r.summary() for label, r in results.items()},
        "analysis": {k: v for k, v in analysis.items() if k != "arrays"},
        "timing": out.timing,
        "memory": out.memory,
        "versions": versions(),
    }
    return data


def _history_arrays(results: dict[str, ArmResult]) -> dict[str, np.ndarray]:
    return {f"loss_{label}": r.history_SxE for label, r in results.items()}


def _staging_dir(final: Path) -> Path:
    """A fresh hidden directory beside `final` (same file system, so renaming it is atomic)."""
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    os.chmod(staging, 0o755)
    return staging


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A staging directory that becomes `out_dir` when the block ends: renamed into place (which
    fails rather than replace an `out_dir` that appeared meanwhile), removed if the block raises;
    the run's `DIR.partial/` is removed once the run is in place."""
    check_writable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(out_dir)
    try:
        yield staging
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(partial_dir(out_dir), ignore_errors=True)


def write_run(
    out_dir: Path,
    out: RunOutput,
    analysis: dict[str, Any],
    overrides: list[str],
    render: Any | None = None,
) -> dict[str, Any]:
    """Write a finished run to `out_dir` atomically; `render(staging_dir)` adds figures/report.

    Only process 0 of a multi-process run writes (`processes.is_writer`); the others return `{}`.
    """
    if not processes.is_writer():
        return {}
    with staged(out_dir) as staging:
        data = metrics_dict(out, analysis, overrides)
        write_json(staging / METRICS, data)
        np.savez_compressed(staging / HISTORY, **_history_arrays(out.results))
        save_checkpoint(staging / PARAMS, {k: r.params for k, r in out.results.items()})
        truth = next(
            (r.ground_truth for r in out.results.values() if r.ground_truth is not None), None
        )
        if truth is not None:
            np.save(staging / GROUND_TRUTH, truth, allow_pickle=False)
        if analysis.get("arrays"):
            np.savez_compressed(staging / ARRAYS, **analysis["arrays"])
        if render is not None:
            render(staging)
    return data


def write_partial(
    out_dir: Path, out: RunOutput, overrides: list[str], sweep: list[str] | None = None
) -> Path:
    """Save a stopped run's progress and state to `DIR.partial/` (replacing an older one);
    `sweep`, the `--sweep` specs of a swept run, is kept so `--resume` rebuilds the same arms.
    Only process 0 of a multi-process run writes; the others return the path at once."""
    target = partial_dir(out_dir)
    if not processes.is_writer():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(target)
    try:
        groups = [
            {"epochs_done": g.epochs_done, "train_s": g.train_s, "seed_steps": g.seed_steps}
            for g in out.groups
        ]
        write_json(
            staging / PROGRESS,
            {
                "experiment": out.experiment.name,
                "n_seeds": out.n_seeds,
                "seed": out.seed,
                "overrides": list(overrides),
                **({"sweep": list(sweep)} if sweep else {}),
                "groups": groups,
            },
        )
        save_checkpoint(
            staging / STATE,
            [{"state": g.state, "history": g.history_SxAxE} for g in out.groups],
        )
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_progress(out_dir: Path) -> dict[str, Any]:
    """progress.json of a stopped run, or ValueError if there is nothing to resume."""
    path = partial_dir(out_dir) / PROGRESS
    if not path.exists():
        raise ValueError(
            f"--resume={str(out_dir)!r} is invalid: no stopped run there ({path} is missing)"
        )
    return json.loads(path.read_text())


def _storable(state: train.TrainState) -> train.TrainState:
    return state.replace(key=jax.random.key_data(state.key))


def load_partial(out_dir: Path, exp: Experiment, progress: dict[str, Any]) -> list[GroupCheckpoint]:
    """The group states of a stopped run of `exp`, restored with their original structure."""
    targets = []
    for arms in groups_of(exp)[: len(progress["groups"])]:
        keys, hyper = group_layout(arms, progress["n_seeds"], progress["seed"])
        init = runner.programs(arms[0].config).init
        abstract = jax.eval_shape(lambda k, h, init=init: _storable(init(k, h)), keys, hyper)
        state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
        history = np.zeros((*abstract.diverged.shape, arms[0].config.train.epochs), np.float32)
        targets.append({"state": state, "history": history})
    restored = load_checkpoint(partial_dir(out_dir) / STATE, targets)
    groups = []
    for item, info in zip(restored, progress["groups"], strict=True):
        state = item["state"].replace(key=jax.random.wrap_key_data(item["state"].key))
        groups.append(
            GroupCheckpoint(
                state,
                np.asarray(item["history"]),
                info["epochs_done"],
                info.get("train_s", 0.0),  # not recorded before this field existed
                info.get("seed_steps", 0.0),
            )
        )
    return groups
