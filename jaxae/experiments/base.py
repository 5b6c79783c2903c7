"""What every family of experiments shares: arms, running them on many seeds, and evaluating them.

An experiment is a tuple of `Arm`s (a label, a config, optionally how many hidden units are in use
and per-arm values of the settings that leave the program's shapes alone: k, rho, the sparsity
weight, ...) and an `analyse` function. Arms that share a config (a sweep) are trained together in
one compiled program: the model is built with the largest size and each arm masks the units it
does not use, and each arm carries its own hyperparameters. `run` trains every arm on the same
seeds, evaluates every arm (plus the experiment's own per-arm `measure`, e.g. agreement across
seeds), and `analyse` turns the per-seed figures into the answer to the experiment's claim.

Presets whose arms follow from the data (a width equal to the number of atoms, a k grid around the
number of active atoms) give a `build(base) -> arms`; `with_overrides` then applies `--set` to the
base config, rebuilds the arms, and applies `--set` again to every arm, so explicit settings win.

The presets and their analyses live in one module per family (`tutorial`, ...), which builds on
this module; this module knows no family and no registry.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import data, memory, metrics, processes, runner, schema, train
from jaxae.config import Config, invalid, override


@dataclasses.dataclass(frozen=True)
class Arm:
    """One setting an experiment trains on every seed."""

    label: str
    config: Config
    n_active: int | None = None  # hidden units in use (None: all of config.model.n_hidden)
    # Per-arm values of `train.Hyper` fields (("k", 2), ("sparsity_weight", 0.1), ...): arms of one
    # config that differ only here share a program.
    hyper: tuple[tuple[str, float], ...] = ()

    @property
    def n_hidden(self) -> int:
        return self.config.model.n_hidden if self.n_active is None else self.n_active

    def value(self, name: str) -> float:
        """The arm's value of a `train.Hyper` field: its own, else the config's."""
        values = dict(self.hyper)
        if name in values:
            return values[name]
        return float(getattr(train.Hyper.from_config(self.config, self.n_active), name))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named preset: a claim, the arms that test it and the analysis that answers."""

    name: str
    family: str  # the module of jaxae.experiments (and of jaxae.report) that defines it
    section: str
    summary: str
    claim: str
    arms: tuple[Arm, ...]
    analyse: Callable[[Experiment, dict[str, ArmResult]], Any]  # an `analysis_type`
    analysis_type: Any  # what `analyse` returns (a dataclass, or a dict of them)
    arm_axis: str  # what distinguishes the arms, for metrics.json: "init", "n_hidden", "run", ...
    # Figures of one arm beyond `ArmResult.summary` (they join it in metrics.json's `arms.<label>`):
    # a dataclass whose fields `arm_type` adds to `schema.ArmSummary`'s.
    measure: Callable[[ArmResult], Any] | None = None
    arm_type: type[schema.ArmSummary] = schema.ArmSummary
    # Arms built from a base config, so that `--set` on the data or width reaches every arm.
    build: Callable[[Config], tuple[Arm, ...]] | None = None
    base: Config | None = None
    # `--set` fields that `build` hands to the arms that use them (e.g. `model.k` to a top-k arm
    # only, beside ReLU and sigmoid arms): they reach the arms through the base, not by being set
    # on every arm.
    base_only: tuple[str, ...] = ()
    default_seeds: int = 256  # seeds `jaxae run` and `jaxae reproduce` train without --seeds

    @property
    def config(self) -> Config:
        """The first arm's config (the experiment's own setting)."""
        return self.arms[0].config


