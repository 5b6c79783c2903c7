"""Named experiments: the registry of every family's presets, and what they share (from `base`).

Each family is one module (`tutorial`, `images`, ...) with its presets, their analyses and an
`EXPERIMENTS` tuple; this registry joins those tuples into `EXPERIMENTS` (name -> experiment, in
family order) and re-exports `base`, so callers import from `jaxae.experiments` alone. Adding an
experiment touches its family's module and, for a new family, the list below.
"""

from __future__ import annotations

from collections.abc import Iterable

from jaxae.experiments import images, sparse, tutorial
from jaxae.experiments.base import (
    SIMILARITY_SEEDS,
    Arm,
    ArmResult,
    Experiment,
    GroupCheckpoint,
    RunOutput,
    agreement,
    decoder_rows,
    encoder_rows,
    group_layout,
    groups_of,
    run,
    sweep,
    with_,
    with_overrides,
)

__all__ = [
    "EXPERIMENTS",
    "FAMILIES",
    "SIMILARITY_SEEDS",
    "Arm",
    "ArmResult",
    "Experiment",
    "GroupCheckpoint",
    "RunOutput",
    "agreement",
    "decoder_rows",
    "encoder_rows",
    "get",
    "group_layout",
    "groups_of",
    "run",
    "sweep",
    "with_",
    "with_overrides",
]

# The families, in the order their experiments are listed and reproduced: the tutorial's first.
FAMILIES = (tutorial, sparse, images)


def _by_name(experiments: Iterable[Experiment]) -> dict[str, Experiment]:
    """Name -> experiment; two experiments of one name would shadow each other, so that raises."""
    out: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.name in out:
            raise ValueError(f"experiment name {exp.name!r} is registered twice")
        out[exp.name] = exp
    return out


EXPERIMENTS: dict[str, Experiment] = _by_name(e for f in FAMILIES for e in f.EXPERIMENTS)


def get(name: str) -> Experiment:
    """The experiment called `name`; `ValueError` listing the known names otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(
            f"experiment={name!r} is invalid: allowed is one of {', '.join(EXPERIMENTS)}"
        )
    return EXPERIMENTS[name]
