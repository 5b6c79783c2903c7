"""The tutorial family: each of the tutorial's claims (§1.2-§1.5) as a preset of arms plus its
analysis.

- `multiples` (§1.2): 10-1-10 ReLU on integer multiples, per initialiser (PyTorch, Flax);
- `offset` (§1.3): the same data plus a per-sample offset, hidden sizes 1-4;
- `noise` (§1.4): standard Gaussian data, hidden sizes 1-10;
- `overcomplete` (§1.5): 10-10-10 on Gaussian data, plain and with the sparse cures (top-3, KL), the
  weights compared across seeds (PW-MCC) against their chance level; a control trains every seed a
  second time (a determinism check).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxae import metrics, schema
from jaxae.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxae.experiments.base import (
    Arm,
    ArmResult,
    Experiment,
    agreement,
    decoder_rows,
    encoder_rows,
    sweep,
    with_,
)

FAMILY = "tutorial"

# ----------------------------------------------------------------------------------------------
# Presets


def _multiples_config() -> Config:
    """§1.2 as the tutorial wrote it: 10-1-10 ReLU, torch.optim.Adam(weight_decay=1e-3)."""
    return Config(
        data=DataConfig(kind="multiples"),
        model=ModelConfig(n_hidden=1, activation="relu", init="torch"),
        optim=OptimConfig(learning_rate=1e-3, weight_decay=1e-3),
        train=TrainConfig(epochs=1500, batch_size=100),
    )


def _gaussian_config(n_hidden: int, epochs: int) -> Config:
    """§1.4/§1.5: randn(1000, 10), plain Adam (lr 1e-3, no weight decay), batch 100."""
    return Config(
        data=DataConfig(kind="gaussian"),
        model=ModelConfig(n_hidden=n_hidden, activation="relu", init="torch"),
        optim=OptimConfig(learning_rate=1e-3, weight_decay=0.0),
        train=TrainConfig(epochs=epochs, batch_size=100),
    )


# ----------------------------------------------------------------------------------------------
# Analyses


# Median PW-MCC at which the seeds of an arm are said to agree (the report's "agree").
AGREE = 0.9


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rate:
    """How often an arm converged (to its PCA floor), with the 95% Wilson interval."""

    n_hidden: int
    convergence_rate: float
    convergence_ci95: tuple[float, float]


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitRow(Rate):
    """`multiples`, per initialiser: whether the failures are dead hidden units."""

    dead_unit_fraction: float  # seeds whose unit never fires at the end
    dead_at_init_fraction: float  # seeds whose unit never fires at initialisation
    failed_with_dead_unit: int
    failed: int
    final_loss_quantiles_converged: schema.Quantiles


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizeRow(Rate):
    """`offset` and `noise`, per hidden size: convergence, reconstruction and FVU."""

    reconstruction_rate: float
    reconstruction_ci95: tuple[float, float]
    pca_floor_fvu: float
    fvu_quantiles: schema.Quantiles
    dead_units_mean: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgreementRow(Rate):
    """`overcomplete`, per arm: medians of agreement across seeds beside their chance levels, and
    the share of seed pairs above the 95th percentile of chance."""

    l0_median: float
    pw_mcc_median: float
    pw_mcc_null_median: float
    pw_mcc_encoder_median: float
    pw_mcc_encoder_null_median: float
    above_chance: float
    above_chance_encoder: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Overcomplete:
    """`overcomplete`'s analysis: agreement per arm, and the control (every seed trained twice)."""

    seeds: Rate
    pairs: int
    control_similarity: dict[str, list[float]]  # layer -> per seed, mean matched cosine
    control_min: dict[str, float]
    agreement: dict[str, AgreementRow]
    agree_at: float  # `AGREE`


def _rate(result: ArmResult) -> Rate:
    s = result.summary()
    return Rate(
        n_hidden=s.n_hidden,
        convergence_rate=s.convergence_rate,
        convergence_ci95=s.convergence_ci95,
    )


def analyse_multiples(exp: Experiment, results: dict[str, ArmResult]) -> dict[str, InitRow]:
    """Convergence per initialiser, and whether failures are dead hidden units."""
    out: dict[str, InitRow] = {}
    for label, r in results.items():
        never_active = r.figures["unit_active_fraction"][:, 0] == 0
        failed = ~r.converged
        out[label] = InitRow(
            **schema.fields_of(_rate(r)),
            dead_unit_fraction=float(np.mean(never_active)),
            dead_at_init_fraction=float(np.mean(r.figures["dead_at_init"])),
            failed_with_dead_unit=int(np.sum(failed & never_active)),
            failed=int(np.sum(failed)),
            final_loss_quantiles_converged=schema.Quantiles.of(
                r.figures["final_loss"][r.converged]
            ),
        )
    return out


def analyse_sweep(exp: Experiment, results: dict[str, ArmResult]) -> dict[str, SizeRow]:
    """Per hidden size: convergence (to the size's PCA floor), reconstruction, FVU and the floor."""
    return {
        label: SizeRow(
            **schema.fields_of(_rate(r)),
            reconstruction_rate=float(np.mean(r.reconstructs)),
            reconstruction_ci95=metrics.wilson_interval(int(r.reconstructs.sum()), len(r.diverged)),
            pca_floor_fvu=r.pca_floor_fvu,
            fvu_quantiles=schema.Quantiles.of(r.figures["fvu"]),
            dead_units_mean=float(
                np.mean(
                    metrics.dead_units(
                        r.figures["unit_active_fraction"], np.full(len(r.diverged), r.arm.n_hidden)
                    )
                )
            ),
        )
        for label, r in results.items()
    }


