"""Pages of the sparse family (`sparse`, `sparsity`): which mechanism recovers the true atoms from
every seed, do seeds then agree, and at what cost in reconstruction.

Figures:
- `agreement.png`: per mechanism (its chosen knob value), GT-MCC of every seed and PW-MCC of every
  pair of seeds as strip plots, with the chance level (untrained weights) drawn beside them; and
  dictionary learning's per fit and pair of fits (chance: its random starts), where it ran;
- `atoms.png`: the true atoms beside two seeds' decoder directions matched to them, for the best
  mechanism and the ReLU control, and two fits' atoms of dictionary learning where it ran;
- `tradeoff.png`: per mechanism, FVU, L0, GT-MCC and PW-MCC against its knob (median and 10-90%
  band over seeds or pairs), chance levels dashed, the chosen value marked.

Every cross-seed number stands beside its chance level. Dictionary learning (`sparse` only) is a
row of the table and a line of the text beside the mechanisms, never one of them: the best
mechanism and the cures are the autoencoders'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from jaxae import metrics, results
from jaxae.config import HOST_KINDS, Config, DataConfig
from jaxae.experiments.sparse import DictionaryRow, MechanismRow
from jaxae.report.base import (
    Figure,
    Metrics,
    Page,
    fmt,
    fmt_ci,
    has_params,
    metrics_only,
    num,
    nums,
    read_arrays,
    read_params,
    save,
)
from jaxae.report.grid import MainMetric

MECHANISM_NAMES = {
    "relu": "ReLU (control)",
    "topk": "top-k",
    "topk_revive": "top-k, dead units revived",
    "kl": "KL (sigmoid)",
    "l1": "L1 (unit-norm decoder)",
    "l1_revive": "L1, units revived",
}
KNOB_NAMES = {"k": "k", "sparsity_weight": "penalty weight"}
DL_LABEL = "dictionary learning"
DL_ATOMS = "dictionary_learning_atoms"  # its atoms `[R, H, D]` in arrays.npz


def _stats(m: Metrics) -> dict[str, MechanismRow]:
    return m.analysis.arms


def _mechanisms(m: Metrics) -> dict[str, list[str]]:
    """Mechanism -> its arm labels, in metrics.json order."""
    out: dict[str, list[str]] = {}
    for label, s in _stats(m).items():
        out.setdefault(s.mechanism, []).append(label)
    return out


def _knob(s: MechanismRow) -> tuple[str, float] | None:
    return next(iter(s.knob.items()), None)


def _name(mechanism: str) -> str:
    return MECHANISM_NAMES.get(mechanism, mechanism)


def _dictionary(m: Metrics) -> DictionaryRow | None:
    return m.analysis.dictionary_learning


# ----------------------------------------------------------------------------------------------
# Table and text


def table(m: Metrics, arm_name: str) -> list[str]:
    """One row per arm: reconstruction, sparsity, atom recovery and agreement with chance levels."""
    chosen = set(m.analysis.chosen.values())
    agree = m.analysis.agree
    lines = [
        f"| {arm_name} | chosen | median FVU | median L0 | dead units / seed | median GT-MCC "
        f"(chance) | seeds GT-MCC >= {agree:g} [95% CI] | median PW-MCC (chance) | "
        f"pairs PW-MCC >= {agree:g} | shared units (chance) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in _stats(m).items():
        gt = (
            f"{fmt(s.gt_mcc_median, '.3f')} ({fmt(s.gt_mcc_null_median, '.3f')})"
            if s.gt_mcc_median is not None
            else "n/a"
        )
        gt_share = (
            f"{fmt(s.gt_share, '.3f')} {fmt_ci(s.gt_share_ci95)}"
            if s.gt_share is not None
            else "n/a"
        )
        lines.append(
            f"| {label} | {'yes' if label in chosen else ''} | {fmt(s.fvu_median, '.3g')} | "
            f"{fmt(s.l0_median, '.2f')} | {fmt(s.dead_units_mean, '.2f')} | {gt} | "
            f"{gt_share} | {fmt(s.pw_mcc_median, '.3f')} "
            f"({fmt(s.pw_mcc_null_median, '.3f')}) | {fmt(s.pw_share, '.3f')} of "
            f"{s.pw_pairs} | {fmt(s.shared_median, '.2f')} "
            f"({fmt(s.shared_null_median, '.2f')}) |"
        )
    dl = _dictionary(m)
    if dl is not None:
        lines.append(_dictionary_row(dl))
    return lines


def _dictionary_row(dl: DictionaryRow) -> str:
    """Dictionary learning in the mechanisms' columns: per fit for per seed, per pair of fits for
    per pair of seeds, its random starts for the chance level; its FVU is held-out."""
    gt, gt_share = "n/a", "n/a"
    if dl.gt_mcc_median is not None:
        gt = f"{fmt(dl.gt_mcc_median, '.3f')} ({fmt(dl.gt_mcc_null_median, '.3f')})"
        gt_share = f"{fmt(dl.gt_share, '.3f')} {fmt_ci(dl.gt_share_ci95)} of {dl.fits} fits"
    return (
        f"| {DL_LABEL} | | {fmt(dl.heldout_fvu_median, '.3g')} (held-out) | "
        f"{fmt(dl.l0_median, '.2f')} | {fmt(dl.dead_atoms_mean, '.2f')} | {gt} | {gt_share} | "
        f"{fmt(dl.pw_mcc_median, '.3f')} ({fmt(dl.pw_mcc_null_median, '.3f')}) | "
        f"{fmt(dl.pw_share, '.3f')} of {dl.pw_pairs} | n/a |"
    )


def _mechanism_line(mechanism: str, label: str, s: MechanismRow, agree: float) -> str:
    knob = _knob(s)
    value = f" at {KNOB_NAMES.get(knob[0], knob[0])} {knob[1]:g}" if knob else ""
    gt = (
        f"{s.gt_share:.0%} of seeds recover the atoms (GT-MCC >= {agree:g}; median "
        f"{s.gt_mcc_median:.3f}, chance {s.gt_mcc_null_median:.3f}), "
        if s.gt_share is not None
        else ""
    )
    return (
        f"- **{_name(mechanism)}**{value} (`{label}`): {gt}{s.pw_share:.0%} of seed pairs "
        f"agree (PW-MCC >= {agree:g}; median {s.pw_mcc_median:.3f}, chance "
        f"{s.pw_mcc_null_median:.3f}); median FVU {s.fvu_median:.3g}, L0 "
        f"{s.l0_median:.2f}."
    )


def _dictionary_line(dl: DictionaryRow, agree: float) -> str:
    gt = (
        f"{dl.gt_share:.0%} of fits recover the atoms (GT-MCC >= {agree:g}; median "
        f"{dl.gt_mcc_median:.3f}, its random starts {dl.gt_mcc_null_median:.3f}), "
        if dl.gt_share is not None
        else ""
    )
    return (
        f"- **Dictionary learning**, the classical answer to recover a dictionary (scikit-learn's "
        f"`MiniBatchDictionaryLearning`, {dl.width} atoms, OMP codes with {dl.k} non-zeros, "
        f"{dl.fits} random starts, {dl.passes} passes at batch {dl.batch_size}): {gt}"
        f"{dl.pw_share:.0%} of pairs of fits agree (PW-MCC >= {agree:g}; median "
        f"{dl.pw_mcc_median:.3f}, its random starts {dl.pw_mcc_null_median:.3f}); held-out FVU "
        f"{dl.heldout_fvu_median:.3g}; {dl.fit_s_total:.1f} s for all fits."
    )


def _dictionary_verdict(dl: DictionaryRow) -> str:
    """What dictionary learning does by the mechanisms' floor (with a ground truth)."""
    if dl.gt_share is None:
        return ""
    reach = "reaches" if dl.cured else "does not reach"
    return (
        f" Dictionary learning, the classical answer to recover a dictionary, {reach} the same "
        "floor: "
        f"{dl.gt_share:.0%} of its {dl.fits} fits recover every atom (median GT-MCC "
        f"{dl.gt_mcc_median:.3f}) and {dl.pw_share:.0%} of its pairs of fits agree (median "
        f"PW-MCC {dl.pw_mcc_median:.3f})."
    )


