"""The tutorial family's pages: the figures and texts of `multiples`, `offset`, `noise` and
`overcomplete`.

Besides the loss curves every report gets, each page draws:

- `multiples`: `convergence.png`, convergence and dead units per initialiser;
- `offset` and `noise` (one sweep page): `fvu_vs_hidden.png` and `convergence_vs_hidden.png`,
  FVU and convergence per hidden size;
- `overcomplete`: `similarity.png`, matched weight similarity across seeds vs. the control;
- and all of them `weights.png`, encoder weights of the first seeds (when the checkpoint is there).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from jaxae.experiments.base import SIMILARITY_SEEDS
from jaxae.report.base import (
    LOG_FLOOR,
    LOG_RANGE,
    MAX_SEED_DOTS,
    Figure,
    Metrics,
    Page,
    arm_colors,
    clip_log,
    count,
    fmt,
    fmt_rate,
    has_params,
    judge,
    metrics_only,
    num,
    nums,
    read_params,
    save,
    seed_spread,
    units,
)
from jaxae.report.grid import MainMetric

# Seeds whose encoder weights `weights.png` shows.
WEIGHT_SEEDS = 4

# ----------------------------------------------------------------------------------------------
# Figures


def _fvu_axis(values: np.ndarray, tol: float) -> tuple[bool, float, float]:
    """`(log, bottom, top)` of an FVU axis showing `values` and the tolerance line `tol`: log when
    they span more than `LOG_RANGE`."""
    log = bool(values.size) and values.max() / values.min() > LOG_RANGE
    if log:
        extent = np.concatenate([values, [tol] if math.isfinite(tol) else []])
        return True, extent.min() / 3, extent.max() * 3
    extent = np.concatenate([values, [0.0, tol] if math.isfinite(tol) else [0.0]])
    pad = 0.05 * (extent.max() - extent.min() or 1.0)
    return False, extent.min() - pad, extent.max() + pad


def plot_fvu_vs_hidden(m: Metrics, path: Path) -> None:
    """Per hidden size: FVU of every seed, median with 25-75% and 10-90% bars, and the PCA floor."""
    arms = m.arms
    labels = list(arms)
    xs = np.arange(len(labels))
    tol = m.primary.reconstruction_tol
    fvus = [nums(arms[label].fvu) for label in labels]
    floors = np.asarray([num(arms[label].pca_floor_fvu) for label in labels])
    q = {
        k: np.asarray([getattr(arms[label].fvu_quantiles, k) for label in labels])
        for k in ("q10", "q25", "q50", "q75", "q90")
    }
    seeds = clip_log(np.concatenate([f[np.isfinite(f)] for f in fvus]))
    shown_floors = floors[np.isfinite(floors) & (floors >= LOG_FLOOR)]
    log, bottom, top = _fvu_axis(np.concatenate([seeds, shown_floors]), tol)
    fig, ax = plt.subplots(figsize=(9.5, 4.5), layout="constrained")
    if log:
        ax.set_yscale("log")
    ax.set_ylim(bottom, top)

    def show(v: np.ndarray) -> np.ndarray:
        return clip_log(v) if log else v

    rng = np.random.default_rng(0)
    for x, f in zip(xs, fvus, strict=True):
        seed_spread(ax, x, show(f[np.isfinite(f)]), log=log, rng=rng)
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
    ax.set_title(f"{m.section} {m.experiment}: FVU per hidden size ({m.n_seeds} seeds)")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    save(fig, path)


def plot_convergence_vs_hidden(m: Metrics, path: Path) -> None:
    """Per hidden size: convergence and reconstruction rates with their 95% intervals."""
    arms = m.arms
    labels = list(arms)
    xs = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9.5, 4.2), layout="constrained")
    series = [
        (
            "converged (fvu <= floor + convergence tol)",
            lambda a: a.convergence_rate,
            lambda a: a.convergence_ci95,
            "C0",
            "o",
            -0.12,
        ),
        (
            "reconstructs (fvu <= reconstruction tol)",
            lambda a: a.reconstruction_rate,
            lambda a: a.reconstruction_ci95,
            "C1",
            "s",
            0.12,
        ),
    ]
    for name, rate_of, ci_of, color, marker, dx in series:
        rates = np.asarray([rate_of(arms[label]) for label in labels])
        cis = np.asarray([ci_of(arms[label]) for label in labels]).reshape(-1, 2)
        yerr = np.vstack([np.maximum(rates - cis[:, 0], 0), np.maximum(cis[:, 1] - rates, 0)])
        ax.errorbar(
            xs + dx,
            rates,
            yerr=yerr,
            fmt=marker,
            color=color,
            capsize=3,
            markersize=6,
            label=name + " with 95% CI",
        )
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("hidden units")
    ax.set_ylabel("share of seeds")
    ax.set_title(f"{m.section} {m.experiment}: convergence per hidden size ({m.n_seeds} seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    save(fig, path)


def _share_panel(ax: Any, xs: np.ndarray, labels: list[str], ylabel: str, title: str) -> None:
    """Axes, labels, legend and grid of a panel of shares (0 to 1) per initialiser."""
    ax.set_ylim(0, 1.1)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("init")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)


def plot_convergence_init(m: Metrics, path: Path) -> None:
    """Per initialiser: convergence rate with 95% CI; dead-unit shares at the end and at init."""
    arms, analysis = m.arms, m.analysis
    labels = list(arms)
    xs = np.arange(len(labels))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.2), layout="constrained")

    rates = np.asarray([num(arms[label].convergence_rate) for label in labels])
    lo = np.asarray([num(arms[label].convergence_ci95[0]) for label in labels])
    hi = np.asarray([num(arms[label].convergence_ci95[1]) for label in labels])
    colors = [arm_colors(labels, ordered=False)[label] for label in labels]
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
        k, n = count(arms[label].converged)
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
        vals = [getattr(analysis[label], key) for label in labels]
        right.bar(xs + (i - len(bars) / 2) * width, vals, width=width, color=color, label=name)
    shares = [
        a.failed_with_dead_unit / a.failed if a.failed else float("nan")
        for a in (analysis[label] for label in labels)
    ]
    right.bar(
        xs + width * len(bars) / 2,
        shares,
        width=width,
        color="C1",
        label="failed seeds with a dead unit (share of failed)",
    )
    _share_panel(right, xs, labels, "share of seeds", "dead hidden units")
    fig.suptitle(f"{m.section} {m.experiment}: {m.n_seeds} seeds per init")
    save(fig, path)


def plot_similarity(m: Metrics, path: Path) -> None:
    """Per arm (columns) and layer (rows): PW-MCC of every pair of seeds against its chance level
    (the same pairs' untrained weights), and the control (same seed trained twice)."""
    control_min = m.analysis.control_min
    labels = [label for label in m.arms if label != "control"]
    layers = [("decoder", "pw_mcc"), ("encoder", "pw_mcc_encoder")]
    fig, axes = plt.subplots(
        len(layers),
        len(labels),
        figsize=(3.6 * len(labels) + 0.6, 3.0 * len(layers) + 0.6),
        layout="constrained",
        squeeze=False,
        sharex=True,
    )
    bins = np.linspace(-0.2, 1.0, 49)
    for col, label in enumerate(labels):
        arm = m.arms[label]
        for row, (layer, key) in enumerate(layers):
            ax = axes[row, col]
            values, null = nums(getattr(arm, key)), nums(getattr(arm, key + "_null"))
            ax.hist(null, bins=bins, color="0.6", alpha=0.7, label="chance: untrained weights")
            ax.hist(values, bins=bins, color=f"C{col}", alpha=0.75, label="trained")
            ax.axvline(np.median(values), color="black", linestyle="--", linewidth=1)
            if math.isfinite(control_min.get(layer, math.nan)):
                ax.axvline(
                    control_min[layer],
                    color="C3",
                    linewidth=1.5,
                    label="control min (same seed twice)",
                )
            ax.set_title(f"{label}: {layer}", fontsize="medium")
            if col == 0:
                ax.set_ylabel("seed pairs")
            if row == len(layers) - 1:
                ax.set_xlabel("PW-MCC (mean matched cosine)")
            ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize="small", loc="upper left")
    fig.suptitle(
        f"{m.section} {m.experiment}: do different seeds learn the same units? "
        f"({len(nums(m.arms[labels[0]].pw_mcc))} pairs per arm)"
    )
    save(fig, path)


