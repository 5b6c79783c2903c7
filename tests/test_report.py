"""`jaxae.report`: figures and report.md of a run directory, and the reproduction report.

The run directories are written by the real writer (`results.write_run`, which renders inside its
staging directory and renames it afterwards) from synthetic per-seed results that follow
`ArmResult`, so the schema is the one `jaxae run` writes without training. One test trains for
real (a few epochs) to check the whole path end to end.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
import pytest

from jaxae import experiments, metrics, report, results
from jaxae.experiments import ArmResult, RunOutput
from jaxae.report import tutorial
from tests.imports import ROOT, outside_base
from tests.test_schema import assert_round_trip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_SEEDS = 12
EPOCHS = 20
NAMES = ("multiples", "offset", "noise", "overcomplete", "sparse", "sparsity")
EXPECTED_FIGURES = {
    "multiples": {"loss.png", "convergence.png", "weights.png"},
    "offset": {"loss.png", "fvu_vs_hidden.png", "convergence_vs_hidden.png", "weights.png"},
    "noise": {"loss.png", "fvu_vs_hidden.png", "convergence_vs_hidden.png", "weights.png"},
    "overcomplete": {"loss.png", "similarity.png", "weights.png"},
    "sparse": {"loss.png", "agreement.png", "atoms.png", "tradeoff.png"},
    "sparsity": {"loss.png", "agreement.png", "atoms.png", "tradeoff.png"},
}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _fake_arm(arm: experiments.Arm, n: int, rng: np.random.Generator, index: int) -> ArmResult:
    """Per-seed figures of one arm: some seeds converge, one diverges, some have dead units."""
    cfg = arm.config
    d, width, h = cfg.data.n_features, cfg.model.n_hidden, arm.n_hidden
    floor = [0.3, 1e-32, 0.0][index % 3]
    fvu = np.where(
        np.arange(n) < (index + 1) * n // 8,
        floor + rng.uniform(0, 0.005, n),  # converged seeds
        rng.uniform(0.05, 3.0, n) * 10.0 ** rng.integers(-3, 1, n),
    )
    diverged = np.zeros(n, bool)
    diverged[-1] = True
    fvu[-1] = np.nan
    active = rng.uniform(0.1, 1.0, (n, width))
    active[:, h:] = 0.0  # masked units never fire
    active[: n // 3, 0] = 0.0  # a dead unit in the first third of the seeds
    history = np.exp(-np.linspace(0, 3, EPOCHS))[None, :] * rng.uniform(0.5, 2.0, (n, 1))
    history[-1, EPOCHS // 2 :] = np.nan  # the diverged seed
    params, init_params = (
        {
            "params": {
                "encoder": {"kernel": rng.normal(size=(n, d, width)), "bias": np.zeros((n, width))},
                "decoder": {"kernel": rng.normal(size=(n, width, d)), "bias": np.zeros((n, d))},
            }
        }
        for _ in range(2)
    )
    atoms = rng.normal(size=(cfg.data.n_atoms, d)) if cfg.data.kind == "sparse" else None
    x = np.zeros((4, d), np.float32)
    if atoms is not None:  # `sparse` fits dictionary learning on it: sums of its atoms
        own = np.random.default_rng(index)  # leaves the shared draws (and the figures) as they were
        m = cfg.data.n_atoms
        codes = own.exponential(size=(256, m)) * (own.uniform(size=(256, m)) < cfg.data.active / m)
        x = (codes @ atoms).astype(np.float32)
    return ArmResult(
        arm=arm,
        params=params,
        history_SxE=history.astype(np.float32),
        figures={
            "final_loss": fvu * 2.0,
            "final_mse": fvu * 2.0,
            "fvu": fvu,
            "unit_active_fraction": active,
            "dead_at_init": np.arange(n) < n // 4,
            "l0": active.sum(axis=1),
        },
        diverged=diverged,
        pca_floor_fvu=floor,
        convergence_tol=0.01,
        reconstruction_tol=0.001,
        x=x,
        init_params=init_params,
        ground_truth=atoms,
    )


def fake_run(out_dir: Path, name: str, n_seeds: int = N_SEEDS) -> dict[str, Any]:
    """Write a run directory of experiment `name` with `results.write_run` and `render_run`."""
    exp = experiments.get(name)
    rng = np.random.default_rng(len(name))
    arm_results = {}
    for i, arm in enumerate(exp.arms):
        n = n_seeds
        arm_results[arm.label] = _fake_arm(arm, n, rng, i)
    if "control" in arm_results:  # the control repeats the same seeds: identical weights
        seeds, control = arm_results["seeds"], arm_results["control"]
        control.params = jax.tree.map(lambda v: v[: len(control.diverged)].copy(), seeds.params)
    for r in arm_results.values():
        if exp.measure is not None:
            r.measures, r.arm_type = exp.measure(r), exp.arm_type
    timing = {"compile_s": 1.234, "train_s": 0.5678, "seed_steps_per_s": 123456.7}
    out = RunOutput(
        exp, n_seeds, 7, [], arm_results, timing, analysis=exp.analyse(exp, arm_results)
    )
    return results.write_run(out_dir, out, [], render=report.render_run)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reproduction directory holding one synthetic run per experiment."""
    base = tmp_path_factory.mktemp("repro")
    for name in NAMES:
        fake_run(base / name, name)
    return base


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / results.METRICS).read_text())


