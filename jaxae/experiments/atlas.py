"""The identifiability atlas (`jaxae run atlas`): where in the space of sparse data each mechanism
recovers the true atoms, and where none does.

A cell of the atlas is a kind of data: `RATIOS` x `N_FEATURES` atoms (overcompleteness M / D) in
`N_FEATURES` dimensions, `active` atoms per sample (`ACTIVES`), fired exactly (`active` distinct
atoms per sample) or independently (`bernoulli`, each atom with probability active / M, so that
`active` is the expected count). Each cell has `DICTIONARIES` dictionaries (`data.seed` 0..),
and every mechanism of `MECHANISMS` trains `seeds` seeds on each, with width M (one unit per
atom), over its knob grid (`sparse.grid`, around the cell's `active`), with `sparse`'s recipe.

A cell's run is exactly a run of `sparse` with the cell's `--set` values: the same data (drawn
with `data.seed` = the dictionary), the same seed keys, the same program (`sparse.
mechanism_config`); tests/test_atlas.py checks that. What the atlas adds is the packing: every
cell of one width and one mechanism is one compiled program, its seed axis carrying every
(cell, dictionary, seed) row with that row's own data (`runner.train_seeds(x=...)`) and its own
knob values (the row's arms), so the whole grid is `len(MECHANISMS) x len(RATIOS)` programs.

Per cell and mechanism the knob is chosen as `sparse` chooses it, without the ground truth: the
arm whose seeds agree best (median PW-MCC over the pairs of seeds that share a dictionary; then
the lower FVU). Its figures: the share of runs (dictionaries x seeds) that recover every atom
(GT-MCC >= `sparse.AGREE`), median GT-MCC, median PW-MCC beside its chance level (the same pairs'
untrained weights).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxae import data, metrics, runner, schema, train
from jaxae.config import Config, DataConfig
from jaxae.experiments import sparse
from jaxae.experiments.base import decoder_rows, with_

NAME = "atlas"
FAMILY = "atlas"
N_FEATURES = 8
RATIOS = (1, 2, 3, 4)
ACTIVES = (1, 2, 3, 4, 6, 8)
FIRINGS = ("exact", "bernoulli")
MECHANISMS = ("relu", "topk", "topk_revive", "batchtopk", "jumprelu", "l1")
# Trained when `atlas.mechanisms` names them: the revived L1 (scripts/saelens_benchmark.py).
OPTIONAL = ("l1_revive",)
DICTIONARIES = 2
SEEDS = 2  # per dictionary: `--seeds`
N_SAMPLES = 4096
# 64 steps an epoch at batch 64: 6,400 steps, a third of `sparse`'s, on data a third as wide.
EPOCHS = 100
SUMMARY = (
    "where each mechanism recovers the true atoms: overcompleteness x atoms per sample x firing"
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One kind of data: `ratio x n_features` atoms, `active` per sample, fired `firing`."""

    ratio: int
    active: int
    firing: str

    def n_atoms(self, n_features: int) -> int:
        return self.ratio * n_features

    @property
    def label(self) -> str:
        return f"M/D={self.ratio} active={self.active} {self.firing}"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What an atlas run covers; `--seeds` sets `seeds`, `--epochs` `epochs`."""

    seeds: int = SEEDS
    dictionaries: int = DICTIONARIES
    epochs: int = EPOCHS
    n_samples: int = N_SAMPLES
    n_features: int = N_FEATURES
    ratios: tuple[int, ...] = RATIOS
    actives: tuple[int, ...] = ACTIVES
    firings: tuple[str, ...] = FIRINGS
    mechanisms: tuple[str, ...] = MECHANISMS
    seed: int = 0  # the base seed of the training keys (`--seed`)

    def __post_init__(self) -> None:
        for name in ("seeds", "dictionaries", "epochs", "n_samples", "n_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"atlas.{name}={value!r} is invalid: allowed is an integer >= 1")
        if self.seeds < 2:
            raise ValueError(
                f"atlas.seeds={self.seeds!r} is invalid: allowed is an integer >= 2 (seeds of one "
                "dictionary are compared in pairs)"
            )
        unknown = [m for m in self.mechanisms if m not in MECHANISMS + OPTIONAL]
        if unknown or not self.mechanisms:
            raise ValueError(
                f"atlas.mechanisms={','.join(self.mechanisms)!r} is invalid: allowed is a "
                f"non-empty subset of {', '.join(MECHANISMS + OPTIONAL)}"
            )
        for cell in self.cells():
            m = cell.n_atoms(self.n_features)
            if not 1 <= cell.active <= m:
                raise ValueError(
                    f"atlas.actives={cell.active!r} is invalid: allowed is 1..{m} (the atoms of "
                    f"M/D={cell.ratio})"
                )

    def cells(self) -> list[Cell]:
        return [Cell(r, a, f) for f in self.firings for r in self.ratios for a in self.actives]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# `--set atlas.FIELD=VALUE` (comma-separated for the grid's axes): the fields of `Spec` it may set.
INT_FIELDS = ("dictionaries", "n_samples", "n_features")
TUPLE_FIELDS = {"ratios": int, "actives": int, "firings": str, "mechanisms": str}


def spec_of(
    assignments: list[str],
    *,
    seeds: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> Spec:
    """The `Spec` of `jaxae run atlas`: `--seeds`, `--epochs`, `--seed` and `--set atlas.FIELD=V`
    (a `ValueError` naming the field for anything else)."""
    values: dict[str, Any] = {"seed": seed}
    if seeds is not None:
        values["seeds"] = seeds
    if epochs is not None:
        values["epochs"] = epochs
    allowed = ", ".join(f"atlas.{f}" for f in (*INT_FIELDS, *TUPLE_FIELDS))
    for assignment in assignments:
        field, sep, value = assignment.partition("=")
        name = field.removeprefix("atlas.")
        if not sep or name == field or name not in (*INT_FIELDS, *TUPLE_FIELDS):
            raise ValueError(
                f"--set {assignment!r} is invalid for atlas: allowed is one of {allowed} "
                "(=VALUE, the axes comma-separated), --seeds or --epochs"
            )
        kind = TUPLE_FIELDS.get(name, int)
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(
                f"atlas.{name}={value!r} is invalid: allowed is "
                + ("comma-separated integers" if kind is int else "comma-separated names")
            ) from None
        if name in INT_FIELDS:
            if len(items) != 1:
                raise ValueError(f"atlas.{name}={value!r} is invalid: allowed is one integer")
            values[name] = items[0]
        else:
            firings = ("exact", "bernoulli")
            if name == "firings" and (not items or any(f not in firings for f in items)):
                raise ValueError(
                    f"atlas.firings={value!r} is invalid: allowed is exact, bernoulli or both"
                )
            if not items:
                raise ValueError(f"atlas.{name}={value!r} is invalid: allowed is a non-empty list")
            values[name] = items
    return Spec(**values)


def data_config(spec: Spec, cell: Cell, dictionary: int) -> DataConfig:
    """The data of one cell and dictionary, as `sparse` would draw them with the cell's `--set`."""
    return dataclasses.replace(
        sparse.base_config().data,
        n_samples=spec.n_samples,
        n_features=spec.n_features,
        n_atoms=cell.n_atoms(spec.n_features),
        active=cell.active,
        firing=cell.firing,
        seed=dictionary,
    )