@dataclasses.dataclass
class ArmResult:
    """Per-seed outcome of one arm (host numpy arrays, leading axis S)."""

    arm: Arm
    params: Any
    history_SxE: np.ndarray
    # final_loss, final_mse, fvu, unit_active_fraction, l0 and dead_at_init (unit 0 never active
    # at initialisation), each with a leading seed axis
    figures: dict[str, np.ndarray]
    diverged: np.ndarray
    pca_floor_fvu: float
    convergence_tol: float
    reconstruction_tol: float
    x: np.ndarray
    init_params: Any = None  # the same seeds' untrained weights: the chance level of agreement
    ground_truth: np.ndarray | None = None  # the data's true dictionary `atoms_MxD`, if it has one
    measures: Any = None  # `Experiment.measure`'s dataclass
    arm_type: type[schema.ArmSummary] = schema.ArmSummary  # `Experiment.arm_type`

    @property
    def converged(self) -> np.ndarray:
        limit = self.pca_floor_fvu + self.convergence_tol
        return (self.figures["fvu"] <= limit) & ~self.diverged

    @property
    def reconstructs(self) -> np.ndarray:
        return (self.figures["fvu"] <= self.reconstruction_tol) & ~self.diverged

    def summary(self) -> schema.ArmSummary:
        """Per-seed lists and the summary figures every arm reports, with the arm's measures."""
        n = len(self.diverged)
        converged = self.converged
        dead = metrics.dead_units(
            self.figures["unit_active_fraction"], np.full(n, self.arm.n_hidden)
        )
        l0 = self.figures.get("l0", np.full(n, np.nan))
        common = schema.ArmSummary(
            n_hidden=self.arm.n_hidden,
            hyper=dict(self.arm.hyper),
            final_loss=self.figures["final_loss"].tolist(),
            final_mse=self.figures["final_mse"].tolist(),
            fvu=self.figures["fvu"].tolist(),
            converged=converged.tolist(),
            reconstructs=self.reconstructs.tolist(),
            diverged=self.diverged.tolist(),
            dead_units=dead.tolist(),
            convergence_rate=float(np.mean(converged)),
            convergence_ci95=metrics.wilson_interval(int(converged.sum()), n),
            reconstruction_rate=float(np.mean(self.reconstructs)),
            reconstruction_ci95=metrics.wilson_interval(int(self.reconstructs.sum()), n),
            pca_floor_fvu=self.pca_floor_fvu,
            convergence_tol=self.convergence_tol,
            reconstruction_tol=self.reconstruction_tol,
            fvu_quantiles=schema.Quantiles.of(self.figures["fvu"]),
            final_loss_quantiles_converged=schema.Quantiles.of(
                self.figures["final_loss"][converged]
            ),
            l0=np.asarray(l0).tolist(),
            l0_quantiles=schema.Quantiles.of(l0),
        )
        if self.measures is None:
            return common
        return self.arm_type(**schema.fields_of(common), **schema.fields_of(self.measures))


# ----------------------------------------------------------------------------------------------
# Helpers for presets and analyses of every family


def with_(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """`cfg` with fields of its sections replaced: `with_(cfg, model={"init": "flax"})`."""
    return dataclasses.replace(
        cfg,
        **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()},
    )


def sweep(cfg: Config, sizes: tuple[int, ...]) -> tuple[Arm, ...]:
    """One arm per hidden size, all sharing one program built with the largest size."""
    wide = with_(cfg, model={"n_hidden": max(sizes)})
    return tuple(Arm(label=str(h), config=wide, n_active=h) for h in sizes)


# Seeds whose weights are compared pairwise (all pairs among them): 100 seeds give 4,950 pairs.
SIMILARITY_SEEDS = 100


def encoder_rows(params: Any) -> np.ndarray:
    """Encoder weights as one row per hidden unit: `w_SxHxD`.

    A tied model (`model.tied`) has no encoder kernel: its rows are the decoder's (`decoder_rows`),
    the raw decoder kernel rows. With a unit-norm decoder the rows in use differ from them only by
    each row's scale, so the scale-invariant measures that read them (cosine matching, filter
    orientation and locality) are those of the encoder in use.
    """
    encoder = params["params"]["encoder"]
    if "kernel" not in encoder:
        return decoder_rows(params)
    return np.swapaxes(np.asarray(encoder["kernel"]), -1, -2)


def decoder_rows(params: Any) -> np.ndarray:
    """Decoder weights as one row per hidden unit: `w_SxHxD`."""
    return np.asarray(params["params"]["decoder"]["kernel"])


