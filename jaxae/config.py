"""Frozen, typed, validated configuration.

Every experiment is one `Config`: data, model, loss, optimizer and training settings. Each part
checks its own fields on construction and `Config` checks the fields that depend on each other, so
an invalid value raises `ValueError` (naming the field, the value and what is allowed) before
anything compiles.
Library code never mutates a config: use `dataclasses.replace` or `override`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

DataKind = Literal["multiples", "offset", "gaussian", "sparse", "digits", "patches", "array"]
Magnitude = Literal["halfnormal", "uniform", "exponential", "one"]
Firing = Literal["exact", "bernoulli"]
Activation = Literal["relu", "sigmoid", "identity", "topk", "batchtopk", "jumprelu", "omp"]
Init = Literal["torch", "flax", "ng", "atoms", "data"]
Output = Literal["linear", "sigmoid"]
Sparsity = Literal["none", "kl", "l1", "l0"]
Shuffle = Literal["feistel", "sort"]
Schedule = Literal["constant", "cosine"]
Optimizer = Literal["adam", "lbfgs"]
Whiten = Literal["none", "zca", "olshausen"]

DATA_KINDS: tuple[str, ...] = typing.get_args(DataKind)
MAGNITUDES: tuple[str, ...] = typing.get_args(Magnitude)
FIRINGS: tuple[str, ...] = typing.get_args(Firing)
ACTIVATIONS: tuple[str, ...] = typing.get_args(Activation)
INITS: tuple[str, ...] = typing.get_args(Init)
OUTPUTS: tuple[str, ...] = typing.get_args(Output)
SPARSITIES: tuple[str, ...] = typing.get_args(Sparsity)
# Data sets read on the host (files shipped with scikit-learn or scikit-image, or the user's own):
# drawn once outside `jit`, so never per seed.
HOST_KINDS: tuple[str, ...] = ("digits", "patches", "array")
# The natural photographs bundled inside scikit-image's package (`skimage/data/`, no download) that
# `patches` samples from; colour ones are converted to grey. "all" names every one of them.
IMAGES: tuple[str, ...] = (
    "camera",
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "grass",
    "gravel",
    "brick",
    "moon",
)
SHUFFLES: tuple[str, ...] = typing.get_args(Shuffle)
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
WHITENINGS: tuple[str, ...] = typing.get_args(Whiten)
# Activations whose every output lies in (0, 1): the only ones a KL penalty on mean activation fits.
UNIT_INTERVAL_ACTIVATIONS: tuple[str, ...] = ("sigmoid",)
# Activations with a k (`model.k`): per row ("topk"), on average over the batch ("batchtopk"), or
# the steps of a pursuit over the decoder ("omp").
K_ACTIVATIONS: tuple[str, ...] = ("topk", "batchtopk", "omp")
# The activations that keep the largest pre-activations: a masked unit reads -inf there, so it never
# wins a slot, and the auxiliary top-k loss (which ranks dead units' pre-activations) serves them.
RANKING_ACTIVATIONS: tuple[str, ...] = ("topk", "batchtopk")
# The model fields only JumpReLU reads, and their defaults (the paper's: Rajamanoharan et al. 2024).
JUMP_DEFAULTS: dict[str, float] = {"jump_bandwidth": 0.001, "jump_init": 0.001}


def invalid(field: str, value: Any, allowed: str) -> ValueError:
    """The project's one message for a bad value: `field=value is invalid: allowed is ...`."""
    return ValueError(f"{field}={value!r} is invalid: allowed is {allowed}")


def _fail(field: str, value: Any, allowed: str) -> typing.NoReturn:
    raise invalid(field, value, allowed)


def _positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(field, value, "a positive integer")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _positive_float(field: str, value: Any) -> None:
    if not _is_number(value) or not value > 0:
        _fail(field, value, "a finite positive number")


def _non_negative_float(field: str, value: Any) -> None:
    if not _is_number(value) or not value >= 0:
        _fail(field, value, "a finite number >= 0")


