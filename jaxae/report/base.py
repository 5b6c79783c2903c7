"""What every report shares: reading a run, numbers as text, the loss figure, the arm table, and
report.md assembled from a `Page`.

A `Page` says how the report of one experiment reads: the figures that apply to a run (each a
`Figure`: file name, alt text, caption and a draw function), the text after the arm table with its
verdict, what the arms are called, and optionally its own table. The pages live in one module per
family (`tutorial`, ...); the registry (`jaxae.report`) picks a run's page by its experiment name,
so nothing here looks at the shape of metrics.json to decide what to show. This module knows no
family and no registry.

Every report gets `loss.png` (per-epoch loss per arm, median over seeds with a 10-90% band) when
the run has its history, then the page's own figures. Every link in report.md is relative
(`figures/loss.png`), so a run rendered in a staging directory stays valid after it is renamed into
place; `reproduction_markdown` joins run reports with links rewritten relative to their parent.
Every number in the text is read from the run's files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no plt.show

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from jaxae import results, schema
from jaxae.config import Config

FIGURES = "figures"
REPORT = "report.md"

# Log-scale plots clip FVU (and loss) values below this, so exact zeros and 1e-32 floors show.
LOG_FLOOR = 1e-8
# A y range spanning more than this factor is drawn on a log axis.
LOG_RANGE = 100.0
DPI = 120
# Up to this many seeds per arm a figure draws every seed as a dot; beyond, thousands of dots hide
# each other (and take long to draw), so `seed_spread` draws a histogram of them instead.
MAX_SEED_DOTS = 2000
SPREAD_BINS = 40

# metrics.json of a run as its types (`results.read_run`).
Metrics = schema.Run
# draw(m, run_dir, path): write the figure to `path`; False when the run lacks what it needs.
Draw = Callable[[Metrics, Path, Path], bool]


# ----------------------------------------------------------------------------------------------
# Reading a run


def _metrics_path(run_dir: Path) -> Path:
    path = Path(run_dir) / results.METRICS
    if not path.is_file():
        raise ValueError(
            f"run_dir={str(run_dir)!r} is invalid: no {results.METRICS} there; allowed is a run "
            "directory written by `jaxae run`"
        )
    return path


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of `run_dir` as parsed JSON; `ValueError` if it is not a run directory."""
    return json.loads(_metrics_path(run_dir).read_text())


def read_run(run_dir: Path) -> Metrics:
    """metrics.json of `run_dir` (not a swept run) as its types; `ValueError` if it is not a run
    directory or its metrics.json does not have the fields its experiment's types name."""
    return results.read_run(_metrics_path(run_dir).parent)


def has_history(run_dir: Path) -> bool:
    """Whether the run kept its per-epoch losses (history.npz)."""
    return (Path(run_dir) / results.HISTORY).is_file()


def read_history(run_dir: Path, labels: list[str]) -> dict[str, np.ndarray]:
    """`loss_<label>` arrays `[seeds, epochs]` of the arms present in history.npz."""
    path = Path(run_dir) / results.HISTORY
    if not path.is_file():
        return {}
    with np.load(path) as npz:
        return {
            label: np.asarray(npz[f"loss_{label}"], np.float64)
            for label in labels
            if f"loss_{label}" in npz.files
        }


def has_arrays(run_dir: Path) -> bool:
    """Whether the analysis stored arrays for the report (arrays.npz)."""
    return (Path(run_dir) / results.ARRAYS).is_file()


