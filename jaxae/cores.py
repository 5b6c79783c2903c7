"""Every CPU core as an XLA device, so the seed axis is sharded over all of them.

XLA:CPU runs one device on about one core, so a script that imports jaxae and trains sees one
device on a multi-core machine unless it asks for more before JAX creates its CPU backend (at
the first computation or `jax.devices()` call; importing jax or jaxae is fine). The `jaxae`
command calls `use_every_core()` first thing; a script calls it the same way:

    import jaxae

    jaxae.use_every_core()  # before any JAX computation
    run = jaxae.load("runs/sparse")

This module imports nothing from JAX, so calling it never starts JAX itself.
"""

from __future__ import annotations

import os
import sys
import warnings

FLAG = "xla_force_host_platform_device_count"
# With a device per core, each device's operations run on its own thread, not on Eigen's pool of
# every core: devices sharing one pool compete for its threads (measured: 8-10% faster training
# of `sparse`'s ReLU and revived top-k programs at 64 seeds, interleaved runs; scripts/benchmark.py
# runs with the same flags).
SINGLE_THREAD_OPS = "xla_cpu_multi_thread_eigen"


def _jax_started() -> bool:
    """Whether JAX has created its backends already (too late to change the CPU device count).
    JAX has no public way to ask; where its private one is missing, the answer is False."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def use_every_core(*, warn: bool = True) -> None:
    """One XLA CPU device per core this process may run on (`os.sched_getaffinity`).

    Sets `--xla_force_host_platform_device_count` in `XLA_FLAGS`, and
    `--xla_cpu_multi_thread_eigen=false` (`SINGLE_THREAD_OPS`) unless that is set too; an explicit
    setting of the device count leaves `XLA_FLAGS` alone. It only affects the CPU platform, so on
    an accelerator it changes nothing. Call it before any JAX computation: once JAX has started,
    the flag has no effect in this process, which `warn` reports as a `RuntimeWarning`.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return
    if warn and _jax_started():
        warnings.warn(
            "jaxae.use_every_core() was called after JAX started: this process keeps the CPU "
            "devices it has; call it before any JAX computation",
            RuntimeWarning,
            stacklevel=2,
        )
    cores = len(os.sched_getaffinity(0))
    single = "" if SINGLE_THREAD_OPS in flags else f" --{SINGLE_THREAD_OPS}=false"
    os.environ["XLA_FLAGS"] = f"{flags} --{FLAG}={cores}{single}".strip()