def _encoder_kernels(
    run_dir: Path, label: str, n_hidden: int, unit_norm: bool = False
) -> np.ndarray | None:
    """Encoder kernels `[S, D, H]` of one arm (units past `n_hidden` dropped), if stored. A tied
    arm (`model.tied`) stores none: its kernel in use is the decoder rows in use, transposed (the
    decoder kernel's rows at unit length with `unit_norm`, `model.unit_norm_decoder`)."""
    tree = read_params(run_dir)
    try:
        layers = tree[label]["params"]
        if "kernel" in layers["encoder"]:
            kernel = np.asarray(layers["encoder"]["kernel"])
        else:
            rows = np.asarray(layers["decoder"]["kernel"])
            if unit_norm:
                norms = np.linalg.norm(rows, axis=-1, keepdims=True)
                rows = rows / np.where(norms > 0, norms, 1.0)
            kernel = np.swapaxes(rows, -1, -2)
    except (KeyError, TypeError):
        return None
    return kernel[:, :, :n_hidden]


def plot_weights(m: Metrics, run_dir: Path, path: Path, *, label: str, phrase: str) -> bool:
    """Encoder weights (features x units) of arm `label`'s first seeds side by side, titled with
    `phrase` (how the text names the arm); False if not stored."""
    # metrics.json's `config` is the first arm's: each arm plotted here is it or shares its model
    unit_norm = bool(m.config["model"].get("unit_norm_decoder", False))
    kernels = _encoder_kernels(run_dir, label, int(m.arms[label].n_hidden), unit_norm)
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
    fig.suptitle(f"encoder weights, {phrase}", fontsize="medium")
    save(fig, path)
    return True