def agreement(r: ArmResult) -> schema.Agreement:
    """Does this arm find the same units from every seed, and the true atoms if the data has them?

    Per pair of the first `SIMILARITY_SEEDS` seeds (`metrics.seed_pairs` order): `pw_mcc`
    (decoder directions matched one-to-one on signed cosine, mean matched cosine),
    `pw_mcc_encoder`, and `shared` (share of units whose decoder and encoder both agree beyond
    0.7), each beside its chance level `*_null`: the same figure between the same seeds' untrained
    weights. With a ground truth, per seed: `gt_mcc` (the atoms matched to decoder directions, mean
    cosine), `recovered` (share of atoms at cosine >= 0.9) and `gt_mcc_null` (the untrained
    decoder's). Units past the arm's size are left out.
    """
    h = r.arm.n_hidden
    m = min(len(r.diverged), SIMILARITY_SEEDS)
    out: dict[str, Any] = {"pw_seeds": m}
    for suffix, params in (("", r.params), ("_null", r.init_params)):
        dec, enc = decoder_rows(params)[:, :h], encoder_rows(params)[:, :h]
        for name, values in metrics.pairwise_mcc(dec[:m], enc[:m]).items():
            out[name + suffix] = values.tolist()
        if r.ground_truth is not None:
            g = metrics.ground_truth_mcc(dec, r.ground_truth)
            out["gt_mcc" + suffix] = g["gt_mcc"].tolist()
            if not suffix:
                out["recovered"] = g["recovered"].tolist()
    return schema.Agreement(**out)


# Config fields whose values are per-arm hyperparameters (`train.Hyper` fields): an arm may have its
# own value (`Arm.hyper`; its own size, `Arm.n_active`), and one program trains many values.
HYPER_FIELDS = {
    "optim.learning_rate": "learning_rate",
    "optim.weight_decay": "weight_decay",
    "loss.weight": "sparsity_weight",
    "loss.rho": "rho",
    "model.k": "k",
    "model.n_hidden": "n_active",
}
# Of those, the program's own largest k and width: a `--set` of them changes the program every arm
# trains in (each arm's own k or size must fit in it), so it is never lost on an arm that has one.
PROGRAM_FIELDS = ("model.k", "model.n_hidden")


class Reads(NamedTuple):
    """When an arm's training reads a field: in words, and as a test of the arm."""

    when: str
    test: Callable[[Arm], bool]


# Fields an arm's training may not read, and when it reads them (`uses`). An arm whose own
# sparsity weight is 0 (digits' `plain`: the L1 model without its penalty) has no penalty.
USED_ONLY: dict[str, Reads] = {
    "loss.weight": Reads(
        'with a penalty (loss.sparsity other than "none")',
        lambda a: a.config.loss.sparsity != "none" and dict(a.hyper).get("sparsity_weight") != 0,
    ),
    "loss.rho": Reads('with loss.sparsity="kl"', lambda a: a.config.loss.sparsity == "kl"),
    "model.k": Reads(
        "with a top-k activation (model.activation topk or batchtopk)",
        lambda a: a.config.model.k is not None,
    ),
    "optim.learning_rate": Reads(
        "with a step-size optimizer (L-BFGS's line search sets its steps)",
        lambda a: a.config.optim.name != "lbfgs",
    ),
    "loss.aux_weight": Reads(
        "with the auxiliary top-k loss (loss.aux_k > 0)", lambda a: a.config.loss.aux_k > 0
    ),
    # tied weights have no encoder kernel to start anywhere; the oracle and data starts tie it
    "model.tied_init": Reads(
        "with an untied encoder started apart from the data (model.tied false, model.init not "
        '"atoms" or "data")',
        lambda a: not a.config.model.tied and a.config.model.init not in ("atoms", "data"),
    ),
}


def uses(arm: Arm, field: str) -> bool:
    """Does the arm's training read `field` at all (`USED_ONLY`)? Every other field is taken as
    read."""
    return field not in USED_ONLY or USED_ONLY[field].test(arm)


def fixes(arm: Arm, field: str) -> bool:
    """Does the arm use a value of `field` of its own (a preset's knob, e.g. a sparse arm's
    penalty weight, or its own hidden size), so that any value given for the field is lost on it?"""
    if field == "model.n_hidden":
        return arm.n_active is not None
    return field in HYPER_FIELDS and uses(arm, field) and HYPER_FIELDS[field] in dict(arm.hyper)


def own_text(field: str, labels: list[str]) -> str:
    """What a refused `--set`/`--sweep` of a field arms fix for themselves allows, naming them."""
    who = f"arm {labels[0]} sets its" if len(labels) == 1 else f"arms {', '.join(labels)} set their"
    return f"a field no arm fixes for itself ({who} own {field})"


