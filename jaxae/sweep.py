"""Sweeps from the command line: `--sweep section.field=v1,v2,...` specs, the grid they span, its
arms and programs, and the run directory keyed by grid point.

A grid point is one value of every swept field (the cartesian product of the specs). Each point is
the experiment with `--set` and the point's values applied (`with_overrides`, so the point is
validated exactly as `--set` would be); every arm of every point becomes an arm of one swept
experiment, which `experiments.run` trains as usual.

Fields whose values are `train.Hyper` fields (`HYPER_FIELDS`: learning rate, weight decay, the
sparsity weight, rho, top-k's k, the hidden size) leave the program's shapes alone: their values
move from the arm's config into its per-arm hyperparameters, so arms that differ only in them share
one compiled program. The program is built with the largest swept k and width; a point's arm with a
smaller hidden size masks the units it does not use, as the experiments' own hidden-size sweeps do
(so it equals that hidden-size arm, not a model built that narrow). Every other field (epochs,
batch size, data size, activation, ...) changes the program, so its points train in programs of
their own.

A grid is never a set of silent copies: every point must change some arm's training. A swept field
that an arm fixes for itself (a preset's knob, e.g. a sparse arm's penalty weight or a top-k arm's
k: `experiments.base.fixes`) is refused, naming those arms, as `--set` of it is; so is a field no
arm uses at all (`loss.weight` without a penalty, `loss.rho` without KL, `model.k` without a top-k
activation, `loss.aux_weight` without AuxK: `experiments.base.uses`). Where only some arms use a
field it is swept, and the plan says which arms stay the same at every value (metrics.json's
`grid.ignored`). The width is the one exception to the first rule: arms with hidden sizes of their
own keep them, and a width sweep sets their program's shape, which changes how every arm starts
(the initial weights' scale and draws follow the width), so its points differ; `--set model.k` and
`model.n_hidden` likewise give the program's largest k and width.

A swept run directory holds metrics.json with a `grid` section (the fields, their values, the
programs, the arms each field leaves alone, and per point its arms' summary figures and the
experiment's usual analysis, under the point's key) and one complete run directory per point under
`grid/` (metrics.json, history.npz, params, figures and report.md as a run of that point alone
would write them).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import typing
from pathlib import Path
from typing import Any, NamedTuple

from jaxae import processes, results
from jaxae.config import Config, override
from jaxae.experiments.base import (
    HYPER_FIELDS,  # config fields whose values are per-arm hyperparameters: one program, many
    USED_ONLY,
    Arm,
    ArmResult,
    Experiment,
    RunOutput,
    fixes,
    groups_of,
    own_text,
    uses,
    with_overrides,
)

GRID_DIR = "grid"  # the points' own run directories, under the swept run's directory


def _fail(spec: str, allowed: str) -> typing.NoReturn:
    raise ValueError(f"--sweep={spec!r} is invalid: allowed is {allowed}")


def value_text(value: Any) -> str:
    """A field value as `--set` reads it back (the shortest float text that round-trips)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _split(spec: str) -> tuple[str, list[str]]:
    """`section.field=v1,v2` -> ("section.field", ["v1", "v2"]), the field a known config field."""
    path, sep, text = spec.partition("=")
    field = path.strip()
    section, dot, name = field.partition(".")
    if not sep or not dot:
        _fail(spec, "section.field=v1,v2,..., e.g. optim.learning_rate=1e-4,1e-3,1e-2")
    sections = typing.get_type_hints(Config)
    if section not in sections:
        _fail(spec, "a section among " + ", ".join(sorted(sections)))
    names = typing.get_type_hints(sections[section])
    if name not in names:
        _fail(spec, f"a field of {section}: " + ", ".join(names))
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        _fail(spec, "a non-empty, comma-separated list of values")
    return field, items


def _get(cfg: Config, field: str) -> Any:
    section, _, name = field.partition(".")
    return getattr(getattr(cfg, section), name)


