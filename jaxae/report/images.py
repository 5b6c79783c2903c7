"""The images family's pages: `digits` and `patches`.

Besides the loss curves every report gets, the pages draw from metrics.json and arrays.npz:

- `filters_<arm>.png` (both): the filters of seeds 0 and 1 side by side as image grids, each filter
  scaled on its own, ordered by how often seed 0's unit fires on held-out data, seed 1's matched
  unit in the same place, a frame around pairs that match closely;
- `digits`: `fvu_l0.png`, held-out FVU against L0 for every seed, with PCA's curve and dictionary
  learning; `reconstructions.png`, held-out digits beside their reconstructions;
  `filters_dictionary_learning.png`, the atoms of two random states, matched the same way;
- `patches`: `filters_baselines.png` (PCA components and random filters) and
  `orientation_locality.png`, the two numbers per arm beside the baselines.

Grids and reconstructions need square inputs (a `data.kind=array` run of another width gets the
tables and `fvu_l0.png` only).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np

from jaxae.config import Config
from jaxae.experiments.images import DictionaryLearning, Digits, FilterMeans, ImageArm, Patches
from jaxae.report.base import (
    Figure,
    Metrics,
    Page,
    arm_colors,
    fmt,
    has_arrays,
    nums,
    read_arrays,
    save,
)
from jaxae.report.grid import MainMetric

# Pairs of units whose matched cosine exceeds this get a frame in the filter grids.
FRAME_COSINE = 0.7
GAP = 1  # pixels between tiles


# ----------------------------------------------------------------------------------------------
# Drawing filters


def mosaic(rows_HxD: np.ndarray, side: int, cols: int) -> np.ndarray:
    """Rows as `side x side` tiles on a grid of `cols` columns, each scaled on its own to [-1, 1]
    (by its largest absolute value), with NaN gaps between tiles (drawn as the border colour)."""
    n = len(rows_HxD)
    grid_rows = math.ceil(n / cols)
    cell = side + GAP
    out = np.full((grid_rows * cell + GAP, cols * cell + GAP), np.nan)
    for i, row in enumerate(np.asarray(rows_HxD, np.float64)):
        scale = np.max(np.abs(row))
        tile = row.reshape(side, side) / (scale if scale > 0 else 1.0)
        r, c = divmod(i, cols)
        out[GAP + r * cell : GAP + r * cell + side, GAP + c * cell : GAP + c * cell + side] = tile
    return out


def _grid_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n * 1.6)))


# Inches per tile of a filter grid, and the narrowest figure (so titles fit).
TILE_IN = 0.3
MIN_WIDTH_IN = 7.0


def _grid_size(n: int, cols: int, panels: int) -> tuple[float, float]:
    """Figure size of `panels` grids of `n` tiles in `cols` columns, side by side."""
    width = max(MIN_WIDTH_IN, panels * (cols * TILE_IN + 0.3))
    return width, math.ceil(n / cols) * TILE_IN + 1.2


def _show_mosaic(ax: Any, rows_HxD: np.ndarray, side: int, cols: int, cmap: str = "gray") -> None:
    colormap = plt.get_cmap(cmap).with_extremes(bad="white")
    ax.imshow(mosaic(rows_HxD, side, cols), cmap=colormap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax: Any, index: int, side: int, cols: int, color: str) -> None:
    r, c = divmod(index, cols)
    cell = side + GAP
    ax.add_patch(
        matplotlib.patches.Rectangle(
            (c * cell + GAP - 1.0, r * cell + GAP - 1.0),
            side + 1.0,
            side + 1.0,
            fill=False,
            edgecolor=color,
            linewidth=1.2,
        )
    )


def plot_filter_pair(
    m: Metrics, run_dir: Path, path: Path, *, name: str, what: str, title: str
) -> bool:
    """The grid of seed 0 (ordered by firing) beside seed 1's matched units; False without them."""
    arrays = read_arrays(run_dir)
    side = m.analysis.image_side
    rows = arrays.get(f"grid_rows_{name}")
    if rows is None or side is None:
        return False
    cos = arrays[f"grid_cos_{name}"]
    n = rows.shape[1]
    cols = _grid_columns(n)
    panels = len(rows)
    fig, axes = plt.subplots(
        1, panels, figsize=_grid_size(n, cols, panels), layout="constrained", squeeze=False
    )
    labels = (
        ("random state 0, by how often atoms are used", "random state 1, the atom matched to each")
        if name == "dictionary_learning"
        else ("seed 0, by how often units fire", "seed 1, the unit matched to each")
    )
    close = np.flatnonzero(cos > FRAME_COSINE)
    for p, ax in enumerate(axes[0]):
        _show_mosaic(ax, rows[p], side, cols)
        for i in close:
            _frame(ax, int(i), side, cols, "C2")
        ax.set_title(labels[p] if panels > 1 else labels[0], fontsize="small")
    matched = (
        f"\nmatched cosine: median {np.median(cos):.2f}; {len(close)}/{n} pairs above "
        f"{FRAME_COSINE} (green frames)"
        if panels > 1
        else ""
    )
    fig.suptitle(f"{title}: {what}{matched}", fontsize="medium")
    save(fig, path)
    return True