def _refuse_own(arms: list[Arm], fields: list[str]) -> None:
    """A `--set` value an arm would ignore (it has its own) is an error, never a silent no-op; the
    program's k and width (`PROGRAM_FIELDS`) are not lost on such arms, so they pass."""
    for field in dict.fromkeys(fields):
        own = [a for a in arms if field not in PROGRAM_FIELDS and fixes(a, field)]
        if own:
            section, _, name = field.partition(".")
            value = getattr(getattr(own[0].config, section), name)
            raise invalid(field, value, own_text(field, [a.label for a in own]))


def with_overrides(
    exp: Experiment, assignments: list[str], *, swept: tuple[str, ...] = ()
) -> Experiment:
    """`exp` with `--set section.field=value` applied to every arm (validated before training).

    A value an arm would ignore because it has its own (`fixes`) is a `ValueError`, so no run is
    silently the same as without it; `swept` names fields of `assignments` a sweep gives, which
    it checks itself (`sweep.expand`). In a sweep, `model.n_hidden` is the program's width; the
    arms keep their own sizes, so it must be at least the largest of them. Fields in
    `exp.base_only` reach the arms through the base only. Host data (files) are loaded here once,
    so a bad file is a `ValueError` before training.
    """
    if not assignments:
        return exp
    built = exp.arms if exp.build is None else exp.build(override(exp.base, assignments))
    every_arm = [a for a in assignments if a.partition("=")[0].strip() not in exp.base_only]
    arms = []
    for arm in built:
        cfg = override(arm.config, every_arm)
        data.check(cfg.data)
        if arm.n_active is not None and arm.n_active > cfg.model.n_hidden:
            raise ValueError(
                f"model.n_hidden={cfg.model.n_hidden} is invalid: allowed is at least "
                f"{arm.n_active}, the largest hidden size this experiment sweeps"
            )
        if cfg.model.init == "atoms" and arm.n_active not in (None, cfg.model.n_hidden):
            # the oracle start is one unit per atom; a masked unit would drop an atom
            raise invalid(
                "model.init",
                cfg.model.init,
                f"'atoms' only where every unit is in use (arm {arm.label} uses {arm.n_active} "
                f"of {cfg.model.n_hidden})",
            )
        k = dict(arm.hyper).get("k")
        if k is not None and (cfg.model.k is None or k > cfg.model.k):
            largest = max(dict(a.hyper).get("k", 0) for a in built if a.config == arm.config)
            raise ValueError(
                f"model.k={cfg.model.k} is invalid: allowed is at least {int(largest)}, the "
                "largest k this experiment sweeps"
            )
        arms.append(dataclasses.replace(arm, config=cfg))
    fields = [a.partition("=")[0].strip() for a in assignments]
    _refuse_own(arms, [f for f in fields if f not in swept])
    return dataclasses.replace(exp, arms=tuple(arms))


def built(build: Callable[[Config], tuple[Arm, ...]], base: Config) -> dict[str, Any]:
    """`Experiment` fields of a preset whose arms follow from a base config: `**built(fn, cfg)`."""
    return {"arms": build(base), "build": build, "base": base}


# ----------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class GroupCheckpoint:
    """Where one program (a group of arms sharing a config) stands: for resuming."""

    state: train.TrainState
    history_SxAxE: np.ndarray
    epochs_done: int
    # Training time and seed-steps spent on it so far, over every session of a resumed run.
    train_s: float = 0.0
    seed_steps: float = 0.0
    # Periodic checkpoints (`train.checkpoint_minutes`) written while it trained, over every
    # session, and the seconds they took.
    checkpoints: int = 0
    checkpoint_s: float = 0.0


@dataclasses.dataclass
class RunOutput:
    """What `run` returns: per-arm results when finished, group states either way."""

    experiment: Experiment
    n_seeds: int
    seed: int
    groups: list[GroupCheckpoint]
    # None when the run was stopped early, and on every process but 0 of a multi-process run
    results: dict[str, ArmResult] | None
    timing: dict[str, float]
    # Bytes per device: the budget, the largest group's plans for training and for evaluation
    # (`memory.MemoryPlan.to_dict()`), and the measured peaks (`memory.peak_memory`).
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    # `experiment.analyse` of the results (its `analysis_type`); None where `results` is None
    analysis: Any = None

    @property
    def finished(self) -> bool:
        """Every group trained all its epochs (evaluated too, unless on a process other than 0)."""
        if self.results is not None:
            return True
        groups = groups_of(self.experiment)
        return len(self.groups) == len(groups) and all(
            g.epochs_done >= arms[0].config.train.epochs
            for g, arms in zip(self.groups, groups, strict=True)
        )


