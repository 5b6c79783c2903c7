"""The atlas: its grid and packing, that a cell's runs are `sparse`'s runs with the cell's `--set`
values, and a tiny atlas end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxae import cli, data, experiments
from jaxae.experiments import atlas, sparse

# 4-D data, width = atoms: tiny, so that every program compiles and trains in seconds.
TINY = atlas.Spec(
    seeds=2,
    dictionaries=2,
    epochs=2,
    n_samples=256,
    n_features=4,
    ratios=(1, 2),
    actives=(1, 2),
    mechanisms=("relu", "topk", "batchtopk", "jumprelu"),
)


def test_programs_pack_every_cell_of_a_width_and_mechanism():
    progs = list(atlas.programs(TINY))
    assert [(p.ratio, p.mechanism) for p in progs] == [
        (r, m) for r in TINY.ratios for m in TINY.mechanisms
    ]
    for p in progs:
        cells = {row.cell for row in p.rows}
        assert cells == {c for c in TINY.cells() if c.ratio == p.ratio}
        assert len(p.rows) == len(cells) * TINY.dictionaries * TINY.seeds
        assert p.config.model.n_hidden == p.ratio * TINY.n_features  # one unit per atom
        assert p.config.data.per_seed  # every row brings its own data
        grids = [atlas.knob_values(p.mechanism, TINY, c) for c in cells]
        assert p.arms == max(1, *(len(g) for g in grids))
        if p.mechanism in sparse.K_MECHANISMS:  # the program's k is the largest any cell uses
            assert p.config.model.k == max(max(g) for g in grids)


def test_rows_get_their_cells_data_and_knobs():
    prog = next(p for p in atlas.programs(TINY) if p.mechanism == "topk" and p.ratio == 2)
    x_SxNxD, atoms_SxMxD = atlas._draws(prog, TINY)
    chex.assert_shape(x_SxNxD, (len(prog.rows), TINY.n_samples, TINY.n_features))
    chex.assert_shape(atoms_SxMxD, (len(prog.rows), 8, TINY.n_features))
    hyper = atlas._hyper(prog, TINY)
    chex.assert_shape(hyper.k, (len(prog.rows), prog.arms))
    for i, row in enumerate(prog.rows):
        cfg = atlas.data_config(TINY, row.cell, row.dictionary)
        key = jax.random.key(row.dictionary)
        np.testing.assert_array_equal(x_SxNxD[i], np.asarray(data.make_data(key, cfg)))
        np.testing.assert_array_equal(atoms_SxMxD[i], np.asarray(data.ground_truth(key, cfg)))
        assert list(hyper.k[i]) == [row.cell.active, row.cell.active + 1]  # sparse's k grid
    first = {(r.cell, r.dictionary): i for i, r in enumerate(prog.rows)}
    cell = prog.rows[0].cell
    a, b = first[cell, 0], first[cell, 1]
    assert not np.allclose(atoms_SxMxD[a], atoms_SxMxD[b])  # dictionaries differ
    bern = next(i for (c, d), i in first.items() if c.firing == "bernoulli" and d == 0)
    assert np.any(np.all(x_SxNxD[bern] == 0, axis=1))  # a sample that fires no atom stays


def _sparse_cell(cell: atlas.Cell, dictionary: int, mechanism: str) -> experiments.Experiment:
    """`sparse` with the cell's `--set` values, its arms of one mechanism."""
    sets = [
        f"data.n_features={TINY.n_features}",
        f"data.n_atoms={cell.n_atoms(TINY.n_features)}",
        f"model.n_hidden={cell.n_atoms(TINY.n_features)}",
        f"data.active={cell.active}",
        f"data.firing={cell.firing}",
        f"data.seed={dictionary}",
        f"data.n_samples={TINY.n_samples}",
        f"train.epochs={TINY.epochs}",
        f"train.chunk_epochs={TINY.epochs}",
    ]
    exp = experiments.with_overrides(experiments.get("sparse"), sets)
    arms = tuple(a for a in exp.arms if sparse.mechanism_of(a.label) == mechanism)
    return dataclasses.replace(exp, arms=arms, build=None)


