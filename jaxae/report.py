"""Figures and report.md from a run directory, and one report over a whole reproduction.

`render_run(run_dir)` reads what `results.write_run` wrote (metrics.json, history.npz and the
`params` checkpoint) and writes `run_dir/figures/*.png` plus `run_dir/report.md`. Which figures a
run gets follows from its `arm_axis` and analysis, never from the numbers:

- `loss.png`: per-epoch loss per arm, median over seeds with a 10-90% band (every experiment);
- `fvu_vs_hidden.png`, `convergence_vs_hidden.png`: FVU and convergence per hidden size (sweeps);
- `convergence.png`: convergence and dead units per initialiser (`arm_axis` "init");
- `similarity.png`: matched weight similarity across seeds vs. the control (when measured);
- `weights.png`: encoder weights of the first seeds (when the checkpoint is there).

Every link in report.md is relative (`figures/loss.png`), so a run rendered in a staging directory
stays valid after it is renamed into place. `render_reproduction(root)` joins the reports of the run
directories under `root` into `root/report.md`, with links rewritten relative to `root`.
Every number in the text is read from the run's files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no plt.show

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxae import experiments, results

FIGURES = "figures"
REPORT = "report.md"

# Log-scale plots clip FVU (and loss) values below this, so exact zeros and 1e-32 floors show.
LOG_FLOOR = 1e-8
# A y range spanning more than this factor is drawn on a log axis.
LOG_RANGE = 100.0
# Seeds whose encoder weights `weights.png` shows.
WEIGHT_SEEDS = 4
DPI = 120

AXIS_NAMES = {"init": "init", "n_hidden": "hidden units", "run": "arm"}


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


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads(_metrics_path(run_dir).read_text())


def _read_history(run_dir: Path, labels: list[str]) -> dict[str, np.ndarray]:
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


def _num(value: Any) -> float:
    """A JSON number as float; null (NaN or infinity on writing) becomes NaN."""
    return float("nan") if value is None else float(value)


def _nums(values: list[Any]) -> np.ndarray:
    return np.asarray([_num(v) for v in values], np.float64)


def _fmt(value: Any, spec: str) -> str:
    """`value` formatted with `spec`, or "n/a" where it is missing or not finite."""
    x = _num(value)
    return "n/a" if not math.isfinite(x) else format(x, spec)


def _rate(value: Any) -> str:
    return _fmt(value, ".3f")


def _ci(ci: list[Any] | None) -> str:
    return "" if not ci else f"[{_rate(ci[0])}, {_rate(ci[1])}]"


def _count(flags: list[Any]) -> tuple[int, int]:
    """(number true, number of seeds) of a per-seed boolean list."""
    return sum(bool(f) for f in flags), len(flags)


def _is_sweep(m: dict[str, Any]) -> bool:
    return m.get("arm_axis") == "n_hidden"


def _is_init(m: dict[str, Any]) -> bool:
    return m.get("arm_axis") == "init"


def _has_similarity(m: dict[str, Any]) -> bool:
    return bool(m.get("cross_seed_similarity"))


def _units(n: Any) -> str:
    return f"{n} hidden unit" + ("" if n == 1 else "s")


def _arm_phrase(m: dict[str, Any], label: str) -> str:
    """How the text names one arm: "4 hidden units", "torch init", "arm seeds"."""
    if _is_sweep(m):
        return _units(m["arms"][label]["n_hidden"])
    if _is_init(m):
        return f"{label} init"
    return f"arm {label}"


def _weights_arm(m: dict[str, Any]) -> str:
    """The arm whose weights are shown: the largest hidden size of a sweep, else the first arm."""
    arms = m["arms"]
    if _is_sweep(m):
        return max(arms, key=lambda label: arms[label]["n_hidden"])
    return next(iter(arms))


# ----------------------------------------------------------------------------------------------
# Figures


def _save(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def _arm_colors(m: dict[str, Any]) -> dict[str, Any]:
    """Ordered colours (viridis) for a hidden-size sweep, categorical (tab10) otherwise."""
    labels = list(m["arms"])
    if _is_sweep(m) and len(labels) > 1:
        cmap = plt.get_cmap("viridis")
        return {label: cmap(0.9 * i / (len(labels) - 1)) for i, label in enumerate(labels)}
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _quiet_nan_stats(fn: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs (every seed diverged)
        return fn(*args, **kwargs)


def plot_loss(m: dict[str, Any], history: dict[str, np.ndarray], path: Path) -> None:
    """Median loss over seeds per epoch with a shaded 10-90% band, one line per arm, log y."""
    colors = _arm_colors(m)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for label in m["arms"]:
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
    ax.set_title(f"{m['section']} {m['experiment']}: loss per epoch")
    ax.grid(True, which="major", alpha=0.3)
    n_arms = len(m["arms"])
    ax.legend(
        title=AXIS_NAMES.get(m.get("arm_axis", ""), "arm"),
        fontsize="small",
        ncol=2 if n_arms > 12 else 1,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
    _save(fig, path)


def _clip(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, LOG_FLOOR)


def plot_fvu_vs_hidden(m: dict[str, Any], path: Path) -> None:
    """Per hidden size: FVU of every seed, median with 25-75% and 10-90% bars, and the PCA floor."""
    arms = m["arms"]
    labels = list(arms)
    xs = np.arange(len(labels))
    tol = _num(m.get("reconstruction_tol"))
    fvus = [_nums(arms[label]["fvu"]) for label in labels]
    floors = np.asarray([_num(arms[label]["pca_floor_fvu"]) for label in labels])
    q = {
        k: np.asarray([_num(arms[label]["fvu_quantiles"][k]) for label in labels])
        for k in ("q10", "q25", "q50", "q75", "q90")
    }
    seeds = _clip(np.concatenate([f[np.isfinite(f)] for f in fvus]))
    shown_floors = floors[np.isfinite(floors) & (floors >= LOG_FLOOR)]
    values = np.concatenate([seeds, shown_floors])
    log = bool(values.size) and values.max() / values.min() > LOG_RANGE
    fig, ax = plt.subplots(figsize=(9.5, 4.5), layout="constrained")
    if log:
        ax.set_yscale("log")
        extent = np.concatenate([values, [tol] if math.isfinite(tol) else []])
        bottom, top = extent.min() / 3, extent.max() * 3
    else:
        extent = np.concatenate([values, [0.0, tol] if math.isfinite(tol) else [0.0]])
        pad = 0.05 * (extent.max() - extent.min() or 1.0)
        bottom, top = extent.min() - pad, extent.max() + pad
    ax.set_ylim(bottom, top)

    def show(v: np.ndarray) -> np.ndarray:
        return _clip(v) if log else v

    rng = np.random.default_rng(0)
    for x, f in zip(xs, fvus, strict=True):
        f = f[np.isfinite(f)]
        jitter = rng.uniform(-0.18, 0.18, f.size)
        ax.scatter(x + jitter, show(f), s=6, color="0.55", alpha=0.35, linewidths=0, zorder=1)
    ax.vlines(xs, show(q["q10"]), show(q["q90"]), color="C0", linewidth=1.2, zorder=2)
    ax.vlines(xs, show(q["q25"]), show(q["q75"]), color="C0", linewidth=5, alpha=0.6, zorder=2)
    ax.scatter(
        xs, show(q["q50"]), color="C0", edgecolor="white", s=40, zorder=3, label="median FVU"
    )
    ax.plot([], [], color="C0", linewidth=5, alpha=0.6, label="25-75% / 10-90% of seeds")
    below = np.isfinite(floors) & (floors < bottom)
    drawn = np.where(below, bottom, floors)
    ax.plot(
        xs,
        drawn,
        color="C3",
        marker="_",
        markersize=14,
        linewidth=1.4,
        zorder=4,
        label="PCA floor (best rank-h linear)",
        clip_on=False,
    )
    if below.any():
        ax.scatter(
            xs[below],
            np.full(int(below.sum()), bottom),
            marker="v",
            color="C3",
            s=60,
            zorder=5,
            clip_on=False,
            label="PCA floor below the axis (see table)",
        )
    if math.isfinite(tol):
        ax.axhline(
            tol,
            color="0.3",
            linestyle="--",
            linewidth=1,
            label=f"reconstruction tol = {tol:g} (reconstructs below)",
        )
    if log:
        ax.set_ylabel(f"FVU (log; values below {LOG_FLOOR:g} drawn at {LOG_FLOOR:g})")
    else:
        ax.set_ylabel("FVU")
    ax.set_xticks(xs, labels)
    ax.set_xlabel("hidden units")
    ax.set_title(f"{m['section']} {m['experiment']}: FVU per hidden size ({m['n_seeds']} seeds)")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    _save(fig, path)


def plot_convergence_vs_hidden(m: dict[str, Any], path: Path) -> None:
    """Per hidden size: convergence and reconstruction rates with their 95% intervals."""
    arms, analysis = m["arms"], m.get("analysis", {})
    labels = list(arms)
    xs = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9.5, 4.2), layout="constrained")
    series = [
        (
            "converged (fvu <= floor + convergence tol)",
            "convergence_rate",
            "convergence_ci95",
            "C0",
            "o",
            -0.12,
        ),
        (
            "reconstructs (fvu <= reconstruction tol)",
            "reconstruction_rate",
            "reconstruction_ci95",
            "C1",
            "s",
            0.12,
        ),
    ]
    for name, key, ci_key, color, marker, dx in series:
        rates = np.asarray([_num(arms[label][key]) for label in labels])
        cis = [analysis.get(label, {}).get(ci_key) or arms[label].get(ci_key) for label in labels]
        if all(ci is not None for ci in cis):
            lo = np.asarray([_num(ci[0]) for ci in cis])
            hi = np.asarray([_num(ci[1]) for ci in cis])
            yerr = np.vstack([np.maximum(rates - lo, 0), np.maximum(hi - rates, 0)])
        else:
            yerr = None
        ax.errorbar(
            xs + dx,
            rates,
            yerr=yerr,
            fmt=marker,
            color=color,
            capsize=3,
            markersize=6,
            label=name + (" with 95% CI" if yerr is not None else ""),
        )
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("hidden units")
    ax.set_ylabel("share of seeds")
    ax.set_title(
        f"{m['section']} {m['experiment']}: convergence per hidden size ({m['n_seeds']} seeds)"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    _save(fig, path)


def _share_panel(ax: Any, xs: np.ndarray, labels: list[str], ylabel: str, title: str) -> None:
    """Axes, labels, legend and grid of a panel of shares (0 to 1) per initialiser."""
    ax.set_ylim(0, 1.1)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("init")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)


def plot_convergence_init(m: dict[str, Any], path: Path) -> None:
    """Per initialiser: convergence rate with 95% CI; dead-unit shares at the end and at init."""
    arms, analysis = m["arms"], m.get("analysis", {})
    labels = list(arms)
    xs = np.arange(len(labels))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.2), layout="constrained")

    rates = np.asarray([_num(arms[label]["convergence_rate"]) for label in labels])
    lo = np.asarray([_num(arms[label]["convergence_ci95"][0]) for label in labels])
    hi = np.asarray([_num(arms[label]["convergence_ci95"][1]) for label in labels])
    colors = [_arm_colors(m)[label] for label in labels]
    left.bar(xs, rates, width=0.6, color=colors, alpha=0.8)
    left.errorbar(
        xs,
        rates,
        yerr=np.vstack([rates - lo, hi - rates]),
        fmt="none",
        ecolor="black",
        capsize=5,
        label="95% CI",
    )
    for x, label in zip(xs, labels, strict=True):
        k, n = _count(arms[label]["converged"])
        left.annotate(
            f"{k}/{n}",
            (x, hi[x]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize="small",
        )
    _share_panel(left, xs, labels, "share of seeds converged", "convergence rate")

    bars = [
        ("dead unit at the end", "dead_unit_fraction", "C3"),
        ("dead unit at init", "dead_at_init_fraction", "C7"),
    ]
    width = 0.8 / (len(bars) + 1)
    for i, (name, key, color) in enumerate(bars):
        vals = [_num(analysis.get(label, {}).get(key)) for label in labels]
        right.bar(xs + (i - len(bars) / 2) * width, vals, width=width, color=color, label=name)
    shares = []
    for label in labels:
        a = analysis.get(label, {})
        failed = a.get("failed") or 0
        shares.append(a.get("failed_with_dead_unit", 0) / failed if failed else float("nan"))
    right.bar(
        xs + width * len(bars) / 2,
        shares,
        width=width,
        color="C1",
        label="failed seeds with a dead unit (share of failed)",
    )
    _share_panel(right, xs, labels, "share of seeds", "dead hidden units")
    fig.suptitle(f"{m['section']} {m['experiment']}: {m['n_seeds']} seeds per init")
    _save(fig, path)


def plot_similarity(m: dict[str, Any], path: Path) -> None:
    """Histograms of matched similarity between seeds, with the control (same seed twice) marked."""
    sim = m["cross_seed_similarity"]
    control = m.get("analysis", {}).get("control_similarity", {})
    names = list(sim)
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.8 * len(names), 4.0), layout="constrained", squeeze=False
    )
    bins = np.linspace(-1, 1, 41)
    for ax, name in zip(axes[0], names, strict=True):
        values = _nums(sim[name])
        values = values[np.isfinite(values)]
        ax.hist(
            values, bins=bins, color="C0", alpha=0.8, label=f"different seeds ({values.size} pairs)"
        )
        ctrl = _nums(control.get(name, []))
        ctrl = ctrl[np.isfinite(ctrl)]
        if ctrl.size:
            for i, c in enumerate(ctrl):
                ax.axvline(
                    c,
                    color="C3",
                    linewidth=2,
                    alpha=0.6,
                    label=f"control: same seed twice ({ctrl.size} runs, min {ctrl.min():.3f})"
                    if i == 0
                    else None,
                )
        if values.size:
            ax.axvline(
                np.median(values),
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"median {np.median(values):.3f}",
            )
        ax.set_xlim(-1.02, 1.02)
        ax.set_xlabel("mean matched cosine similarity")
        ax.set_ylabel("seed pairs")
        ax.set_title(f"{name} weights")
        ax.legend(fontsize="small", loc="upper left", framealpha=0.85)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # room for the legend
    fig.suptitle(f"{m['section']} {m['experiment']}: do different seeds learn the same units?")
    _save(fig, path)


def _encoder_kernels(run_dir: Path, label: str, n_hidden: int) -> np.ndarray | None:
    """Encoder kernels `[S, D, H]` of one arm (units past `n_hidden` dropped), if stored."""
    tree = results.load_checkpoint(Path(run_dir) / results.PARAMS)
    try:
        kernel = tree[label]["params"]["encoder"]["kernel"]
    except (KeyError, TypeError):
        return None
    return np.asarray(kernel)[:, :, :n_hidden]


def plot_weights(m: dict[str, Any], run_dir: Path, path: Path) -> bool:
    """Encoder weights (features x units) of the first seeds side by side; False if not stored."""
    label = _weights_arm(m)
    kernels = _encoder_kernels(run_dir, label, int(m["arms"][label]["n_hidden"]))
    if kernels is None or kernels.shape[0] == 0:
        return False
    n = min(WEIGHT_SEEDS, kernels.shape[0])
    d, h = kernels.shape[1], kernels.shape[2]
    cell = float(np.clip(5.0 / max(d, h), 0.02, 0.3))  # inches per matrix entry
    panel_w, panel_h = max(h * cell + 0.8, 1.5), d * cell + 1.1
    ncols = n if n * panel_w <= 10 else math.ceil(n / 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * panel_w + 1.4, nrows * panel_h + 0.4),
        layout="constrained",
        squeeze=False,
    )
    finite = kernels[:n][np.isfinite(kernels[:n])]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            kernels[i], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest"
        )
        ax.set_title(f"seed {i}", fontsize="medium")
        ax.set_xticks(range(h) if h <= 12 else np.linspace(0, h - 1, 5).round().astype(int))
        ax.set_yticks(range(d) if d <= 12 else np.linspace(0, d - 1, 5).round().astype(int))
        if i // ncols == nrows - 1 or i + ncols >= n:
            ax.set_xlabel("hidden unit")
        if i % ncols == 0:
            ax.set_ylabel("input feature")
        else:
            ax.tick_params(labelleft=False)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, label="weight")
    fig.suptitle(f"encoder weights, {_arm_phrase(m, label)}", fontsize="medium")
    _save(fig, path)
    return True


@dataclasses.dataclass(frozen=True)
class _FigureSpec:
    name: str
    alt: str
    caption: str


def _figure_plan(m: dict[str, Any], run_dir: Path) -> list[_FigureSpec]:
    """The figures that apply to this run, in report order."""
    plan = []
    if (Path(run_dir) / results.HISTORY).is_file():
        plan.append(
            _FigureSpec(
                "loss.png",
                "loss curves",
                "Training loss per epoch: median over seeds (line) and 10-90% of seeds (band), log "
                "scale. Diverged seeds (NaN) drop out of the statistics from the epoch they "
                "diverge.",
            )
        )
    if _is_sweep(m):
        plan.append(
            _FigureSpec(
                "fvu_vs_hidden.png",
                "FVU per hidden size",
                "FVU per hidden size: every seed (grey dots), median (dot) with 25-75% (thick) and "
                "10-90% (thin) of seeds, the PCA floor (red) and the reconstruction tolerance "
                f"(dashed). On a log axis, FVU values below {LOG_FLOOR:g} (exact fits) are drawn "
                f"at {LOG_FLOOR:g}, and a PCA floor below the axis (e.g. 0 for rank-deficient "
                "data with enough units) is marked by a red triangle on its bottom edge.",
            )
        )
        plan.append(
            _FigureSpec(
                "convergence_vs_hidden.png",
                "convergence per hidden size",
                "Share of seeds that converged (reached the size's PCA floor + convergence "
                "tol) and that reconstruct (FVU <= reconstruction tol), with 95% Wilson intervals.",
            )
        )
    if _is_init(m):
        plan.append(
            _FigureSpec(
                "convergence.png",
                "convergence per init",
                "Left: share of seeds converged per initialiser with its 95% Wilson interval. "
                "Right: share of seeds whose hidden unit is dead (never active on any sample) "
                "after training and at initialisation, and the share of failed seeds with a dead "
                "unit.",
            )
        )
    if _has_similarity(m):
        plan.append(
            _FigureSpec(
                "similarity.png",
                "matched similarity across seeds",
                "Mean cosine similarity of hidden units after the best one-to-one matching, for "
                "every pair of different seeds (histogram) and for each control seed against "
                "itself trained a second time (red lines).",
            )
        )
    if (Path(run_dir) / results.PARAMS).exists():
        label = _weights_arm(m)
        n = min(WEIGHT_SEEDS, len(m["arms"][label]["fvu"]))
        plan.append(
            _FigureSpec(
                "weights.png",
                "encoder weights",
                f"Encoder weight matrices (input features x hidden units) of seeds 0-{n - 1} "
                f"({_arm_phrase(m, label)}), on one symmetric colour scale.",
            )
        )
    return plan


def _draw(m: dict[str, Any], run_dir: Path, spec: _FigureSpec, path: Path) -> bool:
    if spec.name == "loss.png":
        plot_loss(m, _read_history(run_dir, list(m["arms"])), path)
    elif spec.name == "fvu_vs_hidden.png":
        plot_fvu_vs_hidden(m, path)
    elif spec.name == "convergence_vs_hidden.png":
        plot_convergence_vs_hidden(m, path)
    elif spec.name == "convergence.png":
        plot_convergence_init(m, path)
    elif spec.name == "similarity.png":
        plot_similarity(m, path)
    elif spec.name == "weights.png":
        return plot_weights(m, run_dir, path)
    return True


# ----------------------------------------------------------------------------------------------
# Markdown


def _arm_table(m: dict[str, Any]) -> list[str]:
    arms, analysis = m["arms"], m.get("analysis", {})
    axis = AXIS_NAMES.get(m.get("arm_axis", ""), "arm")
    lines = [
        f"| {axis} | seeds | converged [95% CI] | reconstructs | median FVU [10%, 90%] | "
        "PCA floor | dead units / seed | diverged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, a in arms.items():
        k, n = _count(a["converged"])
        r_ci = (
            analysis.get(label, {}).get("reconstruction_ci95")
            if isinstance(analysis.get(label), dict)
            else None
        )
        recon = _rate(a["reconstruction_rate"]) + (f" {_ci(r_ci)}" if r_ci else "")
        q = a["fvu_quantiles"]
        dead = _nums(a["dead_units"])
        dead_mean = float(np.mean(dead)) if dead.size else float("nan")
        d, _ = _count(a["diverged"])
        lines.append(
            f"| {label} | {n} | {k}/{n} = {_rate(a['convergence_rate'])} "
            f"{_ci(a['convergence_ci95'])} | {recon} | {_fmt(q['q50'], '.3g')} "
            f"[{_fmt(q['q10'], '.3g')}, {_fmt(q['q90'], '.3g')}] | "
            f"{_fmt(a['pca_floor_fvu'], '.3g')} | {_fmt(dead_mean, '.2f')} | {d}/{n} |"
        )
    return lines


def _judge(rate: float) -> str:
    if not math.isfinite(rate):
        return "cannot be judged (no rate)"
    if rate >= 0.95:
        return "holds for essentially every seed"
    if rate >= 0.5:
        return "holds for most seeds but not all"
    if rate > 0:
        return "holds only for a minority of seeds"
    return "does not hold for any seed in this run"


def _multiples_text(m: dict[str, Any]) -> tuple[list[str], str]:
    arms, analysis = m["arms"], m.get("analysis", {})
    lines = ["Failures and dead units per initialiser:", ""]
    for label, a in analysis.items():
        if not isinstance(a, dict) or "failed" not in a:
            continue
        failed, with_dead = int(a["failed"]), int(a["failed_with_dead_unit"])
        share = _rate(with_dead / failed) if failed else "n/a"
        loss_q = a.get("final_loss_quantiles_converged", {})
        loss = (
            f"; final loss of converged seeds: median {_fmt(loss_q.get('q50'), '.3g')} "
            f"(10-90%: {_fmt(loss_q.get('q10'), '.3g')} to {_fmt(loss_q.get('q90'), '.3g')})"
            if math.isfinite(_num(loss_q.get("q50")))
            else "; no seed converged, so there is no converged final loss"
        )
        lines.append(
            f"- **{label}**: {failed} of {len(arms[label]['converged'])} seeds failed to converge; "
            f"{with_dead} of them ({share}) ended with a dead hidden unit (never active on any "
            f"sample). Dead unit after training: {_rate(a['dead_unit_fraction'])} of seeds; "
            f"already dead at initialisation: {_rate(a['dead_at_init_fraction'])}{loss}."
        )
    first = next(iter(arms))
    rate = _num(arms[first]["convergence_rate"])
    parts = []
    for label, a in arms.items():
        k, n = _count(a["converged"])
        parts.append(f"{k}/{n} seeds with {label} init ({_rate(a['convergence_rate'])})")
    total_failed = sum(int(a.get("failed", 0)) for a in analysis.values() if isinstance(a, dict))
    total_dead = sum(
        int(a.get("failed_with_dead_unit", 0)) for a in analysis.values() if isinstance(a, dict)
    )
    dead = (
        f" Of all failed seeds, {total_dead}/{total_failed} ({_rate(total_dead / total_failed)}) "
        "have a dead hidden unit."
        if total_failed
        else ""
    )
    verdict = (
        f"With {_units(m['arms'][first]['n_hidden'])} the run converged in "
        f"{'; '.join(parts)}: with the tutorial's {first} initialisation the claim "
        f"{_judge(rate)}.{dead}"
    )
    return lines, verdict


def _sweep_text(m: dict[str, Any]) -> tuple[list[str], str]:
    arms, analysis = m["arms"], m.get("analysis", {})
    sizes = sorted(arms, key=lambda label: arms[label]["n_hidden"])
    lines = ["Per hidden size (FVU beside the PCA floor of that size):", ""]
    for label in sizes:
        a = arms[label]
        an = analysis.get(label, {}) if isinstance(analysis.get(label), dict) else {}
        dead = an.get("dead_units_mean")
        lines.append(
            f"- **{_units(a['n_hidden'])}**: median FVU "
            f"{_fmt(a['fvu_quantiles']['q50'], '.3g')} vs "
            f"PCA floor {_fmt(a['pca_floor_fvu'], '.3g')}; converged "
            f"{_rate(a['convergence_rate'])}, reconstructs {_rate(a['reconstruction_rate'])}"
            + (f"; {_fmt(dead, '.2f')} dead units per seed on average" if dead is not None else "")
            + "."
        )

    def smallest(key: str) -> str | None:
        for label in sizes:
            if _num(arms[label][key]) >= 0.5:
                return label
        return None

    conv, recon = smallest("convergence_rate"), smallest("reconstruction_rate")
    sentences = []
    if conv is None:
        sentences.append("No hidden size converges in at least half of the seeds.")
    else:
        sentences.append(
            f"The smallest hidden size that converges in at least half of the seeds is "
            f"{arms[conv]['n_hidden']} ({_rate(arms[conv]['convergence_rate'])})."
        )
    if recon is None:
        sentences.append(
            "No hidden size reconstructs the data (FVU <= reconstruction tol) in half of the seeds."
        )
    else:
        sentences.append(
            f"The smallest that reconstructs the data in at least half of the seeds is "
            f"{arms[recon]['n_hidden']} ({_rate(arms[recon]['reconstruction_rate'])})."
        )
    n_features = m.get("config", {}).get("data", {}).get("n_features")
    if n_features is not None:
        below = [label for label in sizes if arms[label]["n_hidden"] < n_features]
        any_recon = [label for label in below if _count(arms[label]["reconstructs"])[0] > 0]
        if below and not any_recon:
            sentences.append(
                f"No hidden size below the {n_features} input features reconstructs any seed."
            )
        elif any_recon:
            listed = ", ".join(
                f"{arms[label]['n_hidden']} ({_count(arms[label]['reconstructs'])[0]}/"
                f"{len(arms[label]['reconstructs'])})"
                for label in any_recon
            )
            sentences.append(
                f"Hidden sizes below the {n_features} input features that reconstruct at least "
                f"one seed: {listed}."
            )
    return lines, " ".join(sentences)


def _similarity_text(m: dict[str, Any]) -> tuple[list[str], str]:
    analysis = m.get("analysis", {})
    sim = m.get("cross_seed_similarity", {})
    quant = analysis.get("similarity_quantiles", {})
    control_min = analysis.get("control_min", {})
    control = analysis.get("control_similarity", {})
    pairs = analysis.get("pairs", len(next(iter(sim.values()), [])))
    n_control = len(next(iter(control.values()), []))
    lines = [
        f"Matched similarity (mean cosine of hidden units after one-to-one matching) over "
        f"{pairs} pairs of different seeds, against {n_control} control seeds each trained twice "
        "with the same key:",
        "",
        "| weights | q10 | q25 | median | q75 | q90 | control min | pairs >= control min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reach_shares = []
    for name, values in sim.items():
        q = quant.get(name, {})
        cmin = _num(control_min.get(name))
        v = _nums(values)
        v = v[np.isfinite(v)]
        reach = int(np.sum(v >= cmin)) if math.isfinite(cmin) else 0
        reach_shares.append(reach / v.size if v.size else float("nan"))
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(q.get(k), ".3f") for k in ("q10", "q25", "q50", "q75", "q90"))
            + f" | {_fmt(cmin, '.3f')} | {reach}/{v.size} |"
        )
    first = next(iter(m["arms"]))
    a = m["arms"][first]
    k, n = _count(a["converged"])
    medians = ", ".join(f"{_fmt(quant.get(name, {}).get('q50'), '.3f')} ({name})" for name in sim)
    mins = ", ".join(f"{_fmt(control_min.get(name), '.3f')} ({name})" for name in sim)
    same = all(math.isfinite(s) and s >= 0.5 for s in reach_shares) and reach_shares
    conclusion = (
        "most pairs of seeds end at the same units, so the weights do not depend on the seed"
        if same
        else "different seeds end at different weights"
    )
    verdict = (
        f"{k}/{n} seeds of the {first} arm converged ({_rate(a['convergence_rate'])}; the claim of "
        f"always converging {_judge(_num(a['convergence_rate']))}). The median matched similarity "
        f"between different seeds is {medians}, against a control minimum of {mins}: "
        f"{conclusion}."
    )
    return lines, verdict


def _generic_verdict(m: dict[str, Any]) -> str:
    parts = [f"{label}: {_rate(a['convergence_rate'])}" for label, a in m["arms"].items()]
    return "Convergence rate per arm: " + ", ".join(parts) + "."


def report_markdown(run_dir: Path) -> str:
    """The report of one run as markdown (figure links relative to `run_dir`).

    Figures are linked when they apply to the run and exist under `run_dir/figures` (so call
    `render_run`, which draws them first, to get a report with figures).
    """
    run_dir = Path(run_dir)
    m = _read_metrics(run_dir)
    tol = _num(m.get("reconstruction_tol"))
    fraction = _num(m.get("convergence_fraction"))
    lines = [f"## {m['section']} {m['experiment']}", ""]
    lines += [f"> {line}" if line else ">" for line in str(m.get("claim", "")).splitlines()]
    lines += [""]
    cfg = m.get("config", {})
    train_cfg, optim, model = cfg.get("train", {}), cfg.get("optim", {}), cfg.get("model", {})
    setting = (
        f"data {cfg.get('data', {}).get('kind', '?')}, {model.get('activation', '?')} "
        f"autoencoder, {train_cfg.get('epochs', '?')} epochs, "
        f"batch {train_cfg.get('batch_size', '?')}, Adam lr {optim.get('learning_rate', '?')}, "
        f"weight decay {optim.get('weight_decay', '?')}"
    )
    if m.get("overrides"):
        setting += f"; overrides: {', '.join(f'`{o}`' for o in m['overrides'])}"
    lines += [
        "### Measured",
        "",
        f"{m['n_seeds']} seeds (base seed {m['seed']}); arms"
        + (f" by {AXIS_NAMES[m['arm_axis']]}" if m.get("arm_axis") in ("init", "n_hidden") else "")
        + f": {', '.join(m['arms'])}; "
        f"{setting}.",
        "",
        *_arm_table(m),
        "",
    ]
    if _is_init(m):
        extra, verdict = _multiples_text(m)
    elif _is_sweep(m):
        extra, verdict = _sweep_text(m)
    elif _has_similarity(m):
        extra, verdict = _similarity_text(m)
    else:
        extra, verdict = [], _generic_verdict(m)
    if extra:
        lines += [*extra, ""]
    lines += [f"**Verdict.** {verdict}", ""]
    plan = [s for s in _figure_plan(m, run_dir) if (run_dir / FIGURES / s.name).is_file()]
    if plan:
        lines += ["### Figures", ""]
        for spec in plan:
            lines += [f"![{spec.alt}]({FIGURES}/{spec.name})", "", f"*{spec.caption}*", ""]
    timing = m.get("timing", {})
    versions = m.get("versions", {})
    device = versions.get("device_kind")
    lines += [
        f"Timing: compile {_fmt(timing.get('compile_s'), '.3g')} s, train "
        f"{_fmt(timing.get('train_s'), '.3g')} s, {_fmt(timing.get('seed_steps_per_s'), ',.0f')} "
        "seed-steps/s"
        + (f" on {versions.get('device_count', 1)} x {device}" if device else "")
        + (
            f" (jax {versions['jax']}, jaxae {versions.get('jaxae', '?')})."
            if "jax" in versions
            else "."
        ),
        "",
        "Definitions: FVU (fraction of variance unexplained) = sum of squared reconstruction "
        "errors / sum of squared deviations from the feature means (0 perfect, 1 = predicting "
        "the mean); "
        "PCA floor = FVU of the best rank-h affine reconstruction (a lower bound for h hidden "
        "units with a linear decoder); converged = FVU <= PCA floor + convergence tol, where the "
        f"tol is {_fmt(fraction, 'g')} x the variance share of the weakest principal component "
        "the arm's units must capture (so a seed converges only if it uses all of them); "
        f"reconstructs = FVU <= {_fmt(tol, 'g')} (the same rule with every principal direction "
        "of the data needed); a dead unit is never active on any sample; a diverged seed hit a "
        "non-finite loss.",
        "",
    ]
    return "\n".join(lines)


def render_run(run_dir: Path) -> None:
    """Write `run_dir/figures/*.png` and `run_dir/report.md` from the run's files."""
    run_dir = Path(run_dir)
    m = _read_metrics(run_dir)
    figures = run_dir / FIGURES
    figures.mkdir(exist_ok=True)
    for spec in _figure_plan(m, run_dir):
        _draw(m, run_dir, spec, figures / spec.name)
    results.write_text(run_dir / REPORT, report_markdown(run_dir))