FVU_VS_HIDDEN = Figure(
    name="fvu_vs_hidden.png",
    alt="FVU per hidden size",
    caption=(
        f"FVU per hidden size: every seed (grey dots; beyond {MAX_SEED_DOTS:,} seeds a grey "
        "histogram of them, its width the share of seeds), median (dot) with 25-75% (thick) and "
        "10-90% (thin) of seeds, the PCA floor (red) and the reconstruction tolerance "
        f"(dashed). On a log axis, FVU values below {LOG_FLOOR:g} (exact fits) are drawn "
        f"at {LOG_FLOOR:g}, and a PCA floor below the axis (e.g. 0 for rank-deficient "
        "data with enough units) is marked by a red triangle on its bottom edge."
    ),
    draw=metrics_only(plot_fvu_vs_hidden),
)

CONVERGENCE_VS_HIDDEN = Figure(
    name="convergence_vs_hidden.png",
    alt="convergence per hidden size",
    caption=(
        "Share of seeds that converged (reached the size's PCA floor + convergence "
        "tol) and that reconstruct (FVU <= reconstruction tol), with 95% Wilson intervals."
    ),
    draw=metrics_only(plot_convergence_vs_hidden),
)

CONVERGENCE_INIT = Figure(
    name="convergence.png",
    alt="convergence per init",
    caption=(
        "Left: share of seeds converged per initialiser with its 95% Wilson interval. "
        "Right: share of seeds whose hidden unit is dead (never active on any sample) "
        "after training and at initialisation, and the share of failed seeds with a dead "
        "unit."
    ),
    draw=metrics_only(plot_convergence_init),
)

SIMILARITY = Figure(
    name="similarity.png",
    alt="PW-MCC across seeds against chance",
    caption=(
        "PW-MCC (mean signed cosine of hidden units after the best one-to-one matching) of "
        f"every pair of seeds (among the first {SIMILARITY_SEEDS} when there are more; see the "
        "text), per arm, "
        "for the decoder (top) and the encoder (bottom): trained "
        "(colour, dashed line = median) against the same pairs' untrained weights (grey, the "
        "chance level); red line: the control minimum (each seed against itself trained twice)."
    ),
    draw=metrics_only(plot_similarity),
)


