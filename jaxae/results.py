"""The run directory: metrics.json, history.npz, Orbax checkpoints, written atomically.

A finished run is one directory (see the output contract in README.md). It is written under a
temporary name next to its destination, flushed to disk and renamed into place at the end, so a
run directory is either complete or absent; an existing one is never replaced.

An unfinished run keeps `DIR.partial/` (progress.json plus an Orbax checkpoint of every program's
state) for `--resume`: written every `train.checkpoint_minutes` while training and on a stop
(Ctrl-C, SIGTERM). Each one is written and flushed under a temporary name, then swapped in for the
one before (`DIR.partial.old` for the instant between the two renames), and the finished run
removes it only once the run directory is in place. So a crash at any moment, SIGKILL or power
loss included, leaves the run complete or a complete checkpoint to resume; `recover` tidies what
such a crash leaves behind (an old checkpoint to put back, staging directories), and a run found
complete beside a leftover `DIR.partial/` is one killed just before removing it. An `OSError`
while writing either (a full disk) is a `WriteError` saying what is kept.

One process at a time writes a destination: `locked` holds an flock on `.DIR.lock` beside it,
which the OS releases when the process ends, however it ends. In a multi-process run only process
0 writes (every process holds every seed's results); resuming one needs `DIR.partial/` where
every process can read it (a shared file system).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

import jaxae
from jaxae import experiments, metrics, processes, runner, schema, train
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
# Arrays an analysis holds in its `schema.arrays()` field (baselines' filters, example images) for
# the report to draw: too large for metrics.json, so they get their own file.
ARRAYS = "arrays.npz"
# Packages whose version metrics.json records besides jax, flax and optax: the real-data loaders and
# baselines (scikit-learn's digits, PCA and dictionary learning; scikit-image's photographs).
DATA_PACKAGES = ("scikit-learn", "scikit-image")
PARAMS = "params"
PROGRESS = "progress.json"
STATE = "state"
# Test hook: JAXAE_TEST_PAUSE=POINT:N:MARKER makes the process write the file MARKER and sleep the
# N-th time it reaches POINT (see `pause_point`), for a test to kill it exactly there.
PAUSE_ENV = "JAXAE_TEST_PAUSE"
PAUSE_POINTS = ("chunk", "checkpoint-write", "checkpoint-swap", "final-write", "final-rename")


class RunExistsError(ValueError):
    """The output directory already holds a run (or something else)."""


class WriteError(Exception):
    """Writing a checkpoint or a run failed (a full disk, a lost mount, ...); the message says what
    failed, why, and what is kept."""


def partial_dir(out: Path) -> Path:
    """Where a stopped run keeps what it needs to resume."""
    return out.with_name(out.name + ".partial")


def _old_partial(out: Path) -> Path:
    """Where the previous checkpoint waits while a new one is swapped in."""
    return out.with_name(out.name + ".partial.old")


def lock_path(out: Path) -> Path:
    """The lock file of a destination: hidden, beside it."""
    return out.with_name(f".{out.name}.lock")


_reached: dict[str, int] = {}  # how often each pause point was reached (for `pause_point`)


def pause_point(point: str) -> None:
    """Test hook, inert unless JAXAE_TEST_PAUSE names `point`: the N-th time the process reaches
    it, write the marker file and sleep until killed. Points (`PAUSE_POINTS`): `chunk` (a chunk
    trained, before its checkpoint), `checkpoint-write` (a checkpoint's files written, not yet in
    place), `checkpoint-swap` (the previous checkpoint moved aside, the new one not yet in its
    place), `final-write` (the run's files written, not yet in place), `final-rename` (the run in
    place, its DIR.partial not yet removed)."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec or spec.split(":", 1)[0] != point:
        return
    _, n, marker = spec.split(":", 2)
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(n):
        Path(marker).write_text(f"{os.getpid()}\n")
        while True:
            time.sleep(60)