def _data_phrase(data: DataConfig) -> str:
    """How the data were drawn, in words."""
    if data.kind != "sparse":
        return f"{data.n_samples} samples of {data.n_features} features ({data.kind} data)"
    if data.firing == "exact":
        firing = f"each the sum of {data.active} of {data.n_atoms} random unit-norm atoms"
    elif data.firing_p > 0:
        firing = (
            f"each summing the atoms that fire in it, each of {data.n_atoms} random unit-norm "
            f"atoms firing on its own with probability {data.firing_p:g}"
        )
    else:
        law = f"Zipf's law of exponent {data.zipf:g}" if data.zipf > 0 else "the same probability"
        firing = (
            f"each summing the atoms that fire in it, {data.active} of {data.n_atoms} random "
            f"unit-norm atoms on average, each firing on its own with {law}"
        )
    return (
        f"{data.n_samples} samples of {data.n_features} features, {firing} ({data.magnitude} "
        f"magnitudes, noise {data.noise:g})"
    )


def _draw_phrase(draw: Any) -> str:
    """This draw of atoms, to read its rates beside other draws' (`--set data.seed=...`)."""
    if draw is None:
        return ""
    return (
        f" Of this draw of atoms, the two closest are at |cosine| {draw.coherence:.3f}, and the "
        f"least-used atom fires in {draw.least_used} samples (the mean atom in "
        f"{draw.mean_used:.0f})."
    )