def _weights(m: Metrics, run_dir: Path, label: str, phrase: str) -> list[Figure]:
    """`weights.png` of arm `label` (named `phrase` in the text), if the checkpoint is there."""
    if not has_params(run_dir):
        return []
    n = min(WEIGHT_SEEDS, len(m.arms[label].fvu))
    return [
        Figure(
            name="weights.png",
            alt="encoder weights",
            caption=f"Encoder weight matrices (input features x hidden units) of seeds 0-{n - 1} "
            f"({phrase}), on one symmetric colour scale.",
            draw=functools.partial(plot_weights, label=label, phrase=phrase),
        )
    ]


def _multiples_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    """Convergence per initialiser; the weights of the tutorial's own (first) initialiser."""
    label = next(iter(m.arms))
    return [CONVERGENCE_INIT, *_weights(m, run_dir, label, f"{label} init")]


def _sweep_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    """FVU and convergence per hidden size; the weights of the largest size."""
    arms = m.arms
    label = max(arms, key=lambda label: arms[label].n_hidden)
    return [
        FVU_VS_HIDDEN,
        CONVERGENCE_VS_HIDDEN,
        *_weights(m, run_dir, label, units(arms[label].n_hidden)),
    ]


def _overcomplete_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    """Similarity across seeds; the weights of the main (first) arm, not of the control."""
    label = next(iter(m.arms))
    return [SIMILARITY, *_weights(m, run_dir, label, f"arm {label}")]


# ----------------------------------------------------------------------------------------------
# Text


def _multiples_text(m: Metrics) -> tuple[list[str], str]:
    """Failures and dead units per initialiser; verdict on the tutorial's initialiser."""
    arms, analysis = m.arms, m.analysis
    lines = ["Failures and dead units per initialiser:", ""]
    for label, a in analysis.items():
        failed, with_dead = a.failed, a.failed_with_dead_unit
        share = fmt_rate(with_dead / failed) if failed else "n/a"
        loss_q = a.final_loss_quantiles_converged
        loss = (
            f"; final loss of converged seeds: median {fmt(loss_q.q50, '.3g')} "
            f"(10-90%: {fmt(loss_q.q10, '.3g')} to {fmt(loss_q.q90, '.3g')})"
            if math.isfinite(loss_q.q50)
            else "; no seed converged, so there is no converged final loss"
        )
        lines.append(
            f"- **{label}**: {failed} of {len(arms[label].converged)} seeds failed to converge; "
            f"{with_dead} of them ({share}) ended with a dead hidden unit (never active on any "
            f"sample). Dead unit after training: {fmt_rate(a.dead_unit_fraction)} of seeds; "
            f"already dead at initialisation: {fmt_rate(a.dead_at_init_fraction)}{loss}."
        )
    first = next(iter(arms))
    rate = num(arms[first].convergence_rate)
    parts = []
    for label, a in arms.items():
        k, n = count(a.converged)
        parts.append(f"{k}/{n} seeds with {label} init ({fmt_rate(a.convergence_rate)})")
    total_failed = sum(a.failed for a in analysis.values())
    total_dead = sum(a.failed_with_dead_unit for a in analysis.values())
    dead = (
        f" Of all failed seeds, {total_dead}/{total_failed} "
        f"({fmt_rate(total_dead / total_failed)}) have a dead hidden unit."
        if total_failed
        else ""
    )
    verdict = (
        f"With {units(m.arms[first].n_hidden)} the run converged in "
        f"{'; '.join(parts)}: with the tutorial's {first} initialisation the claim "
        f"{judge(rate)}.{dead}"
    )
    return lines, verdict