def plot_baseline_filters(m: Metrics, run_dir: Path, path: Path) -> bool:
    """PCA components (largest variance first) beside random filters; False without them."""
    arrays = read_arrays(run_dir)
    side = m.analysis.image_side
    if side is None or "pca_components" not in arrays:
        return False
    panels = [
        ("PCA components of the training patches, by variance", arrays["pca_components"]),
        ("random filters (i.i.d. Gaussian pixels)", arrays["random_filters"]),
    ]
    n = max(len(rows) for _, rows in panels)
    cols = _grid_columns(n)
    fig, axes = plt.subplots(
        1, 2, figsize=_grid_size(n, cols, 2), layout="constrained", squeeze=False
    )
    for ax, (label, rows) in zip(axes[0], panels, strict=True):
        _show_mosaic(ax, rows, side, cols)
        ax.set_title(label, fontsize="small")
    fig.suptitle("baselines for orientation and locality", fontsize="medium")
    save(fig, path)
    return True


# The arms `plot_recipe_filters` shows side by side: Ng's recipe and its one-change variants.
RECIPE_ARMS = ("ng", "ng_adam", "ng_zca")


def plot_recipe_filters(m: Metrics, run_dir: Path, path: Path) -> bool:
    """Seed 0's encoder filters of Ng's arm beside the same model under Adam and on patch-ZCA data,
    each grid titled with its orientation figures; False without them."""
    arrays = read_arrays(run_dir)
    side = m.analysis.image_side
    shown = [name for name in RECIPE_ARMS if f"grid_rows_{name}" in arrays and name in m.arms]
    if side is None or not shown:
        return False
    n = max(arrays[f"grid_rows_{name}"].shape[1] for name in shown)
    cols = math.ceil(math.sqrt(n))
    fig, axes = plt.subplots(
        1,
        len(shown),
        figsize=(max(MIN_WIDTH_IN, len(shown) * (cols * 0.45 + 0.6)), cols * 0.45 + 1.4),
        layout="constrained",
        squeeze=False,
    )
    for ax, name in zip(axes[0], shown, strict=True):
        a: ImageArm = m.arms[name]
        encoder = _filter_means(a, "encoder")
        _show_mosaic(ax, arrays[f"grid_rows_{name}"][0], side, cols)
        ax.set_title(
            f"{name}\norientation {fmt(encoder.orientation, '.2f')}, "
            f"{fmt(encoder.oriented_share, '.0%')} oriented, "
            f"FVU {fmt(a.heldout_fvu_quantiles.q50, '.2f')}",
            fontsize="small",
        )
    fig.suptitle(f"{m.experiment}: Ng's filters and what each change does (seed 0)")
    save(fig, path)
    return True


def plot_reconstructions(m: Metrics, run_dir: Path, path: Path) -> bool:
    """Held-out samples (top row) and their reconstructions by seed 0 of every arm and by the
    baselines; False without them."""
    arrays = read_arrays(run_dir)
    side = m.analysis.image_side
    if side is None or "examples_x" not in arrays:
        return False
    analysis: Digits = m.analysis
    k = analysis.code_size
    rows = [("held-out", arrays["examples_x"])]
    rows += [(f"{label} (seed 0)", arrays[f"examples_{label}"]) for label in m.arms]
    rows += [
        (f"PCA, {analysis.pca.components} comp.", arrays["examples_pca"]),
        (f"dict. learning, OMP {k}", arrays["examples_dictionary_learning"]),
    ]
    n = len(rows[0][1])
    fig, axes = plt.subplots(
        len(rows), n, figsize=(0.75 * n + 1.6, 0.75 * len(rows) + 0.5), squeeze=False
    )
    lo = float(np.min(arrays["examples_x"]))
    hi = float(np.max(arrays["examples_x"]))
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(side, side), cmap="gray_r", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    fig.suptitle("held-out samples and their reconstructions (one grey scale)", fontsize="medium")
    fig.tight_layout()
    save(fig, path)
    return True