# ----------------------------------------------------------------------------------------------
# A whole reproduction

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _relink(markdown: str, prefix: str) -> str:
    """Prefix every relative link target with `prefix/` (absolute, URL and anchor links kept)."""

    def fix(match: re.Match[str]) -> str:
        target = match.group(2)
        if target.startswith(("/", "#")) or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            return match.group(0)
        return f"{match.group(1)}{prefix}/{target}{match.group(3)}"

    return _LINK.sub(fix, markdown)


def _run_dirs(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Run directories under `root`: tutorial order first, then the others alphabetically."""
    found = [
        (d, json.loads((d / results.METRICS).read_text()))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / results.METRICS).is_file()
    ]
    order = list(experiments.EXPERIMENTS)

    def key(item: tuple[Path, dict[str, Any]]) -> tuple[int, str, str]:
        name = item[1].get("experiment", item[0].name)
        return (order.index(name) if name in order else len(order), name, item[0].name)

    return sorted(found, key=key)


def render_reproduction(root: Path) -> None:
    """Write `root/report.md`: an overview table and every run's report, links relative to root."""
    root = Path(root)
    runs = _run_dirs(root) if root.is_dir() else []
    if not runs:
        raise ValueError(
            f"root={str(root)!r} is invalid: no run directory with {results.METRICS} in it; "
            "allowed is a directory written by `jaxae reproduce`"
        )
    lines = [
        "# jaxae: reproducing the tutorial's claims",
        "",
        "One run directory per experiment; every number below is read from its metrics.json.",
        "",
        "| experiment | section | seeds | arms by | convergence rate per arm |",
        "|---|---|---|---|---|",
    ]
    sections = []
    for run_dir, m in runs:
        if not (run_dir / REPORT).is_file():
            render_run(run_dir)
        axis = AXIS_NAMES.get(m.get("arm_axis", ""), "arm")
        rates = ", ".join(
            f"{label}: {_fmt(a['convergence_rate'], '.2f')}" for label, a in m["arms"].items()
        )
        lines.append(
            f"| [{m['experiment']}]({run_dir.name}/{REPORT}) | {m['section']} | {m['n_seeds']} | "
            f"{axis} | {rates} |"
        )
        sections.append(_relink((run_dir / REPORT).read_text(), run_dir.name))
    lines.append("")
    text = "\n".join(lines) + "\n" + "\n".join(s.rstrip("\n") + "\n" for s in sections)
    results.write_text(root / REPORT, text)