def text(m: Metrics) -> tuple[list[str], str]:
    analysis = m.analysis
    stats, chosen, agree = analysis.arms, analysis.chosen, analysis.agree
    share = analysis.cure_share
    cfg = Config.from_dict(m.config)
    lines = [
        f"Data: {_data_phrase(cfg.data)}; every model has {cfg.model.n_hidden} hidden units."
        + _draw_phrase(analysis.draw),
        "",
        "Each mechanism's knob value is chosen without the ground truth: the value whose seeds "
        "agree best (highest median PW-MCC between seed pairs). Per mechanism at that value:",
        "",
    ]
    lines += [_mechanism_line(mech, lab, stats[lab], agree) for mech, lab in chosen.items()]
    dl = analysis.dictionary_learning
    if dl is not None:
        lines += ["", "Beside them:", "", _dictionary_line(dl, agree)]
    cured = [lab for lab, ok in (analysis.cured or {}).items() if ok]
    best = analysis.best
    if best is None:
        return lines, "These data have no ground truth, so atom recovery cannot be judged."
    b = stats[best]
    floor = (
        f"a cure here means at least {share:.0%} of seeds at GT-MCC >= {agree:g} and {share:.0%} "
        f"of seed pairs at PW-MCC >= {agree:g}"
    )
    if cured:
        names = ", ".join(f"{_name(stats[lab].mechanism)} (`{lab}`)" for lab in cured)
        verdict = f"Cured by {names}: {floor}."
    else:
        verdict = (
            f"No mechanism reaches the cure ({floor}). The closest is "
            f"{_name(b.mechanism)} (`{best}`): {b.gt_share:.0%} of seeds and "
            f"{b.pw_share:.0%} of pairs."
        )
    if "relu" in chosen:
        r = stats[chosen["relu"]]
        verdict += (
            f" The plain ReLU autoencoder recovers the atoms in {r.gt_share:.0%} of seeds "
            f"(median GT-MCC {r.gt_mcc_median:.3f}, chance {r.gt_mcc_null_median:.3f}) and "
            f"its seeds agree at a median PW-MCC of {r.pw_mcc_median:.3f} (chance "
            f"{r.pw_mcc_null_median:.3f})."
        )
    if dl is not None:
        verdict += _dictionary_verdict(dl)
    return lines, verdict


def _heldout_phrase(data: DataConfig) -> str:
    """Where dictionary learning's held-out samples come from (`sparse.heldout_x`)."""
    if data.kind in HOST_KINDS:
        return "the data's held-out split"
    return "fresh codes on the same atoms" if data.kind == "sparse" else "a fresh draw"