def plot_fvu_l0(m: Metrics, path: Path) -> None:
    """Held-out FVU against L0 per seed and arm, PCA's FVU per number of components (a linear
    code of that many numbers) and dictionary learning's fits."""
    analysis: Digits | Patches = m.analysis
    colors = arm_colors(list(m.arms), ordered=False)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    curve = nums(analysis.pca.heldout_fvu_by_components)
    if curve.size:
        ax.plot(
            np.arange(1, curve.size + 1), curve, color="0.4", label="PCA, m components (L0 = m)"
        )
    for label, a in m.arms.items():
        ax.scatter(
            nums(a.heldout_l0),
            nums(a.heldout_fvu),
            s=18,
            color=colors[label],
            alpha=0.8,
            label=f"{label} ({len(a.heldout_fvu)} seeds)",
        )
    fits = _dictionary_learning(m)
    for (start, dl), marker in zip(fits, ("x", "+", "1"), strict=False):
        ax.scatter(
            nums(dl.heldout_l0),
            nums(dl.heldout_fvu),
            marker=marker,
            s=40,
            color="black",
            label=f"dictionary learning, {start} ({dl.fits} random states)",
        )
    ax.set_yscale("log")
    # PCA's curve falls to rounding error once the components cover every pixel that varies: show
    # the figures of the fitted models, not that
    points = np.concatenate(
        [nums(a.heldout_fvu) for a in m.arms.values()]
        + [nums(dl.heldout_fvu) for _, dl in fits[:1]]
    )
    points = points[np.isfinite(points) & (points > 0)]
    if points.size:
        ax.set_ylim(max(points.min() / 10, 1e-8), 2.0)
    ax.set_xlabel("L0: active units per held-out sample (sigmoid: h > 0.5)")
    ax.set_ylabel("held-out FVU (log)")
    ax.set_title(f"{m.experiment}: reconstruction cost against code size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    save(fig, path)


def plot_orientation_locality(m: Metrics, path: Path) -> None:
    """Orientation and locality (mean over units, per seed) of every arm's encoder filters,
    beside the same seeds at initialisation, random filters and PCA components."""
    analysis: Patches = m.analysis
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), layout="constrained")
    for ax, key, label in (
        (axes[0], "orientation", "orientation concentration of the power spectrum"),
        (axes[1], "locality", "spatial concentration of the energy"),
    ):
        names, values, colors = [], [], []
        for arm, a in m.arms.items():
            for part, color in (("encoder", "C0"), ("init", "0.6")):
                if a.filters is None:
                    continue
                names.append(f"{arm}\n{'trained' if part == 'encoder' else 'init'}")
                values.append(nums(getattr(a.filters[part], key)))
                colors.append(color)
        for name, b, color in (
            ("random", analysis.random_filters, "0.3"),
            ("PCA", analysis.pca_filters, "C3"),
        ):
            if b is not None:
                names.append(name)
                values.append(np.asarray([getattr(b, key)]))
                colors.append(color)
        xs = np.arange(len(names))
        ax.bar(xs, [float(np.mean(v)) for v in values], color=colors, alpha=0.8)
        for x, v in zip(xs, values, strict=True):
            if v.size > 1:
                ax.scatter(np.full(v.size, x), v, s=8, color="black", zorder=3)
        ax.set_xticks(xs, names, fontsize="small")
        ax.set_title(label, fontsize="medium")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"{m.experiment}: are the filters oriented, are they local? (dots: seeds)",
        fontsize="medium",
    )
    save(fig, path)


# ----------------------------------------------------------------------------------------------
# Figures of a run


def _slug(label: str) -> str:
    """An arm label as a file name: `topk_revived k=2` -> `topk_revived_k2`."""
    return label.replace(" ", "_").replace("=", "")


def _filter_figures(m: Metrics, run_dir: Path, what: str) -> list[Figure]:
    if not has_arrays(run_dir) or m.analysis.image_side is None:
        return []
    figures = []
    names = [*m.arms, "dictionary_learning"] if isinstance(m.analysis, Digits) else list(m.arms)
    for name in names:
        title = "dictionary learning" if name == "dictionary_learning" else f"arm {name}"
        shown = "atoms of random states 0 and 1" if name == "dictionary_learning" else what
        figures.append(
            Figure(
                name=f"filters_{_slug(name)}.png",
                alt=f"filters of {title}",
                caption=(
                    f"{title}: {shown}. Left: seed 0's units, ordered by how often they fire on "
                    "held-out data; right: the unit of seed 1 matched to each (Hungarian matching "
                    "on signed cosine, as pw_mcc), in the same place. Each filter is scaled on its "
                    f"own (black negative, white positive); green frames: matched cosine > "
                    f"{FRAME_COSINE}."
                ),
                draw=functools.partial(plot_filter_pair, name=name, what=shown, title=title),
            )
        )
    return figures