def _lock_fd(path: Path) -> int | None:
    """An open descriptor of `path` holding its flock, or None if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        held = os.fstat(fd)
        if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)  # its last holder removed it as we opened it: lock the file there now


@contextlib.contextmanager
def locked(out: Path, flag: str = "--out") -> Iterator[None]:
    """Be the one process writing `out` and its DIR.partial while the block runs: an exclusive
    flock on `.DIR.lock` beside it (`lock_path`). The OS drops the lock when the process ends, so
    a killed run never leaves a stale one; a second process raises `ValueError` at once, naming
    `flag` (the option that gave the path). The file is removed when the block ends."""
    path = lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock_fd(path)
    except OSError as err:
        raise ValueError(
            f"{flag}={str(out)!r} is invalid: its directory cannot be written ({_reason(err)}); "
            "allowed is a path in a writable directory"
        ) from err
    if fd is None:
        raise ValueError(
            f"{flag}={str(out)!r} is invalid: another jaxae run is writing it (it holds {path}); "
            "allowed is a path no running jaxae run writes"
        )
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while still locked, so a waiter retries
            os.unlink(path)
        os.close(fd)


@processes.on_writer(lambda *args, **kwargs: None)
def recover(out: Path) -> None:
    """Tidy what a killed run left beside `out`; call it holding `locked(out)`. A checkpoint caught
    between its two renames is put back as DIR.partial (or dropped beside a newer one), and
    staging directories of the run, of its checkpoints and of `check_writable` are removed."""
    target, old = partial_dir(out), _old_partial(out)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, target)
    stale = (f".{out.name}.tmp-", f".{target.name}.tmp-", f".{out.name}.check-")
    if out.parent.is_dir():
        for path in out.parent.iterdir():
            if path.name.startswith(stale) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


@processes.on_writer(lambda *args, **kwargs: None)
def remove_partial(out: Path) -> None:
    """Remove `out`'s DIR.partial: renamed to a staging name first, so a crash midway leaves it
    whole or gone (`recover` removes the rest)."""
    for path in (partial_dir(out), _old_partial(out)):
        if path.exists():
            doomed = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{partial_dir(out).name}.tmp-"))
            os.rename(path, doomed / "x")
            shutil.rmtree(doomed, ignore_errors=True)


def check_writable(out: Path, *, resuming: bool = False) -> None:
    """Refuse, before any training, to write over an existing run or file, or over a stopped run
    (its DIR.partial) unless `resuming` it, or to train a run that could not be written: the
    parent directory is created (as the run would) and a scratch directory is made and removed in
    it."""
    if out.exists():
        raise RunExistsError(
            f"--out={str(out)!r} is invalid: it already exists; allowed is a new path "
            "(a run directory is never overwritten)"
        )
    if not resuming and (partial_dir(out).exists() or _old_partial(out).exists()):
        raise RunExistsError(
            f"--out={str(out)!r} is invalid: {partial_dir(out)} holds a stopped run; allowed is "
            f"`jaxae run --resume {out}` to finish it, or a new path"
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


class _OsErrorRecords(logging.Filter):
    """Drops Orbax's log records of a failed write from the operating system (the `OSError`
    `save_checkpoint` raises says it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return _OS_ERROR.search(f"{record.getMessage()} {exc}") is None


# How TensorStore (Orbax's writer) reports an operating-system error: a ValueError ending in
# `[os_error_code='28']` (ENOSPC).
_OS_ERROR = re.compile(r"os_error_code='(\d+)'")


