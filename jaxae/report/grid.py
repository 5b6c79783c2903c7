"""The report of a sweep: every grid point's own report, and the experiment's main metric over the
grid.

A swept run (`jaxae run NAME --sweep ...`, jaxae/sweep.py) keeps one complete run directory per
grid point under `grid/`; each is rendered with its experiment's page, as a run of that point alone
would be. The swept run's own report.md starts with a table and a figure (`grid.png`) of the
experiment's main metric at every point and arm, then joins every point's report with its links
rewritten. The main metric is what the family's report module names `MAIN_METRIC` (a
`MainMetric`), else the median final loss. This module knows no family and no registry: the
registry hands it the families and the page of each point.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from jaxae import results
from jaxae.report.base import (
    FIGURES,
    REPORT,
    Metrics,
    Page,
    arm_colors,
    fmt,
    nums,
    read_run,
    relink,
    render_page,
    save,
)
from jaxae.sweep import value_text

GRID_FIGURE = "grid.png"

# A swept run's own metrics.json, as parsed JSON (its points' are `Metrics`).
Swept = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MainMetric:
    """The one figure a sweep is judged by, read from a grid point's metrics.json per arm."""

    name: str  # e.g. "convergence_rate"
    label: str  # the axis and table title, e.g. "share of seeds that converge"
    value: Callable[[Metrics, str], float]  # (a point's metrics.json, arm label) -> number
    higher_is_better: bool
    limits: tuple[float, float] | None = None  # the range the figure shows, e.g. (0, 1) for shares


def _median_final_loss(m: Metrics, label: str) -> float:
    losses = nums(m.arms[label].final_loss)
    losses = losses[np.isfinite(losses)]
    return float(np.median(losses)) if losses.size else float("nan")


# A family whose report module names no `MAIN_METRIC` is judged by this.
FINAL_LOSS = MainMetric("final_loss_median", "median final loss", _median_final_loss, False)


def is_swept(m: Swept) -> bool:
    """Whether metrics.json is a swept run's (results keyed by grid point)."""
    return "grid" in m


def main_metric_of(m: Swept | Metrics, families: tuple[ModuleType, ...]) -> MainMetric:
    """The `MAIN_METRIC` of the report module of the run's family, else `FINAL_LOSS`."""
    for family in families:
        family_name = m["family"] if isinstance(m, dict) else m.family
        if family.__name__.rsplit(".", 1)[-1] == family_name:
            return getattr(family, "MAIN_METRIC", FINAL_LOSS)
    return FINAL_LOSS


def points(run_dir: Path, m: Swept) -> list[tuple[str, Path, Metrics]]:
    """(key, run directory, metrics.json) of every grid point, in grid order."""
    out = []
    for key, p in sorted(m["grid"]["points"].items(), key=lambda kv: kv[1]["index"]):
        point_dir = Path(run_dir) / p["dir"]
        out.append((key, point_dir, read_run(point_dir)))
    return out


def metric_values(
    pts: list[tuple[str, Path, Metrics]], metric: MainMetric
) -> dict[str, dict[str, float]]:
    """The main metric per point (by key) and arm; NaN where a point's arm lacks it."""
    out: dict[str, dict[str, float]] = {}
    for key, _, pm in pts:
        out[key] = {label: float(metric.value(pm, label)) for label in pm.arms}
    return out


def _labels(values: dict[str, dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(label for row in values.values() for label in row))


def _best(values: dict[str, dict[str, float]], label: str, metric: MainMetric) -> str | None:
    """The key of the point where `label` does best, None if it has no finite value."""
    found = [(v[label], k) for k, v in values.items() if math.isfinite(v.get(label, math.nan))]
    if not found:
        return None
    pick = max if metric.higher_is_better else min
    return pick(found, key=lambda vk: vk[0])[1]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_grid(
    m: Swept, values: dict[str, dict[str, float]], metric: MainMetric, path: Path
) -> None:
    """The main metric against the first swept field, one line per arm; one panel per value of
    the other fields."""
    grid = m["grid"]
    x_field, rest = grid["fields"][0], grid["fields"][1:]
    xs = grid["values"][x_field]
    numeric = all(_is_number(v) for v in xs)
    log = numeric and min(xs) > 0 and max(xs) / min(xs) >= 10
    combos = list(itertools.product(*(grid["values"][f] for f in rest)))
    by_values = {
        tuple(value_text(p["values"][f]) for f in grid["fields"]): key
        for key, p in grid["points"].items()
    }
    labels = _labels(values)
    colors = arm_colors(labels, ordered=False)
    cols = len(combos) if len(combos) <= 3 else min(3, math.ceil(math.sqrt(len(combos))))
    rows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.2 * cols + 2.0, 3.4 * rows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    positions = np.asarray(xs, np.float64) if numeric else np.arange(len(xs), dtype=np.float64)
    for ax, combo in zip(axes.flat, combos, strict=False):
        for label in labels:
            ys = []
            for x in xs:
                key = by_values.get(tuple(value_text(v) for v in (x, *combo)))
                ys.append(values.get(key, {}).get(label, math.nan) if key else math.nan)
            ax.plot(positions, ys, marker="o", color=colors[label], label=label)
        if log:
            ax.set_xscale("log")
        ax.set_xticks(positions, [value_text(v) for v in xs])  # the swept values, as given
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(x_field)
        if rest:
            ax.set_title(
                ", ".join(f"{f}={value_text(v)}" for f, v in zip(rest, combo, strict=True)),
                fontsize="medium",
            )
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(combos) :]:
        ax.set_visible(False)
    better = "higher" if metric.higher_is_better else "lower"
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric.label}\n({better} is better)")
    if metric.limits is not None:
        lo, hi = metric.limits
        axes[0, 0].set_ylim(lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo))  # y is shared
    axes[0, -1].legend(
        title=m.get("arm_axis", "arm"),
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )
    fig.suptitle(f"{m['section']} {m['experiment']}: {metric.label} over the grid")
    save(fig, path)