def _above_chance(values: list[float], null: list[float]) -> float:
    """Share of seed pairs whose agreement exceeds the 95th percentile of its chance level."""
    v, n = np.asarray(values, np.float64), np.asarray(null, np.float64)
    return float(np.mean(v > np.quantile(n, 0.95))) if v.size and n.size else float("nan")


def analyse_overcomplete(exp: Experiment, results: dict[str, ArmResult]) -> Overcomplete:
    """Per arm, PW-MCC across seeds against its chance level (the same seeds' untrained weights);
    the control (every seed trained twice) checks that training is deterministic."""
    main, control = results["seeds"], results["control"]
    control_similarity = {}
    for name, rows in (("encoder", encoder_rows), ("decoder", decoder_rows)):
        w, w_control = rows(main.params), rows(control.params)
        control_similarity[name] = [
            float(np.mean(metrics.matched_similarity(w[i], w_control[i])))
            for i in range(len(control.diverged))
        ]
    table: dict[str, AgreementRow] = {}
    for label, r in results.items():
        if label == "control":
            continue
        a: schema.Agreement = r.measures
        table[label] = AgreementRow(
            **schema.fields_of(_rate(r)),
            l0_median=float(np.median(r.figures["l0"])),
            pw_mcc_median=float(np.median(a.pw_mcc)),
            pw_mcc_null_median=float(np.median(a.pw_mcc_null)),
            pw_mcc_encoder_median=float(np.median(a.pw_mcc_encoder)),
            pw_mcc_encoder_null_median=float(np.median(a.pw_mcc_encoder_null)),
            above_chance=_above_chance(a.pw_mcc, a.pw_mcc_null),
            above_chance_encoder=_above_chance(a.pw_mcc_encoder, a.pw_mcc_encoder_null),
        )
    return Overcomplete(
        seeds=_rate(main),
        pairs=len(main.measures.pw_mcc),
        control_similarity=control_similarity,
        control_min={k: float(np.min(v)) for k, v in control_similarity.items()},
        agreement=table,
        agree_at=AGREE,
    )


# ----------------------------------------------------------------------------------------------
# The experiments

MULTIPLES = Experiment(
    name="multiples",
    family=FAMILY,
    section="§1.2",
    summary="10-1-10 ReLU on integer multiples: how often does one hidden unit suffice?",
    claim=(
        "One hidden unit suffices for x_j = x_0 * (j + 1): the autoencoder learns the rule and the "
        "loss falls to about 0.03-0.2."
    ),
    arms=(
        Arm("torch", _multiples_config()),
        Arm("flax", with_(_multiples_config(), model={"init": "flax"})),
    ),
    analyse=analyse_multiples,
    analysis_type=dict[str, InitRow],
    arm_axis="init",
)

OFFSET = Experiment(
    name="offset",
    family=FAMILY,
    section="§1.3",
    summary="multiples plus a per-sample offset, hidden 1-4: how many units are needed?",
    claim=(
        "With a random offset k added to every feature, one hidden unit never converges; intuition "
        "says two numbers (x_0 and k) are needed; three units converged in the author's run."
    ),
    arms=sweep(with_(_multiples_config(), data={"kind": "offset"}), (1, 2, 3, 4)),
    analyse=analyse_sweep,
    analysis_type=dict[str, SizeRow],
    arm_axis="n_hidden",
)

NOISE = Experiment(
    name="noise",
    family=FAMILY,
    section="§1.4",
    summary="standard Gaussian data, hidden 1-10: incompressible below 10 units?",
    claim=(
        "Independent Gaussian features cannot be compressed: no hidden size below the 10 features "
        "converges."
    ),
    arms=sweep(_gaussian_config(10, 300), tuple(range(1, 11))),
    analyse=analyse_sweep,
    analysis_type=dict[str, SizeRow],
    arm_axis="n_hidden",
)

OVERCOMPLETE = Experiment(
    name="overcomplete",
    family=FAMILY,
    section="§1.5",
    summary="10-10-10 on Gaussian data: always converges, but to different weights each seed?",
    claim=(
        "An overcomplete autoencoder (hidden >= input) always converges, but to different weights "
        "every run, so it extracts nothing useful."
    ),
    arms=(
        Arm("seeds", _gaussian_config(10, 300)),
        Arm("control", _gaussian_config(10, 300)),
        Arm("topk", with_(_gaussian_config(10, 300), model={"activation": "topk", "k": 3})),
        Arm(
            "kl",
            with_(
                _gaussian_config(10, 300),
                model={"activation": "sigmoid"},
                loss={"sparsity": "kl", "rho": 0.1, "weight": 3.0},
            ),
        ),
    ),
    analyse=analyse_overcomplete,
    analysis_type=Overcomplete,
    arm_axis="run",
    measure=agreement,
    arm_type=schema.AgreementArm,
)

# In the order `jaxae list` and `jaxae reproduce` use.
EXPERIMENTS = (MULTIPLES, OFFSET, NOISE, OVERCOMPLETE)
