"""Figures and report.md of a run directory, and one report over a whole reproduction.

`render_run(run_dir)` reads what `results.write_run` wrote (metrics.json, history.npz and the
`params` checkpoint) and writes `run_dir/figures/*.png` plus `run_dir/report.md`, laid out by the
page registered for the run's experiment (`PAGES`, joined from each family's module); an experiment
without a page gets the generic one (loss curves, arm table, convergence rates).
A swept run (metrics.json keyed by grid point) gets every point's page and a summary over the grid
(`grid`), judged by the main metric of its family (`main_metric`).
`render_reproduction(root)` joins the reports of the run directories under `root` into
`root/report.md`, with links rewritten relative to `root`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from jaxae import experiments, results
from jaxae.report import atlas, base, grid, images, sparse, tutorial
from jaxae.report.base import FIGURES, GENERIC_PAGE, REPORT, Figure, Metrics, Page, plot_loss

__all__ = [
    "FIGURES",
    "GENERIC_PAGE",
    "PAGES",
    "REPORT",
    "Figure",
    "Page",
    "main_metric",
    "page_of",
    "plot_loss",
    "render_reproduction",
    "render_run",
    "report_markdown",
]

# Every family's pages; adding a family adds its module here.
FAMILIES = (tutorial, sparse, images)


def _by_experiment(families: tuple[ModuleType, ...]) -> dict[str, Page]:
    """Experiment name -> page; a name given two pages raises (one would hide the other)."""
    out: dict[str, Page] = {}
    for family in families:
        for name, page in family.PAGES.items():
            if name in out:
                raise ValueError(f"experiment {name!r} has two report pages")
            out[name] = page
    return out


PAGES: dict[str, Page] = _by_experiment(FAMILIES)


def page_of(m: Metrics) -> Page:
    """The page of the run whose metrics.json is `m`: by its experiment name, else the generic."""
    return PAGES.get(m.experiment, GENERIC_PAGE)


def report_markdown(run_dir: Path) -> str:
    """The report of one run as markdown (figure links relative to `run_dir`).

    Figures are linked when they apply to the run and exist under `run_dir/figures` (so call
    `render_run`, which draws them first, to get a report with figures).
    """
    m = base.read_run(run_dir)
    return base.page_markdown(m, run_dir, page_of(m))


def main_metric(m: grid.Swept | Metrics) -> grid.MainMetric:
    """What a sweep of the run's experiment is judged by: its family's `MAIN_METRIC`, else the
    final loss."""
    return grid.main_metric_of(m, FAMILIES)


def render_run(run_dir: Path) -> None:
    """Write `run_dir/figures/*.png` and `run_dir/report.md` from the run's files."""
    raw = base.read_metrics(run_dir)
    if atlas.is_atlas(raw):  # the atlas's grid of cells: its heatmaps
        atlas.render(run_dir, raw)
        return
    if grid.is_swept(raw):  # every grid point's own report, then the summary over the grid
        grid.render(run_dir, raw, page_of, main_metric(raw))
        return
    m = results.run_of(raw)
    base.render_page(run_dir, m, page_of(m))


def render_reproduction(root: Path) -> None:
    """Write `root/report.md`: an overview table and every run's report, links relative to root.

    Runs are listed in the registry's order of experiments, unknown ones after them; a run without
    report.md is rendered first.
    """
    root = Path(root)
    runs = base.run_dirs(root, list(experiments.EXPERIMENTS)) if root.is_dir() else []
    if not runs:
        raise ValueError(
            f"root={str(root)!r} is invalid: no run directory with {results.METRICS} in it; "
            "allowed is a directory written by `jaxae reproduce`"
        )
    for run_dir, m in runs:
        if not (run_dir / REPORT).is_file():
            base.render_page(run_dir, m, page_of(m))
    text = base.reproduction_markdown([(d, m, page_of(m)) for d, m in runs])
    results.write_text(root / REPORT, text)