def read_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays the analysis stored beside metrics.json (arrays.npz); empty if there are none."""
    path = Path(run_dir) / results.ARRAYS
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return {name: np.asarray(npz[name]) for name in npz.files}


def has_params(run_dir: Path) -> bool:
    """Whether the run kept its trained parameters (the `params` checkpoint)."""
    return (Path(run_dir) / results.PARAMS).exists()


def read_params(run_dir: Path) -> Any:
    """The trained parameters of every arm: `{label: params}`, leading axis = seed."""
    return results.load_checkpoint(Path(run_dir) / results.PARAMS)


# ----------------------------------------------------------------------------------------------
# Numbers as text


def num(value: Any) -> float:
    """A JSON number as float; null (NaN or infinity on writing) becomes NaN."""
    return float("nan") if value is None else float(value)


def nums(values: list[Any]) -> np.ndarray:
    """A JSON list of numbers as a float array (null as NaN)."""
    return np.asarray([num(v) for v in values], np.float64)


def fmt(value: Any, spec: str) -> str:
    """`value` formatted with `spec`, or "n/a" where it is missing or not finite."""
    x = num(value)
    return "n/a" if not math.isfinite(x) else format(x, spec)


def fmt_rate(value: Any) -> str:
    """A share of seeds, three decimals."""
    return fmt(value, ".3f")


def fmt_ci(ci: list[Any] | None) -> str:
    """An interval of shares as "[lo, hi]"; empty when there is none."""
    return "" if not ci else f"[{fmt_rate(ci[0])}, {fmt_rate(ci[1])}]"


def count(flags: list[Any]) -> tuple[int, int]:
    """(number true, number of seeds) of a per-seed boolean list."""
    return sum(bool(f) for f in flags), len(flags)


def units(n: Any) -> str:
    """How the text counts hidden units: "1 hidden unit", "4 hidden units"."""
    return f"{n} hidden unit" + ("" if n == 1 else "s")


def judge(rate: float) -> str:
    """How a verdict words the share of seeds for which a claim holds."""
    if not math.isfinite(rate):
        return "cannot be judged (no rate)"
    if rate >= 0.95:
        return "holds for essentially every seed"
    if rate >= 0.5:
        return "holds for most seeds but not all"
    if rate > 0:
        return "holds only for a minority of seeds"
    return "does not hold for any seed in this run"


# ----------------------------------------------------------------------------------------------
# Drawing


def save(fig: matplotlib.figure.Figure, path: Path) -> None:
    """Write `fig` to `path` and close it (also when writing fails)."""
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def arm_colors(labels: list[str], ordered: bool) -> dict[str, Any]:
    """Ordered colours (viridis) for arms along a scale (hidden sizes), categorical (tab10)
    otherwise."""
    if ordered and len(labels) > 1:
        cmap = plt.get_cmap("viridis")
        return {label: cmap(0.9 * i / (len(labels) - 1)) for i, label in enumerate(labels)}
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def seed_spread(
    ax: Any,
    x: float,
    values: np.ndarray,
    *,
    log: bool,
    rng: np.random.Generator,
    width: float = 0.18,
) -> None:
    """Every seed's value at position `x`: jittered grey dots up to `MAX_SEED_DOTS` finite values,
    beyond a grey histogram mirrored about `x` (`SPREAD_BINS` bins, log-spaced on a log axis; its
    half-width is `width` where the most seeds fall, in proportion elsewhere). `rng` places the
    jitter (a fixed generator keeps figures reproducible)."""
    v = values[np.isfinite(values)]
    if v.size <= MAX_SEED_DOTS:
        jitter = rng.uniform(-width, width, v.size)
        ax.scatter(x + jitter, v, s=6, color="0.55", alpha=0.35, linewidths=0, zorder=1)
        return
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        ax.hlines(lo, x - width, x + width, color="0.55", linewidth=2, zorder=1)
        return
    edges = (
        np.geomspace(lo, hi, SPREAD_BINS + 1)
        if log and lo > 0
        else np.linspace(lo, hi, SPREAD_BINS + 1)
    )
    counts, _ = np.histogram(v, edges)
    half = np.repeat(width * counts / counts.max(), 2)
    ax.fill_betweenx(
        np.repeat(edges, 2)[1:-1],
        x - half,
        x + half,
        color="0.55",
        alpha=0.5,
        linewidth=0,
        zorder=1,
    )


def clip_log(values: np.ndarray) -> np.ndarray:
    """Values as a log axis shows them: below `LOG_FLOOR` drawn at `LOG_FLOOR`."""
    return np.maximum(values, LOG_FLOOR)


def _quiet_nan_stats(fn: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs (every seed diverged)
        return fn(*args, **kwargs)


def plot_loss(
    m: Metrics,
    history: dict[str, np.ndarray],
    path: Path,
    *,
    arm_name: str = "arm",
    ordered: bool = False,
) -> None:
    """Median loss over seeds per epoch with a shaded 10-90% band, one line per arm, log y.

    `arm_name` titles the legend; `ordered` colours the arms along a scale.
    """
    colors = arm_colors(list(m.arms), ordered)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for label in m.arms:
        if label not in history:
            continue
        loss_SxE = np.where(np.isfinite(history[label]), history[label], np.nan)
        loss_SxE = np.maximum(loss_SxE, LOG_FLOOR * 1e-4)  # exact zeros on a log axis; NaN stays
        epochs = np.arange(1, loss_SxE.shape[1] + 1)
        median = _quiet_nan_stats(np.nanmedian, loss_SxE, axis=0)
        lo, hi = _quiet_nan_stats(np.nanpercentile, loss_SxE, [10, 90], axis=0)
        n = loss_SxE.shape[0]
        ax.fill_between(epochs, lo, hi, color=colors[label], alpha=0.15, linewidth=0)
        ax.plot(
            epochs,
            median,
            color=colors[label],
            linewidth=1.6,
            marker="o" if len(epochs) == 1 else None,
            label=f"{label} ({n} seeds)",
        )
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (median, 10-90% band)")
    ax.set_title(f"{m.section} {m.experiment}: loss per epoch")
    ax.grid(True, which="major", alpha=0.3)
    n_arms = len(m.arms)
    ax.legend(
        title=arm_name,
        fontsize="small",
        ncol=2 if n_arms > 12 else 1,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
    save(fig, path)


# ----------------------------------------------------------------------------------------------
# Figures and pages


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure of a report: its file, how report.md shows it, and how it is drawn."""

    name: str  # file name under figures/, e.g. "loss.png"
    alt: str  # the link's alt text
    caption: str  # the italic line under the figure
    draw: Draw  # draw(m, run_dir, path) -> whether it was drawn