def links(markdown: str) -> list[str]:
    return LINK.findall(markdown)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 1000, path


@pytest.mark.parametrize("name", NAMES)
def test_metrics_round_trip_through_their_types(root: Path, name: str) -> None:
    assert_round_trip(root / name)


@pytest.mark.parametrize("name", NAMES)
def test_figures_are_the_applicable_pngs(root: Path, name: str) -> None:
    figures = root / name / report.FIGURES
    assert {p.name for p in figures.iterdir()} == EXPECTED_FIGURES[name]
    for path in figures.iterdir():
        assert_png(path)
    assert not plt.get_fignums(), "render_run left figures open"


@pytest.mark.parametrize("name", NAMES)
def test_report_links_are_relative_and_resolve(root: Path, name: str) -> None:
    run_dir = root / name
    text = (run_dir / report.REPORT).read_text()
    targets = links(text)
    assert {Path(t).name for t in targets} == EXPECTED_FIGURES[name]
    for target in targets:
        assert target.startswith(f"{report.FIGURES}/"), target
        assert (run_dir / target).is_file(), target
    assert str(root) not in text  # written in a staging directory: no absolute paths
    assert text == report.report_markdown(run_dir)


TUTORIAL = NAMES[:4]


@pytest.mark.parametrize("name", TUTORIAL)
def test_report_numbers_come_from_metrics(root: Path, name: str) -> None:
    run_dir = root / name
    m = read_metrics(run_dir)
    text = (run_dir / report.REPORT).read_text()
    assert m["family"] == experiments.get(name).family
    assert text.startswith(f"## {m['section']} {m['experiment']}\n")
    assert f"> {m['claim']}" in text
    assert f"{m['n_seeds']} seeds (base seed {m['seed']})" in text
    for label, a in m["arms"].items():
        k, n = sum(a["converged"]), len(a["converged"])
        lo, hi = a["convergence_ci95"]
        q = a["fvu_quantiles"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert f"{k}/{n} = {a['convergence_rate']:.3f} [{lo:.3f}, {hi:.3f}]" in row
        assert f"{a['reconstruction_rate']:.3f}" in row
        assert f"{q['q50']:.3g} [{q['q10']:.3g}, {q['q90']:.3g}]" in row
        assert f"| {a['pca_floor_fvu']:.3g} |" in row
        assert f"| {np.mean(a['dead_units']):.2f} |" in row
        assert f"| {sum(a['diverged'])}/{n} |" in row
    t = m["timing"]
    assert f"compile {t['compile_s']:.3g} s, train {t['train_s']:.3g} s" in text
    assert f"{t['seed_steps_per_s']:,.0f} seed-steps/s" in text
    assert f"reconstructs = FVU <= {m['reconstruction_tol']:g}" in text
    assert "converged = FVU <= PCA floor + convergence tol" in text
    assert "**Verdict.**" in text


def test_multiples_analysis_in_text(root: Path) -> None:
    m = read_metrics(root / "multiples")
    text = (root / "multiples" / report.REPORT).read_text()
    for label, a in m["analysis"].items():
        assert f"**{label}**: {a['failed']} of " in text
        assert f"{a['failed_with_dead_unit']} of them" in text
        assert f"already dead at initialisation: {a['dead_at_init_fraction']:.3f}" in text
        assert f"Dead unit after training: {a['dead_unit_fraction']:.3f}" in text
    failed = sum(a["failed"] for a in m["analysis"].values())
    dead = sum(a["failed_with_dead_unit"] for a in m["analysis"].values())
    assert f"{dead}/{failed} ({dead / failed:.3f}) have a dead hidden unit" in text


def test_overcomplete_analysis_in_text(root: Path) -> None:
    m = read_metrics(root / "overcomplete")
    a = m["analysis"]
    text = (root / "overcomplete" / report.REPORT).read_text()
    assert f"Agreement across {a['pairs']} pairs of seeds" in text
    assert set(a["agreement"]) == {"seeds", "topk", "kl"}
    for label, g in a["agreement"].items():
        arm = m["arms"][label]
        assert g["pw_mcc_median"] == pytest.approx(np.median(arm["pw_mcc"]))
        assert g["pw_mcc_null_median"] == pytest.approx(np.median(arm["pw_mcc_null"]))
        # the agreement table follows the arm table: its row is the arm's last
        row = [line for line in text.splitlines() if line.startswith(f"| {label} |")][-1]
        assert f"{g['pw_mcc_median']:.3f} ({g['pw_mcc_null_median']:.3f})" in row
        assert f"{g['pw_mcc_encoder_median']:.3f} ({g['pw_mcc_encoder_null_median']:.3f})" in row
    assert f"minimum of {a['control_min']['decoder']:.3f} (decoder)" in text
    # random weights: nothing agrees beyond chance in the synthetic run
    assert "neither the plain model nor its sparse versions" in text


@pytest.mark.parametrize("name", ["sparse", "sparsity"])
def test_sparse_report_numbers_come_from_metrics(root: Path, name: str) -> None:
    m = read_metrics(root / name)
    text = (root / name / report.REPORT).read_text()
    stats, chosen = m["analysis"]["arms"], m["analysis"]["chosen"]
    assert set(stats) == set(m["arms"])
    for label, s in stats.items():
        arm = m["arms"][label]
        assert s["pw_mcc_median"] == pytest.approx(np.median(arm["pw_mcc"]))
        assert s["gt_mcc_median"] == pytest.approx(np.median(arm["gt_mcc"]))
        assert s["gt_share"] == pytest.approx(np.mean(np.asarray(arm["gt_mcc"]) >= 0.99))
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert f"{s['gt_mcc_median']:.3f} ({s['gt_mcc_null_median']:.3f})" in row
        assert f"{s['pw_mcc_median']:.3f} ({s['pw_mcc_null_median']:.3f})" in row
        assert ("| yes |" in row) == (label in chosen.values())
    # the choice uses agreement across seeds only: the best median PW-MCC of each mechanism
    for mech, label in chosen.items():
        same = [lab for lab, s in stats.items() if s["mechanism"] == mech]
        assert stats[label]["pw_mcc_median"] == max(stats[lab]["pw_mcc_median"] for lab in same)
    assert "No mechanism reaches the cure" in text  # random weights recover nothing
    assert "GT-MCC = the true atoms matched one-to-one" in text
    # dictionary learning: a row beside the mechanisms and a line of the text, in `sparse` only
    dl = m["analysis"].get("dictionary_learning")
    rows = [line for line in text.splitlines() if line.startswith("| dictionary learning |")]
    typed = results.read_run(root / name)
    headline = report.page_of(typed).headline(typed)
    if name == "sparsity":
        assert dl is None and not rows and "dictionary" not in text + headline
        return
    (row,) = rows
    assert f"| {dl['heldout_fvu_median']:.3g} (held-out) |" in row
    assert f"{dl['gt_mcc_median']:.3f} ({dl['gt_mcc_null_median']:.3f})" in row
    assert f"{dl['gt_share']:.3f} [{dl['gt_share_ci95'][0]:.3f}, " in row
    assert f"of {dl['fits']} fits" in row
    assert f"{dl['pw_mcc_median']:.3f} ({dl['pw_mcc_null_median']:.3f}) | " in row
    assert f"{dl['pw_share']:.3f} of {dl['pw_pairs']} |" in row
    assert "the classical answer to recover a dictionary" in text
    assert f"{dl['fit_s_total']:.1f} s for all fits" in text
    reach = "reaches" if dl["cured"] else "does not reach"
    assert f"recover a dictionary, {reach} the same floor: {dl['gt_share']:.0%} of its" in text
    assert f"dictionary learning: GT {dl['gt_share']:.2f}, PW {dl['pw_share']:.2f}" in headline
    atoms = report.base.read_arrays(root / name)["dictionary_learning_atoms"]
    assert atoms.shape == (dl["fits"], dl["width"], m["config"]["data"]["n_features"])


def test_sweep_verdict_follows_the_numbers(root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "offset"
    shutil.copytree(root / "offset", run_dir)
    m = read_metrics(run_dir)
    for label, a in m["arms"].items():
        a["convergence_rate"] = 0.75 if a["n_hidden"] >= 2 else 0.25
        a["reconstruction_rate"] = 0.0
        a["reconstructs"] = [False] * len(a["reconstructs"])
        a["reconstructs"][0] = label == "3"
    results.write_json(run_dir / results.METRICS, m)
    text = report.report_markdown(run_dir)
    assert "converges in at least half of the seeds is 2 (0.750)" in text
    assert (
        "No hidden size reconstructs the data (FVU <= reconstruction tol) in half of the seeds."
        in text
    )
    n = len(m["arms"]["3"]["reconstructs"])
    assert f"reconstruct at least one seed: 3 (1/{n})" in text

    for a in m["arms"].values():
        a["convergence_rate"] = 0.0
        a["reconstructs"] = [False] * len(a["reconstructs"])
    results.write_json(run_dir / results.METRICS, m)
    text = report.report_markdown(run_dir)
    assert "No hidden size converges in at least half of the seeds." in text
    features = m["config"]["data"]["n_features"]
    assert f"No hidden size below the {features} input features reconstructs any seed." in text


def test_run_dir_can_be_moved_after_rendering(root: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(root / "noise", moved)
    text = (moved / report.REPORT).read_text()
    assert all((moved / t).is_file() for t in links(text))


def test_render_run_without_history_or_params(root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    shutil.copy(root / "multiples" / results.METRICS, run_dir / results.METRICS)
    report.render_run(run_dir)
    assert {p.name for p in (run_dir / report.FIGURES).iterdir()} == {"convergence.png"}
    text = (run_dir / report.REPORT).read_text()
    assert links(text) == [f"{report.FIGURES}/convergence.png"]
    assert not plt.get_fignums()


def test_render_reproduction_links_resolve_from_root(root: Path, tmp_path: Path) -> None:
    repro = tmp_path / "repro"
    shutil.copytree(root, repro)
    other = repro / "custom"  # an experiment jaxae does not know: listed after the tutorial's
    shutil.copytree(root / "noise", other)
    m = read_metrics(other)
    m["experiment"] = "aaa_custom"
    results.write_json(other / results.METRICS, m)
    (other / report.REPORT).unlink()  # not rendered yet: render_reproduction renders it
    (repro / ".staging-leftover").mkdir()  # hidden directories are not runs

    report.render_reproduction(repro)
    text = (repro / report.REPORT).read_text()
    assert text.startswith("# ")
    targets = links(text)
    assert targets
    for target in targets:
        assert not target.startswith("/"), target
        assert (repro / target).is_file(), target
    for name in NAMES:
        for fig in EXPECTED_FIGURES[name]:
            assert f"{name}/{report.FIGURES}/{fig}" in targets
    order = [text.index(f"## {read_metrics(repro / n)['section']} {n}\n") for n in NAMES]
    order.append(text.index("aaa_custom\n"))
    assert order == sorted(order)
    overview = text[: order[0]]
    for name in NAMES:
        m = read_metrics(repro / name)
        row = next(line for line in overview.splitlines() if line.startswith(f"| [{name}]("))
        assert f"| {m['n_seeds']} |" in row
        typed = results.read_run(repro / name)
        assert f"| {report.page_of(typed).headline(typed)} |" in row
        if name in ("offset", "noise"):  # the claim is which sizes reconstruct
            for label, a in m["arms"].items():
                assert f"{label}: {sum(a['reconstructs'])}/{len(a['reconstructs'])}" in row
        elif name == "overcomplete":  # the claim is agreement across seeds, against chance
            for label, g in m["analysis"]["agreement"].items():
                median, chance = g["pw_mcc_median"], g["pw_mcc_null_median"]
                assert f"{label}: {median:.3f} ({chance:.3f})" in row
        elif name in TUTORIAL:
            for label, a in m["arms"].items():
                assert f"{label}: {a['convergence_rate']:.2f}" in row
        else:
            for mech, label in m["analysis"]["chosen"].items():
                s = m["analysis"]["arms"][label]
                assert f"{mech}: GT {s['gt_share']:.2f}, PW {s['pw_share']:.2f}" in row


def test_every_experiment_has_the_page_of_its_family() -> None:
    assert set(report.PAGES) == set(experiments.EXPERIMENTS)
    for name, exp in experiments.EXPERIMENTS.items():
        family = importlib.import_module(f"jaxae.report.{exp.family}")
        assert report.PAGES[name] is family.PAGES[name]
    assert report.PAGES["offset"] is report.PAGES["noise"]  # one page for both sweeps


def test_an_experiment_with_two_pages_raises() -> None:
    with pytest.raises(ValueError, match="'multiples' has two report pages"):
        report._by_experiment((tutorial, tutorial))


def test_base_imports_no_family_and_no_registry() -> None:
    path = ROOT / "jaxae" / "report" / "base.py"
    assert outside_base(path, ("jaxae.experiments", "jaxae.report")) == set()


def test_unknown_experiment_gets_the_generic_page(root: Path, tmp_path: Path) -> None:
    """Whatever its metrics hold (here a sweep's), an unregistered experiment gets the loss
    figure, the arm table and the convergence rates."""
    run_dir = tmp_path / "custom"
    shutil.copytree(root / "noise", run_dir)
    shutil.rmtree(run_dir / report.FIGURES)
    m = read_metrics(run_dir)
    m["experiment"] = "aaa_custom"
    results.write_json(run_dir / results.METRICS, m)
    report.render_run(run_dir)
    assert {p.name for p in (run_dir / report.FIGURES).iterdir()} == {"loss.png"}
    text = (run_dir / report.REPORT).read_text()
    assert links(text) == [f"{report.FIGURES}/loss.png"]
    assert f"seeds (base seed {m['seed']}); arms: {', '.join(m['arms'])};" in text
    assert "| arm | seeds | converged [95% CI] |" in text
    rates = ", ".join(f"{label}: {a['convergence_rate']:.3f}" for label, a in m["arms"].items())
    assert f"**Verdict.** Convergence rate per arm: {rates}." in text


def test_missing_metrics_is_a_value_error(tmp_path: Path) -> None:
    message = (
        f"run_dir={str(tmp_path)!r} is invalid: no metrics.json there; allowed is a run "
        "directory written by `jaxae run`"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        report.render_run(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        report.report_markdown(tmp_path)
    with pytest.raises(ValueError, match="no run directory"):
        report.render_reproduction(tmp_path)


def test_real_run_renders(tmp_path: Path) -> None:
    """A few epochs of the real overcomplete experiment, written and rendered by `write_run`."""
    exp = experiments.with_overrides(experiments.get("overcomplete"), ["train.epochs=3"])
    out = experiments.run(exp, 4)
    data = results.write_run(tmp_path / "r", out, [], render=report.render_run)
    run_dir = tmp_path / "r"
    assert {p.name for p in (run_dir / report.FIGURES).iterdir()} == EXPECTED_FIGURES[
        "overcomplete"
    ]
    for path in (run_dir / report.FIGURES).iterdir():
        assert_png(path)
    text = (run_dir / report.REPORT).read_text()
    assert all((run_dir / t).is_file() for t in links(text))
    assert f"> {data['claim']}" in text
    rate = data["arms"]["seeds"]["convergence_rate"]
    assert f"= {rate:.3f} [" in text
    assert data["reconstruction_tol"] == metrics.reconstruction_tol(out.results["seeds"].x)
    assert data["convergence_fraction"] == metrics.CONVERGENCE_FRACTION