def _sweep_text(m: Metrics) -> tuple[list[str], str]:
    """FVU beside the PCA floor per size; verdict: the smallest sizes that converge and
    reconstruct, and whether any size below the input width reconstructs."""
    arms, analysis = m.arms, m.analysis
    sizes = sorted(arms, key=lambda label: arms[label].n_hidden)
    lines = ["Per hidden size (FVU beside the PCA floor of that size):", ""]
    for label in sizes:
        a = arms[label]
        dead = analysis[label].dead_units_mean
        lines.append(
            f"- **{units(a.n_hidden)}**: median FVU "
            f"{fmt(a.fvu_quantiles.q50, '.3g')} vs "
            f"PCA floor {fmt(a.pca_floor_fvu, '.3g')}; converged "
            f"{fmt_rate(a.convergence_rate)}, reconstructs {fmt_rate(a.reconstruction_rate)}"
            + f"; {fmt(dead, '.2f')} dead units per seed on average"
            + "."
        )

    def smallest(rate: Callable[[Any], float]) -> str | None:
        return next((label for label in sizes if rate(arms[label]) >= 0.5), None)

    conv = smallest(lambda a: a.convergence_rate)
    recon = smallest(lambda a: a.reconstruction_rate)
    sentences = []
    if conv is None:
        sentences.append("No hidden size converges in at least half of the seeds.")
    else:
        sentences.append(
            f"The smallest hidden size that converges in at least half of the seeds is "
            f"{arms[conv].n_hidden} ({fmt_rate(arms[conv].convergence_rate)})."
        )
    if recon is None:
        sentences.append(
            "No hidden size reconstructs the data (FVU <= reconstruction tol) in half of the seeds."
        )
    else:
        sentences.append(
            f"The smallest that reconstructs the data in at least half of the seeds is "
            f"{arms[recon].n_hidden} ({fmt_rate(arms[recon].reconstruction_rate)})."
        )
    n_features = m.config["data"]["n_features"]
    if n_features is not None:
        below = [label for label in sizes if arms[label].n_hidden < n_features]
        any_recon = [label for label in below if count(arms[label].reconstructs)[0] > 0]
        if below and not any_recon:
            sentences.append(
                f"No hidden size below the {n_features} input features reconstructs any seed."
            )
        elif any_recon:
            listed = ", ".join(
                f"{arms[label].n_hidden} ({count(arms[label].reconstructs)[0]}/"
                f"{len(arms[label].reconstructs)})"
                for label in any_recon
            )
            sentences.append(
                f"Hidden sizes below the {n_features} input features that reconstruct at least "
                f"one seed: {listed}."
            )
    return lines, " ".join(sentences)


def _pair_sample(m: Metrics) -> str:
    """Which seeds the pairs come from, when not every seed (`experiments.agreement` compares all
    pairs among the first `SIMILARITY_SEEDS`)."""
    k, n = next(iter(m.arms.values())).pw_seeds, m.n_seeds
    if k >= n:
        return ""
    return (
        f" (every pair among seeds 0-{k - 1} of the {n:,}: the seeds are independent draws, so "
        "the first are as fair a sample as any, and the matching, quadratic in seeds, stays "
        "affordable)"
    )