@pytest.mark.parametrize("mechanism", ["topk", "relu"])
def test_a_cells_runs_are_sparses_runs_with_its_set_values(mechanism):
    spec = dataclasses.replace(TINY, ratios=(2,), mechanisms=(mechanism,))
    prog = next(atlas.programs(spec))
    _, _, trained = atlas.train_program(prog, spec)
    cell, dictionary = atlas.Cell(2, 2, "bernoulli"), 1
    exp = _sparse_cell(cell, dictionary, mechanism)
    out = experiments.run(exp, TINY.seeds, seed=TINY.seed)
    rows = [i for i, r in enumerate(prog.rows) if (r.cell, r.dictionary) == (cell, dictionary)]
    assert [prog.rows[i].seed for i in rows] == list(range(TINY.seeds))
    for a, arm in enumerate(exp.arms):
        ours = jax.tree.map(lambda v, a=a: np.asarray(v)[rows, a], trained.state.params)
        theirs = out.results[arm.label].params
        chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_choice_is_by_agreement_and_figures_are_in_range():
    spec = dataclasses.replace(TINY, mechanisms=("relu", "batchtopk", "jumprelu"))
    found = atlas.run(spec)
    assert found is not None
    assert len(found.cells) == len(spec.cells()) * len(spec.mechanisms)
    for c in found.cells:
        assert c.runs == spec.dictionaries * spec.seeds
        assert c.pw_pairs == spec.dictionaries * spec.seeds * (spec.seeds - 1) // 2
        assert 0.0 <= c.gt_share <= 1.0 and 0.0 < c.gt_mcc_median <= 1.0 + 1e-6
        if c.mechanism == "relu":
            assert c.knob == {} and len(c.arm_pw_mcc_median) == 1
        else:
            values = atlas.knob_values(c.mechanism, spec, atlas.Cell(c.ratio, c.active, c.firing))
            chosen = values.index(next(iter(c.knob.values())))
            assert c.arm_pw_mcc_median[chosen] == max(c.arm_pw_mcc_median)
    grid = atlas.grid_of(found, "batchtopk", "exact", "gt_mcc_median")
    chex.assert_shape(grid, (len(spec.ratios), len(spec.actives)))
    assert np.isfinite(grid).all()


def test_the_revived_l1_is_trained_only_where_named():
    """`l1_revive` is no default mechanism; named, its program resamples with the least-firing
    unit taking the split."""
    assert "l1_revive" not in atlas.spec_of([]).mechanisms
    spec = atlas.spec_of(["atlas.mechanisms=l1,l1_revive", "atlas.ratios=1", "atlas.actives=1"])
    progs = list(atlas.programs(spec))
    assert [p.mechanism for p in progs] == ["l1", "l1_revive"]
    revived = progs[1].config.loss
    assert revived.resample_least and revived.resample_split == sparse.L1_SPLIT
    assert not progs[0].config.loss.resample_dead


def test_spec_refuses_bad_values():
    with pytest.raises(ValueError, match=r"atlas\.nope"):
        atlas.spec_of(["atlas.nope=1"])
    with pytest.raises(ValueError, match=r"--set 'model.k=2' is invalid for atlas"):
        atlas.spec_of(["model.k=2"])
    with pytest.raises(ValueError, match=r"atlas.firings='poisson' is invalid"):
        atlas.spec_of(["atlas.firings=poisson"])
    with pytest.raises(ValueError, match=r"atlas.mechanisms='kl' is invalid.*l1_revive"):
        atlas.spec_of(["atlas.mechanisms=kl"])
    with pytest.raises(ValueError, match=r"atlas.actives=9 is invalid: allowed is 1..8"):
        atlas.spec_of(["atlas.n_features=8", "atlas.ratios=1", "atlas.actives=9"])
    with pytest.raises(ValueError, match=r"atlas.seeds=1 is invalid"):
        atlas.spec_of([], seeds=1)
    with pytest.raises(ValueError, match=r"atlas.ratios='a' is invalid"):
        atlas.spec_of(["atlas.ratios=a"])
    spec = atlas.spec_of(["atlas.ratios=1,3", "atlas.firings=exact"], seeds=4, epochs=7)
    assert (spec.ratios, spec.firings, spec.seeds, spec.epochs) == ((1, 3), ("exact",), 4, 7)


TINY_CLI = [
    "--seeds", "2", "--epochs", "1", "--set", "atlas.n_features=4", "--set", "atlas.ratios=1",
    "--set", "atlas.actives=1,2", "--set", "atlas.mechanisms=relu,batchtopk",
    "--set", "atlas.dictionaries=1", "--set", "atlas.n_samples=128",
]  # fmt: skip


def test_tiny_atlas_end_to_end_through_the_cli(tmp_path: Path, capsys):
    out = tmp_path / "atlas"
    assert cli.main(["run", "atlas", *TINY_CLI, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["experiment"] == "atlas" and len(m["cells"]) == 2 * 2 * 2  # firings x actives x mechs
    assert {p["mechanism"] for p in m["programs"]} == {"relu", "batchtopk"}
    for name, *_ in atlas_report_heatmaps():
        assert (out / "figures" / name).read_bytes().startswith(b"\x89PNG")
    text = (out / "report.md").read_text()
    assert "# atlas" in text and "Where each mechanism works" in text
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0  # re-rendered from metrics.json
    assert (out / "report.md").read_text() == text
    capsys.readouterr()
    # an existing run is never overwritten; bad input is one line and exit 2, nothing written
    assert cli.main(["run", "atlas", *TINY_CLI, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    for argv in (
        ["--set", "atlas.firings=poisson"],
        ["--sweep", "atlas.ratios=1,2"],
        ["--set", "optim.learning_rate=0.1"],
    ):
        bad = tmp_path / "bad"
        assert cli.main(["run", "atlas", *argv, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxae: error: ") and err.count("\n") == 1
        assert not bad.exists()


def atlas_report_heatmaps():
    from jaxae.report import atlas as page

    return page.HEATMAPS