def save_checkpoint(path: Path, tree: Any) -> None:
    """An Orbax checkpoint of `tree` (host numpy copy) at `path`. An error of the operating system
    while writing (a full disk) is an `OSError`, whichever layer of Orbax it came through."""
    quiet = _OsErrorRecords()
    orbax_log = logging.getLogger("absl")
    orbax_log.addFilter(quiet)
    try:
        with _checkpointer() as ckptr:
            ckptr.save(path.absolute(), _host_tree(tree))
            ckptr.wait_until_finished()
    except ValueError as err:
        code = _OS_ERROR.search(str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from err
    finally:
        orbax_log.removeFilter(quiet)


def load_checkpoint(path: Path, target: Any | None = None) -> Any:
    """Restore a checkpoint written by `save_checkpoint` (into `target`'s structure, if given)."""
    with _checkpointer() as ckptr:
        if target is None:
            return ckptr.restore(path.absolute())
        return ckptr.restore(path.absolute(), _host_tree(target))


def read_run(run_dir: Path) -> schema.Run:
    """metrics.json of a run (not a swept one) as its types (`run_of`)."""
    return run_of(json.loads((Path(run_dir) / METRICS).read_text()))


def run_of(data: dict[str, Any]) -> schema.Run:
    """A run's metrics.json, parsed, as its types: the arm and analysis types its experiment names
    (`Experiment.arm_type`, `analysis_type`). A run of an experiment this version does not have is
    read leniently, as plain arm summaries and its analysis as JSON."""
    exp = experiments.EXPERIMENTS.get(data.get("experiment"))
    if exp is None:
        return schema.read(data, schema.ArmSummary, Any, strict=False)
    return schema.read(data, exp.arm_type, exp.analysis_type)


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


def metrics_dict(out: RunOutput, analysis: Any, overrides: list[str]) -> dict[str, Any]:
    """metrics.json (`schema.Run`): the first arm's per-seed figures at the top level, every arm
    under `arms`, the experiment's analysis (its arrays go to arrays.npz)."""
    exp, results = out.experiment, out.results
    assert results is not None
    arms = {label: r.summary() for label, r in results.items()}
    run = schema.Run(
        **run_header(exp, out, overrides),
        convergence_fraction=metrics.CONVERGENCE_FRACTION,
        arms=arms,
        analysis=analysis,
        timing=out.timing,
        memory=out.memory,
        versions=versions(),
        primary=arms[exp.arms[0].label],
    )
    return schema.write(run)


def _history_arrays(results: dict[str, ArmResult]) -> dict[str, np.ndarray]:
    return {f"loss_{label}": r.history_SxE for label, r in results.items()}


def _staging_dir(final: Path) -> Path:
    """A fresh hidden directory beside `final` (same file system, so renaming it is atomic)."""
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    os.chmod(staging, 0o755)
    return staging


def _reason(err: OSError) -> str:
    """What the operating system said, without the path (the message names it)."""
    return err.strerror or str(err)


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if not (directory and err.errno == errno.EINVAL):  # some file systems cannot sync one
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk before it is renamed into place, so
    that the rename never makes visible what a power cut could still take back."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder, directory=True)


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A staging directory that becomes `out_dir` when the block ends: flushed to disk and renamed
    into place (which fails rather than replace an `out_dir` that appeared meanwhile), removed if
    the block raises. The run's `DIR.partial/` is removed only once the run is in place, so a
    crash at any moment leaves one of the two. An `OSError` becomes a `WriteError`."""
    check_writable(out_dir, resuming=True)
    try:
        staging = _staging_dir(out_dir)
    except OSError as err:
        raise WriteError(f"writing the run {out_dir} failed ({_reason(err)})") from err
    try:
        yield staging
        pause_point("final-write")
        _fsync_tree(staging)
        os.rename(staging, out_dir)
        _fsync(str(out_dir.parent), directory=True)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise WriteError(
                f"writing the run {out_dir} failed ({_reason(err)}); nothing was written there"
            ) from err
        raise
    pause_point("final-rename")
    remove_partial(out_dir)


@processes.on_writer(lambda *args, **kwargs: {})
def write_run(
    out_dir: Path, out: RunOutput, overrides: list[str], render: Any | None = None
) -> dict[str, Any]:
    """Write a finished run (its results and `out.analysis`) to `out_dir` atomically;
    `render(staging_dir)` adds figures/report. Writers only (`on_writer`): elsewhere `{}`."""
    analysis = out.analysis
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
        arrays = schema.host_arrays(analysis)
        if arrays:
            np.savez_compressed(staging / ARRAYS, **arrays)
        if render is not None:
            render(staging)
    return data


@processes.on_writer(lambda *args, **kwargs: {})
def write_atlas(out_dir: Path, atlas: Any, render: Any | None = None) -> dict[str, Any]:
    """Write a finished atlas run (`experiments.atlas.Atlas`) to `out_dir` atomically: its
    metrics.json, then `render(staging_dir)`'s figures and report."""
    with staged(out_dir) as staging:
        data = {**schema.encode(atlas), "versions": versions()}
        write_json(staging / METRICS, data)
        if render is not None:
            render(staging)
    return data


@processes.on_writer(lambda out_dir, *args, **kwargs: partial_dir(out_dir))
def write_partial(
    out_dir: Path, out: RunOutput, overrides: list[str], sweep: list[str] | None = None
) -> Path:
    """Save an unfinished run's progress and state to `DIR.partial/`, replacing an older one
    atomically: written and flushed to disk under a temporary name, then swapped in (the older one
    waits as `DIR.partial.old` between the two renames; `recover` puts it back after a crash
    there), so a crash at any moment leaves a complete checkpoint, the old or the new. `sweep`,
    the `--sweep` specs of a swept run, is kept so `--resume` rebuilds the same arms. An `OSError`
    becomes a `WriteError`, with the older checkpoint still in place. Writers only (`on_writer`):
    elsewhere the path, at once."""
    target, old = partial_dir(out_dir), _old_partial(out_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging_dir(target)
    except OSError as err:
        raise WriteError(_checkpoint_failed(out_dir, err)) from err
    try:
        groups = [
            {
                "epochs_done": g.epochs_done,
                "train_s": g.train_s,
                "seed_steps": g.seed_steps,
                "checkpoints": g.checkpoints,
                "checkpoint_s": g.checkpoint_s,
            }
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
        pause_point("checkpoint-write")
        _fsync_tree(staging)
        if target.exists():
            if old.exists():  # left by a crash; the newer one in place is complete
                shutil.rmtree(old)
            os.rename(target, old)
        pause_point("checkpoint-swap")
        os.rename(staging, target)
        _fsync(str(target.parent), directory=True)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)  # put the older checkpoint back
        if isinstance(err, OSError):
            raise WriteError(_checkpoint_failed(out_dir, err)) from err
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def _checkpoint_failed(out_dir: Path, err: OSError) -> str:
    target = partial_dir(out_dir)
    kept = (
        f"the previous checkpoint is kept: `jaxae run --resume {out_dir}` continues from it"
        if (target / PROGRESS).exists()
        else "no earlier checkpoint of this run exists"
    )
    return f"writing the checkpoint {target} failed ({_reason(err)}); {kept}"


def _readable_partial(out_dir: Path) -> Path:
    """DIR.partial, or the older checkpoint a crash left waiting as DIR.partial.old."""
    target, old = partial_dir(out_dir), _old_partial(out_dir)
    return old if not target.exists() and old.exists() else target


def read_progress(out_dir: Path) -> dict[str, Any]:
    """progress.json of a stopped run, or ValueError if there is nothing to resume."""
    path = _readable_partial(out_dir) / PROGRESS
    if not path.exists():
        finished = (out_dir / METRICS).exists()
        raise ValueError(
            f"--resume={str(out_dir)!r} is invalid: "
            + ("the run there is finished" if finished else "no stopped run there")
            + f" ({partial_dir(out_dir) / PROGRESS} is missing); allowed is the directory of a "
            "stopped run"
        )
    return json.loads(path.read_text())


def finished_already(out_dir: Path, progress: dict[str, Any]) -> bool:
    """Whether `out_dir` is already the finished run its DIR.partial (`progress`) would finish: a
    run killed after renaming its directory into place, before removing DIR.partial, leaves both.
    False if `out_dir` does not exist; `ValueError` if it holds anything else."""
    if not out_dir.exists():
        return False
    try:
        done = json.loads((out_dir / METRICS).read_text())
    except (OSError, ValueError):
        done = {}
    if all(done.get(k) == progress.get(k) for k in ("experiment", "n_seeds", "seed", "overrides")):
        return True
    raise ValueError(
        f"--resume={str(out_dir)!r} is invalid: it exists and is not the run "
        f"{partial_dir(out_dir)} would finish; allowed is a stopped run whose directory does not "
        "exist (move one of the two away)"
    )


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
    restored = load_checkpoint(_readable_partial(out_dir) / STATE, targets)
    groups = []
    for item, info in zip(restored, progress["groups"], strict=True):
        state = item["state"].replace(key=jax.random.wrap_key_data(item["state"].key))
        groups.append(
            GroupCheckpoint(
                state,
                np.asarray(item["history"]),
                info["epochs_done"],
                info.get("train_s", 0.0),  # not recorded before these fields existed
                info.get("seed_steps", 0.0),
                info.get("checkpoints", 0),
                info.get("checkpoint_s", 0.0),
            )
        )
    return groups
