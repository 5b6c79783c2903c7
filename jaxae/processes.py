"""Many processes, one sweep: joining a `jax.distributed` run from the environment.

`jaxae run` calls `init_processes` before anything touches a device; the seed axis is then sharded
over the devices of every process (`runner.train_seeds`), and only process 0 writes (`is_writer`).

When one process dies, the others learn it at once: at their next computation shared with it
(every chunk has some) its sockets are closed and the collective fails, which `watching_peers`
turns into a one-line `PeerLost`, and `exit_now` ends the process without jax.distributed's
shutdown barrier (which would wait for the dead process until the heartbeat timeout, 100 s, then
abort). When the dead process is 0, host of jax.distributed's coordination service, the others'
clients lose the service at the same moment: jax logs it, and its client's fatal-error callback
(which jax does not let a program replace; its private factory takes one, but cannot hand it the
error) may abort the process before jaxae's line. A process that hangs rather than dies is found
by the heartbeat timeout alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import jax
import numpy as np
from jax.experimental import multihost_utils

# The variables `init_processes` reads. JAX_COORDINATOR_ADDRESS (host:port of process 0) and, for
# accelerators, JAX_LOCAL_DEVICE_IDS are also read by jax.distributed.initialize itself; the count
# and the id are not, so jaxae passes them. JAXAE_DISTRIBUTED=auto instead leaves all of them to
# jax's detection of a managed cluster (Slurm, Open MPI, Cloud TPU pod slices, Kubernetes).
PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
AUTO_PROCESS_ENV = "JAXAE_DISTRIBUTED"
_joined = False  # whether `init_processes` joined a multi-process run


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
    global _joined
    settings = process_settings(env)
    if settings is None:
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
    _joined = True
    return True


def joined() -> bool:
    """Whether this process is one of a multi-process run (`init_processes` joined one)."""
    return _joined


def is_writer() -> bool:
    """Whether this process writes results: process 0 of a multi-process run (or the only one)."""
    return jax.process_index() == 0


def on_writer(default: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that writes a run's files: the one place that decides which process
    writes. The writer (`is_writer`) runs it; every other process returns `default(*args)`."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def written(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs) if is_writer() else default(*args, **kwargs)

        return written

    return decorate


def agree(ok: bool) -> bool:
    """Process 0's `ok` on every process (a collective: every process must call it), e.g. whether
    it could take the lock of the run it writes; `ok` itself in a single process."""
    if not _joined:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


class PeerLost(RuntimeError):
    """A computation shared with the other processes failed: most likely one of them died."""


@contextlib.contextmanager
def watching_peers(hint: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn the failure of a collective of a multi-process run (another process died, so its
    sockets closed) into `PeerLost`, whose message ends with `hint()` (e.g. how to resume)."""
    try:
        yield
    except (jax.errors.JaxRuntimeError, ValueError) as err:
        # XLA's failures come as JaxRuntimeError or, from some calls, ValueError; both begin with
        # a status code ("UNKNOWN: Gloo all-reduce failed: ... Connection closed by peer")
        if not _joined or not _XLA_STATUS.match(str(err)):
            raise
        first = str(err).strip().splitlines()[0]
        after = f"; {hint()}" if hint is not None else ""
        raise PeerLost(
            f"process {jax.process_index()} of {jax.process_count()}: a computation shared with "
            f"the other processes failed, most likely because one of them died ({first})" + after
        ) from err


_XLA_STATUS = re.compile(
    r"\s*(UNKNOWN|UNAVAILABLE|INTERNAL|ABORTED|CANCELLED|DEADLINE_EXCEEDED|FAILED_PRECONDITION|"
    r"DATA_LOSS): "
)


def exit_now(code: int, message: str | None = None) -> NoReturn:
    """Print `message` on stderr and end this process at once with `code`, skipping
    jax.distributed's shutdown: it waits at a barrier for every other process and, when one has
    died, aborts after the heartbeat timeout (100 s by default) with a page of logs."""
    if message is not None:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