def _overcomplete_text(m: Metrics) -> tuple[list[str], str]:
    """PW-MCC per arm against its chance level; verdict: convergence, and whether any arm's seeds
    agree beyond chance."""
    analysis = m.analysis
    agreement, control_min, agree_at = analysis.agreement, analysis.control_min, analysis.agree_at
    lines = [
        f"Agreement across {analysis.pairs} pairs of seeds{_pair_sample(m)}: PW-MCC, "
        "the mean cosine "
        "of hidden units after the best one-to-one matching (signed), beside its chance level, "
        "the same figure for the same pairs' untrained weights; 'above chance' is the share of "
        "pairs beyond the 95th percentile of chance.",
        "",
        "| arm | converged | median L0 | decoder PW-MCC (chance) | above chance | "
        "encoder PW-MCC (chance) | above chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, a in agreement.items():
        lines.append(
            f"| {label} | {fmt_rate(a.convergence_rate)} | {fmt(a.l0_median, '.2f')} | "
            f"{fmt(a.pw_mcc_median, '.3f')} ({fmt(a.pw_mcc_null_median, '.3f')}) | "
            f"{fmt(a.above_chance, '.2f')} | {fmt(a.pw_mcc_encoder_median, '.3f')} "
            f"({fmt(a.pw_mcc_encoder_null_median, '.3f')}) | "
            f"{fmt(a.above_chance_encoder, '.2f')} |"
        )
    lines += [
        "",
        "Determinism check: every seed trained a second time with the same key matches itself "
        f"at a minimum of {fmt(control_min['decoder'], '.3f')} (decoder) and "
        f"{fmt(control_min['encoder'], '.3f')} (encoder).",
    ]
    first = next(iter(m.arms))
    a = m.arms[first]
    k, n = count(a.converged)
    parts = []
    for label, g in agreement.items():
        gap = g.pw_mcc_median - g.pw_mcc_null_median
        agree = g.pw_mcc_median >= agree_at
        parts.append(
            f"{label}: median PW-MCC {fmt(g.pw_mcc_median, '.3f')} against chance "
            f"{fmt(g.pw_mcc_null_median, '.3f')} ("
            + (
                f"the seeds find the same units (>= {agree_at:g})"
                if agree
                else f"{gap:+.3f} over chance"
            )
            + ")"
        )
    any_agree = any(g.pw_mcc_median >= agree_at for g in agreement.values())
    above = all(g.pw_mcc_median > g.pw_mcc_null_median for g in agreement.values())
    verdict = (
        f"{k}/{n} seeds of the {first} arm converged ({fmt_rate(a.convergence_rate)}; the "
        f"claim of always converging {judge(a.convergence_rate)}). "
        + "; ".join(parts)
        + ". "
        + (
            "Sparsity makes the seeds agree on these data."
            if any_agree
            else "On isotropic Gaussian data there are no features to find: neither the plain "
            "model nor its sparse versions make different seeds learn the same units"
            + (
                ", though their decoder directions agree a little more than chance."
                if above
                else "."
            )
        )
    )
    return lines, verdict


# ----------------------------------------------------------------------------------------------
# Pages


def reconstruction_headline(m: Metrics) -> str:
    """The share of seeds that reconstruct the data, per hidden size (§1.3 and §1.4 claim which
    sizes reconstruct, not which reach their own PCA floor)."""
    return "seeds that reconstruct: " + ", ".join(
        f"{label}: {sum(a.reconstructs)}/{len(a.reconstructs)}" for label, a in m.arms.items()
    )


def agreement_headline(m: Metrics) -> str:
    """The plain model's convergence rate, then median decoder PW-MCC against its chance level per
    arm: §1.5 claims that the seeds converge and yet agree on nothing."""
    agreement = m.analysis.agreement
    first = next(iter(m.arms))
    parts = [
        f"{label}: {fmt(a.pw_mcc_median, '.3f')} ({fmt(a.pw_mcc_null_median, '.3f')})"
        for label, a in agreement.items()
    ]
    return (
        f"{first}: converged {fmt(m.arms[first].convergence_rate, '.2f')}; median PW-MCC "
        "(chance): " + ", ".join(parts)
    )


MULTIPLES_PAGE = Page(figures=_multiples_figures, text=_multiples_text, arms_by="init")
# offset and noise: one arm per hidden size
SWEEP_PAGE = Page(
    figures=_sweep_figures,
    text=_sweep_text,
    arms_by="hidden units",
    ordered_arms=True,
    headline=reconstruction_headline,
)
OVERCOMPLETE_PAGE = Page(
    figures=_overcomplete_figures, text=_overcomplete_text, headline=agreement_headline
)

# What a sweep of a tutorial claim is judged by: how often it holds.
MAIN_METRIC = MainMetric(
    "convergence_rate",
    "share of seeds that converge",
    lambda m, label: m.arms[label].convergence_rate,
    higher_is_better=True,
    limits=(0.0, 1.0),
)

PAGES: dict[str, Page] = {
    "multiples": MULTIPLES_PAGE,
    "offset": SWEEP_PAGE,
    "noise": SWEEP_PAGE,
    "overcomplete": OVERCOMPLETE_PAGE,
}