def sparse_base(spec: Spec, cell: Cell, dictionary: int = 0) -> Config:
    """`sparse`'s base config with the cell's `--set` values (data, width M, epochs)."""
    base = sparse.base_config()
    cfg = dataclasses.replace(base, data=data_config(spec, cell, dictionary))
    return with_(
        cfg,
        model={"n_hidden": cell.n_atoms(spec.n_features)},
        train={"epochs": spec.epochs, "chunk_epochs": spec.epochs},
    )


def knob_values(mechanism: str, spec: Spec, cell: Cell) -> tuple[float, ...]:
    """The knob values `sparse` sweeps for this mechanism on this cell (none for relu)."""
    return sparse.grid(mechanism, sparse_base(spec, cell), wide=False)


@dataclasses.dataclass(frozen=True)
class Row:
    """One seed of one dictionary of one cell: a row of a program's seed axis."""

    cell: Cell
    dictionary: int
    seed: int


@dataclasses.dataclass
class Program:
    """Every row of one mechanism and width, trained as one program."""

    mechanism: str
    ratio: int
    config: Config
    rows: list[Row]
    arms: int  # knob values per row (a row with fewer repeats its last)


def programs(spec: Spec) -> Iterator[Program]:
    """One program per mechanism and width: the rows of every cell of that width (width by
    width, so that the programs of one width share its data)."""
    for ratio in spec.ratios:
        cells = [c for c in spec.cells() if c.ratio == ratio]
        for mechanism in spec.mechanisms:
            grids = [knob_values(mechanism, spec, c) for c in cells]
            k_max = int(max(max(g) for g in grids)) if mechanism in sparse.K_MECHANISMS else 0
            cfg = sparse.mechanism_config(mechanism, sparse_base(spec, cells[0]), k_max)
            cfg = with_(cfg, data={"per_seed": True})
            rows = [
                Row(c, d, s)
                for c in cells
                for d in range(spec.dictionaries)
                for s in range(spec.seeds)
            ]
            yield Program(mechanism, ratio, cfg, rows, max(1, max(len(g) for g in grids)))


