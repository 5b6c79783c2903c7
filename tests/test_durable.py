"""Runs that survive a crash: periodic checkpoints, SIGKILL at every stage of a run, a full disk,
two runs of one directory at once, and a process of a multi-process run that dies.

Every resumed run must end with the parameters and loss histories of a run never interrupted, bit
for bit (where part of it trained in two processes, to float rounding). The subprocesses share a
persistent compilation cache, so each costs little beyond importing jaxae; `JAXAE_TEST_PAUSE`
(`results.pause_point`) stops one exactly where it is killed.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxae import cli, config, experiments, results

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "multiples"  # two programs (one per initialisation): a checkpoint holds both kinds
TINY = ["train.epochs=8", "train.chunk_epochs=2", "data.n_samples=200"]  # 4 chunks per program
EVERY_CHUNK = "train.checkpoint_minutes=1e-9"  # a checkpoint at every chunk boundary
SETTINGS = [*TINY, EVERY_CHUNK]
ARGS = [arg for s in SETTINGS for arg in ("--set", s)]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """One CPU device (as the reference run uses) and a compilation cache for every subprocess."""
    cache = tmp_path_factory.mktemp("xla-cache")
    return dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


@pytest.fixture(scope="module")
def reference() -> dict[tuple[int, int], experiments.RunOutput]:
    """Uninterrupted runs by seed and device count (each computed when first asked for)."""
    return {}


def _reference(
    cache: dict[tuple[int, int], experiments.RunOutput], n_seeds: int, n_devices: int | None = None
) -> experiments.RunOutput:
    """`EXPERIMENT` on `n_seeds` seeds, trained without a stop or a checkpoint (no `checkpoint`
    hook), on the first `n_devices` devices (default: all, as `cli.main` in this process uses).
    Its config is the runs' own (SETTINGS), so all share compiled programs."""
    devices = jax.devices()[:n_devices]
    if (n_seeds, len(devices)) not in cache:
        exp = experiments.with_overrides(experiments.get(EXPERIMENT), SETTINGS)
        cache[n_seeds, len(devices)] = experiments.run(exp, n_seeds, devices=devices)
    return cache[n_seeds, len(devices)]


def _assert_same_run(out: Path, ref: experiments.RunOutput, rtol: float = 0.0) -> None:
    """The run directory holds `ref`'s weights and loss histories: exactly, or to `rtol`."""
    params = results.load_checkpoint(out / results.PARAMS)
    with np.load(out / results.HISTORY) as history:
        for label, r in ref.results.items():
            mine = jax.tree.map(np.asarray, params[label])
            chex.assert_trees_all_close(mine, r.params, rtol=rtol, atol=0.0)
            np.testing.assert_allclose(history[f"loss_{label}"], r.history_SxE, rtol=rtol, atol=0)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxae.cli", "run", *args]