def groups_of(exp: Experiment) -> list[list[Arm]]:
    """Arms that share a config, in order of first appearance: one compiled program per group, in
    which the arms are an axis inside every seed."""
    groups: dict[Config, list[Arm]] = {}
    for arm in exp.arms:
        groups.setdefault(arm.config, []).append(arm)
    return list(groups.values())


def group_layout(arms: list[Arm], n_seeds: int, seed: int) -> tuple[jax.Array, train.Hyper]:
    """Seed keys `[S]` and hyperparameters `[S, A]` of a group: every arm trains seeds 0..S-1."""
    cfg = arms[0].config
    hyper_A = train.stack_arms(
        [train.Hyper.from_config(cfg, arm.n_hidden, **dict(arm.hyper)) for arm in arms]
    )
    hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (n_seeds, *v.shape)), hyper_A)
    return train.seed_keys(seed, n_seeds), hyper


def run(
    exp: Experiment,
    n_seeds: int,
    seed: int = 0,
    *,
    callback: Callable[[int, runner.Progress], bool | None] | None = None,
    resume: list[GroupCheckpoint] | None = None,
    devices: list[jax.Device] | None = None,
    memory_budget: int | None = None,
    checkpoint: Callable[[RunOutput], Any] | None = None,
) -> RunOutput:
    """Train every arm of `exp` on seeds `0..n_seeds-1`; evaluate and analyse when finished
    (`RunOutput.results` and `.analysis`, which is `exp.analyse`'s: of a swept experiment, one per
    grid point).

    `callback(group_index, progress)` runs after each chunk; returning True stops at that chunk
    boundary and returns a `RunOutput` with `results=None` whose `groups` can be passed as `resume`.
    `checkpoint(output)`, if given, is handed such an unfinished `RunOutput` of every group so far
    at the first chunk boundary `train.checkpoint_minutes` after the start or its last call (the
    CLI saves it as `DIR.partial/`); `timing` counts the calls (`checkpoints`) and their seconds
    (`checkpoint_s`, and `checkpoint_share` of the training time), which training time excludes.
    `devices` (default: all) carry the seed axis; the same seeds on other devices agree to float
    rounding, not bit for bit. `memory_budget` (bytes per device; default
    `memory.device_memory_budget`) splits training and evaluation into batches of seeds that fit
    (`runner.train_seeds`, `runner.evaluate_seeds`); `RunOutput.memory` reports the plans.

    Every group is trained before any is evaluated. In a multi-process run
    (`processes.init_processes`) every process trains; process 0 alone evaluates, on its own
    devices, and the others return with `results=None` (and `finished` true).
    """
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds <= 0:
        raise ValueError(f"n_seeds={n_seeds!r} is invalid: allowed is a positive integer")
    groups = groups_of(exp)
    done: list[GroupCheckpoint] = []
    # Training time and seed-steps/s count every session of a resumed run; compile time this one's.
    timing = {"compile_s": 0.0, "train_s": 0.0, "seed_steps": 0.0}
    if resume is not None:
        timing["resumed"] = True
    usage: dict[str, Any] = {}  # RunOutput.memory
    saves = _Checkpoints(RunOutput(exp, n_seeds, seed, done, None, timing, usage), checkpoint)
    trained = []
    for g, arms in enumerate(groups):
        previous = resume[g] if resume is not None and g < len(resume) else None
        on_chunk = saves.hook(g, arms[0].config, previous, callback)
        group_done, x = _train_group(
            arms, n_seeds, seed, previous, on_chunk, timing, usage, devices, memory_budget
        )
        done.append(saves.counted(g, group_done))
        if group_done.epochs_done < arms[0].config.train.epochs:
            return RunOutput(exp, n_seeds, seed, done, None, timing, usage)
        trained.append((group_done.state, group_done.history_SxAxE, x))
    timing["seed_steps_per_s"] = (
        timing["seed_steps"] / timing["train_s"] if timing["train_s"] > 0 else float("nan")
    )
    del timing["seed_steps"]
    timing["checkpoints"] = sum(g.checkpoints for g in done)
    timing["checkpoint_s"] = sum(g.checkpoint_s for g in done)
    timing["checkpoint_share"] = (
        timing["checkpoint_s"] / timing["train_s"] if timing["train_s"] > 0 else float("nan")
    )
    if not processes.is_writer():
        return RunOutput(exp, n_seeds, seed, done, None, timing, usage)
    results: dict[str, ArmResult] = {}
    local = devices if jax.process_count() == 1 else None
    for arms, (state, history, x) in zip(groups, trained, strict=True):
        cfg = arms[0].config
        keys, hyper = group_layout(arms, n_seeds, seed)
        group, plan = _evaluate_group(
            arms, cfg, keys, state, history, x, hyper, devices=local, memory_budget=memory_budget
        )
        _largest_plan(usage, "evaluate", plan.to_dict())
        for r in group.values():
            if exp.measure is not None:
                r.measures, r.arm_type = exp.measure(r), exp.arm_type
        results.update(group)
    usage.update(memory.peak_memory())
    analysis = exp.analyse(exp, results)
    return RunOutput(exp, n_seeds, seed, done, results, timing, usage, analysis)