def _hyper(prog: Program, spec: Spec) -> train.Hyper:
    """`[S, A]` settings: each row's own knob values (its cell's grid, the last repeated)."""
    field = sparse.KNOBS.get(prog.mechanism, (None,))[0]
    per_row = []
    for row in prog.rows:
        values = knob_values(prog.mechanism, spec, row.cell)
        arms = []
        for a in range(prog.arms):
            own = {field: values[min(a, len(values) - 1)]} if values else {}
            arms.append(train.Hyper.from_config(prog.config, **own))
        per_row.append(train.stack_arms(arms))
    return jax.tree.map(lambda *v: np.stack(v), *per_row)


Draws = dict[tuple[Cell, int], tuple[np.ndarray, np.ndarray]]


def _draws(prog: Program, spec: Spec, cache: Draws | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's data `x_SxNxD` and true atoms `atoms_SxMxD` (a dictionary's rows share them),
    drawn as `sparse` draws them (`data.make_data` of the cell's config); `cache` keeps them for
    the next program of the same width."""
    cache = {} if cache is None else cache
    xs, atoms = [], []
    for row in prog.rows:
        if (row.cell, row.dictionary) not in cache:
            cfg = data_config(spec, row.cell, row.dictionary)
            key = jax.random.key(cfg.seed)
            x = np.asarray(data.make_data(key, cfg), np.float32)
            cache[row.cell, row.dictionary] = x, np.asarray(data.ground_truth(key, cfg))
        x, a = cache[row.cell, row.dictionary]
        xs.append(x)
        atoms.append(a)
    return np.stack(xs), np.stack(atoms)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CellResult:
    """One mechanism on one cell: the chosen knob's figures over its runs and seed pairs."""

    mechanism: str
    ratio: int
    active: int
    firing: str
    knob: dict[str, float]  # the chosen arm's knob value (empty for relu)
    runs: int  # dictionaries x seeds
    gt_share: float  # runs with GT-MCC >= AGREE
    gt_share_ci95: list[float]
    gt_mcc_median: float
    pw_mcc_median: float
    pw_mcc_null_median: float
    pw_pairs: int
    fvu_median: float
    l0_median: float
    diverged: int
    # every arm's median PW-MCC (what the choice saw) and share recovering every atom
    arm_pw_mcc_median: list[float]
    arm_gt_share: list[float]


def _cell_figures(
    prog: Program,
    spec: Spec,
    cell: Cell,
    figures: dict[str, np.ndarray],
    params: Any,
    init_params: Any,
    atoms_SxMxD: np.ndarray,
    diverged_SxA: np.ndarray,
) -> CellResult:
    """The cell's rows of a trained program: per arm GT-MCC, PW-MCC within dictionaries; the arm
    chosen by agreement."""
    rows = [i for i, r in enumerate(prog.rows) if r.cell == cell]
    values = knob_values(prog.mechanism, spec, cell)
    field = sparse.KNOBS.get(prog.mechanism, (None,))[0]
    trained_SxAxHxD, untrained_SxAxHxD = decoder_rows(params)[rows], decoder_rows(init_params)[rows]
    # the cell's rows of each dictionary: the seeds whose agreement is measured
    by_dictionary = [
        [j for j, i in enumerate(rows) if prog.rows[i].dictionary == d]
        for d in range(spec.dictionaries)
    ]
    per_arm = []
    for a in range(prog.arms):
        dec, untrained = trained_SxAxHxD[:, a], untrained_SxAxHxD[:, a]
        gt = metrics.ground_truth_mcc(dec, atoms_SxMxD[rows])["gt_mcc"]
        pw, null = [], []
        for same in by_dictionary:
            pw += metrics.pairwise_mcc(dec[same])["pw_mcc"].tolist()
            null += metrics.pairwise_mcc(untrained[same])["pw_mcc"].tolist()
        per_arm.append(
            {
                "gt": gt,
                "pw": np.asarray(pw),
                "null": np.asarray(null),
                "fvu": figures["fvu"][rows, a],
                "l0": figures["l0"][rows, a],
                "diverged": diverged_SxA[rows, a],
            }
        )
    # the arms a cell really has (a row of a narrower grid repeats its last value)
    own = per_arm[: max(1, len(values))]
    chosen = max(
        range(len(own)),
        key=lambda a: (
            sparse.finite_median(own[a]["pw"]),
            -sparse.finite_median(own[a]["fvu"]),
        ),
    )
    best = own[chosen]
    n_gt = int(np.sum(best["gt"] >= sparse.AGREE))
    return CellResult(
        mechanism=prog.mechanism,
        ratio=cell.ratio,
        active=cell.active,
        firing=cell.firing,
        knob={field: float(values[chosen])} if values else {},
        runs=len(rows),
        gt_share=n_gt / len(rows),
        gt_share_ci95=list(metrics.wilson_interval(n_gt, len(rows))),
        gt_mcc_median=sparse.finite_median(best["gt"]),
        pw_mcc_median=sparse.finite_median(best["pw"]),
        pw_mcc_null_median=sparse.finite_median(best["null"]),
        pw_pairs=int(best["pw"].size),
        fvu_median=sparse.finite_median(best["fvu"]),
        l0_median=sparse.finite_median(best["l0"]),
        diverged=int(np.sum(best["diverged"])),
        arm_pw_mcc_median=[sparse.finite_median(o["pw"]) for o in own],
        arm_gt_share=[float(np.mean(o["gt"] >= sparse.AGREE)) for o in own],
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgramTiming:
    mechanism: str
    ratio: int
    rows: int
    arms: int
    compile_s: float
    train_s: float
    seed_steps_per_s: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Atlas:
    """metrics.json of an atlas run."""

    experiment: str
    family: str
    summary: str
    spec: dict[str, Any]
    agree: float
    cells: list[CellResult]
    programs: list[ProgramTiming]
    timing: dict[str, float]
    versions: dict[str, Any] = schema.optional()

    def cell(self, mechanism: str, ratio: int, active: int, firing: str) -> CellResult:
        for c in self.cells:
            if (c.mechanism, c.ratio, c.active, c.firing) == (mechanism, ratio, active, firing):
                return c
        raise KeyError((mechanism, ratio, active, firing))


def train_program(
    prog: Program,
    spec: Spec,
    *,
    devices: list[jax.Device] | None = None,
    draws: Draws | None = None,
) -> tuple[list[CellResult], ProgramTiming, runner.TrainResult]:
    """Train one program's rows and score every cell in it (`draws`: see `_draws`)."""
    x_SxNxD, atoms_SxMxD = _draws(prog, spec, draws)
    hyper = _hyper(prog, spec)
    keys = train.seed_keys(spec.seed, spec.seeds)[np.asarray([r.seed for r in prog.rows])]
    result = runner.train_seeds(
        prog.config, len(prog.rows), keys=keys, hyper=hyper, x=x_SxNxD, devices=devices
    )
    host = jax.device_get(result.state)
    figures, _ = runner.evaluate_seeds(prog.config, result.state, x_SxNxD, devices=devices)
    init_params = jax.device_get(runner.programs(prog.config).init(keys, hyper).params)
    cells = list(dict.fromkeys(r.cell for r in prog.rows))
    diverged_SxA = np.asarray(host.diverged)
    found = [
        _cell_figures(
            prog, spec, cell, figures, host.params, init_params, atoms_SxMxD, diverged_SxA
        )
        for cell in cells
    ]
    timing = ProgramTiming(
        mechanism=prog.mechanism,
        ratio=prog.ratio,
        rows=len(prog.rows),
        arms=prog.arms,
        compile_s=float(result.timing["compile_s"]),
        train_s=float(result.timing["train_s"]),
        seed_steps_per_s=float(result.timing["seed_steps_per_s"]),
    )
    return found, timing, result


def run(
    spec: Spec,
    *,
    devices: list[jax.Device] | None = None,
    progress: Callable[[int, int, Program], bool | None] | None = None,
) -> Atlas | None:
    """Every program of `spec`, one after another; `progress(i, n, program)` before each:
    True stops the run there, which then returns None."""
    began = time.perf_counter()
    progs = list(programs(spec))
    cells: list[CellResult] = []
    timings: list[ProgramTiming] = []
    draws: Draws = {}
    for i, prog in enumerate(progs):
        if progress is not None and progress(i, len(progs), prog):
            return None
        if i and prog.ratio != progs[i - 1].ratio:
            draws.clear()  # the next width's cells
        found, timing, _ = train_program(prog, spec, devices=devices, draws=draws)
        cells += found
        timings.append(timing)
    total = time.perf_counter() - began
    return Atlas(
        experiment=NAME,
        family=FAMILY,
        summary=SUMMARY,
        spec=spec.to_dict(),
        agree=sparse.AGREE,
        cells=cells,
        programs=timings,
        timing={
            "total_s": total,
            "compile_s": sum(t.compile_s for t in timings),
            "train_s": sum(t.train_s for t in timings),
        },
    )


def grid_of(atlas: Atlas, mechanism: str, firing: str, field: str) -> np.ndarray:
    """`values_RxA`: one figure of a mechanism over the ratios (rows) and actives (columns)."""
    spec = atlas.spec
    out = np.full((len(spec["ratios"]), len(spec["actives"])), np.nan)
    for c in atlas.cells:
        if c.mechanism == mechanism and c.firing == firing:
            i, j = list(spec["ratios"]).index(c.ratio), list(spec["actives"]).index(c.active)
            out[i, j] = getattr(c, field)
    return out
