"""The images family: autoencoders on real images, against what a user would pick instead.

- `digits`: scikit-learn's 8x8 handwritten digits. An overcomplete model (128 units for 64 pixels)
  trained plain, top-k (AuxK), top-k revived (`sparse`'s cure: dead and rarely firing units
  resampled), a pursuit arm (orthogonal matching pursuit over the tied decoder, started at
  training digits), KL and L1 (unit-norm decoder); held-out FVU, L0, dead units and agreement
  across seeds (pw_mcc with its chance level), beside scikit-learn's `PCA` with k components and
  `MiniBatchDictionaryLearning` of the same width with k non-zeros per sample (OMP), over several
  `random_state` values from three starts: scikit-learn's own (a randomized SVD), random
  directions and training digits (`dict_init`), so that its agreement across random states is
  measured as the autoencoders' is.
- `patches`: Ng's CS294A sparse-autoencoder exercise on 8x8 patches of scikit-image's photographs
  as he set it (photographs whitened whole as Olshausen & Field did, 64-25-64 sigmoid hidden and
  output layers, his initialisation, rho 0.01, beta 3, weight decay 1e-4 on the kernels, full-batch
  L-BFGS for 400 iterations), the same model under Adam and on patch-ZCA data, an overcomplete top-k
  arm and revived top-k arms; how oriented and how local the filters are (per unit: the share that
  is oriented and the share that looks like noise), beside random filters and PCA components, and
  whether different seeds find the same ones.

Both presets build their arms from a base config (the top-k arm's), so `--set` on the data
(`data.image`, `data.patch_size`, `data.kind=array` with `data.path`) or the width reaches every
arm; `model.k` and `loss.aux_k` reach the top-k arms only (`base_only`; `model.k` is also the
pursuit arm's `model.infer_k`). Every reconstruction
figure is measured on the held-out split (`data.heldout`) by the family's `measure`, which applies
the trained model to it, vmapped over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import baselines, data, metrics, schema
from jaxae.baselines import (
    DictionaryLearning,
    finite_mean,
    finite_median,
    pca_baseline,
    pca_reconstruction,
)
from jaxae.config import Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from jaxae.experiments.base import (
    Arm,
    ArmResult,
    Experiment,
    built,
    decoder_rows,
    encoder_rows,
    with_,
)
from jaxae.experiments.sparse import DEAD_STEPS, RESAMPLE_RARE
from jaxae.model import hidden_mask, make_model

FAMILY = "images"

# Seeds whose weights are compared pairwise, and the most pairs among them (Hungarian matching of
# 128 units costs a few milliseconds a pair).
PAIR_SEEDS = 100
MAX_PAIRS = 1000
# Seeds whose filters the report shows side by side (seed 0 and the units of seed 1 matched to it).
GRID_SEEDS = 2
# Held-out digits whose reconstructions the report shows.
N_EXAMPLES = 10
# Random filters drawn for the orientation/locality baseline.
RANDOM_FILTERS = 1000
# A filter is oriented at an orientation concentration of at least this (white noise: ~0.13 on
# average, a Gabor patch ~0.8); it looks like noise when both its orientation and its locality are
# below this quantile of the random filters'.
ORIENTED = 0.5
NOISE_QUANTILE = 0.9

# ----------------------------------------------------------------------------------------------
# Presets

DIGITS_WIDTH = 128  # hidden units for 64 pixels: 2x overcomplete
DIGITS_K = 8  # non-zeros per digit: top-k's k, dictionary learning's OMP, PCA's components
DIGITS_KL_WEIGHT = 0.1
DIGITS_KL_RHO = 0.05
DIGITS_L1_WEIGHT = 0.003
DIGITS_EPOCHS = 200
DIGITS_SEEDS = 8
# Dictionary learning fits (random_state 0..n-1): each takes several seconds on 2 cores; and its
# most passes over the data (scikit-learn's default; it stops earlier when it stops improving).
DL_FITS = 8
DL_MAX_ITER = 1000
# `digits` asks for a sparse-autoencoder arm whose seeds agree at least as well as dictionary
# learning's random starts, at a held-out FVU at most this far above dictionary learning's.
FVU_MARGIN = 0.02

# Ng's exercise as he set it (CS294A, `train.m`): 64-25-64, sigmoid hidden and output layers,
# sparsity target rho and weight beta, weight decay lambda on W1 and W2, his initialisation, and
# minFunc's L-BFGS for 400 iterations on all 10,000 patches of his whitened photographs.
NG_HIDDEN = 25
NG_RHO = 0.01
NG_BETA = 3.0
NG_LAMBDA = 1e-4
NG_ITERATIONS = 400
# minFunc's progress tolerance (`progTol`, its default) on Ng's cost: a run stops at the first
# iteration that lowers it by less (`optim.progress_tol`, in jaxae's units by `ng_weights`).
NG_PROGRESS_TOL = 1e-9
# The same model under Adam on minibatches (what the optimiser changes): its step size and epochs.
NG_ADAM_LR = 1e-2
NG_ADAM_EPOCHS = 300
PATCH_SAMPLES = 10_000
# The revived top-k arm (`_revived`): `sparse`'s cure, its batch and step size, and its epochs
# (see `_revived` for how they were chosen).
REVIVED = "topk_revived"
REVIVED_LR = 3e-3
REVIVED_BATCH = 64
DIGITS_REVIVED_EPOCHS = 1000
# The pursuit arm (`_pursuit`): its steps per sample in training and its epochs. It has converged
# by 100 epochs: measured on 8 seeds of the default digits, 100 and 300 epochs agree at pw_mcc
# 0.834 and 0.837, held-out FVU 0.0876 and 0.0872.
PURSUIT = "omp"
PURSUIT_TRAIN_K = 1
DIGITS_PURSUIT_EPOCHS = 100
PATCHES_REVIVED_EPOCHS = 100
# `patches` sweeps the revived arm's k in one program (up to the top-k arm's k) and picks the k
# whose seeds agree most, without looking at the filters' shapes, as `sparse` picks its knobs.
PATCHES_REVIVED_KS = (2, 4)
PATCHES_WIDTH = 128
PATCHES_K = 8
PATCHES_EPOCHS = 60
PATCHES_SEEDS = 8
# The ZCA arm's regulariser as a share of the mean eigenvalue: damps the noisiest (highest
# frequency) directions, as the low-pass in Olshausen & Field's whitening does.
PATCHES_WHITEN_EPS = 0.1


def ng_weights(n_features: int) -> tuple[float, float, float]:
    """Ng's beta, lambda and minFunc's progTol in jaxae's units: `(sparsity weight, weight decay,
    progress tolerance)`.

    Ng's cost (`sparseAutoencoderCost.m`) is
    `J = mean_i 1/2 |x_hat_i - x_i|^2 + lambda/2 (|W1|^2 + |W2|^2) + beta sum_j KL(rho || rho_j)`;
    jaxae's is `mean_i mean_d (x_hat_i - x_i)^2 + w sum_j KL(rho || rho_j)` plus weight decay
    `wd/2 |W|^2` (the gradient `wd * W` in the optimizer chain; `optim.decay_biases=False` keeps it
    off the biases, as Ng's cost does). Ng's `J` times 2/D is jaxae's with `w = 2 beta / D` and
    `wd = 2 lambda / D`: the same function up to a constant factor, so the same optimum, and both
    L-BFGS (its line search and curvature estimate) and Adam are blind to the overall scale; a
    tolerance on the cost's decrease scales by the same 2/D.
    """
    scale = 2.0 / n_features
    return scale * NG_BETA, scale * NG_LAMBDA, scale * NG_PROGRESS_TOL


# Top-k's auxiliary loss revives dead units with the AUX_K largest of their pre-activations (Gao
# et al. 2024); small enough for a `--set model.n_hidden` down to 16 units.
AUX_K = 16


def _topk_model(width: int, k: int) -> ModelConfig:
    """Top-k with the sparse family's remedies for dead units: tied init, unit-norm decoder."""
    return ModelConfig(
        n_hidden=width,
        activation="topk",
        k=k,
        init="torch",
        unit_norm_decoder=True,
        tied_init=True,
    )


def _revived(base: Config, epochs: int) -> Config:
    """`sparse`'s cure on `base`'s data, width and k: top-k with dead and rarely firing units
    resampled, a unit-norm decoder, the pre-encoder bias, Adam with cosine decay (the recipe
    `sparse` found, jaxae/experiments/sparse.py), trained for `epochs`; with tied weights
    (`model.tied`), as Makhzani & Frey's k-sparse autoencoder has them, where `sparse` only starts
    tied. On patches, an untied encoder kept a tenth of its filters noise-like (below random
    filters' 90th percentile) while its decoder rows were edges: measured on the default data, 8
    seeds, k=2, 50% of encoder filters oriented and 9.6% noise-like against 70% and 5.1% of
    decoder rows; tied, 75% and 3.5%, and its seeds agree more (pw_mcc 0.681 against 0.664)."""
    return with_(
        base,
        model={"unit_norm_decoder": True, "tied": True, "tied_init": False, "pre_bias": True},
        loss={
            "aux_k": 0,
            "dead_steps": DEAD_STEPS,
            "resample_dead": True,
            "resample_rare": RESAMPLE_RARE,
        },
        optim={"learning_rate": REVIVED_LR, "schedule": "cosine"},
        train={
            "epochs": epochs,
            "batch_size": min(REVIVED_BATCH, base.data.n_samples),
            "chunk_epochs": max(1, epochs // 6),
        },
    )


def _pursuit(base: Config, epochs: int) -> Config:
    """Orthogonal matching pursuit over the tied unit-norm decoder as the encoder
    (`model.activation="omp"`; MP-SAE, Costa et al. 2025, with the orthogonal refit):
    `PURSUIT_TRAIN_K` steps per sample in training, `base`'s k when the trained model codes data
    (`model.infer_k`), so its held-out codes have dictionary learning's non-zeros and coder. It
    starts as k-means does (`model.init="data"`), with `_revived`'s optimiser and pre-encoder
    bias but no resampling. Measured on the default digits (8 seeds, 300 epochs): from random
    directions 107 of 128 units never win a pursuit step and resampling does not revive them
    (mean pw_mcc 0.634); from the data start, resampling re-aims rare units away from where the
    other seeds' units lie and leaves 22 dead (mean pw_mcc 0.747 with it, 0.813 without, on the
    same seeds; the first two figures compare units unoriented)."""
    return with_(
        _revived(base, epochs),
        loss={"resample_dead": False, "resample_rare": 0.0},
        model={
            "activation": "omp",
            "k": PURSUIT_TRAIN_K,
            "infer_k": base.model.k,
            "init": "data",
        },
    )


def _digits_base() -> Config:
    """The top-k arm's config; the other arms follow from it (`_digits_arms`). It holds the KL
    arm's rho (unused by top-k), so `--set loss.rho` reaches the KL arm through it."""
    cfg = Config(
        data=DataConfig(kind="digits"),
        model=_topk_model(DIGITS_WIDTH, DIGITS_K),
        loss=LossConfig(sparsity="none", rho=DIGITS_KL_RHO, aux_k=AUX_K),
        optim=OptimConfig(learning_rate=1e-3),
        train=TrainConfig(epochs=DIGITS_EPOCHS, batch_size=100, chunk_epochs=DIGITS_EPOCHS // 6),
    )
    return with_(cfg, data=dataclasses.asdict(data.fit_to_data(cfg.data)))


def _plain(cfg: Config, activation: str = "relu", **loss: Any) -> Config:
    """`cfg` without top-k (and its remedies), with the given loss fields."""
    model = dataclasses.replace(
        cfg.model, activation=activation, k=None, unit_norm_decoder=False, tied_init=False
    )
    return dataclasses.replace(
        cfg, model=model, loss=dataclasses.replace(cfg.loss, aux_k=0, **loss)
    )


def _digits_arms(base: Config) -> tuple[Arm, ...]:
    """plain ReLU, L1 with a unit-norm decoder, top-k (the base), KL on sigmoid units.

    The plain arm is the L1 arm's model with no penalty (a sparsity weight of 0 for that arm), so
    the two share one program and differ in nothing else.
    """
    base = with_(base, data=dataclasses.asdict(data.fit_to_data(base.data)))
    l1 = _plain(base, sparsity="l1", weight=DIGITS_L1_WEIGHT)
    l1 = with_(l1, model={"unit_norm_decoder": True})
    kl = _plain(base, "sigmoid", sparsity="kl", weight=DIGITS_KL_WEIGHT)
    # Sigmoid units under a KL penalty learn slowly at Adam's 1e-3; ten times that step trains them
    # within the epochs the other arms get.
    kl = with_(kl, optim={"learning_rate": 10 * base.optim.learning_rate})
    return (
        Arm("plain", l1, hyper=(("sparsity_weight", 0.0),)),
        Arm("l1", l1),
        Arm("topk", base),
        Arm(REVIVED, _revived(base, DIGITS_REVIVED_EPOCHS)),
        Arm(PURSUIT, _pursuit(base, DIGITS_PURSUIT_EPOCHS)),
        Arm("kl", kl),
    )


def _patches_base() -> Config:
    """The overcomplete top-k arm's config; the other arms follow from it (`_patches_arms`). Its
    data are Ng's: whole photographs whitened as Olshausen & Field did, then his normalisation."""
    return Config(
        data=DataConfig(
            kind="patches",
            n_samples=PATCH_SAMPLES,
            n_features=64,
            whiten="olshausen",
            whiten_eps=PATCHES_WHITEN_EPS,
        ),
        model=_topk_model(PATCHES_WIDTH, PATCHES_K),
        loss=LossConfig(sparsity="none", rho=NG_RHO, aux_k=AUX_K),
        optim=OptimConfig(learning_rate=1e-3),
        train=TrainConfig(epochs=PATCHES_EPOCHS, batch_size=100, chunk_epochs=PATCHES_EPOCHS // 6),
    )


def ng_exercise(base: Config) -> Config:
    """Ng's sparse autoencoder as he set it, on `base`'s data: `NG_HIDDEN` sigmoid units and a
    sigmoid output layer, his initialisation, KL to `NG_RHO` with weight `NG_BETA` and weight
    decay `NG_LAMBDA` on the kernels (in jaxae's units, `ng_weights`), full-batch L-BFGS for
    `NG_ITERATIONS` iterations that stop where minFunc's would (`NG_PROGRESS_TOL`)."""
    weight, decay, progress_tol = ng_weights(base.data.n_features)
    ng = _plain(base, "sigmoid", sparsity="kl", weight=weight, rho=NG_RHO)
    return with_(
        ng,
        model={"n_hidden": NG_HIDDEN, "init": "ng", "output": "sigmoid", "pre_bias": False},
        optim={
            "name": "lbfgs",
            "weight_decay": decay,
            "decay_biases": False,
            "progress_tol": progress_tol,
        },
        train={
            "epochs": NG_ITERATIONS,
            "batch_size": base.data.n_samples,
            "chunk_epochs": NG_ITERATIONS // 4,
        },
    )


def _patches_arms(base: Config) -> tuple[Arm, ...]:
    """Ng's exercise (`ng`); the same under Adam on minibatches (`ng_adam`) and on patch-ZCA data
    (`ng_zca`), each differing from `ng` in that one thing; the top-k arm (the base) and the
    revived top-k at each k of `PATCHES_REVIVED_KS` (one program)."""
    base = with_(base, data=dataclasses.asdict(data.fit_to_data(base.data)))
    ng = ng_exercise(base)
    adam = with_(
        ng,
        optim={"name": "adam", "learning_rate": NG_ADAM_LR},
        train={"epochs": NG_ADAM_EPOCHS, "batch_size": base.train.batch_size},
    )
    adam = with_(adam, train={"chunk_epochs": max(1, NG_ADAM_EPOCHS // 6)})
    revived = _revived(base, PATCHES_REVIVED_EPOCHS)
    ks = sorted({min(k, revived.model.k) for k in PATCHES_REVIVED_KS})
    revived = with_(revived, model={"k": max(ks)})
    return (
        Arm("ng", ng),
        Arm("ng_adam", adam),
        Arm("ng_zca", with_(ng, data={"whiten": "zca"})),
        Arm("topk", base),
        *(Arm(f"{REVIVED} k={k}", revived, hyper=(("k", float(k)),)) for k in ks),
    )


# ----------------------------------------------------------------------------------------------
# Measures: what every arm reports, on the held-out split


# ----------------------------------------------------------------------------------------------
# What the family writes (`schema`)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterMeans:
    """Means over units (and seeds) of how oriented and how local filters are, and the shares of
    units that are oriented and that look like noise (`filter_figures`)."""

    orientation: float
    locality: float
    oriented_share: float
    noise_share: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterStats:
    """`FilterMeans`' figures per seed, and their means."""

    orientation: list[float]
    locality: list[float]
    oriented_share: list[float]
    noise_share: list[float]
    mean: FilterMeans


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairAgreement:
    """Agreement between pairs of seeds (`pair_agreement`): pw_mcc (decoder), pw_mcc_encoder and
    shared units per pair with their mean and median, each beside its chance level `*_null`."""

    pw_mcc: list[float]
    pw_mcc_mean: float
    pw_mcc_median: float
    pw_mcc_encoder: list[float]
    pw_mcc_encoder_mean: float
    pw_mcc_encoder_median: float
    shared: list[float]
    shared_mean: float
    shared_median: float
    pw_mcc_null: list[float]
    pw_mcc_null_mean: float
    pw_mcc_null_median: float
    pw_mcc_encoder_null: list[float]
    pw_mcc_encoder_null_mean: float
    pw_mcc_encoder_null_median: float
    shared_null: list[float]
    shared_null_mean: float
    shared_null_median: float
    pairs: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measures(PairAgreement):
    """The family's `measure` of one arm: held-out figures, agreement, and for square inputs its
    filters (`filters["encoder" | "decoder" | "init"]`, init being the untrained encoder)."""

    config: dict[str, Any]  # the arm's own (the arms differ in more than hyperparameters)
    heldout_samples: int
    heldout_fvu: list[float]
    heldout_fvu_quantiles: schema.Quantiles
    heldout_l0: list[float]
    heldout_l0_mean: float
    heldout_code_l1_mean: float
    heldout_dead_units_mean: float
    dead_units_mean: float
    # seeds 0 and 1, for the report's filter grids (ordered by how often a unit fires)
    heldout_unit_firing: list[list[float]]
    heldout_unit_mean: list[list[float]]
    filters: dict[str, FilterStats] | None = schema.optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageArm(schema.ArmSummary, Measures):
    """`arms.<label>` of an images run."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArmRow:
    """The figures an analysis reports of one arm."""

    heldout_l0_mean: float
    heldout_code_l1_mean: float
    dead_units_mean: float
    heldout_dead_units_mean: float
    pw_mcc_mean: float
    pw_mcc_median: float
    pw_mcc_null_mean: float
    pw_mcc_encoder_mean: float
    pw_mcc_encoder_null_mean: float
    shared_mean: float
    pairs: int
    heldout_fvu_median: float
    activation: str
    sparsity: str
    k: int | None
    filters: dict[str, FilterMeans] | None = schema.optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pca:
    """scikit-learn's PCA on the training split: held-out FVU per number of components."""

    components: int
    heldout_fvu_by_components: list[float]
    heldout_fvu: float | None = schema.optional()  # at `components` (digits: the code size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """`digits`' floor (`against_dictionary_learning`): the best arm at dictionary learning's L0
    against dictionary learning from random starts."""

    code_size: int
    fvu_margin: float  # `FVU_MARGIN`
    arms: list[str]  # the arms whose held-out L0 is at most `code_size`
    best: str | None = schema.optional()
    pw_mcc_median: float | None = schema.optional()
    heldout_fvu_median: float | None = schema.optional()
    dl_pw_mcc_median: float | None = schema.optional()
    dl_heldout_fvu_median: float | None = schema.optional()
    agrees_as_well: bool | None = schema.optional()
    fvu_within_margin: bool | None = schema.optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Digits:
    """`digits`' analysis: every arm beside PCA and dictionary learning from both starts."""

    code_size: int
    width: int
    arms: dict[str, ArmRow]
    pca: Pca
    dictionary_learning: DictionaryLearning
    dictionary_learning_random: DictionaryLearning
    # started at training digits as the pursuit arm is (`model.init="data"`); None in runs from
    # before it was measured
    dictionary_learning_data: DictionaryLearning | None = schema.optional()
    against_dictionary_learning: Verdict
    baseline_s: float
    image_side: int | None
    arrays: dict[str, np.ndarray] = schema.arrays()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterBaseline(FilterMeans):
    filters: int  # how many


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoiseLimits:
    """`NOISE_QUANTILE` of random filters' orientation and locality (`noise_limits`)."""

    orientation: float
    locality: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Patches:
    """`patches`' analysis: every arm's filters beside PCA components and random filters (those
    only for square patches, with the thresholds that define oriented and noise-like)."""

    arms: dict[str, ArmRow]
    image_side: int | None
    pca: Pca
    revived_choice: str | None
    baseline_s: float
    pca_filters: FilterBaseline | None = schema.optional()
    random_filters: FilterBaseline | None = schema.optional()
    noise_limits: NoiseLimits | None = schema.optional()
    oriented_at: float | None = schema.optional()  # `ORIENTED`
    noise_quantile: float | None = schema.optional()  # `NOISE_QUANTILE`
    arrays: dict[str, np.ndarray] = schema.arrays()


def heldout_x(cfg: Config) -> np.ndarray:
    """The held-out split of the arm's data (every reconstruction figure is measured on it)."""
    x = data.heldout(jax.random.key(cfg.data.seed), cfg.data)
    if x is None:  # generated data (`--set data.kind=gaussian`): a fresh draw from another key
        x = np.asarray(
            data.make_data(jax.random.fold_in(jax.random.key(cfg.data.seed), 1), cfg.data)
        )
    return x


def _apply_args(r: ArmResult) -> dict[str, Any]:
    """The units in use and the k the trained arm codes with (a pursuit's `model.infer_k`)."""
    cfg = r.arm.config
    return {
        "mask_H": hidden_mask(jnp.int32(r.arm.n_hidden), cfg.model.n_hidden),
        "k": jnp.int32(cfg.model.code_k(r.arm.value("k"))),
    }


def heldout_figures(r: ArmResult, x_NxD: np.ndarray) -> dict[str, np.ndarray]:
    """`metrics.evaluate` of every seed on `x` (vmapped over seeds), plus each unit's mean
    activation and the mean L1 norm of the code."""
    cfg = r.arm.config
    model = make_model(cfg.model, cfg.data.n_features, coding=True)
    args = _apply_args(r)
    x = jnp.asarray(x_NxD)
    weight, rho = np.float32(r.arm.value("sparsity_weight")), np.float32(r.arm.value("rho"))

    def one(params: Any) -> dict[str, jax.Array]:
        figures = metrics.evaluate(
            params, x, model=model, loss_cfg=cfg.loss, sparsity_weight=weight, rho=rho, **args
        )
        h_NxH = model.apply(params, x, args["mask_H"], args["k"], method="encode")
        figures["unit_mean_activation"] = jnp.mean(h_NxH, axis=0)
        figures["code_l1"] = jnp.mean(jnp.sum(jnp.abs(h_NxH), axis=-1))
        figures["unit_code_sum"] = jnp.sum(h_NxH, axis=0)
        return figures

    return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(one))(r.params).items()}


def reconstruct(r: ArmResult, x_NxD: np.ndarray, seed: int = 0) -> np.ndarray:
    """Seed `seed`'s reconstruction of `x`."""
    cfg = r.arm.config
    model = make_model(cfg.model, cfg.data.n_features, coding=True)
    params = jax.tree.map(lambda v: v[seed], r.params)
    args = _apply_args(r)
    x_hat, _ = model.apply(params, jnp.asarray(x_NxD), args["mask_H"], args["k"])
    return np.asarray(x_hat)


def _units(
    r: ArmResult, params: Any, sign_SxH: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(encoder, decoder)` rows `w_SxHxD` of the arm's units in use, each times its sign in
    `sign_SxH` if given (`unit_signs`)."""
    h = r.arm.n_hidden
    encoder, decoder = encoder_rows(params)[:, :h], decoder_rows(params)[:, :h]
    if sign_SxH is None:
        return encoder, decoder
    sign_SxHx1 = np.asarray(sign_SxH, encoder.dtype)[:, :h, None]
    return encoder * sign_SxHx1, decoder * sign_SxHx1


def unit_signs(r: ArmResult, code_sum_SxH: np.ndarray) -> np.ndarray | None:
    """For an arm whose codes take either sign (`model.activation="omp"`), -1 for each unit whose
    held-out codes sum below zero and 1 otherwise: a unit and its negation are then one unit, so
    its rows are compared across seeds oriented, as dictionary learning's atoms are
    (`baselines._oriented`). None for every other arm (non-negative codes: a negated unit is
    another unit)."""
    if r.arm.config.model.activation != "omp":
        return None
    return np.where(np.asarray(code_sum_SxH) < 0, -1.0, 1.0)


def pair_agreement(r: ArmResult, sign_SxH: np.ndarray | None = None) -> dict[str, Any]:
    """`PairAgreement`'s fields: pw_mcc (decoder), pw_mcc_encoder and shared units between pairs
    of the first `PAIR_SEEDS` seeds (at most `MAX_PAIRS` pairs), the trained rows oriented by
    `sign_SxH` if given (`unit_signs`), and the same between the same seeds' untrained weights
    (`_null`, the chance level); per pair, their mean and median."""
    m = min(PAIR_SEEDS, len(r.diverged))
    out: dict[str, Any] = {}
    for suffix, params, sign in (("", r.params, sign_SxH), ("_null", r.init_params, None)):
        encoder, decoder = _units(r, params, sign)
        pairs = metrics.pairwise_mcc(decoder[:m], encoder[:m], max_pairs=MAX_PAIRS)
        for name in ("pw_mcc", "pw_mcc_encoder", "shared"):
            values = pairs.get(name, np.zeros(0))
            out[f"{name}{suffix}"] = values.tolist()
            out[f"{name}{suffix}_mean"] = finite_mean(values)
            out[f"{name}{suffix}_median"] = finite_median(values)
    out["pairs"] = len(out["pw_mcc"])
    return out


def filter_shape(r: ArmResult) -> tuple[np.ndarray, np.ndarray] | None:
    """`(encoder, decoder)` rows as square images `[S, H, P, P]`; None if D is not a square."""
    side = data.side(r.arm.config.data.n_features)
    if side is None:
        return None
    encoder, decoder = _units(r, r.params)
    shape = (*encoder.shape[:2], side, side)
    return encoder.reshape(shape), decoder.reshape(shape)


def random_filters(key: jax.Array, n: int, side: int) -> np.ndarray:
    """`n` filters of i.i.d. standard normal pixels, `[n, side, side]`."""
    return np.asarray(jax.random.normal(key, (n, side, side)))


@functools.cache
def random_baseline(data_seed: int, side: int) -> np.ndarray:
    """The `RANDOM_FILTERS` random filters of a run (from the data seed's key), drawn once: the
    baseline of the orientation table and what `noise_limits` measures noise by."""
    noise = random_filters(random_filter_key(data_seed), RANDOM_FILTERS, side)
    noise.flags.writeable = False  # shared by every caller of the cache
    return noise


@functools.cache
def noise_limits(data_seed: int, side: int) -> tuple[float, float]:
    """`NOISE_QUANTILE` of the orientation and of the locality of the random filters
    (`random_baseline`): a filter below both looks like noise."""
    noise = random_baseline(data_seed, side)
    return (
        float(np.quantile(metrics.orientation_concentration(noise), NOISE_QUANTILE)),
        float(np.quantile(metrics.spatial_concentration(noise), NOISE_QUANTILE)),
    )


def random_filter_key(data_seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(data_seed), 2)


FILTER_FIGURES = ("orientation", "locality", "oriented_share", "noise_share")


def filter_figures(f_SxHxPxP: np.ndarray, limits: tuple[float, float]) -> dict[str, np.ndarray]:
    """Per seed: the mean over units of orientation and locality (spatial concentration), the
    share of units that are oriented (orientation >= `ORIENTED`) and the share that look like
    noise (orientation and locality both below the random filters' `limits`, `noise_limits`)."""
    flat = f_SxHxPxP.reshape(-1, *f_SxHxPxP.shape[-2:])
    shape = f_SxHxPxP.shape[:2]
    orientation = metrics.orientation_concentration(flat).reshape(shape)
    locality = metrics.spatial_concentration(flat).reshape(shape)
    noise = (orientation < limits[0]) & (locality < limits[1])
    return {
        "orientation": orientation.mean(axis=-1),
        "locality": locality.mean(axis=-1),
        "oriented_share": (orientation >= ORIENTED).mean(axis=-1),
        "noise_share": noise.mean(axis=-1),
    }


def filter_stats(f_SxHxPxP: np.ndarray, limits: tuple[float, float]) -> FilterStats:
    """`filter_figures` per seed, with their means."""
    figures = filter_figures(f_SxHxPxP, limits)
    return FilterStats(
        **{name: v.tolist() for name, v in figures.items()},
        mean=FilterMeans(**{name: finite_mean(v) for name, v in figures.items()}),
    )


def measure(r: ArmResult) -> Measures:
    """Held-out FVU, L0, code L1 and dead units; agreement across seeds with its chance level; for
    square inputs, how oriented and local the encoder and decoder filters are (and at init)."""
    cfg = r.arm.config
    x = heldout_x(cfg)
    held = heldout_figures(r, x)
    dead = metrics.dead_units(
        held["unit_active_fraction"], np.full(len(r.diverged), r.arm.n_hidden)
    )
    filters = None
    shaped = filter_shape(r)
    if shaped is not None:
        limits = noise_limits(cfg.data.seed, shaped[0].shape[-1])
        init_encoder, _ = _units(r, r.init_params)
        init = init_encoder.reshape(*init_encoder.shape[:2], *shaped[0].shape[-2:])
        filters = {
            name: filter_stats(f, limits)
            for name, f in (("encoder", shaped[0]), ("decoder", shaped[1]), ("init", init))
        }
    return Measures(
        config=cfg.to_dict(),
        heldout_samples=len(x),
        heldout_fvu=held["fvu"].tolist(),
        heldout_fvu_quantiles=schema.Quantiles.of(held["fvu"]),
        heldout_l0=held["l0"].tolist(),
        heldout_l0_mean=finite_mean(held["l0"]),
        heldout_code_l1_mean=finite_mean(held["code_l1"]),
        heldout_dead_units_mean=finite_mean(dead),
        dead_units_mean=finite_mean(
            metrics.dead_units(
                r.figures["unit_active_fraction"], np.full(len(dead), r.arm.n_hidden)
            )
        ),
        heldout_unit_firing=held["unit_active_fraction"][:GRID_SEEDS, : r.arm.n_hidden].tolist(),
        heldout_unit_mean=held["unit_mean_activation"][:GRID_SEEDS, : r.arm.n_hidden].tolist(),
        filters=filters,
        **pair_agreement(r, unit_signs(r, held["unit_code_sum"])),
    )


# ----------------------------------------------------------------------------------------------
# Baselines: scikit-learn's PCA and dictionary learning, random filters


def dictionary_baseline(
    train_NxD: np.ndarray,
    held_MxD: np.ndarray,
    width: int,
    k: int,
    fits: int,
    start: str = "svd",
    key: jax.Array | None = None,
) -> DictionaryLearning:
    """`baselines.dictionary_baseline` as this family fits it: scikit-learn's defaults, at most
    `DL_MAX_ITER` passes, `N_EXAMPLES` held-out reconstructions kept for the report."""
    fit = baselines.DictionaryFit(max_iter=DL_MAX_ITER, examples=N_EXAMPLES)
    return baselines.dictionary_baseline(train_NxD, held_MxD, width, k, fits, start, key, fit)


# ----------------------------------------------------------------------------------------------
# Analyses


def matched_grid(
    rows_SxHxD: np.ndarray, firing_SxH: np.ndarray, mean_SxH: np.ndarray
) -> dict[str, np.ndarray]:
    """Seed 0's units ordered by how often they fire (then by mean activation, for sigmoid units
    that rarely pass 0.5), and seed 1's unit matched to each (signed-cosine Hungarian matching, as
    pw_mcc) in the same place: `rows` `[2, H, D]`, `cos` `[H]`, `firing` `[2, H]`."""
    order = np.lexsort((-np.asarray(mean_SxH[0]), -np.asarray(firing_SxH[0])))
    if len(rows_SxHxD) < 2:
        return {"rows": rows_SxHxD[:1, order], "cos": np.ones(len(order)), "firing": firing_SxH[:1]}
    cos_H, partner_H = metrics.matched_cosines(rows_SxHxD[0], rows_SxHxD[1])
    partner = partner_H[order]
    return {
        "rows": np.stack([rows_SxHxD[0][order], rows_SxHxD[1][partner]]),
        "cos": cos_H[order],
        "firing": np.stack([np.asarray(firing_SxH[0])[order], np.asarray(firing_SxH[1])[partner]]),
    }


def _arm_grid(r: ArmResult, kind: str) -> dict[str, np.ndarray]:
    encoder, decoder = _units(r, r.params)
    rows = encoder if kind == "encoder" else decoder
    return matched_grid(
        rows[:GRID_SEEDS],
        np.asarray(r.measures.heldout_unit_firing),
        np.asarray(r.measures.heldout_unit_mean),
    )


def _store_grid(arrays: dict[str, np.ndarray], name: str, grid: dict[str, np.ndarray]) -> None:
    for part, values in grid.items():
        arrays[f"grid_{part}_{name}"] = np.asarray(values, np.float32)


def arm_row(r: ArmResult) -> ArmRow:
    """The figures an analysis reports of one arm (from its measures)."""
    m: Measures = r.measures
    return ArmRow(
        heldout_l0_mean=m.heldout_l0_mean,
        heldout_code_l1_mean=m.heldout_code_l1_mean,
        dead_units_mean=m.dead_units_mean,
        heldout_dead_units_mean=m.heldout_dead_units_mean,
        pw_mcc_mean=m.pw_mcc_mean,
        pw_mcc_median=m.pw_mcc_median,
        pw_mcc_null_mean=m.pw_mcc_null_mean,
        pw_mcc_encoder_mean=m.pw_mcc_encoder_mean,
        pw_mcc_encoder_null_mean=m.pw_mcc_encoder_null_mean,
        shared_mean=m.shared_mean,
        pairs=m.pairs,
        heldout_fvu_median=m.heldout_fvu_quantiles.q50,
        activation=r.arm.config.model.activation,
        sparsity=r.arm.config.loss.sparsity,
        k=int(r.arm.value("k")) if r.arm.config.model.activation == "topk" else None,
        filters=None if m.filters is None else {p: f.mean for p, f in m.filters.items()},
    )


def _code_size(results: dict[str, ArmResult]) -> int:
    """The non-zeros per sample the baselines get: the top-k arm's k (else the model's width)."""
    for r in results.values():
        if r.arm.config.model.activation == "topk":
            return int(r.arm.value("k"))
    return next(iter(results.values())).arm.n_hidden


def _split(results: dict[str, ArmResult]) -> tuple[Config, np.ndarray, np.ndarray]:
    first = next(iter(results.values()))
    cfg = first.arm.config
    return cfg, np.asarray(first.x, np.float64), np.asarray(heldout_x(cfg), np.float64)


def data_key(cfg: Config) -> jax.Array:
    return jax.random.key(cfg.data.seed)


def against_dictionary_learning(
    results: dict[str, ArmResult], dl: DictionaryLearning, k: int
) -> Verdict:
    """The floor `digits` is judged by: among the arms whose codes are as sparse as dictionary
    learning's (mean held-out L0 at most its `k` non-zeros; not sigmoid units, whose L0 counts
    activations above 0.5), the one whose seeds agree most (median
    pw_mcc) against dictionary learning from random starts: whether it agrees at least as well,
    and whether its held-out FVU is within `FVU_MARGIN` of dictionary learning's."""
    sparse = {
        label: r
        for label, r in results.items()
        # sigmoid units count as active above 0.5, which says nothing of how sparse their code is
        if r.arm.config.model.activation != "sigmoid" and r.measures.heldout_l0_mean <= k + 1e-6
    }
    verdict = Verdict(code_size=k, fvu_margin=FVU_MARGIN, arms=sorted(sparse))
    if not sparse:
        return verdict
    best = max(sparse, key=lambda label: np.nan_to_num(sparse[label].measures.pw_mcc_median))
    measures: Measures = sparse[best].measures
    pw, fvu_arm = measures.pw_mcc_median, measures.heldout_fvu_quantiles.q50
    return dataclasses.replace(
        verdict,
        best=best,
        pw_mcc_median=pw,
        heldout_fvu_median=fvu_arm,
        dl_pw_mcc_median=dl.pw_mcc_median,
        dl_heldout_fvu_median=dl.heldout_fvu_median,
        agrees_as_well=bool(pw >= dl.pw_mcc_median),
        fvu_within_margin=bool(fvu_arm <= dl.heldout_fvu_median + FVU_MARGIN),
    )


def analyse_digits(exp: Experiment, results: dict[str, ArmResult]) -> Digits:
    """Every arm beside PCA with k components and dictionary learning with k non-zeros: held-out
    FVU, L0 and agreement across seeds; the filter grids and example reconstructions as arrays."""
    cfg, train_x, held = _split(results)
    k = _code_size(results)
    width = max(r.arm.n_hidden for r in results.values())
    start = time.perf_counter()
    pca = pca_baseline(train_x, held)
    dl = dictionary_baseline(train_x, held, width, k, DL_FITS)
    dl_random = dictionary_baseline(
        train_x, held, width, k, DL_FITS, "random", jax.random.fold_in(data_key(cfg), 3)
    )
    dl_data = dictionary_baseline(
        train_x, held, width, k, DL_FITS, "data", jax.random.fold_in(data_key(cfg), 4)
    )
    arrays: dict[str, np.ndarray] = {"examples_x": held[:N_EXAMPLES].astype(np.float32)}
    for label, r in results.items():
        _store_grid(arrays, label, _arm_grid(r, "decoder"))
        arrays[f"examples_{label}"] = reconstruct(r, held[:N_EXAMPLES]).astype(np.float32)
    arrays["examples_pca"] = pca_reconstruction(pca, held[:N_EXAMPLES], k).astype(np.float32)
    arrays["examples_dictionary_learning"] = dl.examples.astype(np.float32)
    _store_grid(
        arrays,
        "dictionary_learning",
        matched_grid(dl.atoms[:GRID_SEEDS], dl.firing, dl.firing),
    )
    components = min(k, len(pca["heldout_fvu_by_components"]))
    return Digits(
        code_size=k,
        width=width,
        arms={label: arm_row(r) for label, r in results.items()},
        pca=Pca(
            components=components,
            heldout_fvu=pca["heldout_fvu_by_components"][components - 1],
            heldout_fvu_by_components=pca["heldout_fvu_by_components"],
        ),
        dictionary_learning=dl,
        dictionary_learning_random=dl_random,
        dictionary_learning_data=dl_data,
        against_dictionary_learning=against_dictionary_learning(results, dl_random, k),
        baseline_s=time.perf_counter() - start,
        image_side=data.side(cfg.data.n_features),
        arrays=arrays,
    )


def pca_filters(train_NxD: np.ndarray) -> np.ndarray:
    """The principal components of the patches as filters `f_FxD`, largest variance first: of each
    patch's deviation from its own mean (Ng's normalisation removes it before clipping, so what is
    left along the constant patch is clipping, not a filter), which leaves D - 1 components."""
    centred = data.remove_patch_mean(train_NxD)
    _, _, vt_DxD = np.linalg.svd(centred - centred.mean(axis=0), full_matrices=False)
    return vt_DxD[:-1]  # the last spans the constant patch, whose variance is now zero


def revived_choice(results: dict[str, ArmResult]) -> str | None:
    """The revived top-k arm whose seeds agree most (median pw_mcc): its k is chosen without
    looking at what the filters look like. None without such an arm."""
    revived = {label: r for label, r in results.items() if label.startswith(REVIVED)}
    if not revived:
        return None
    return max(revived, key=lambda label: np.nan_to_num(revived[label].measures.pw_mcc_median))


def analyse_patches(exp: Experiment, results: dict[str, ArmResult]) -> Patches:
    """Orientation and locality of every arm's filters beside random filters and PCA components;
    agreement across seeds; the filter grids as arrays."""
    cfg, train_x, held = _split(results)
    side = data.side(cfg.data.n_features)
    start = time.perf_counter()
    pca = pca_baseline(train_x, held)
    filters_FxD = pca_filters(train_x)
    arrays: dict[str, np.ndarray] = {}
    for label, r in results.items():
        _store_grid(arrays, label, _arm_grid(r, "encoder"))
    square: dict[str, Any] = {}
    if side is not None:
        components = filters_FxD.reshape(-1, side, side)
        noise = random_baseline(cfg.data.seed, side)
        limits = noise_limits(cfg.data.seed, side)

        def baseline(f: np.ndarray) -> FilterBaseline:
            figures = filter_figures(f[None], limits)
            return FilterBaseline(**{k: float(v[0]) for k, v in figures.items()}, filters=len(f))

        square = {
            "pca_filters": baseline(components),
            "random_filters": baseline(noise),
            "noise_limits": NoiseLimits(orientation=limits[0], locality=limits[1]),
            "oriented_at": ORIENTED,
            "noise_quantile": NOISE_QUANTILE,
        }
        arrays["pca_components"] = components.reshape(len(components), -1).astype(np.float32)
        arrays["random_filters"] = noise[:PATCHES_WIDTH].reshape(-1, side * side)
    return Patches(
        arms={label: arm_row(r) for label, r in results.items()},
        image_side=side,
        pca=Pca(
            components=len(filters_FxD),
            heldout_fvu_by_components=pca["heldout_fvu_by_components"],
        ),
        revived_choice=revived_choice(results),
        baseline_s=time.perf_counter() - start,
        arrays=arrays,
        **square,
    )


# ----------------------------------------------------------------------------------------------
# The experiments

_BASE_ONLY = ("model.k", "loss.aux_k")

DIGITS = Experiment(
    name="digits",
    family=FAMILY,
    section="images",
    summary="8x8 digits, 128 units: plain, top-k, KL, L1 vs PCA and dictionary learning",
    claim=(
        "For handwritten digits we want the autoencoder to extract more features than pixels: an "
        "overcomplete, sparse autoencoder. Does it find the same digit features from every seed, "
        "more or less reliably than dictionary learning, and at what reconstruction cost?"
    ),
    **built(_digits_arms, _digits_base()),
    analyse=analyse_digits,
    analysis_type=Digits,
    arm_axis="arm",
    measure=measure,
    arm_type=ImageArm,
    base_only=_BASE_ONLY,
    default_seeds=DIGITS_SEEDS,
)

PATCHES = Experiment(
    name="patches",
    family=FAMILY,
    section="images",
    summary="Ng's sparse autoencoder on natural-image patches: do edge detectors emerge?",
    claim=(
        "Ng's CS294A exercise (64-25-64 sigmoid units, rho 0.01, beta 3, weight decay 1e-4) and an "
        "overcomplete top-k model on 8x8 patches of natural photographs learn localised, oriented "
        "edge detectors, and different seeds find the same edges."
    ),
    **built(_patches_arms, _patches_base()),
    analyse=analyse_patches,
    analysis_type=Patches,
    arm_axis="arm",
    measure=measure,
    arm_type=ImageArm,
    base_only=(*_BASE_ONLY, "model.n_hidden"),
    default_seeds=PATCHES_SEEDS,
)

# In the order `jaxae list` and `jaxae reproduce` use.
EXPERIMENTS = (DIGITS, PATCHES)
