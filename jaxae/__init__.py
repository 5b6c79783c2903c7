"""jaxae: train (sparse) autoencoders by the thousand, as one jit-compiled JAX program.

For scripts: `jaxae.use_every_core()` (before any JAX computation: one XLA CPU device per core, as
the `jaxae` command uses) and `jaxae.load(run_dir)` (a finished run directory read back: configs,
metrics and every seed's trained autoencoder; jaxae/runs.py). Importing jaxae starts no JAX.
"""

from __future__ import annotations

from typing import Any

from jaxae.cores import use_every_core

__version__ = "0.1.0"

__all__ = ["Run", "TrainedAutoencoder", "load", "use_every_core"]

_FROM_RUNS = ("Run", "TrainedAutoencoder", "load")


def __getattr__(name: str) -> Any:
    """`load`, `Run` and `TrainedAutoencoder` from jaxae.runs, imported on first use (it imports
    JAX, Flax and Orbax, which a plain `import jaxae` need not)."""
    if name in _FROM_RUNS:
        from jaxae import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'jaxae' has no attribute {name!r}")