def _set(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with `section.field` values replaced (and validated)."""
    sections: dict[str, dict[str, Any]] = {}
    for field, value in values.items():
        section, _, name = field.partition(".")
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(
        cfg,
        **{s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()},
    )


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: the experiment as `--set` with the point's values gives it."""

    index: int
    values: tuple[tuple[str, Any], ...]  # (field, value) of every swept field, in spec order
    experiment: Experiment  # its arms keep their labels; trained results are evaluated as these
    labels: tuple[str, ...]  # the same arms' labels in the swept experiment (parallel to arms)
    dir: str  # its run directory, relative to the swept run's

    @property
    def assignments(self) -> list[str]:
        """The point as `--set` assignments."""
        return [f"{field}={value_text(value)}" for field, value in self.values]

    @property
    def key(self) -> str:
        """The point's key in metrics.json: `optim.learning_rate=0.001 loss.weight=0.1`."""
        return " ".join(self.assignments)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A swept experiment: the specs, the points, and every point's arms as one experiment."""

    base: Experiment  # the first grid point's experiment (its config stands for the setting)
    fields: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # per field, its values in the order given
    points: tuple[Point, ...]
    experiment: Experiment  # what `experiments.run` trains: every point's arms
    shape_free: tuple[str, ...]  # fields whose values became arms inside a program
    # Per swept field that some arms do not use, those arms (point labels): the same at every value
    ignored: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def specs(self) -> list[str]:
        """The specs as `--sweep` reads them back (recorded for `--resume`)."""
        return [
            f"{field}=" + ",".join(value_text(v) for v in values)
            for field, values in zip(self.fields, self.values, strict=True)
        ]

    def _programs(self) -> list[tuple[list[str], list[Point]]]:
        """Per compiled program: the experiment's arms in it and the points it trains."""
        where = {}
        for p in self.points:
            for label, arm in zip(p.labels, p.experiment.arms, strict=True):
                where[label] = (p, arm.label)
        out = []
        for arms in groups_of(self.experiment):
            found = [where[a.label] for a in arms]
            labels = list(dict.fromkeys(label for _, label in found))
            out.append((labels, list({p.index: p for p, _ in found}.values())))
        return out

    def programs(self) -> list[dict[str, Any]]:
        """One entry per compiled program: the experiment's arms in it and the points' keys."""
        return [{"arms": arms, "points": [p.key for p in pts]} for arms, pts in self._programs()]

    def plan(self) -> list[str]:
        """What the run will train, for the CLI: one line per compiled program, with the values
        its grid points share and those they differ in; then the arms a swept field leaves alone,
        so that their equal results at every value of it are no surprise."""
        programs = self._programs()
        n_runs = len(self.experiment.arms)
        shaped = [f for f in self.fields if f not in self.shape_free]
        lines = [
            f"{self.base.name}: sweep of {len(self.points)} grid points, {n_runs} runs per seed "
            f"in {len(programs)} compiled program{'s' if len(programs) != 1 else ''}"
            + (f"; arms inside a program: {', '.join(self.shape_free)}" if self.shape_free else "")
            + (f"; a program per value (shapes change): {', '.join(shaped)}" if shaped else "")
        ]
        for i, (arms, pts) in enumerate(programs, 1):
            parts = []
            for j, field in enumerate(self.fields):
                texts = list(dict.fromkeys(value_text(p.values[j][1]) for p in pts))
                parts.append(f"{field}=" + "|".join(texts))
            lines.append(
                f"  program {i}: {'arm' if len(arms) == 1 else 'arms'} {', '.join(arms)} at "
                f"{len(pts)} grid point{'s' if len(pts) != 1 else ''} ({' '.join(parts)})"
            )
        for field, labels in self.ignored:
            arms = f"arm {labels[0]} does" if len(labels) == 1 else f"arms {', '.join(labels)} do"
            lines.append(f"  {arms} not use {field}: the same at each of its values")
        return lines


class _Run(NamedTuple):
    """One arm of one grid point, and the program arm that trains it."""

    point: int  # the point's index
    arm: Arm  # the point's arm, as `with_overrides` built it
    program: Arm  # the same arm with the moved values as hyperparameters (config not yet common)
    moved: dict[str, Any]  # the values moved out of its config, by field
    key: str  # its program: the config without the moved values


def _run(point: int, arm: Arm, moved: list[str]) -> _Run:
    """The arm with the swept `HYPER_FIELDS` values moved from its config into its hyperparameters.

    An arm's own value stays: `expand` lets one through only where the arm does not use the field
    (a zero sparsity weight: no penalty) or for its own size, whose program's width is swept."""
    hyper, n_active, values = dict(arm.hyper), arm.n_active, {}
    for field in moved:
        value = _get(arm.config, field)
        if field == "model.n_hidden":
            if n_active is not None:  # the arm has its own size: the width is its program's shape
                continue
            n_active = value
        elif field == "model.k":
            if value is None:  # not a top-k arm: k is not part of it
                continue
            hyper.setdefault("k", value)
        else:
            hyper.setdefault(HYPER_FIELDS[field], value)
        values[field] = value
    config = dataclasses.asdict(arm.config)
    for field in values:
        section, _, name = field.partition(".")
        del config[section][name]
    program = dataclasses.replace(arm, n_active=n_active, hyper=tuple(hyper.items()))
    return _Run(point, arm, program, values, json.dumps(config, sort_keys=True, default=str))


def _program_configs(runs: list[_Run]) -> dict[str, Config]:
    """The config of every program: its first run's, with the moved values made common (k and the
    width the largest, so every arm fits; the others are per arm and never read)."""
    configs: dict[str, Config] = {}
    for key in dict.fromkeys(r.key for r in runs):
        group = [r for r in runs if r.key == key]
        common = dict(group[0].moved)
        for field in ("model.k", "model.n_hidden"):
            if field in common:
                common[field] = max(r.moved[field] for r in group)
        configs[key] = _set(group[0].program.config, common)
    return configs


def _parse(specs: list[str], overrides: list[str]) -> list[tuple[str, list[str]]]:
    """Each spec as (field, value texts), checked against each other and against `--set`."""
    if not specs:
        raise ValueError("--sweep is invalid: allowed is at least one section.field=v1,v2,...")
    parsed = [_split(spec) for spec in specs]
    fields = [field for field, _ in parsed]
    set_fields = {a.partition("=")[0].strip() for a in overrides}
    for spec, field in zip(specs, fields, strict=True):
        if fields.count(field) > 1:
            _fail(spec, f"each field in one --sweep ({field} is swept twice)")
        if field in set_fields:
            _fail(spec, f"a field not also given with --set or --epochs ({field} is)")
    return parsed


def _point_experiments(
    exp: Experiment, overrides: list[str], specs: list[str], parsed: list[tuple[str, list[str]]]
) -> list[tuple[tuple[tuple[str, Any], ...], Experiment]]:
    """Every grid point as (its typed values, the experiment `--set` gives it), validated."""
    fields = [field for field, _ in parsed]
    typed: list[dict[str, Any]] = [{} for _ in fields]  # per field: text -> value
    out = []
    for combo in itertools.product(*(items for _, items in parsed)):
        assignments = [f"{f}={text}" for f, text in zip(fields, combo, strict=True)]
        point = with_overrides(exp, [*overrides, *assignments], swept=tuple(fields))
        source = (  # where the values land: the base of a built experiment, else every arm
            override(exp.base, [*overrides, *assignments])
            if exp.build is not None and exp.base is not None
            else point.arms[0].config
        )
        values = tuple((f, _get(source, f)) for f in fields)
        for by_text, text, (_, value) in zip(typed, combo, values, strict=True):
            by_text[text] = value
        out.append((values, point))
    for spec, (field, items), by_text in zip(specs, parsed, typed, strict=True):
        if len({value_text(by_text[item]) for item in items}) < len(items):
            _fail(spec, f"each value of {field} once")
    return out


def _ignored(exps: list[Experiment], field: str) -> list[str]:
    """Labels of the arms that use `field` at no grid point: they are the same at every value."""
    arms = [a for e in exps for a in e.arms]
    labels = dict.fromkeys(a.label for a in arms)
    return [x for x in labels if not any(uses(a, field) for a in arms if a.label == x)]


def _refuse_copies(specs: list[str], fields: list[str], exps: list[Experiment]) -> None:
    """A swept field must change some arm's training, else its points are silent copies: refused
    where an arm has its own value (it would ignore the swept one; the width is the program's
    shape, which every arm trains in, so it passes) and where no arm uses the field at all."""
    arms = [a for e in exps for a in e.arms]
    for spec, field in zip(specs, fields, strict=True):
        own = list(dict.fromkeys(a.label for a in arms if fixes(a, field)))
        if own and field != "model.n_hidden":
            _fail(spec, own_text(field, own))
        if not any(uses(a, field) for a in arms):
            why = f"no arm of {exps[0].name} uses {field}: it is read only {USED_ONLY[field].when}"
            _fail(spec, f"a field some arm uses ({why})")


def _shape_free(runs: list[_Run], moved: list[str]) -> tuple[str, ...]:
    """The moved fields whose values became arms inside a program: a moved field stays a shape
    where some arm keeps it in its config (an arm's own width)."""
    kept = {
        f
        for r in runs
        for f in moved
        if f not in r.moved and not (f == "model.k" and r.arm.config.model.k is None)
    }
    return tuple(f for f in moved if f not in kept)


def expand(exp: Experiment, overrides: list[str], specs: list[str]) -> Grid:
    """The grid of `specs` (`section.field=v1,v2,...`) over `exp` with `--set overrides`.

    Every point is validated as `--set` validates (`with_overrides`), so a bad spec (an unknown
    field, an empty list, a field given twice or also with `--set`, a value the field refuses, a
    k above the width) is a `ValueError` before anything compiles; so is a field whose points
    would be copies (`_refuse_copies`: an arm has its own value of it, or no arm uses it).
    """
    parsed = _parse(specs, overrides)
    fields = [field for field, _ in parsed]
    point_exps = _point_experiments(exp, overrides, specs, parsed)
    exps = [p for _, p in point_exps]
    _refuse_copies(specs, fields, exps)
    moved = [f for f in fields if f in HYPER_FIELDS]
    runs = [_run(i, arm, moved) for i, (_, p) in enumerate(point_exps) for arm in p.arms]
    configs = _program_configs(runs)

    digits = len(str(len(point_exps) - 1))
    points, arms = [], []
    for index, (values, point_exp) in enumerate(point_exps):
        labels, point_arms = [], []
        for run in (r for r in runs if r.point == index):
            label = f"p{index} {run.arm.label}"
            arms.append(dataclasses.replace(run.program, label=label, config=configs[run.key]))
            labels.append(label)
            arm = run.arm
            if "model.n_hidden" in run.moved:  # the program's width, this arm's units in use
                width = configs[run.key].model.n_hidden
                arm = dataclasses.replace(
                    arm,
                    config=_set(arm.config, {"model.n_hidden": width}),
                    n_active=run.moved["model.n_hidden"],
                )
            point_arms.append(arm)
        points.append(
            Point(
                index=index,
                values=values,
                experiment=dataclasses.replace(point_exp, arms=tuple(point_arms)),
                labels=tuple(labels),
                dir=f"{GRID_DIR}/p{index:0{digits}d}",
            )
        )
    return Grid(
        base=points[0].experiment,
        fields=tuple(fields),
        values=tuple(
            tuple(dict.fromkeys(values[j][1] for values, _ in point_exps))
            for j in range(len(fields))
        ),
        points=tuple(points),
        experiment=dataclasses.replace(
            points[0].experiment,
            arms=tuple(arms),
            build=None,
            analyse=functools.partial(_analyse_points, points=tuple(points)),
            analysis_type=dict[str, Any],
        ),
        shape_free=_shape_free(runs, moved),
        ignored=tuple((f, tuple(x)) for f in fields if (x := _ignored(exps, f))),
    )


def point_results(grid: Grid, res: dict[str, ArmResult]) -> list[dict[str, ArmResult]]:
    """Per point, its arms' results under their own labels, evaluated as the point's arms."""
    return _point_results(grid.points, res)


def _point_results(
    points: tuple[Point, ...], res: dict[str, ArmResult]
) -> list[dict[str, ArmResult]]:
    return [
        {
            arm.label: dataclasses.replace(res[label], arm=arm)
            for label, arm in zip(p.labels, p.experiment.arms, strict=True)
        }
        for p in points
    ]


def _analyse_points(
    exp: Experiment, res: dict[str, ArmResult], *, points: tuple[Point, ...]
) -> dict[str, Any]:
    """The swept experiment's analysis: every point's own (`point.key -> analysis`), as a run of
    that point alone would have it."""
    return {
        p.key: p.experiment.analyse(p.experiment, r)
        for p, r in zip(points, _point_results(points, res), strict=True)
    }


def _arm_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """An arm's summary without its per-seed lists (those stay in the point's own metrics.json)."""
    return {k: v for k, v in summary.items() if not isinstance(v, list) or k.endswith("_ci95")}


def metrics_dict(
    out: RunOutput, grid: Grid, points: dict[str, dict[str, Any]], overrides: list[str]
) -> dict[str, Any]:
    """metrics.json of a swept run: the setting, the sweep, and the `grid` section."""
    return {
        **results.run_header(grid.base, out, overrides),
        "sweep": grid.specs,
        "grid": {
            "fields": list(grid.fields),
            "values": {f: list(v) for f, v in zip(grid.fields, grid.values, strict=True)},
            "shape_free": list(grid.shape_free),
            "ignored": {field: list(labels) for field, labels in grid.ignored},
            "programs": grid.programs(),
            "points": points,
        },
        "timing": out.timing,
        "memory": out.memory,
        "versions": results.versions(),
    }


@processes.on_writer(lambda *args, **kwargs: {})
def write_run(
    out_dir: Path,
    out: RunOutput,
    grid: Grid,
    overrides: list[str],
    render: Any | None = None,
) -> dict[str, Any]:
    """Write a finished swept run to `out_dir` atomically: every point's run directory (with the
    point's own analysis, `out.analysis[point.key]`), then metrics.json keyed by point;
    `render(staging_dir)` adds figures and report.md. Writers only (`processes.on_writer`)."""
    assert out.results is not None
    with results.staged(out_dir) as staging:
        points: dict[str, dict[str, Any]] = {}
        for point, res in zip(grid.points, point_results(grid, out.results), strict=True):
            point_out = RunOutput(
                point.experiment,
                out.n_seeds,
                out.seed,
                [],
                res,
                out.timing,
                out.memory,
                out.analysis[point.key],
            )
            data = results.write_run(
                staging / point.dir, point_out, [*overrides, *point.assignments]
            )
            points[point.key] = {
                "index": point.index,
                "values": dict(point.values),
                "dir": point.dir,
                "arms": {label: _arm_figures(a) for label, a in data["arms"].items()},
                "analysis": data["analysis"],
            }
        data = metrics_dict(out, grid, points, overrides)
        results.write_json(staging / results.METRICS, data)
        if render is not None:
            render(staging)
    return data