def definitions(m: Metrics) -> str:
    dl = _dictionary(m)
    baseline = (
        ""
        if dl is None
        else (
            f" Dictionary learning: scikit-learn's `MiniBatchDictionaryLearning` fitted on the "
            f"same training data, once per random state from {dl.width} random unit directions "
            f"(lasso penalty {dl.alpha:.3g} while fitting; no mean removed; each atom given the "
            "sign its codes carry), its codes then by OMP; its GT-MCC is per fit, its PW-MCC per "
            "pair of fits, its chance the same for its random starts, its FVU and L0 on "
            f"{dl.heldout_samples} held-out samples "
            f"({_heldout_phrase(Config.from_dict(m.config).data)})."
        )
    )
    return (
        "Definitions: GT-MCC = the true atoms matched one-to-one to a seed's unit-normalised "
        "decoder directions (Hungarian assignment on signed cosine, maximising the total), mean "
        "matched cosine over the atoms; PW-MCC = the same matching between two seeds' decoders; "
        "shared units = units whose decoder and encoder directions both match at cosine > "
        f"{metrics.SHARED_COSINE:g} (Paulo & Belrose 2025); chance = the same figure for the "
        "same seeds' untrained weights; L0 = mean number of active units per sample; a dead unit "
        "is never active on any sample; FVU = sum of squared reconstruction errors / sum of "
        "squared deviations from the feature means." + baseline
    )


def headline(m: Metrics) -> str:
    """One line for the reproduction's overview table."""
    analysis = m.analysis
    parts = []
    for mech, lab in analysis.chosen.items():
        s = analysis.arms[lab]
        gt = f"GT {fmt(s.gt_share, '.2f')}, " if s.gt_share is not None else ""
        parts.append(f"{mech}: {gt}PW {fmt(s.pw_share, '.2f')}")
    dl = analysis.dictionary_learning
    if dl is not None:
        gt = f"GT {fmt(dl.gt_share, '.2f')}, " if dl.gt_share is not None else ""
        parts.append(f"{DL_LABEL}: {gt}PW {fmt(dl.pw_share, '.2f')}")
    return f"share of seeds (GT-MCC) / pairs (PW-MCC) >= {analysis.agree:g}: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Figures


def _strip(ax: Any, position: float, values: np.ndarray, color: Any, rng: np.random.Generator):
    values = values[np.isfinite(values)]
    jitter = rng.uniform(-0.22, 0.22, values.size)
    ax.scatter(position + jitter, values, s=5, color=color, alpha=0.45, linewidths=0)
    if values.size:
        ax.hlines(np.median(values), position - 0.3, position + 0.3, color="black", linewidth=1.5)


def plot_agreement(m: Metrics, path: Path) -> None:
    """GT-MCC per seed and PW-MCC per pair for every mechanism's chosen arm, with chance levels."""
    chosen = m.analysis.chosen
    arms = m.arms
    has_gt = any(arms[lab].gt_mcc is not None for lab in chosen.values())
    panels = [("gt_mcc", "GT-MCC per seed"), ("pw_mcc", "PW-MCC per pair of seeds")]
    panels = panels if has_gt else panels[1:]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.2), layout="constrained", squeeze=False
    )
    rng = np.random.default_rng(0)
    labels = list(chosen.values())
    dl = _dictionary(m)
    chance = f"chance (untrained weights{' or random starts' if dl else ''}, median)"
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        strips = [
            (i, getattr(arms[lab], key), np.median(nums(getattr(arms[lab], key + "_null"))))
            for i, lab in enumerate(labels)
            if getattr(arms[lab], key) is not None
        ]
        if dl is not None and getattr(dl, key) is not None:
            strips.append((len(labels), getattr(dl, key), num(getattr(dl, key + "_null_median"))))
        for i, values, null in strips:
            _strip(ax, i, nums(values), f"C{i}", rng)
            ax.hlines(
                null,
                i - 0.35,
                i + 0.35,
                color="C3",
                linestyle="--",
                linewidth=1.2,
                label=chance if i == 0 else None,
            )
        ax.axhline(m.analysis.agree, color="0.4", linewidth=0.8, linestyle=":")
        ticks = labels + ([DL_LABEL] if dl is not None else [])
        ax.set_xticks(range(len(ticks)), ticks, rotation=20, ha="right", fontsize="small")
        ax.set_ylabel({"gt_mcc": "GT-MCC", "pw_mcc": "PW-MCC"}[key])
        ax.set_title(title)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(f"{m.experiment}: does each mechanism find the same units from every seed?")
    save(fig, path)


