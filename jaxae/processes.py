"""Many processes, one sweep: joining a `jax.distributed` run from the environment.

`jaxae run` calls `init_processes` before anything touches a device; the seed axis is then sharded
over the devices of every process (`runner.train_seeds`), and only process 0 writes (`is_writer`).
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax

# The variables `init_processes` reads. JAX_COORDINATOR_ADDRESS (host:port of process 0) and, for
# accelerators, JAX_LOCAL_DEVICE_IDS are also read by jax.distributed.initialize itself; the count
# and the id are not, so jaxae passes them. JAXAE_DISTRIBUTED=auto instead leaves all of them to
# jax's detection of a managed cluster (Slurm, Open MPI, Cloud TPU pod slices, Kubernetes).
PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
AUTO_PROCESS_ENV = "JAXAE_DISTRIBUTED"


def _env_int(env: dict[str, str], name: str, low: int, high: int | None, allowed: str) -> int:
    text = env[name]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        raise ValueError(f"{name}={text!r} is invalid: allowed is {allowed}")
    return value


def process_settings(env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """`jax.distributed.initialize` keywords from the environment; None for a single process.

    With JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (all three, the same address
    and count in every process, ids 0..n-1) they are passed as given; with JAXAE_DISTRIBUTED=auto,
    jax detects them (`{}`). Anything else set but incomplete or out of range is a `ValueError`.
    """
    env = dict(os.environ if env is None else env)
    auto = env.get(AUTO_PROCESS_ENV)
    if auto is not None and auto != "auto":
        raise ValueError(f"{AUTO_PROCESS_ENV}={auto!r} is invalid: allowed is 'auto' or unset")
    given = [name for name in PROCESS_ENV if env.get(name)]
    if auto is not None and not given:
        return {}
    if not given:
        return None
    missing = [name for name in PROCESS_ENV if name not in given]
    if missing:
        raise ValueError(
            f"{given[0]}={env[given[0]]!r} is invalid without {' and '.join(missing)}: allowed is "
            f"all of {', '.join(PROCESS_ENV)} set, or {AUTO_PROCESS_ENV}=auto on a managed cluster"
        )
    address = env["JAX_COORDINATOR_ADDRESS"]
    if not re.fullmatch(r".+:[0-9]+", address):
        raise ValueError(
            f"JAX_COORDINATOR_ADDRESS={address!r} is invalid: allowed is host:port of process 0"
        )
    n = _env_int(env, "JAX_NUM_PROCESSES", 1, None, "a positive integer")
    pid = _env_int(env, "JAX_PROCESS_ID", 0, n, f"an integer from 0 to {n - 1}")
    return {"coordinator_address": address, "num_processes": n, "process_id": pid}


def init_processes(env: dict[str, str] | None = None) -> bool:
    """Join a multi-process run when the environment asks for one (see `process_settings`).

    Must run before anything touches a device. On CPU the processes exchange data over gloo (jax's
    `jax_cpu_collectives_implementation`). Returns whether jax.distributed was initialised.
    """
    settings = process_settings(env)
    if settings is None:
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
    return True


def is_writer() -> bool:
    """Whether this process writes results: process 0 of a multi-process run (or the only one)."""
    return jax.process_index() == 0