class _Checkpoints:
    """The periodic checkpoints of one `run`: when the next is due, what each group's cost."""

    def __init__(self, out: RunOutput, save: Callable[[RunOutput], Any] | None) -> None:
        self.out, self.save = out, save  # `out.groups` grows as the groups finish
        self.last = time.monotonic()  # the start, then the end of the latest checkpoint
        self.count: dict[int, int] = {}
        self.seconds: dict[int, float] = {}

    def hook(
        self,
        g: int,
        cfg: Config,
        previous: GroupCheckpoint | None,
        callback: Callable[[int, runner.Progress], bool | None] | None,
    ) -> Callable[[runner.Progress], bool] | None:
        """Group g's chunk callback for `runner.train_seeds`: `callback`'s answer, and a
        checkpoint when one is due (never on a stop: the caller saves the stopped run itself)."""
        self.count[g] = 0 if previous is None else previous.checkpoints
        self.seconds[g] = 0.0 if previous is None else previous.checkpoint_s
        minutes = cfg.train.checkpoint_minutes
        if callback is None and (self.save is None or minutes == 0):
            return None
        spent_s, spent_steps = (
            (0.0, 0.0) if previous is None else (previous.train_s, previous.seed_steps)
        )

        def on_chunk(p: runner.Progress) -> bool:
            stop = callback is not None and bool(callback(g, p))
            due = minutes > 0 and time.monotonic() - self.last >= 60 * minutes
            if self.save is not None and due and not stop:
                now = GroupCheckpoint(
                    p.state,
                    p.history_SxAxE,
                    p.epochs_done,
                    spent_s + p.train_s,
                    spent_steps + p.seed_steps,
                    self.count[g],
                    self.seconds[g],
                )
                t0 = time.perf_counter()
                self.save(dataclasses.replace(self.out, groups=[*self.out.groups, now]))
                self.count[g] += 1
                self.seconds[g] += time.perf_counter() - t0
                self.last = time.monotonic()
            return stop

        return on_chunk

    def counted(self, g: int, group: GroupCheckpoint) -> GroupCheckpoint:
        """`group` with the checkpoints written while it trained."""
        return dataclasses.replace(group, checkpoints=self.count[g], checkpoint_s=self.seconds[g])