def _matched_rows(w_HxD: np.ndarray, atoms_MxD: np.ndarray) -> np.ndarray:
    """The unit-normalised rows of `w` matched to each atom (zeros where none is)."""
    _, partner = metrics.matched_cosines(atoms_MxD, w_HxD)
    unit = w_HxD / np.maximum(np.linalg.norm(w_HxD, axis=-1, keepdims=True), 1e-12)
    return np.where(partner[:, None] >= 0, unit[np.maximum(partner, 0)], 0.0)


def _decoder(params: Any, label: str) -> np.ndarray:
    return np.asarray(params[label]["params"]["decoder"]["kernel"])


def plot_atoms(m: Metrics, run_dir: Path, path: Path) -> bool:
    """True atoms beside two seeds' matched decoder directions (best mechanism and ReLU), and two
    fits' atoms of dictionary learning where it ran."""
    truth_path = Path(run_dir) / results.GROUND_TRUTH
    analysis = m.analysis
    if not truth_path.is_file() or analysis.best is None or not has_params(run_dir):
        return False
    atoms = np.load(truth_path, allow_pickle=False)
    if atoms.ndim != 2:  # a dictionary per seed: nothing single to show
        return False
    params = read_params(run_dir)
    n_seeds = min(2, m.n_seeds)
    rows = [
        [("true atoms", atoms)]
        + [
            (f"seed {s}: {lab}", _matched_rows(_decoder(params, lab)[s], atoms))
            for s in range(n_seeds)
        ]
        for lab in [analysis.best] + [analysis.chosen[k] for k in ("relu",) if k in analysis.chosen]
    ]
    fitted = read_arrays(run_dir).get(DL_ATOMS)
    if fitted is not None and len(fitted) >= n_seeds:
        rows.append(
            [("true atoms", atoms)]
            + [(f"fit {r}: {DL_LABEL}", _matched_rows(fitted[r], atoms)) for r in range(n_seeds)]
        )
    fig, axes = plt.subplots(
        len(rows),
        1 + n_seeds,
        figsize=(2.2 * (1 + n_seeds) + 1, 0.14 * len(atoms) * len(rows) + 1.2),
        layout="constrained",
        squeeze=False,
    )
    image = None
    for row, panels in enumerate(rows):
        for ax, (title, w) in zip(axes[row], panels, strict=True):
            image = ax.imshow(
                w, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest"
            )
            ax.set_title(title, fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel("atom (matched unit)")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="unit-norm weight")
    fig.suptitle(
        "true atoms and the decoder directions matched to them (rows: atoms, columns: features)"
    )
    save(fig, path)
    return True


