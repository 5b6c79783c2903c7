"""The atlas's page (`jaxae run atlas`): heatmaps of where each mechanism recovers the true atoms.

Figures, one panel per mechanism, a row of panels per firing, each panel overcompleteness M/D
(rows) against active atoms per sample (columns), the chosen knob's figure in every cell:
- `atlas_recovery.png`: the share of runs (dictionaries x seeds) that recover every atom
  (GT-MCC >= the agreement level);
- `atlas_gt_mcc.png`: median GT-MCC;
- `atlas_pw_mcc.png`: median PW-MCC over pairs of seeds of one dictionary, minus its chance level
  (the same pairs' untrained weights), so 0 is chance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from jaxae import results, schema
from jaxae.experiments import atlas
from jaxae.report.base import FIGURES, REPORT, fmt, save
from jaxae.report.sparse import MECHANISM_NAMES

NAMES = {**MECHANISM_NAMES, "batchtopk": "BatchTopK", "jumprelu": "JumpReLU"}
# (file, field, colour-bar label, value range, colour map)
HEATMAPS = (
    ("atlas_recovery.png", "gt_share", "share of runs recovering all atoms", (0.0, 1.0), "viridis"),
    ("atlas_gt_mcc.png", "gt_mcc_median", "median GT-MCC", (0.5, 1.0), "magma"),
    ("atlas_pw_mcc.png", "pw_above_chance", "median PW-MCC minus chance", (0.0, 0.5), "cividis"),
)


def is_atlas(raw: dict[str, Any]) -> bool:
    """Whether a metrics.json is an atlas run's."""
    return raw.get("family") == atlas.FAMILY


def read(raw: dict[str, Any]) -> atlas.Atlas:
    return schema.decode(atlas.Atlas, raw)


def _values(a: atlas.Atlas, mechanism: str, firing: str, field: str) -> np.ndarray:
    if field == "pw_above_chance":
        pw = atlas.grid_of(a, mechanism, firing, "pw_mcc_median")
        return pw - atlas.grid_of(a, mechanism, firing, "pw_mcc_null_median")
    return atlas.grid_of(a, mechanism, firing, field)