FVU_L0 = Figure(
    name="fvu_l0.png",
    alt="held-out FVU against L0",
    caption=(
        "Held-out FVU against the number of active units per sample, every seed of every arm, "
        "with scikit-learn's PCA (a linear code of m numbers: the floor for any linear decoder "
        "with m-dimensional code) and MiniBatchDictionaryLearning (OMP codes). Sigmoid units count "
        "as active at h > 0.5."
    ),
    draw=lambda m, run_dir, path: plot_fvu_l0(m, path) or True,
)

RECONSTRUCTIONS = Figure(
    name="reconstructions.png",
    alt="held-out reconstructions",
    caption=(
        "Held-out samples (top) and their reconstructions by seed 0 of every arm, by PCA with k "
        "components and by dictionary learning (random state 0) with k non-zeros."
    ),
    draw=plot_reconstructions,
)

BASELINE_FILTERS = Figure(
    name="filters_baselines.png",
    alt="PCA components and random filters",
    caption=(
        "The baselines of the orientation/locality table: PCA components of the training patches "
        "(largest variance first) and random filters, each scaled on its own."
    ),
    draw=plot_baseline_filters,
)

ORIENTATION_LOCALITY = Figure(
    name="orientation_locality.png",
    alt="orientation and locality",
    caption=(
        "Mean over units of each seed's orientation concentration (power spectrum) and spatial "
        "concentration (energy) of the encoder filters, trained and at initialisation, beside "
        "random filters and PCA components."
    ),
    draw=lambda m, run_dir, path: plot_orientation_locality(m, path) or True,
)


def _digits_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    plan = [FVU_L0]
    if has_arrays(run_dir) and m.analysis.image_side:
        plan.append(RECONSTRUCTIONS)
    return plan + _filter_figures(m, run_dir, "decoder rows (the features a unit writes)")


RECIPE_FILTERS = Figure(
    name="filters_recipes.png",
    alt="Ng's filters under L-BFGS, Adam and patch ZCA",
    caption=(
        "Seed 0's encoder filters (what each hidden unit responds to) of Ng's exercise as he set "
        "it (`ng`: L-BFGS, photographs whitened whole), the same under Adam on minibatches "
        "(`ng_adam`) and on patch-ZCA data (`ng_zca`); each filter scaled on its own, ordered by "
        "how often the unit fires (then by mean activation)."
    ),
    draw=plot_recipe_filters,
)


def _patches_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    plan = []
    if m.analysis.image_side:
        if has_arrays(run_dir) and any(name in m.arms for name in RECIPE_ARMS):
            plan.append(RECIPE_FILTERS)
        plan.append(ORIENTATION_LOCALITY)
        if has_arrays(run_dir):
            plan.append(BASELINE_FILTERS)
    return plan + _filter_figures(m, run_dir, "encoder filters (what a unit responds to)")


# ----------------------------------------------------------------------------------------------
# Tables and text


def _fvu_cell(a: ImageArm) -> str:
    q = a.heldout_fvu_quantiles
    return f"{fmt(q.q50, '.3f')} [{fmt(q.q10, '.3f')}, {fmt(q.q90, '.3f')}]"


def _agreement_cell(a: ImageArm) -> str:
    return f"{fmt(a.pw_mcc_mean, '.3f')} ({fmt(a.pw_mcc_null_mean, '.3f')})"


def _filter_means(a: ImageArm, part: str) -> FilterMeans:
    """The means of an arm's filter figures (NaN where its inputs are not square images)."""
    if a.filters is None:
        return FilterMeans(
            orientation=math.nan, locality=math.nan, oriented_share=math.nan, noise_share=math.nan
        )
    return a.filters[part].mean


def _arm_rows(m: Metrics) -> list[str]:
    lines = []
    for label, a in m.arms.items():
        lines.append(
            f"| {label} | {a.n_seeds} | {_fvu_cell(a)} | {fmt(a.heldout_l0_mean, '.1f')}"
            f" | {fmt(a.heldout_code_l1_mean, '.2f')} | "
            f"{fmt(a.dead_units_mean, '.1f')} / {a.n_hidden} | {_agreement_cell(a)} | "
            f"{fmt(a.pw_mcc_encoder_mean, '.3f')} "
            f"({fmt(a.pw_mcc_encoder_null_mean, '.3f')}) | "
            f"{fmt(a.shared_mean, '.3f')} |"
        )
    return lines