def _table(values: dict[str, dict[str, float]], metric: MainMetric) -> list[str]:
    """One row per grid point, one column per arm; each arm's best value in bold (every point
    that reaches it)."""
    labels = _labels(values)
    best = {}
    for label in labels:
        key = _best(values, label, metric)
        best[label] = None if key is None else values[key][label]
    lines = [
        "| grid point | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, row in values.items():
        cells = []
        for label in labels:
            cell = fmt(row.get(label), ".3g")
            cells.append(f"**{cell}**" if row.get(label) == best[label] else cell)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _demoted(markdown: str) -> str:
    """Every heading one level deeper, so a point's report nests under its grid point."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def grid_markdown(
    run_dir: Path,
    m: Swept,
    pts: list[tuple[str, Path, Metrics]],
    values: dict[str, dict[str, float]],
    metric: MainMetric,
) -> str:
    """The swept run's report.md (points' reports already rendered under their directories)."""
    grid = m["grid"]
    lines = [f"## {m['section']} {m['experiment']}: a sweep over {', '.join(grid['fields'])}", ""]
    lines += [f"> {line}" if line else ">" for line in str(m.get("claim", "")).splitlines()]
    lines += [
        "",
        "### Grid",
        "",
        f"{m['n_seeds']} seeds (base seed {m['seed']}) at each of {len(pts)} grid points: "
        + "; ".join(
            f"`{f}` in {', '.join(value_text(v) for v in grid['values'][f])}"
            for f in grid["fields"]
        )
        + (f"; overrides: {', '.join(f'`{o}`' for o in m['overrides'])}" if m["overrides"] else "")
        + ".",
        "",
    ]
    shape_free = grid["shape_free"]
    if shape_free:
        lines += [
            f"Values of {', '.join(f'`{f}`' for f in shape_free)} leave the program's shapes "
            "alone, so they trained as arms inside one compiled program per group:",
            "",
        ]
    for i, prog in enumerate(grid["programs"], 1):
        where = "every grid point" if len(prog["points"]) == len(pts) else "; ".join(prog["points"])
        lines.append(f"- program {i}: {', '.join(prog['arms'])} at {where}")
    better = "higher" if metric.higher_is_better else "lower"
    lines += ["", f"### {metric.label} ({better} is better)", "", *_table(values, metric), ""]
    if (Path(run_dir) / FIGURES / GRID_FIGURE).is_file():
        lines += [
            f"![{metric.label} over the grid]({FIGURES}/{GRID_FIGURE})",
            "",
            f"*{metric.label} at every grid point, one line per {m.get('arm_axis', 'arm')}; each "
            "grid point's own figures are in its report below.*",
            "",
        ]
    timing = m.get("timing", {})
    lines += [
        f"Timing (the whole grid): compile {fmt(timing.get('compile_s'), '.3g')} s, train "
        f"{fmt(timing.get('train_s'), '.3g')} s, {fmt(timing.get('seed_steps_per_s'), ',.0f')} "
        "seed-steps/s.",
        "",
    ]
    for key, point_dir, _ in pts:
        rel = point_dir.relative_to(run_dir).as_posix()
        text = (point_dir / REPORT).read_text()
        lines += [f"## Grid point {key}", "", _demoted(relink(text, rel)).rstrip("\n"), ""]
    return "\n".join(lines) + "\n"


def render(run_dir: Path, m: Swept, page_of: Callable[[Metrics], Page], metric: MainMetric) -> None:
    """Render every grid point's report, then the swept run's figure and report.md."""
    run_dir = Path(run_dir)
    pts = points(run_dir, m)
    for _, point_dir, pm in pts:
        render_page(point_dir, pm, page_of(pm))
    values = metric_values(pts, metric)
    (run_dir / FIGURES).mkdir(exist_ok=True)
    plot_grid(m, values, metric, run_dir / FIGURES / GRID_FIGURE)
    results.write_text(run_dir / REPORT, grid_markdown(run_dir, m, pts, values, metric))


def summary_lines(m: Swept, run_dir: Path, metric: MainMetric) -> list[str]:
    """The sweep in a few lines for the CLI: the main metric per point and arm, each arm's best."""
    pts = points(run_dir, m)
    values = metric_values(pts, metric)
    better = "higher" if metric.higher_is_better else "lower"
    width = max(len(key) for key in values)
    lines = [
        f"{m['experiment']} ({m['section']}): {m['n_seeds']} seeds x {len(pts)} grid points -> "
        f"{run_dir}",
        f"  {metric.label} ({better} is better) per {m.get('arm_axis', 'arm')}:",
    ]
    for key, row in values.items():
        cells = ", ".join(f"{label} {fmt(v, '.3g')}" for label, v in row.items())
        lines.append(f"  {key:<{width}}  {cells}")
    # An arm that reads none of the swept fields is the same at every point: it has no best.
    ignored = m["grid"].get("ignored", {})
    fields = m["grid"]["fields"]
    unchanged = set.intersection(*(set(ignored.get(f, ())) for f in fields)) if fields else set()
    for label in _labels(values):
        if label in unchanged:
            lines.append(f"  {label}: the same at every grid point (it reads no swept field)")
            continue
        key = _best(values, label, metric)
        if key is not None:
            lines.append(f"  best for {label}: {key} ({fmt(values[key][label], '.3g')})")
    return lines