def _start(cmd: list[str], env: dict[str, str], pause: str | None, tmp: Path) -> subprocess.Popen:
    """Start `cmd`; with `pause` ("POINT:N") it will sleep there, see `_paused`."""
    if pause is not None:
        (tmp / "paused").unlink(missing_ok=True)
        env = {**env, results.PAUSE_ENV: f"{pause}:{tmp / 'paused'}"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _paused(proc: subprocess.Popen, tmp: Path) -> subprocess.Popen:
    """`proc` once it sleeps at its pause point (it has written the marker file)."""
    deadline = time.monotonic() + 120
    while not (tmp / "paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"never paused (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    return proc


def _killed_at(cmd: list[str], env: dict[str, str], pause: str, tmp: Path) -> None:
    """Run `cmd` until it reaches `pause`, then SIGKILL it."""
    _kill(_paused(_start(cmd, env, pause, tmp), tmp))


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _epochs(out: Path) -> list[int]:
    """Epochs done per program in the checkpoint a resume would use."""
    return [g["epochs_done"] for g in results.read_progress(out)["groups"]]


def _error_line(err: str) -> str:
    """The one error line a failed command printed on stderr (its last; no traceback)."""
    lines = err.strip().splitlines()
    assert sum(line.startswith("jaxae: error:") for line in lines) == 1, err
    assert lines[-1].startswith("jaxae: error:") and "Traceback" not in err, err
    return lines[-1]


def _hidden(tmp: Path, out: Path) -> list[str]:
    """Staging directories, old checkpoints and lock files a run left beside `out`."""
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(f".{out.name}"))


def test_checkpoint_minutes_is_checked_before_anything_runs(capsys, tmp_path):
    for bad in (-1.0, float("nan"), float("inf"), "often"):
        with pytest.raises(ValueError, match=r"train.checkpoint_minutes=.* is invalid: allowed"):
            config.TrainConfig(checkpoint_minutes=bad)
    assert config.TrainConfig().checkpoint_minutes == 10
    argv = ["run", EXPERIMENT, "--set", "train.checkpoint_minutes=-1", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.checkpoint_minutes=-1.0 is invalid" in err
    assert list(tmp_path.iterdir()) == []


def test_periodic_checkpoints_are_counted_and_change_nothing(reference, capsys, tmp_path):
    """Every chunk checkpoints (8 of them), metrics.json and the console say so, the finished run
    removes DIR.partial, and the weights equal those of a run without checkpoints."""
    out = tmp_path / "run"
    assert cli.main(["run", EXPERIMENT, "--seeds", "4", *ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checkpoints: 8 written" in printed and printed.count("checkpoints:") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no DIR.partial, no lock file
    timing = json.loads((out / results.METRICS).read_text())["timing"]
    assert timing["checkpoints"] == 8 and timing["checkpoint_s"] > 0
    assert timing["checkpoint_share"] == pytest.approx(timing["checkpoint_s"] / timing["train_s"])
    ref = _reference(reference, 4)
    assert ref.timing["checkpoints"] == 0
    _assert_same_run(out, ref)


def test_sigkill_at_every_stage_resumes_to_the_uninterrupted_run(env, reference, tmp_path):
    """One run killed five times, at every kind of moment, then resumed to its end: in training
    (with a second run of the same --out refused meanwhile), while a checkpoint is written, between
    the renames that swap it in, while the run directory is written, and after it is renamed into
    place but before DIR.partial is removed."""
    out = tmp_path / "run"
    resume = _command("--resume", str(out))

    # 1. Training, the third chunk of the first program done: checkpoints of chunks 1 and 2 exist.
    # Meanwhile the same command again is refused at once (test_one_run_per_directory: --resume).
    new = _command(EXPERIMENT, "--seeds", "4", *ARGS, "--out", str(out))
    first = _paused(_start(new, env, "chunk:3", tmp_path), tmp_path)
    again = subprocess.run(new, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0, again.stderr
    assert "another jaxae run is writing it" in _error_line(again.stderr)
    _kill(first)
    assert not out.exists() and _epochs(out) == [4]

    # 2. Writing a checkpoint (the second since resuming: 8 epochs): the one of 6 epochs stays.
    _killed_at(resume, env, "checkpoint-write:2", tmp_path)
    assert _epochs(out) == [6] and any(".tmp-" in name for name in _hidden(tmp_path, out))

    # 3. Between the renames: the old checkpoint moved aside, the new not yet in place.
    _killed_at(resume, env, "checkpoint-swap:1", tmp_path)
    assert not results.partial_dir(out).exists() and _epochs(out) == [6]  # read from .old

    # 4. Writing the run directory: trained to the end, every chunk checkpointed.
    _killed_at(resume, env, "final-write:1", tmp_path)
    assert not out.exists() and _epochs(out) == [8, 8]

    # 5. The run in place, DIR.partial not yet removed.
    _killed_at(resume, env, "final-rename:1", tmp_path)
    assert (out / results.METRICS).exists() and results.partial_dir(out).exists()

    done = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "finished already" in done.stderr
    assert _hidden(tmp_path, out) == [] and not results.partial_dir(out).exists()
    _assert_same_run(out, _reference(reference, 4, n_devices=1))


def test_one_run_per_directory(capsys, tmp_path):
    """While a process holds a directory's lock, `run --out` and `run --resume` of it exit with
    status 2 at once, naming the option; the lock file goes with its holder's lock."""
    out = tmp_path / "run"
    results.partial_dir(out).mkdir()
    (results.partial_dir(out) / results.PROGRESS).write_text("{}")  # a stopped run to resume
    with results.locked(out):  # a second open file of the lock: flock refuses it as another's
        for argv, flag in (
            (["run", EXPERIMENT, *ARGS, "--out", str(out)], "--out"),
            (["run", "--resume", str(out)], "--resume"),
        ):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err == (
                f"jaxae: error: {flag}={str(out)!r} is invalid: another jaxae run is writing it "
                f"(it holds {results.lock_path(out)}); allowed is a path no running jaxae run "
                "writes"
            )
        assert results.lock_path(out).exists()
    assert not results.lock_path(out).exists()


@pytest.mark.parametrize("failing", ["checkpoint", "run"])
def test_a_full_disk_exits_in_one_line_and_keeps_the_last_checkpoint(
    failing, reference, monkeypatch, capsys, tmp_path
):
    """ENOSPC while writing the third checkpoint, or the run directory: one line, status 1, no
    traceback, nothing half-written; `--resume` then finishes the run as if nothing happened."""
    out = tmp_path / "run"
    save = results.save_checkpoint
    calls = []

    def full_disk(path: Path, tree):
        calls.append(path.name)
        fails = len(calls) == 3 if failing == "checkpoint" else path.name == results.PARAMS
        if fails:
            (path / "junk").mkdir(parents=True)  # something half-written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        save(path, tree)

    monkeypatch.setattr(results, "save_checkpoint", full_disk)
    argv = ["run", EXPERIMENT, "--seeds", "4", *ARGS, "--out", str(out)]
    assert cli.main(argv) == 1
    err = _error_line(capsys.readouterr().err)
    assert "No space left on device" in err
    assert _hidden(tmp_path, out) == [] and not out.exists()
    if failing == "checkpoint":
        assert "the previous checkpoint is kept" in err and _epochs(out) == [4]
    else:
        assert "its trained state is saved" in err and _epochs(out) == [8, 8]

    monkeypatch.setattr(results, "save_checkpoint", save)
    assert cli.main(["run", "--resume", str(out)]) == 0
    _assert_same_run(out, _reference(reference, 4))


def test_orbax_write_errors_become_oserrors(capfd, tmp_path):
    """TensorStore reports a failed write as a ValueError (and Orbax logs it three times): it comes
    out as the OSError it is, silently. Files over RLIMIT_FSIZE fail like a full disk does."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        with pytest.raises(OSError) as caught:
            results.save_checkpoint(tmp_path / "x", {"w": np.arange(100_000, dtype=np.float32)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert caught.value.errno == errno.EFBIG
    assert "os_error_code" not in capfd.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not hasattr(jax.config, "jax_cpu_collectives_implementation"),
    reason="this jax has no CPU collectives across processes (jax_cpu_collectives_implementation)",
)
@pytest.mark.parametrize("victim", [0, 1])
def test_a_dead_process_stops_the_others_and_its_run_resumes(victim, env, reference, tmp_path):
    """Two processes on loopback; one is killed after its third chunk. The other stops within
    seconds, not after jax.distributed's heartbeat timeout (100 s): process 0 with one line and
    status 1; process 1, whose coordination service died with process 0, with jax's own log of
    that too, and perhaps aborted by jax first (its client's fatal-error callback, which jax does
    not let jaxae replace). The last checkpoint,
    resumed in one process, ends as the uninterrupted run to float rounding (trained partly on
    another layout of devices: two processes and one agree only that far)."""
    out = tmp_path / "run"
    port = _free_port()
    cmd = _command(EXPERIMENT, "--seeds", "4", *ARGS, "--out", str(out))
    procs = []
    for i in range(2):
        env_i = dict(
            env,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        procs.append(_start(cmd, env_i, "chunk:3" if i == victim else None, tmp_path))
    _kill(_paused(procs[victim], tmp_path))
    survivor = procs[1 - victim]
    started = time.monotonic()
    _, err = survivor.communicate(timeout=60)
    assert time.monotonic() - started < 30
    if victim == 1:
        assert survivor.returncode == 1, err[-3000:]
        assert "one of them died" in _error_line(err)
    else:
        assert survivor.returncode != 0 and "Traceback" not in err, err[-3000:]

    # process 0 wrote a checkpoint after each chunk it finished (at least 2 of the 3 before it
    # paused or went on to wait for the dead process); one process finishes the run from it (when
    # process 0 itself was killed, that is the single-process case of the test above)
    assert not out.exists() and _epochs(out)[0] >= 4
    if victim == 0:
        return
    resume = _command("--resume", str(out))
    resumed = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, _reference(reference, 4, n_devices=1), rtol=1e-5)