def _train_group(
    arms: list[Arm],
    n_seeds: int,
    seed: int,
    previous: GroupCheckpoint | None,
    callback: Callable[[runner.Progress], bool | None] | None,
    timing: dict[str, Any],
    usage: dict[str, Any],
    devices: list[jax.Device] | None,
    memory_budget: int | None,
) -> tuple[GroupCheckpoint, jax.Array | None]:
    """Train (or finish training) one group's program; add its time to `timing` and its memory
    plan to `usage`. Returns its checkpoint and the data it trained on (None if it had finished
    before a stop: nothing was trained now)."""
    cfg = arms[0].config
    keys, hyper = group_layout(arms, n_seeds, seed)
    spent_s, spent_steps = (
        (0.0, 0.0) if previous is None else (previous.train_s, previous.seed_steps)
    )
    timing["train_s"] += spent_s
    timing["seed_steps"] += spent_steps
    if previous is not None and previous.epochs_done >= cfg.train.epochs:
        return previous, None  # finished before the stop: nothing left to train
    res = runner.train_seeds(
        cfg,
        int(keys.shape[0]),
        seed,
        hyper=hyper,
        keys=keys,
        devices=devices,
        callback=callback,
        resume=None
        if previous is None
        else (previous.state, previous.history_SxAxE, previous.epochs_done),
        memory_budget=memory_budget,
    )
    seed_steps = res.timing["seed_steps_per_s"] * res.timing["train_s"]
    timing["compile_s"] += res.timing["compile_s"]
    timing["train_s"] += res.timing["train_s"]
    timing["seed_steps"] += seed_steps
    _largest_plan(usage, "train", res.memory)
    checkpoint = GroupCheckpoint(
        res.state,
        res.history_SxAxE,
        res.epochs_done,
        spent_s + res.timing["train_s"],
        spent_steps + seed_steps,
    )
    return checkpoint, res.x


def _largest_plan(usage: dict[str, Any], name: str, plan: dict[str, Any]) -> None:
    """Keep in `usage[name]` whichever plan needs more bytes for all its seeds at once."""
    plan = {k: v for k, v in plan.items() if k in _PLAN_KEYS}
    if name not in usage or plan["all_seeds_bytes"] > usage[name]["all_seeds_bytes"]:
        usage[name] = plan
        usage["budget_bytes"] = plan["budget_bytes"]


_PLAN_KEYS = (
    "budget_bytes",
    "per_seed_bytes",
    "fixed_bytes",
    "all_seeds_bytes",
    "batch_bytes",
    "batch_seeds",
    "batches",
    "devices",
)


def _evaluate_group(
    arms: list[Arm],
    cfg: Config,
    keys: jax.Array,
    state: train.TrainState,
    history: np.ndarray,
    x: jax.Array | None,
    hyper: train.Hyper,
    *,
    devices: list[jax.Device] | None = None,
    memory_budget: int | None = None,
) -> tuple[dict[str, ArmResult], memory.MemoryPlan]:
    """Full-data figures of every run of a group (and of unit 0 at initialisation), split by arm;
    evaluated in batches of seeds that fit (`runner.evaluate_seeds`, whose plan comes back too)."""
    progs = runner.programs(cfg)
    if x is None:
        x = (
            runner.seed_data_batches(cfg, keys, memory.PROBE_SEEDS)
            if cfg.data.per_seed
            else data.shared_data(cfg)
        )
    evaluate = functools.partial(
        runner.evaluate_seeds, cfg, x=x, devices=devices, memory_budget=memory_budget
    )
    figures, plan = evaluate(state)
    init_state = progs.init(keys, hyper)
    figures["dead_at_init"] = evaluate(init_state)[0]["unit_active_fraction"][..., 0] == 0
    atoms = data.trained_atoms(cfg, keys)
    x_np = np.asarray(x)
    floor_x = x_np[0] if cfg.data.per_seed else x_np
    out: dict[str, ArmResult] = {}
    for a, arm in enumerate(arms):  # state, history and figures are [S, A, ...]
        out[arm.label] = ArmResult(
            arm=arm,
            params=jax.tree.map(lambda v, a=a: np.asarray(v[:, a]), state.params),
            history_SxE=history[:, a],
            figures={k: np.asarray(v)[:, a] for k, v in figures.items()},
            diverged=np.asarray(state.diverged)[:, a],
            pca_floor_fvu=metrics.pca_floor_fvu(floor_x, arm.n_hidden),
            convergence_tol=metrics.convergence_tol(floor_x, arm.n_hidden),
            reconstruction_tol=metrics.reconstruction_tol(floor_x),
            x=x_np,
            init_params=jax.tree.map(lambda v, a=a: np.asarray(v[:, a]), init_state.params),
            ground_truth=None if atoms is None else np.asarray(atoms),
        )
    return out, plan