def metrics_only(plot: Callable[[Metrics, Path], None]) -> Draw:
    """The draw function of a figure drawn from metrics.json alone (so it is always drawn)."""

    def draw(m: Metrics, run_dir: Path, path: Path) -> bool:
        plot(m, path)
        return True

    return draw


def arm_table(m: Metrics, arm_name: str) -> list[str]:
    """One row per arm: convergence, reconstruction, FVU, PCA floor, dead units, divergence."""
    lines = [
        f"| {arm_name} | seeds | converged [95% CI] | reconstructs | median FVU [10%, 90%] | "
        "PCA floor | dead units / seed | diverged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, a in m.arms.items():
        k, n = count(a.converged)
        recon = f"{fmt_rate(a.reconstruction_rate)} {fmt_ci(a.reconstruction_ci95)}"
        q = a.fvu_quantiles
        dead = nums(a.dead_units)
        dead_mean = float(np.mean(dead)) if dead.size else float("nan")
        d, _ = count(a.diverged)
        lines.append(
            f"| {label} | {n} | {k}/{n} = {fmt_rate(a.convergence_rate)} "
            f"{fmt_ci(a.convergence_ci95)} | {recon} | {fmt(q.q50, '.3g')} "
            f"[{fmt(q.q10, '.3g')}, {fmt(q.q90, '.3g')}] | "
            f"{fmt(a.pca_floor_fvu, '.3g')} | {fmt(dead_mean, '.2f')} | {d}/{n} |"
        )
    return lines


def convergence_definitions(m: Metrics) -> str:
    """FVU, PCA floor, converged, reconstructs, dead and diverged, with the run's tolerances."""
    tol = m.primary.reconstruction_tol
    fraction = m.convergence_fraction
    return (
        "Definitions: FVU (fraction of variance unexplained) = sum of squared reconstruction "
        "errors / sum of squared deviations from the feature means (0 perfect, 1 = predicting "
        "the mean); "
        "PCA floor = FVU of the best rank-h affine reconstruction (a lower bound for h hidden "
        "units with a linear decoder); converged = FVU <= PCA floor + convergence tol, where the "
        f"tol is {fmt(fraction, 'g')} x the variance share of the weakest principal component "
        "the arm's units must capture (so a seed converges only if it uses all of them); "
        f"reconstructs = FVU <= {fmt(tol, 'g')} (the same rule with every principal direction "
        "of the data needed); a dead unit is never active on any sample; a diverged seed hit a "
        "non-finite loss."
    )


def convergence_headline(m: Metrics) -> str:
    """The convergence rate of every arm."""
    return ", ".join(f"{label}: {fmt(a.convergence_rate, '.2f')}" for label, a in m.arms.items())


def no_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    """The figures of a page that has none of its own."""
    return []


def generic_text(m: Metrics) -> tuple[list[str], str]:
    """No text after the table; the verdict lists the convergence rate of every arm."""
    parts = [f"{label}: {fmt_rate(a.convergence_rate)}" for label, a in m.arms.items()]
    return [], "Convergence rate per arm: " + ", ".join(parts) + "."


@dataclasses.dataclass(frozen=True)
class Page:
    """How the report of one experiment reads (the defaults make the generic page)."""

    # figures(m, run_dir): the figures that apply to this run, in report order, after loss.png
    figures: Callable[[Metrics, Path], list[Figure]] = no_figures
    # text(m) -> (lines after the arm table, the verdict)
    text: Callable[[Metrics], tuple[list[str], str]] = generic_text
    # what tells the arms apart, as in "arms by hidden units" (None: the arms are just named)
    arms_by: str | None = None
    # arms along a scale (hidden sizes) get ordered colours
    ordered_arms: bool = False
    # table(m, arm_name): the table under "Measured"
    table: Callable[[Metrics, str], list[str]] = arm_table
    # definitions(m): the paragraph that defines the table's terms
    definitions: Callable[[Metrics], str] = convergence_definitions
    # headline(m): the run in one line of the reproduction's overview table
    headline: Callable[[Metrics], str] = convergence_headline

    @property
    def arm_name(self) -> str:
        """What a column or legend of arms is titled."""
        return self.arms_by or "arm"


# An experiment without a page of its own: loss figure, arm table, convergence rates.
GENERIC_PAGE = Page()


def _draw_loss(m: Metrics, run_dir: Path, path: Path, *, page: Page) -> bool:
    history = read_history(run_dir, list(m.arms))
    plot_loss(m, history, path, arm_name=page.arm_name, ordered=page.ordered_arms)
    return True


def figure_plan(m: Metrics, run_dir: Path, page: Page) -> list[Figure]:
    """The figures that apply to this run, in report order: loss.png, then the page's."""
    plan = []
    if has_history(run_dir):
        plan.append(
            Figure(
                name="loss.png",
                alt="loss curves",
                caption="Training loss per epoch: median over seeds (line) and 10-90% of seeds "
                "(band), log scale. Diverged seeds (NaN) drop out of the statistics from the "
                "epoch they diverge.",
                draw=functools.partial(_draw_loss, page=page),
            )
        )
    return plan + page.figures(m, run_dir)


# ----------------------------------------------------------------------------------------------
# report.md


def _setting(m: Metrics) -> str:
    """The shared config in one phrase, with the run's overrides."""
    cfg = Config.from_dict(m.config)
    train_cfg, optim = cfg.train, cfg.optim
    if optim.name == "lbfgs":
        steps = f"{train_cfg.epochs} iterations of full-batch L-BFGS"
    else:
        steps = (
            f"{train_cfg.epochs} epochs, batch {train_cfg.batch_size}, "
            f"Adam lr {optim.learning_rate}"
            + (
                f" ({optim.schedule} decay to {optim.final_lr_ratio:g} of it)"
                if optim.schedule != "constant"
                else ""
            )
        )
    setting = (
        f"data {cfg.data.kind}, {cfg.model.activation} "
        f"autoencoder, {steps}, weight decay {optim.weight_decay}"
    )
    if m.overrides:
        setting += f"; overrides: {', '.join(f'`{o}`' for o in m.overrides)}"
    return setting


def mib(n: Any) -> str:
    """Bytes as MiB (or KiB below 1 MiB); "n/a" where missing."""
    x = num(n)
    if not math.isfinite(x):
        return "n/a"
    return f"{x / 2**20:,.0f} MiB" if x >= 2**20 else f"{x / 2**10:,.1f} KiB"


def memory_summary(memory: dict[str, Any]) -> str:
    """metrics.json's `memory` in one sentence: per seed, all seeds at once, the budget, batches
    (bytes per device, from XLA's memory analysis) and the measured process peak."""
    parts = []
    for name in ("train", "evaluate"):
        plan = memory.get(name)
        if not plan:
            continue
        batches = int(plan.get("batches", 1))
        parts.append(
            f"{name} {mib(plan['per_seed_bytes'])} per seed, {mib(plan['all_seeds_bytes'])} for "
            "all seeds at once"
            + (
                f", so {batches} batches of {int(plan['batch_seeds']):,} seeds"
                f" ({mib(plan['batch_bytes'])})"
                if batches > 1
                else ""
            )
        )
    if not parts:
        return ""
    text = (
        f"Memory per device (estimated; budget {mib(memory.get('budget_bytes'))}): "
        + "; ".join(parts)
        + "."
    )
    if memory.get("process_peak_rss_bytes") is not None:
        text += f" Peak resident memory of the process: {mib(memory['process_peak_rss_bytes'])}"
        if memory.get("device_peak_bytes") is not None:
            text += f"; of the first device: {mib(memory['device_peak_bytes'])}"
        text += "."
    return text


def _footer(m: Metrics, page: Page) -> list[str]:
    """Timing, memory, versions and the definitions of the table's terms."""
    timing, versions = m.timing, m.versions
    device = versions.get("device_kind")
    memory = memory_summary(m.memory)
    processes = int(versions.get("process_count", 1))
    return [
        f"Timing: compile {fmt(timing.get('compile_s'), '.3g')} s, train "
        f"{fmt(timing.get('train_s'), '.3g')} s"
        + (" (every session of a stopped and resumed run)" if timing.get("resumed") else "")
        + f", {fmt(timing.get('seed_steps_per_s'), ',.0f')} seed-steps/s"
        + (f" on {versions.get('device_count', 1)} x {device}" if device else "")
        + (f" in {processes} processes" if processes > 1 else "")
        + (
            f" (jax {versions['jax']}, jaxae {versions.get('jaxae', '?')})."
            if "jax" in versions
            else "."
        ),
        "",
        *([memory, ""] if memory else []),
        page.definitions(m),
        "",
    ]


def page_markdown(m: Metrics, run_dir: Path, page: Page) -> str:
    """The report of one run as markdown (figure links relative to `run_dir`).

    Figures are linked when they apply to the run and exist under `run_dir/figures` (so call
    `render_page`, which draws them first, to get a report with figures).
    """
    run_dir = Path(run_dir)
    lines = [f"## {m.section} {m.experiment}", ""]
    lines += [f"> {line}" if line else ">" for line in m.claim.splitlines()]
    lines += [""]
    lines += [
        "### Measured",
        "",
        f"{m.n_seeds} seeds (base seed {m.seed}); arms"
        + (f" by {page.arms_by}" if page.arms_by else "")
        + f": {', '.join(m.arms)}; "
        f"{_setting(m)}.",
        "",
        *page.table(m, page.arm_name),
        "",
    ]
    extra, verdict = page.text(m)
    if extra:
        lines += [*extra, ""]
    lines += [f"**Verdict.** {verdict}", ""]
    plan = [f for f in figure_plan(m, run_dir, page) if (run_dir / FIGURES / f.name).is_file()]
    if plan:
        lines += ["### Figures", ""]
        for figure in plan:
            lines += [f"![{figure.alt}]({FIGURES}/{figure.name})", "", f"*{figure.caption}*", ""]
    lines += _footer(m, page)
    return "\n".join(lines)


def render_page(run_dir: Path, m: Metrics, page: Page) -> None:
    """Draw the page's figures into `run_dir/figures` and write `run_dir/report.md`."""
    run_dir = Path(run_dir)
    figures = run_dir / FIGURES
    figures.mkdir(exist_ok=True)
    for figure in figure_plan(m, run_dir, page):
        figure.draw(m, run_dir, figures / figure.name)
    results.write_text(run_dir / REPORT, page_markdown(m, run_dir, page))


# ----------------------------------------------------------------------------------------------
# A whole reproduction

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def relink(markdown: str, prefix: str) -> str:
    """Prefix every relative link target with `prefix/` (absolute, URL and anchor links kept)."""

    def fix(match: re.Match[str]) -> str:
        target = match.group(2)
        if target.startswith(("/", "#")) or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            return match.group(0)
        return f"{match.group(1)}{prefix}/{target}{match.group(3)}"

    return _LINK.sub(fix, markdown)


def run_dirs(root: Path, order: list[str]) -> list[tuple[Path, Metrics]]:
    """Run directories under `root` with their metrics: the experiments in `order` first, in that
    order, then the others alphabetically."""
    found = [
        (d, results.read_run(d))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / results.METRICS).is_file()
    ]

    def key(item: tuple[Path, Metrics]) -> tuple[int, str, str]:
        name = item[1].experiment
        return (order.index(name) if name in order else len(order), name, item[0].name)

    return sorted(found, key=key)


def reproduction_markdown(runs: list[tuple[Path, Metrics, Page]]) -> str:
    """An overview table of the runs, then every run's report.md (already rendered), its links
    rewritten relative to the runs' parent directory."""
    lines = [
        "# jaxae: reproducing the tutorial's claims",
        "",
        "One run directory per experiment; every number below is read from its metrics.json.",
        "",
        "| experiment | section | seeds | arms by | result per arm |",
        "|---|---|---|---|---|",
    ]
    sections = []
    for run_dir, m, page in runs:
        lines.append(
            f"| [{m.experiment}]({run_dir.name}/{REPORT}) | {m.section} | {m.n_seeds} | "
            f"{page.arm_name} | {page.headline(m)} |"
        )
        sections.append(relink((run_dir / REPORT).read_text(), run_dir.name))
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(s.rstrip("\n") + "\n" for s in sections)