def _one_of(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, how large, and from which key it is drawn."""

    kind: DataKind = "multiples"  # generator in jaxae.data
    n_samples: int = 1000  # N, rows of the data set
    n_features: int = 10  # D, columns
    max_value: int = 200  # multiples/offset: base values are round(U[0,1) * max_value)
    seed: int = 0  # the data set's own key: key(seed); independent of the training seeds
    per_seed: bool = False  # draw a fresh data set for every training seed instead of one shared
    # sparse: M unit-norm atoms in D dimensions; each sample sums the atoms that fire in it
    n_atoms: int = 20  # M, ground-truth features (may exceed n_features: superposition)
    # "exact": every sample sums exactly `active` atoms, chosen uniformly without replacement;
    # "bernoulli" (SAELens's synthetic data): atom i fires in each sample independently with its
    # own probability p_i (`firing_probabilities`), so `active` is only the expected count, and a
    # sample may fire no atom at all (a zero row, plus noise)
    firing: Firing = "exact"
    active: int = 3  # "exact": atoms per sample; "bernoulli": sum_i p_i (unless firing_p > 0)
    # "bernoulli" only: firing_p > 0 gives every atom p_i = firing_p (`active` is then ignored);
    # 0 leaves the p_i to `active` and `zipf`: with zipf = s > 0 they follow Zipf's law,
    # p_i = active * (i+1)^-s / sum_j (j+1)^-s (atom 0 the most frequent; refused where p_0 > 1),
    # with zipf = 0 they are uniform, p_i = active / n_atoms
    firing_p: float = 0.0
    zipf: float = 0.0
    # each active atom's coefficient: |N(0,1)|, U(0,1), Exp(1), or 1 (SAELens's default)
    magnitude: Magnitude = "halfnormal"
    noise: float = 0.0  # standard deviation of Gaussian noise added to every feature
    # digits, patches, array: this share of the rows (of patches: `heldout * n_samples` more
    # patches) is held out, chosen by the data key; every held-out figure is measured on it
    heldout: float = 0.2
    # patches: comma-separated names among `IMAGES` (or "all"), square side of a patch in pixels
    image: str = "all"
    patch_size: int = 8
    # patches' whitening: "zca" whitens the sampled patches (ZCA fitted on the training patches),
    # "olshausen" each photograph before patches are cut (Olshausen & Field's filter
    # f * exp(-(f / f0)^4)), "none" neither; in every case Ng's per-patch normalisation follows
    whiten: Whiten = "none"
    whiten_eps: float = 0.01  # "zca": eigenvalue regulariser as a share of the mean eigenvalue
    # "olshausen": the low-pass cut-off f0 as a share of each image's Nyquist frequency (0.8:
    # their 0.4 N cycles per picture on N-pixel images; 200 cycles on 512 pixels in IMAGES.mat)
    whiten_f0: float = 0.8
    # array: a .npy file of shape N x D (read without unpickling). Its width and row count set
    # n_features and n_samples (every row not held out) when `override` (`--set`) makes or changes
    # an array data set, unless those are set in the same call.
    path: str = ""
    # array: optionally a .npy file of the data's true atoms, M x D (read without unpickling); with
    # it every arm is scored against them (GT-MCC) as on jaxae's own sparse data
    atoms: str = ""

    def images(self) -> tuple[str, ...]:
        """The photographs `image` names, in `IMAGES` order for "all"."""
        names = tuple(n.strip() for n in self.image.split(","))
        return IMAGES if names == ("all",) else names

    def _check_firing(self) -> None:
        _one_of("data.firing", self.firing, FIRINGS)
        if not _is_number(self.firing_p) or not 0 <= self.firing_p <= 1:
            _fail("data.firing_p", self.firing_p, "a number in [0, 1] (0: from data.active)")
        _non_negative_float("data.zipf", self.zipf)
        if self.firing != "bernoulli":
            for name in ("firing_p", "zipf"):
                if getattr(self, name) != 0:
                    _fail(f"data.{name}", getattr(self, name), "0 unless data.firing='bernoulli'")
            return
        if self.firing_p > 0 and self.zipf > 0:
            _fail(
                "data.zipf",
                self.zipf,
                f"0 when data.firing_p={self.firing_p!r} sets every atom's probability",
            )
        if self.zipf > 0:
            norm = math.fsum((i + 1) ** -self.zipf for i in range(self.n_atoms))
            if self.active > norm:  # atom 0's probability active / norm would exceed 1
                _fail(
                    "data.zipf",
                    self.zipf,
                    f"an exponent s at which atom 0's probability data.active / sum_i (i+1)^-s "
                    f"is at most 1 (here {self.active} / {norm:.4g} = {self.active / norm:.4g}: "
                    "lower data.zipf or data.active, or raise data.n_atoms)",
                )

    def __post_init__(self) -> None:
        _one_of("data.kind", self.kind, DATA_KINDS)
        _positive_int("data.n_samples", self.n_samples)
        _positive_int("data.n_features", self.n_features)
        _positive_int("data.max_value", self.max_value)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            _fail("data.seed", self.seed, "an integer >= 0")
        _positive_int("data.n_atoms", self.n_atoms)
        _positive_int("data.active", self.active)
        if self.active > self.n_atoms:
            _fail("data.active", self.active, f"at most data.n_atoms={self.n_atoms}")
        _one_of("data.magnitude", self.magnitude, MAGNITUDES)
        self._check_firing()
        _non_negative_float("data.noise", self.noise)
        if self.per_seed and self.kind in HOST_KINDS:
            _fail(
                "data.per_seed",
                self.per_seed,
                f"false for data.kind={self.kind!r} (read on the host once, shared by all seeds)",
            )
        if not _is_number(self.heldout) or not 0 < self.heldout < 1:
            _fail("data.heldout", self.heldout, "a number in (0, 1)")
        if not isinstance(self.image, str) or any(n not in IMAGES for n in self.images()):
            _fail(
                "data.image",
                self.image,
                "'all' or comma-separated names among " + ", ".join(IMAGES),
            )
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int):
            _fail("data.patch_size", self.patch_size, "an integer >= 2")
        if self.patch_size < 2:
            _fail("data.patch_size", self.patch_size, "an integer >= 2")
        _one_of("data.whiten", self.whiten, WHITENINGS)
        _non_negative_float("data.whiten_eps", self.whiten_eps)
        if not _is_number(self.whiten_f0) or not 0 < self.whiten_f0 <= 1:
            _fail("data.whiten_f0", self.whiten_f0, "a number in (0, 1] (a share of Nyquist)")
        if not isinstance(self.path, str):
            _fail("data.path", self.path, "a path to a .npy file")
        if self.kind == "array" and not self.path:
            _fail("data.path", self.path, "a .npy file of shape N x D for data.kind='array'")
        if not isinstance(self.atoms, str):
            _fail("data.atoms", self.atoms, "a path to a .npy file of atoms M x D")
        if self.atoms and self.kind != "array":
            _fail(
                "data.atoms",
                self.atoms,
                f"'' unless data.kind='array' (data.kind={self.kind!r} has its own ground truth "
                "or none)",
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The autoencoder D -> H -> D: its width, hidden activation and initialisation."""

    n_hidden: int = 1  # H, hidden units
    # hidden nonlinearity; "topk" keeps the k largest of each row (after ReLU); "batchtopk" the
    # k x B largest of a batch of B rows in training, and at inference the units above one global
    # threshold (jaxae/model.py); "jumprelu" is `z H(z - theta)` with a learned threshold per unit;
    # "omp" codes each row by orthogonal matching pursuit over the decoder rows (tied, unit-norm)
    activation: Activation = "relu"
    # active units per sample for "topk", on average for "batchtopk", pursuit steps for "omp" (None
    # otherwise). It is the program's largest k: a seed's own k (`train.Hyper.k`) may be smaller,
    # so one program sweeps k without recompiling.
    k: int | None = None
    # "omp" only: the pursuit steps when the trained model codes data (held-out figures,
    # `jaxae.load`), which may differ from the k it trains with; None: k
    infer_k: int | None = None
    # "torch": nn.Linear's default, kernel and bias uniform(+-1/sqrt(fan_in)); "flax": Dense's
    # (LeCun normal, zero bias); "ng": Ng's CS294A `initializeParameters.m`, both kernels
    # uniform(+-sqrt(6 / (H + D + 1))), zero biases; "atoms": the oracle start, the decoder rows
    # at the data's true atoms (each seed's own with data.per_seed) and the encoder at the decoder
    # rows in use transposed (as with tied_init, which it implies), every bias zero. Only on data
    # with true atoms (data.kind "sparse", or "array" with data.atoms) and one unit per atom.
    # "data": k-means' random start, the decoder bias at the training data's mean and the decoder
    # rows at distinct random training rows (each seed's own draw) minus it; the encoder as with
    # "atoms", its bias zero.
    init: Init = "torch"
    # The decoder's output: "linear" (`h @ W_d + b_d`) or "sigmoid" of it (Ng's `a3`, for data
    # scaled into (0, 1)).
    output: Output = "linear"
    # Decoder rows used as unit vectors (a reparameterisation: W_d[j] / |W_d[j]|), so a sparsity
    # penalty on the code cannot be dodged by shrinking the code and growing the decoder.
    unit_norm_decoder: bool = False
    pre_bias: bool = False  # encode x - b_d (the decoder bias) instead of x
    # the encoder starts as the (unit-normed, if so) decoder transposed (always with init "atoms")
    tied_init: bool = False
    # tied weights (Makhzani & Frey 2013): the encoder kernel is the decoder rows in use,
    # transposed, at every step, so the model has no encoder kernel of its own (tied_init adds
    # nothing to it); the encoder keeps its own bias
    tied: bool = False
    # "jumprelu" only: the width epsilon of the rectangle kernel of its straight-through gradients,
    # and every unit's starting threshold (both 0.001 in the paper and in SAELens; on data whose
    # activations are of order 1 a threshold that small learns slowly, see jaxae/model.py)
    jump_bandwidth: float = JUMP_DEFAULTS["jump_bandwidth"]
    jump_init: float = JUMP_DEFAULTS["jump_init"]

    def __post_init__(self) -> None:
        _positive_int("model.n_hidden", self.n_hidden)
        _one_of("model.activation", self.activation, ACTIVATIONS)
        _one_of("model.init", self.init, INITS)
        _one_of("model.output", self.output, OUTPUTS)
        for name in ("unit_norm_decoder", "pre_bias", "tied_init", "tied"):
            if not isinstance(getattr(self, name), bool):
                _fail(f"model.{name}", getattr(self, name), "true or false")
        if self.activation in K_ACTIVATIONS:
            if isinstance(self.k, bool) or not isinstance(self.k, int):
                _fail(
                    "model.k",
                    self.k,
                    f"an integer in 1..{self.n_hidden} for activation {self.activation!r}",
                )
            if not 1 <= self.k <= self.n_hidden:
                _fail("model.k", self.k, f"an integer in 1..{self.n_hidden} (model.n_hidden)")
        elif self.k is not None:
            _fail("model.k", self.k, "None unless model.activation is 'topk', 'batchtopk' or 'omp'")
        self._check_pursuit()
        for name, default in JUMP_DEFAULTS.items():
            _positive_float(f"model.{name}", getattr(self, name))
            if self.activation != "jumprelu" and getattr(self, name) != default:
                _fail(
                    f"model.{name}",
                    getattr(self, name),
                    f"{default:g} (the default) unless model.activation is 'jumprelu'",
                )

    def code_k(self, trained_k: float | None = None) -> float | None:
        """The k the trained model codes data with: `infer_k` if set, else the k it trained with
        (`trained_k`, an arm's own, if given; else `k`)."""
        if self.infer_k is not None:
            return self.infer_k
        return self.k if trained_k is None else trained_k

    def _check_pursuit(self) -> None:
        """`model.infer_k` is the pursuit's alone; the pursuit ("omp") reads its correlations and
        Gram matrix off the decoder rows, so it needs them tied, unit-norm and linear."""
        if self.infer_k is not None:
            if self.activation != "omp":
                _fail("model.infer_k", self.infer_k, "None unless model.activation is 'omp'")
            if isinstance(self.infer_k, bool) or not isinstance(self.infer_k, int):
                _fail("model.infer_k", self.infer_k, f"None or an integer in 1..{self.n_hidden}")
            if not 1 <= self.infer_k <= self.n_hidden:
                _fail("model.infer_k", self.infer_k, f"an integer in 1..{self.n_hidden}")
        if self.activation != "omp":
            return
        for name in ("tied", "unit_norm_decoder"):
            if not getattr(self, name):
                _fail(
                    f"model.{name}",
                    getattr(self, name),
                    "true with model.activation='omp' (the pursuit codes with the decoder rows, "
                    "unit vectors, as its encoder)",
                )
        if self.output != "linear":
            _fail("model.output", self.output, "'linear' with model.activation='omp'")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Reconstruction (MSE) plus an optional sparsity penalty on the hidden code."""

    # "kl": beta * sum_j KL(rho || rho_hat_j); "l1": beta * mean |h|_1; "l0" (JumpReLU only): beta *
    # mean sum_j H(z_j - theta_j), the count of firing units, trained through the step's
    # straight-through gradient to the thresholds
    sparsity: Sparsity = "none"
    weight: float = 0.0  # beta, the penalty's weight
    rho: float = 0.05  # KL target mean activation, in (0, 1)
    # Auxiliary top-k loss for dead units (Gao et al. 2024): the aux_k largest pre-activations of
    # dead units reconstruct the main model's residual. 0 turns it off; only with "topk" and
    # "batchtopk".
    aux_k: int = 0
    aux_weight: float = 1.0 / 32.0  # its coefficient (the paper's 1/32)
    dead_steps: int = 100  # a unit is dead after this many training steps without firing
    # Resampling (Bricken et al. 2023, simplified): at the end of each epoch of the first half of
    # training, every dead unit is re-aimed at the residual of a badly reconstructed sample of a
    # pool (the epoch's last minibatches, at least `resample_pool` samples); with `resample_rare`
    # > 0, so is every unit that fired on fewer of the epoch's samples than that share of the
    # median unit's (a unit stuck on a rare mixture, which a few firings keep alive).
    resample_dead: bool = False
    resample_rare: float = 0.0
    resample_every: int = 1  # epochs between resamplings (a re-aimed unit's time to settle)
    resample_pool: int = 512
    # > 0: when the busiest unit fires on more than this multiple of the median unit's share of
    # the epoch's samples, the first re-aimed unit splits it (jaxae/resample.py, `_split_busiest`)
    # instead of taking a residual; 0 turns it off
    resample_split: float = 0.0
    # with `resample_split`: when the busiest unit is due a split but no unit is dead or rare, the
    # least-firing unit is re-aimed to take it, if the split's direction is new (jaxae/resample.py,
    # `LEAST_MAX_COS`); an L1 code keeps every unit alive
    resample_least: bool = False

    def __post_init__(self) -> None:
        _one_of("loss.sparsity", self.sparsity, SPARSITIES)
        _non_negative_float("loss.weight", self.weight)
        if isinstance(self.rho, bool) or not isinstance(self.rho, int | float):
            _fail("loss.rho", self.rho, "a number in (0, 1)")
        if not 0 < self.rho < 1:
            _fail("loss.rho", self.rho, "a number in (0, 1)")
        if isinstance(self.aux_k, bool) or not isinstance(self.aux_k, int) or self.aux_k < 0:
            _fail("loss.aux_k", self.aux_k, "an integer >= 0 (0: no auxiliary loss)")
        _non_negative_float("loss.aux_weight", self.aux_weight)
        _positive_int("loss.dead_steps", self.dead_steps)
        if not isinstance(self.resample_dead, bool):
            _fail("loss.resample_dead", self.resample_dead, "true or false")
        _positive_int("loss.resample_every", self.resample_every)
        _positive_int("loss.resample_pool", self.resample_pool)
        split = self.resample_split
        if not _is_number(split) or not (split == 0 or split > 1):
            _fail("loss.resample_split", split, "0 (off) or a number > 1")
        if not isinstance(self.resample_least, bool):
            _fail("loss.resample_least", self.resample_least, "true or false")
        if self.resample_least and split == 0:
            _fail("loss.resample_least", True, "false unless loss.resample_split > 0")
        rare = self.resample_rare
        if isinstance(rare, bool) or not isinstance(rare, int | float) or not 0 <= rare < 1:
            _fail("loss.resample_rare", rare, "a number in [0, 1) (0: dead units only)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam with weight decay, either as L2 through Adam (PyTorch `Adam`) or decoupled (`AdamW`);
    or full-batch L-BFGS on the loss plus `weight_decay / 2 * |params|^2` (jaxae/optim.py)."""

    # "adam", or "lbfgs": L-BFGS with a zoom (Wolfe) line search on the whole data set, so
    # `train.batch_size` must be `data.n_samples` and one epoch is one L-BFGS iteration (one full
    # batch; the line search evaluates the loss a few more times within it). L-BFGS has no
    # learning rate: `learning_rate`, `schedule`, `decoupled`, b1, b2 and eps are Adam's only.
    name: Optimizer = "adam"
    memory_size: int = 10  # lbfgs: the curvature pairs (parameter and gradient changes) it keeps
    # lbfgs: as minFunc (the optimiser of Ng's exercise) does, a step that does not lower the
    # objective is not taken, and a seed stops at the first iteration that lowers it by at most
    # this (minFunc's `progTol`, 1e-9); its parameters then stay. None: every step optax's line
    # search returns is taken, and no seed stops (`optim.lbfgs_step`).
    progress_tol: float | None = 1e-9
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    decoupled: bool = False  # False: torch.optim.Adam(weight_decay=...); True: torch.optim.AdamW
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # The learning rate over training: "constant", or "cosine" from `learning_rate` at the first
    # step down to `learning_rate * final_lr_ratio` at the last (optax.cosine_decay_schedule).
    schedule: Schedule = "constant"
    final_lr_ratio: float = 0.0
    # Whether weight decay applies to the biases too (PyTorch's `weight_decay` decays every
    # parameter) or to the kernels only (Ng's CS294A cost decays W1 and W2, not b1, b2).
    decay_biases: bool = True

    def __post_init__(self) -> None:
        _one_of("optim.name", self.name, OPTIMIZERS)
        _positive_int("optim.memory_size", self.memory_size)
        if self.progress_tol is not None:
            _non_negative_float("optim.progress_tol", self.progress_tol)
        if not isinstance(self.decay_biases, bool):
            _fail("optim.decay_biases", self.decay_biases, "true or false")
        _positive_float("optim.learning_rate", self.learning_rate)
        _one_of("optim.schedule", self.schedule, SCHEDULES)
        ratio = self.final_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            _fail("optim.final_lr_ratio", ratio, "a number in [0, 1]")
        _non_negative_float("optim.weight_decay", self.weight_decay)
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                _fail(f"optim.{name}", value, "a number in [0, 1)")
        _positive_float("optim.eps", self.eps)
        if self.name == "lbfgs" and self.schedule != "constant":
            _fail(
                "optim.schedule",
                self.schedule,
                "'constant' with optim.name='lbfgs' (its line search picks every step's size; "
                "there is no learning rate to schedule)",
            )
        if self.name == "lbfgs" and self.decoupled:
            _fail(
                "optim.decoupled",
                self.decoupled,
                "false with optim.name='lbfgs' (decoupled decay is scaled by a learning rate, "
                "which L-BFGS has not; its weight decay is a term of the objective)",
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop: epochs of shuffled minibatches, run on the host in chunks of epochs."""

    epochs: int = 1500
    batch_size: int = 100  # B; a last partial batch is kept (masked), as DataLoader does
    chunk_epochs: int = 50  # epochs per compiled call; between calls the host reports progress
    # Each epoch's order: "feistel", a keyed pseudo-random permutation (no sort: about twice as
    # fast for tiny models; its uniformity is tested, jaxae/shuffle.py), or "sort", an exactly
    # uniform one. Different orders from the same key, so results differ between the two.
    shuffle: Shuffle = "feistel"
    # Minutes between checkpoints: at the first chunk boundary this long after the last one (or
    # the start), `jaxae run` saves every program's state to DIR.partial/, so a crash (even
    # SIGKILL) loses at most about this much training; 0 saves only on a stop (Ctrl-C, SIGTERM).
    # It changes no result.
    checkpoint_minutes: float = 10.0

    def __post_init__(self) -> None:
        _positive_int("train.epochs", self.epochs)
        _positive_int("train.batch_size", self.batch_size)
        _positive_int("train.chunk_epochs", self.chunk_epochs)
        _one_of("train.shuffle", self.shuffle, SHUFFLES)
        if not _is_number(self.checkpoint_minutes) or not self.checkpoint_minutes >= 0:
            _fail(
                "train.checkpoint_minutes",
                self.checkpoint_minutes,
                "a finite number of minutes >= 0 (0: no periodic checkpoint)",
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """One complete experiment setting. Hashable, so compiled programs can be cached on it."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if self.train.batch_size > self.data.n_samples:
            _fail(
                "train.batch_size",
                self.train.batch_size,
                f"at most data.n_samples={self.data.n_samples}",
            )
        if self.optim.name == "lbfgs" and self.train.batch_size != self.data.n_samples:
            _fail(
                "train.batch_size",
                self.train.batch_size,
                f"data.n_samples={self.data.n_samples} with optim.name='lbfgs' (full-batch: "
                "its line search and curvature pairs need the same objective at every step)",
            )
        if self.optim.name == "lbfgs" and self.loss.resample_dead:
            _fail(
                "loss.resample_dead",
                self.loss.resample_dead,
                "false with optim.name='lbfgs' (a resampling moves the parameters behind its "
                "back, so the curvature pairs it keeps would describe stale parameters)",
            )
        if self.loss.sparsity == "kl" and self.model.activation not in UNIT_INTERVAL_ACTIVATIONS:
            _fail(
                "loss.sparsity",
                self.loss.sparsity,
                "'kl' only with an activation whose output lies in (0, 1): "
                + ", ".join(repr(a) for a in UNIT_INTERVAL_ACTIVATIONS)
                + f" (model.activation is {self.model.activation!r})",
            )
        if self.loss.sparsity == "l0" and self.model.activation != "jumprelu":
            _fail(
                "loss.sparsity",
                self.loss.sparsity,
                "'l0' only with model.activation='jumprelu' (the count of firing units has a "
                "gradient only through its thresholds; model.activation is "
                f"{self.model.activation!r})",
            )
        if self.loss.aux_k > 0 and self.model.activation not in RANKING_ACTIVATIONS:
            _fail(
                "loss.aux_k",
                self.loss.aux_k,
                "0 unless model.activation is 'topk' or 'batchtopk' (it is "
                f"{self.model.activation!r})",
            )
        if self.loss.aux_k > 0 and self.model.output != "linear":
            _fail(
                "loss.aux_k",
                self.loss.aux_k,
                "0 unless model.output is 'linear' (the auxiliary loss decodes linearly; it is "
                f"{self.model.output!r})",
            )
        if self.loss.aux_k > self.model.n_hidden:
            _fail("loss.aux_k", self.loss.aux_k, f"at most model.n_hidden={self.model.n_hidden}")
        if self.model.init == "atoms":
            self._check_atoms_start()

    def _check_atoms_start(self) -> None:
        """The oracle start needs true atoms, one per hidden unit. An array's atoms are counted in
        their file (read once and cached, as `jaxae.data.check` reads it before training)."""
        if self.data.kind == "sparse":
            n_atoms, what = self.data.n_atoms, "data.n_atoms"
        elif self.data.kind == "array" and self.data.atoms:
            from jaxae.data import load_atoms  # here: jaxae.data imports this module

            n_atoms = load_atoms(self.data.atoms, self.data.n_features).shape[0]
            what = f"the rows of data.atoms={self.data.atoms!r}"
        else:
            _fail(
                "model.init",
                self.model.init,
                "'atoms' only on data with true atoms: data.kind='sparse', or 'array' with "
                f"data.atoms (data.kind is {self.data.kind!r}"
                + (", without data.atoms)" if self.data.kind == "array" else ")"),
            )
        if self.model.n_hidden != n_atoms:
            _fail(
                "model.n_hidden",
                self.model.n_hidden,
                f"{n_atoms} with model.init='atoms', one unit per true atom ({what})",
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> Config:
        """Inverse of `to_dict`; unknown sections or fields raise `ValueError`."""
        sections = {f.name: f for f in dataclasses.fields(cls)}
        parts = {}
        for name, values in d.items():
            if name not in sections:
                _fail("config", name, "one of " + ", ".join(sections))
            part_cls = _section_class(name)
            known = {f.name for f in dataclasses.fields(part_cls)}
            for field in values:
                if field not in known:
                    _fail(f"{name}.{field}", values[field], "a known field: " + ", ".join(known))
            parts[name] = part_cls(**values)
        return cls(**parts)


def _section_class(name: str) -> type:
    return typing.get_type_hints(Config)[name]


def _parse_value(path: str, text: str, hint: Any) -> Any:
    """Turn the text of `--set path=text` into a value of the field's annotated type."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if text.lower() == "none" and type(None) in options:
        return None
    for option in options:
        if typing.get_origin(option) is Literal:
            return text
        if option is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            _fail(path, text, "true or false")
        if option is int:
            try:
                return int(text)
            except ValueError:
                _fail(path, text, "an integer")
        if option is float:
            try:
                return float(text)
            except ValueError:
                _fail(path, text, "a number")
    return text


def override(cfg: Config, assignments: Iterable[str]) -> Config:
    """Apply `section.field=value` assignments (the CLI's `--set`); returns a new, valid config.

    All assignments are applied together and validated once, so fields that must change together
    (`model.activation=topk` with `model.k=2`) can be set in any order. Assignments to the data of
    `data.kind="array"` read the file's shape: its width becomes `data.n_features` and its rows
    not held out `data.n_samples`, unless the assignments set those too (`_fit_array`).
    """
    sections = {f.name for f in dataclasses.fields(Config)}
    changes: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        section, dot, field = path.strip().partition(".")
        if not sep or not dot:
            _fail("--set", assignment, "section.field=value, e.g. model.n_hidden=3")
        if section not in sections:
            _fail("--set", assignment, "a section among " + ", ".join(sorted(sections)))
        hints = typing.get_type_hints(type(getattr(cfg, section)))
        if field not in hints:
            _fail("--set", assignment, f"a field of {section}: " + ", ".join(hints))
        value = _parse_value(path.strip(), text.strip(), hints[field])
        changes.setdefault(section, {})[field] = value
    parts = {
        section: dataclasses.replace(getattr(cfg, section), **fields)
        for section, fields in changes.items()
    }
    if "data" in parts and parts["data"].kind == "array":
        parts["data"] = _fit_array(parts["data"], set(changes["data"]))
    return dataclasses.replace(cfg, **parts)


def _fit_array(data: DataConfig, assigned: set[str]) -> DataConfig:
    """`data` (of kind "array") with the width and sample count of its file (`data.fit_to_data`:
    every row not held out), each unless it is among the `assigned` fields, so a user's array
    trains without restating its shape and an explicit size still wins (and is checked against
    the file). A missing or bad file is the loader's `ValueError` naming `data.path`."""
    from jaxae.data import fit_to_data  # here: jaxae.data imports this module

    fitted = fit_to_data(data)
    sizes = {f: getattr(fitted, f) for f in ("n_features", "n_samples") if f not in assigned}
    return dataclasses.replace(data, **sizes)