def _bands(values_SxN: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.asarray(
        [
            np.nanpercentile(v, [10, 50, 90]) if np.isfinite(v).any() else [np.nan] * 3
            for v in values_SxN
        ]
    )
    return q[:, 0], q[:, 1], q[:, 2]


def plot_tradeoff(m: Metrics, path: Path) -> None:
    """Per mechanism with a knob: FVU, L0, GT-MCC and PW-MCC against it, median and 10-90% band."""
    arms, analysis = m.arms, m.analysis
    stats, chosen = analysis.arms, analysis.chosen
    mechs = {k: v for k, v in _mechanisms(m).items() if _knob(stats[v[0]]) is not None}
    rows = [("fvu", "FVU"), ("l0", "L0 (active units)"), ("gt_mcc", "GT-MCC"), ("pw_mcc", "PW-MCC")]
    rows = [
        r
        for r in rows
        if any(getattr(arms[lab], r[0]) is not None for labs in mechs.values() for lab in labs)
    ]
    if not mechs:
        mechs = {"none": []}
    fig, axes = plt.subplots(
        len(rows),
        len(mechs),
        figsize=(3.3 * len(mechs) + 0.6, 2.3 * len(rows) + 0.8),
        layout="constrained",
        squeeze=False,
        sharey="row",
    )
    for col, (mech, labels) in enumerate(mechs.items()):
        if not labels:
            continue
        knob = _knob(stats[labels[0]])[0]
        xs = np.asarray([_knob(stats[lab])[1] for lab in labels], np.float64)
        order = np.argsort(xs)
        xs, labels = xs[order], [labels[i] for i in order]
        log_x = knob != "k" and xs.min() > 0 and xs.max() / xs.min() > 20
        for row, (key, name) in enumerate(rows):
            ax = axes[row, col]
            lo, mid, hi = _bands([nums(getattr(arms[lab], key)) for lab in labels])
            ax.fill_between(xs, lo, hi, color=f"C{col}", alpha=0.2, linewidth=0)
            ax.plot(xs, mid, marker="o", markersize=3, color=f"C{col}")
            if getattr(arms[labels[0]], key + "_null", None) is not None:
                null = [np.nanmedian(nums(getattr(arms[lab], key + "_null"))) for lab in labels]
                ax.plot(xs, null, color="C3", linestyle="--", linewidth=1, label="chance")
            if mech in chosen:
                ax.axvline(_knob(stats[chosen[mech]])[1], color="0.3", linestyle=":", linewidth=1)
            if log_x:
                ax.set_xscale("log")
            if key == "fvu" and np.nanmax(hi) / max(np.nanmin(lo), 1e-12) > 100:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            if col == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(_name(mech), fontsize="medium")
            if row == len(rows) - 1:
                ax.set_xlabel(KNOB_NAMES.get(knob, knob))
    fig.suptitle(
        f"{m.experiment}: the sparsity trade-off (median, 10-90% of seeds or pairs; dashed: "
        "chance; dotted: chosen value)",
        fontsize="medium",
    )
    save(fig, path)


def _figures(m: Metrics, run_dir: Path) -> dict[str, Figure]:
    dl = _dictionary(m) is not None
    agreement = Figure(
        "agreement.png",
        "agreement across seeds",
        "Left: GT-MCC of every seed (dots; black bar: median); right: PW-MCC of every pair of "
        "seeds; for each mechanism at its chosen knob value"
        + (", and for dictionary learning per fit and per pair of fits" if dl else "")
        + ". Red dashes: chance, the same figure for the same seeds' untrained weights"
        + (" (dictionary learning's: its random starts)" if dl else "")
        + f"; dotted line: {m.analysis.agree:g}.",
        metrics_only(plot_agreement),
    )
    atoms = Figure(
        "atoms.png",
        "true atoms and matched decoder directions",
        "Each row of a panel is one true atom (left) or the unit-normalised decoder direction a "
        "seed matched to it; columns are the features. Top: the best mechanism; "
        + (
            "then the ReLU control; last, two fits of dictionary learning (their atoms matched "
            "the same way)."
            if dl
            else "bottom: the ReLU control."
        ),
        plot_atoms,
    )
    tradeoff = Figure(
        "tradeoff.png",
        "sparsity trade-off",
        "Per mechanism (columns) against its knob: FVU, L0, GT-MCC per seed and PW-MCC per pair "
        "of seeds; line = median, band = 10-90%; red dashed = chance (untrained weights); dotted "
        "vertical = the value chosen by seed agreement.",
        metrics_only(plot_tradeoff),
    )
    return {"agreement": agreement, "atoms": atoms, "tradeoff": tradeoff}


def sparse_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    """`sparse` leads with agreement and atoms; its grids are small."""
    f = _figures(m, run_dir)
    return [f["agreement"], f["atoms"], f["tradeoff"]]


def sparsity_figures(m: Metrics, run_dir: Path) -> list[Figure]:
    """`sparsity` leads with the trade-off curves."""
    f = _figures(m, run_dir)
    return [f["tradeoff"], f["agreement"], f["atoms"]]


def _page(figures: Any) -> Page:
    return Page(
        figures=figures,
        text=text,
        arms_by="mechanism",
        table=table,
        definitions=definitions,
        headline=headline,
    )


SPARSE_PAGE = _page(sparse_figures)
SPARSITY_PAGE = _page(sparsity_figures)

PAGES: dict[str, Page] = {"sparse": SPARSE_PAGE, "sparsity": SPARSITY_PAGE}


def _recovery_share(s: MechanismRow) -> float:
    return s.pw_share if s.gt_share is None else s.gt_share


# What a sweep of a sparse experiment is judged by: the share of seeds that find the true atoms
# (GT-MCC at the agreement level), or of seed pairs that agree where the data have no ground truth.
MAIN_METRIC = MainMetric(
    "gt_share",
    "share of seeds that recover the atoms",
    lambda m, label: _recovery_share(_stats(m)[label]),
    higher_is_better=True,
    limits=(0.0, 1.0),
)