_HEADER = [
    "| arm | seeds | held-out FVU, median [10%, 90%] | L0 | code L1 | dead units | pw_mcc "
    "(chance) | pw_mcc encoder (chance) | shared |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _dictionary_learning(m: Metrics) -> list[tuple[str, DictionaryLearning]]:
    """`digits`' dictionary-learning fits by their start (none for `patches`)."""
    a = m.analysis
    if not isinstance(a, Digits):
        return []
    starts = [("SVD start", a.dictionary_learning), ("random start", a.dictionary_learning_random)]
    if a.dictionary_learning_data is not None:
        starts.append(("data start", a.dictionary_learning_data))
    return starts


_IN_WORDS = {2: "two", 3: "three"}


def _dl_row(dl: DictionaryLearning, start: str) -> str:
    fvus = nums(dl.heldout_fvu)
    return (
        f"| dictionary learning, OMP {dl.k}, {start} | {dl.fits} random states | "
        f"{fmt(np.median(fvus) if fvus.size else None, '.3f')} "
        f"[{fmt(np.min(fvus) if fvus.size else None, '.3f')}, "
        f"{fmt(np.max(fvus) if fvus.size else None, '.3f')}] | "
        f"{fmt(np.mean(nums(dl.heldout_l0)), '.1f')} | | "
        f"{fmt(np.mean(nums(dl.dead_atoms)), '.1f')} / {dl.width} | "
        f"{fmt(dl.pw_mcc_mean, '.3f')} ({fmt(dl.pw_mcc_start_mean, '.3f')}) | "
        "| |"
    )


def digits_table(m: Metrics, arm_name: str) -> list[str]:
    """Every arm, then PCA and dictionary learning from both starts, on held-out data."""
    pca = m.analysis.pca
    lines = [*_HEADER, *_arm_rows(m)]
    lines.append(
        f"| PCA, {pca.components} components | 1 fit | {fmt(pca.heldout_fvu, '.3f')} | "
        f"{pca.components} | | | | | |"
    )
    lines += [_dl_row(dl, start) for start, dl in _dictionary_learning(m)]
    return lines


def patches_table(m: Metrics, arm_name: str) -> list[str]:
    """Every arm on held-out patches."""
    return [*_HEADER, *_arm_rows(m)]


def _definitions(m: Metrics) -> list[str]:
    a = next(iter(m.arms.values()))
    return [
        f"All reconstruction figures are on the {a.heldout_samples} held-out samples "
        "(`data.heldout`); dead units never fire on any training sample (sigmoid units fire at "
        "h > 0.5, which under a KL target far below 0.5 they may never do: read their mean code "
        "L1, the sum of activations, instead). pw_mcc: mean signed cosine of decoder rows after "
        "the best one-to-one matching of units between two seeds, over "
        f"{a.pairs} pairs; chance: the same between the same seeds' untrained weights "
        "(for dictionary learning: between its starting dictionaries); shared: units matched "
        "above 0.7 "
        "by both encoder and decoder.",
    ]


def _best(m: Metrics, key: str) -> tuple[str, float]:
    values = {label: getattr(a, key) for label, a in m.arms.items()}
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        return next(iter(m.arms)), float("nan")
    label = max(finite, key=finite.get)
    return label, finite[label]


def digits_text(m: Metrics) -> tuple[list[str], str]:
    """Notes under the table; the verdict answers the page's question with its numbers."""
    analysis: Digits = m.analysis
    dl, dl_random = analysis.dictionary_learning, analysis.dictionary_learning_random
    lines = [
        *_definitions(m),
        "",
        "Baselines are fitted on the same training split: scikit-learn's `PCA` with as many "
        "components as top-k's k (the best linear code of that size), and "
        f"`MiniBatchDictionaryLearning` ({dl.width} atoms, its defaults, on the "
        f"mean-removed digits) with OMP codes of {dl.k} non-zeros, random_state "
        f"0..{dl.fits - 1}, from {_IN_WORDS[len(_dictionary_learning(m))]} starts. Its own "
        "start is a randomized "
        "SVD of the data (at most as many atoms as pixels; the rest are zero until refilled from "
        "samples), which hardly depends on the random state: those starting dictionaries already "
        f"agree at pw_mcc {fmt(dl.pw_mcc_start_mean, '.3f')}. The random start "
        "(`dict_init`: random unit directions per random state) starts as independently as an "
        f"autoencoder's seeds do (pw_mcc {fmt(dl_random.pw_mcc_start_mean, '.3f')} at the "
        "start). The last column's chance level is, for dictionary learning, its start's.",
    ]
    dl_data = analysis.dictionary_learning_data
    if dl_data is not None:
        lines[-1] += (
            " The data start (distinct random training digits minus their mean, as unit "
            "vectors: k-means' random start, and the pursuit arm's `model.init=\"data\"`) "
            "already agrees at pw_mcc "
            f"{fmt(dl_data.pw_mcc_start_mean, '.3f')}, since any two sets of digits look alike; "
            "it is the fair reference for an arm started that way."
        )
    lines += ["", "\n".join(_recipes(m))]
    return lines, _digits_verdict(m)


def _digits_verdict(m: Metrics) -> str:
    analysis: Digits = m.analysis
    judged = analysis.against_dictionary_learning
    best, best_pw = _best(m, "pw_mcc_mean")
    if not math.isfinite(best_pw):
        return "Agreement across seeds cannot be judged with fewer than two seeds."
    arm = m.arms[best]
    agreement = (
        f"The arm whose seeds agree most is `{best}` (pw_mcc {fmt(best_pw, '.3f')}, chance "
        f"{fmt(arm.pw_mcc_null_mean, '.3f')}; held-out FVU "
        f"{fmt(arm.heldout_fvu_quantiles.q50, '.3f')} at L0 "
        f"{fmt(arm.heldout_l0_mean, '.1f')})."
    )
    if judged.best is None:
        return agreement + " No arm's codes are as sparse as dictionary learning's."
    as_well = "at least as well as" if judged.agrees_as_well else "less well than"
    within = "within" if judged.fvu_within_margin else "not within"
    return (
        f"{agreement} At dictionary learning's sparsity (L0 <= {judged.code_size}) the best is "
        f"`{judged.best}`: its seeds agree at a median pw_mcc of "
        f"{fmt(judged.pw_mcc_median, '.3f')}, {as_well} dictionary learning from random "
        f"starts ({fmt(judged.dl_pw_mcc_median, '.3f')}; from its SVD start "
        f"{fmt(analysis.dictionary_learning.pw_mcc_median, '.3f')}), at a "
        f"held-out FVU of {fmt(judged.heldout_fvu_median, '.3f')}, {within} "
        f"{fmt(judged.fvu_margin, '.2f')} of dictionary learning's "
        f"{fmt(judged.dl_heldout_fvu_median, '.3f')}.{_data_start_note(m, judged.best)}"
    )


def _data_start_note(m: Metrics, best: str) -> str:
    """The best arm beside dictionary learning from its own start, if it starts at the data."""
    dl_data = m.analysis.dictionary_learning_data
    if dl_data is None or Config.from_dict(m.arms[best].config).model.init != "data":
        return ""
    return (
        f" `{best}` starts at training digits (chance {fmt(m.arms[best].pw_mcc_null_mean, '.3f')}"
        "); dictionary learning from such a start agrees at a median pw_mcc of "
        f"{fmt(dl_data.pw_mcc_median, '.3f')} (held-out FVU "
        f"{fmt(dl_data.heldout_fvu_median, '.3f')})."
    )


def _share(value: Any) -> str:
    return fmt(value, ".2f")


def _orientation_rows(m: Metrics) -> list[str]:
    analysis: Patches = m.analysis
    lines = [
        f"| filters | orientation | locality | oriented (>= {analysis.oriented_at:g}) "
        "| noise-like |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, f: FilterMeans) -> str:
        return (
            f"| {name} | {fmt(f.orientation, '.3f')} | {fmt(f.locality, '.3f')} | "
            f"{_share(f.oriented_share)} | {_share(f.noise_share)} |"
        )

    for label, a in m.arms.items():
        lines.append(row(f"{label}, encoder, trained", _filter_means(a, "encoder")))
        lines.append(row(f"{label}, decoder, trained", _filter_means(a, "decoder")))
        lines.append(row(f"{label}, encoder at init", _filter_means(a, "init")))
    for b, name in (
        (analysis.random_filters, "random (i.i.d. Gaussian pixels)"),
        (analysis.pca_filters, "PCA components"),
    ):
        lines.append(row(f"{name}, {b.filters} filters", b))
    return lines


def _recipes(m: Metrics) -> list[str]:
    """`- label: recipe` for every arm, each top-k arm with its own k (`hyper.k`), which may be
    below its program's largest (`model.k`)."""
    return [
        f"- `{label}`: {_recipe(cfg, m.arms[label].hyper.get('k'))}"
        for label, cfg in _arm_configs(m).items()
    ]


def _recipe(cfg: Config, k: float | None = None) -> str:
    """One arm's setting in words: width, units (top-k's own `k` if given), optimiser, data
    whitening."""
    model, loss, optim, train_cfg, data_cfg = cfg.model, cfg.loss, cfg.optim, cfg.train, cfg.data
    top = model.k if k is None else int(k)
    units = f"top-{top}" if model.activation == "topk" else model.activation
    parts = [f"{model.n_hidden} {units} units, {model.output} output"]
    if model.activation == "omp":
        parts[0] = (
            f"{model.n_hidden} units coded by orthogonal matching pursuit over the tied "
            f"unit-norm decoder, {model.k} step(s) per sample in training and {model.code_k()} "
            "in coding"
        )
    if model.init == "data":
        parts.append("decoder started at random training samples minus their mean")
    if loss.sparsity == "kl":
        parts.append(f"KL to rho {loss.rho} (weight {fmt(loss.weight, '.4g')})")
    if loss.resample_dead:
        parts.append("dead and rare units resampled")
    if model.tied:
        parts.append("tied weights")
    if optim.name == "lbfgs":
        parts.append(f"full-batch L-BFGS, {train_cfg.epochs} iterations")
    else:
        parts.append(
            f"Adam {optim.learning_rate}, batch {train_cfg.batch_size}, {train_cfg.epochs} epochs"
        )
    parts.append(
        {
            "olshausen": "photographs whitened whole (Olshausen & Field, f0 "
            f"{data_cfg.whiten_f0} of Nyquist)",
            "zca": f"patches ZCA-whitened (regulariser {data_cfg.whiten_eps})",
        }.get(data_cfg.whiten, "no whitening")
    )
    return ", ".join(parts)


def _arm_configs(m: Metrics) -> dict[str, Config]:
    """Each arm's own config (metrics.json keeps every arm's)."""
    return {label: Config.from_dict(a.config) for label, a in m.arms.items()}


def _edge_verdict(label: str, a: ImageArm, analysis: Patches) -> str:
    encoder = _filter_means(a, "encoder")
    o, loc = encoder.orientation, encoder.locality
    oriented, noise = encoder.oriented_share, encoder.noise_share
    random_b, pca_b = analysis.random_filters, analysis.pca_filters
    above = o > max(random_b.orientation, pca_b.orientation)
    local = loc > max(random_b.locality, pca_b.locality)
    if above and local and oriented >= 0.5:  # at least half its units
        kind = "edge detectors, more oriented and more local than random filters and PCA"
    elif above and local:
        kind = (
            "filters more oriented and more local than both baselines, but fewer than half oriented"
        )
    elif above:
        kind = "filters more oriented than both baselines but not more local"
    elif local:
        kind = "filters more local than both baselines but not more oriented than PCA"
    else:
        kind = "not edge detectors: neither more oriented nor more local than the baselines"
    return (
        f"`{label}`: {kind} (orientation {fmt(o, '.3f')}, {fmt(oriented, '.0%')} of units "
        f"oriented, {fmt(noise, '.0%')} noise-like, locality {fmt(loc, '.3f')}); its seeds agree "
        f"at pw_mcc {fmt(a.pw_mcc_mean, '.3f')} (chance "
        f"{fmt(a.pw_mcc_null_mean, '.3f')}), held-out FVU "
        f"{fmt(a.heldout_fvu_quantiles.q50, '.3f')}."
    )


def patches_text(m: Metrics) -> tuple[list[str], str]:
    """The setting of every arm and the orientation/locality table; the verdict says which
    recipe gives edges and whether seeds agree."""
    analysis: Patches = m.analysis
    data_cfg = Config.from_dict(m.config).data
    side = analysis.image_side
    lines = [
        *_definitions(m),
        "",
        f"Patches: {data_cfg.n_samples} of {side}x{side} pixels from scikit-image's "
        f"photographs `{data_cfg.image}`, then Ng's normalisation: each patch's mean "
        "removed, clipped at +-3 standard deviations, rescaled to [0.1, 0.9]. Arm `ng` is Ng's "
        "exercise as he set it: 64-25-64 with sigmoid hidden and output layers, his "
        "initialisation (uniform on +-sqrt(6 / (H + D + 1)), zero biases), rho 0.01, beta 3, "
        "weight decay 1e-4 on the kernels (in jaxae's units: `loss.weight` = 2 beta / D, "
        "`optim.weight_decay` = 2 lambda / D), full-batch L-BFGS, on photographs whitened whole. "
        "`ng_adam` and `ng_zca` each change one thing: the optimiser, or the whitening.",
        "",
        *_recipes(m),
        "",
        *(_filter_text(m) if side else ["(The inputs are not square images.)"]),
    ]
    if not side:
        return lines, "The inputs are not square images, so their filters cannot be judged."
    sentences = [_edge_verdict(label, a, analysis) for label, a in m.arms.items()]
    chosen = analysis.revived_choice
    if chosen in m.arms:
        sentences.append(
            f"Of the revived top-k arms, `{chosen}` is the one whose seeds agree most (median "
            f"pw_mcc {fmt(m.arms[chosen].pw_mcc_median, '.3f')}), chosen without "
            "looking at the filters."
        )
    random_b, pca_b = analysis.random_filters, analysis.pca_filters
    sentences.append(
        f"Baselines: random filters {fmt(random_b.orientation, '.3f')} / "
        f"{fmt(random_b.locality, '.3f')}, PCA components "
        f"{fmt(pca_b.orientation, '.3f')} / {fmt(pca_b.locality, '.3f')} "
        "(orientation / locality)."
    )
    return lines, " ".join(sentences)


def _filter_text(m: Metrics) -> list[str]:
    """What the filter figures mean, with the run's thresholds, and their table."""
    analysis: Patches = m.analysis
    limits = analysis.noise_limits
    return [
        "How edge-like the filters are (mean over units and seeds): **orientation** = how "
        "concentrated a filter's 2-D power spectrum is in one orientation (1: a grating or an "
        "edge; about 0.8 for a Gabor patch; 0: all orientations); **locality** = 1 - the spread "
        "of its energy about its centroid / the spread of uniform energy (0: everywhere, higher: "
        f"in one place); **oriented**: the share of units with orientation >= "
        f"{analysis.oriented_at:g}; **noise-like**: the share with both figures below "
        f"the {fmt(analysis.noise_quantile, '.0%')} quantile of random filters' "
        f"(orientation {fmt(limits.orientation, '.3f')}, locality "
        f"{fmt(limits.locality, '.3f')}).",
        "",
        *_orientation_rows(m),
    ]


def digits_overview(m: Metrics) -> str:
    """Held-out FVU and pw_mcc (chance) per arm and of dictionary learning."""
    parts = [
        f"{label}: FVU {fmt(a.heldout_fvu_quantiles.q50, '.3f')}, pw_mcc {_agreement_cell(a)}"
        for label, a in m.arms.items()
    ]
    parts += [
        f"dictionary learning ({start}): FVU {fmt(dl.heldout_fvu_median, '.3f')}, pw_mcc "
        f"{fmt(dl.pw_mcc_mean, '.3f')}"
        for start, dl in _dictionary_learning(m)
    ]
    return "; ".join(parts)


def patches_overview(m: Metrics) -> str:
    """Orientation / locality per arm and of the baselines, pw_mcc (chance) per arm."""
    analysis: Patches = m.analysis
    parts = [
        f"{label}: orientation {fmt(_filter_means(a, 'encoder').orientation, '.2f')}, locality "
        f"{fmt(_filter_means(a, 'encoder').locality, '.2f')}, pw_mcc {_agreement_cell(a)}"
        for label, a in m.arms.items()
    ]
    for b, name in ((analysis.random_filters, "random"), (analysis.pca_filters, "PCA")):
        if b is not None:
            parts.append(f"{name}: {fmt(b.orientation, '.2f')}, {fmt(b.locality, '.2f')}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Pages

DIGITS_PAGE = Page(
    figures=_digits_figures, text=digits_text, table=digits_table, headline=digits_overview
)
PATCHES_PAGE = Page(
    figures=_patches_figures, text=patches_text, table=patches_table, headline=patches_overview
)

PAGES: dict[str, Page] = {"digits": DIGITS_PAGE, "patches": PATCHES_PAGE}

# What a sweep on real images is judged by: reconstruction of data the model never saw.
MAIN_METRIC = MainMetric(
    "heldout_fvu_median",
    "median held-out FVU",
    lambda m, label: m.arms[label].heldout_fvu_quantiles.q50,
    higher_is_better=False,
)
