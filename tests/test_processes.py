"""Many processes, one sweep: the environment that names them, and two processes on loopback (one
CPU device each, gloo collectives) that train and write the same run as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxae import cli, experiments, processes, results

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4"}


def test_process_settings_from_the_environment():
    assert processes.process_settings({}) is None
    assert processes.process_settings({**ADDRESS, "JAX_PROCESS_ID": "3"}) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert (
        processes.process_settings({"JAXAE_DISTRIBUTED": "auto"}) == {}
    )  # jax detects the cluster


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {**ADDRESS, "JAX_PROCESS_ID": "4"},
            "JAX_PROCESS_ID='4' is invalid: allowed is an integer",
        ),
        ({**ADDRESS, "JAX_PROCESS_ID": "x"}, "JAX_PROCESS_ID='x' is invalid"),
        ({**ADDRESS, "JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='0'"),
        (ADDRESS, "invalid without JAX_PROCESS_ID"),
        ({**ADDRESS, "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "host"}, "host:port"),
        ({"JAXAE_DISTRIBUTED": "yes"}, "JAXAE_DISTRIBUTED='yes' is invalid"),
    ],
)
def test_process_settings_refuse_incomplete_or_bad_values(env, message):
    with pytest.raises(ValueError, match=message):
        processes.process_settings(env)


def test_cli_refuses_bad_process_settings_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    for name, value in {**ADDRESS, "JAX_PROCESS_ID": "9"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["run", "offset", "--seeds", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "JAX_PROCESS_ID='9' is invalid" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETTINGS = ["train.epochs=4", "data.n_samples=200", "train.chunk_epochs=2"]
ARGS = ["--seeds", "8", *(arg for s in SETTINGS for arg in ("--set", s))]


@pytest.mark.skipif(
    not hasattr(jax.config, "jax_cpu_collectives_implementation"),
    reason="this jax has no CPU collectives across processes (jax_cpu_collectives_implementation)",
)
def test_two_processes_write_the_run_of_one(tmp_path):
    """`jaxae run offset` as two processes of one CPU device each: only process 0 writes, and the
    run holds the same per-seed figures, losses and weights as the same run in one process (8 seeds
    on one device there, 4 per device here: one size class of XLA:CPU's, so bit for bit)."""
    out = tmp_path / "run"
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        cmd = [sys.executable, "-m", "jaxae.cli", "run", "offset", *ARGS, "--out", str(out)]
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr.decode()[-2000:]
    assert b"8 seeds ->" in outputs[0][0] and b"seeds ->" not in outputs[1][0]  # 0 reports
    assert sorted(os.listdir(tmp_path)) == ["run"]  # one run directory, nothing half-written

    m = json.loads((out / results.METRICS).read_text())
    assert (m["versions"]["process_count"], m["versions"]["device_count"]) == (2, 2)
    exp = experiments.with_overrides(experiments.get("offset"), SETTINGS)
    ref = experiments.run(exp, 8, devices=jax.devices()[:1])
    params = results.load_checkpoint(out / results.PARAMS)
    with np.load(out / results.HISTORY) as history:
        for label, r in ref.results.items():
            chex.assert_trees_all_equal(jax.tree.map(np.asarray, params[label]), r.params)
            np.testing.assert_array_equal(history[f"loss_{label}"], r.history_SxE)
            for name in ("final_loss", "fvu"):
                np.testing.assert_array_equal(
                    np.asarray(m["arms"][label][name], np.float32), r.figures[name]
                )