def draw_heatmap(a: atlas.Atlas, path: Path, field: str, label: str, lim: tuple, cmap: str) -> None:
    """One panel per mechanism (columns) and firing (rows), every cell annotated."""
    spec = a.spec
    mechs, firings = spec["mechanisms"], spec["firings"]
    fig, axes = plt.subplots(
        len(firings),
        len(mechs),
        figsize=(2.3 * len(mechs) + 1.2, 1.7 * len(firings) + 0.7),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    image = None
    for i, firing in enumerate(firings):
        for j, mech in enumerate(mechs):
            ax = axes[i][j]
            values = _values(a, mech, firing, field)
            image = ax.imshow(
                values, vmin=lim[0], vmax=lim[1], cmap=cmap, origin="lower", aspect="auto"
            )
            for (r, c), v in np.ndenumerate(values):
                if np.isfinite(v):
                    shade = (v - lim[0]) / (lim[1] - lim[0])
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if shade < 0.55 else "black")  # fmt: skip
            ax.set_xticks(range(len(spec["actives"])), [str(x) for x in spec["actives"]])
            ax.set_yticks(range(len(spec["ratios"])), [str(x) for x in spec["ratios"]])
            if i == 0:
                ax.set_title(NAMES.get(mech, mech), fontsize=9)
            if i == len(firings) - 1:
                ax.set_xlabel("active atoms per sample", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{firing}\nM / D", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label=label)
    fig.suptitle(f"{label}: {spec['n_features']}-D data, width M, knob chosen by agreement")
    save(fig, path)


def _where_each_works(a: atlas.Atlas) -> list[str]:
    """Per mechanism and firing: the cells where at least the cure share recovers every atom."""
    from jaxae.experiments.sparse import CURE_SHARE

    lines = []
    for firing in a.spec["firings"]:
        for mech in a.spec["mechanisms"]:
            cells = [c for c in a.cells if c.mechanism == mech and c.firing == firing]
            good = [c for c in cells if c.gt_share >= CURE_SHARE]
            where = ", ".join(f"M/D={c.ratio} a={c.active}" for c in good) or "none"
            lines.append(
                f"- {firing}, {NAMES.get(mech, mech)}: {len(good)} of {len(cells)} cells "
                f"recover every atom in at least {CURE_SHARE:.0%} of runs ({where})"
            )
    return lines


def _none_works(a: atlas.Atlas) -> list[str]:
    from jaxae.experiments.sparse import CURE_SHARE

    out = []
    for firing in a.spec["firings"]:
        for ratio in a.spec["ratios"]:
            for active in a.spec["actives"]:
                cells = [
                    c for c in a.cells if (c.firing, c.ratio, c.active) == (firing, ratio, active)
                ]
                best = max(cells, key=lambda c: (c.gt_share, c.gt_mcc_median))
                if best.gt_share < CURE_SHARE:
                    out.append(
                        f"{firing} M/D={ratio} a={active} (best {NAMES.get(best.mechanism)}: "
                        f"{best.gt_share:.0%}, GT-MCC {best.gt_mcc_median:.3f})"
                    )
    return out


def markdown(a: atlas.Atlas) -> str:
    spec = a.spec
    runs = spec["dictionaries"] * spec["seeds"]
    n_cells = len(spec["ratios"]) * len(spec["actives"]) * len(spec["firings"])
    t = a.timing
    lines = [
        "# atlas: where sparse autoencoders find the true atoms",
        "",
        f"{n_cells} kinds of data ({spec['n_features']}-D, M/D in {spec['ratios']}, active atoms "
        f"per sample in {spec['actives']}, firing {' and '.join(spec['firings'])}), each with "
        f"{spec['dictionaries']} dictionaries x {spec['seeds']} seeds = {runs} runs per mechanism, "
        f"{spec['n_samples']:,} samples, {spec['epochs']} epochs. Every mechanism's knob is chosen "
        "per cell by seed agreement, without the ground truth. "
        f"{len(a.programs)} programs, {fmt(t['total_s'], '.0f')} s in all "
        f"({fmt(t['train_s'], '.0f')} s training, {fmt(t['compile_s'], '.0f')} s compiling).",
        "",
        "## Where each mechanism works",
        "",
        *_where_each_works(a),
        "",
    ]
    nobody = _none_works(a)
    lines += [
        f"Cells where no mechanism recovers every atom in at least 95% of runs: {len(nobody)} "
        f"of {n_cells}" + (": " + "; ".join(nobody) if nobody else "") + ".",
        "",
    ]
    for name, _field, label, _lim, _cmap in HEATMAPS:
        lines += [f"![{label}]({FIGURES}/{name})", ""]
    lines += ["<details><summary>Every cell</summary>", ""]
    lines += [
        "| mechanism | firing | M/D | active | knob | recover all | GT-MCC | PW-MCC (chance) "
        "| FVU | L0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in a.cells:
        knob = ", ".join(f"{k}={v:g}" for k, v in c.knob.items()) or "-"
        lines.append(
            f"| {c.mechanism} | {c.firing} | {c.ratio} | {c.active} | {knob} | "
            f"{c.gt_share:.2f} | {c.gt_mcc_median:.3f} | {c.pw_mcc_median:.3f} "
            f"({c.pw_mcc_null_median:.3f}) | {c.fvu_median:.3f} | {c.l0_median:.2f} |"
        )
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def render(run_dir: Path, raw: dict[str, Any]) -> None:
    """Write the heatmaps and report.md of an atlas run."""
    a = read(raw)
    figures = Path(run_dir) / FIGURES
    figures.mkdir(exist_ok=True)
    for name, field, label, lim, cmap in HEATMAPS:
        draw_heatmap(a, figures / name, field, label, lim, cmap)
    results.write_text(Path(run_dir) / REPORT, markdown(a))
