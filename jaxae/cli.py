"""The `jaxae` command: parsing, progress and exit codes only; the work happens in the library.

    jaxae list
    jaxae run NAME [--seeds N] [--seed S] [--epochs E] [--set section.field=value ...] [--out DIR]
              [--sweep section.field=v1,v2,... ...]
    jaxae run --resume DIR
    jaxae reproduce [--seeds N] [--seed S] [--out DIR] [--resume]
    jaxae report DIR
    jaxae export RUN_DIR [--arm ARM] [--seed I] [--format saelens] OUT

Invalid arguments print one line on stderr and exit with status 2. Ctrl-C or SIGTERM stops a run at
the next chunk boundary, saves it for `--resume` and exits with 130 or 143. A run also saves
itself every `train.checkpoint_minutes` (10), so `--resume` finishes it after any crash, SIGKILL
included. A write that fails (a full disk) or a lost process of a multi-process run prints one
line on stderr and exits with status 1, leaving the last checkpoint to resume. One run at a time
writes a directory: a second `run` (or `--resume`) of the same one exits with status 2.

Environment (read by `run` and `reproduce`):

- JAXAE_MEMORY_BUDGET: bytes per device one batch of seeds may take (e.g. 6GiB); by default a share
  of the device's memory (on CPU, of the host's available memory). Seeds that do not fit at once
  train and are evaluated in batches, with the same results.
- JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID: run the
  same command once per process to shard the seeds over the devices of all of them
  (jax.distributed; on CPU over gloo). JAXAE_DISTRIBUTED=auto instead lets jax detect them on a
  managed cluster (Slurm, Open MPI, Cloud TPU pod slices). Only process 0 writes the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jaxae import experiments, export, memory, processes, report, results, schema, sweep
from jaxae.cores import use_every_core
from jaxae.experiments import atlas
from jaxae.experiments.images import ImageArm

console = Console(stderr=True)


class UsageError(Exception):
    """A bad argument: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage; we want one line
        raise UsageError(message)


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop checks it at every chunk boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


# The environment `run` and `reproduce` read (their --help ends with it).
ENVIRONMENT = (
    "environment: JAXAE_MEMORY_BUDGET=BYTES per device for one batch of seeds (e.g. 6GiB; "
    "default: a share of the device's or host's free memory); JAX_COORDINATOR_ADDRESS=host:port "
    "of process 0, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or JAXAE_DISTRIBUTED=auto on Slurm, "
    "Open MPI or a Cloud TPU pod slice) shard the seeds over several processes; only process 0 "
    "writes."
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxae", description="Train (sparse) autoencoders over many seeds at once."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="the experiments, one line each")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--seeds", type=int, default=None, help="seeds (default: the experiment's, see list)"
        )
        p.add_argument("--seed", type=int, default=0, help="base seed: seed i = fold_in(key(S), i)")
        p.add_argument("--out", type=Path, default=None, help="output directory (must not exist)")

    run = sub.add_parser("run", help="train one experiment on many seeds", epilog=ENVIRONMENT)
    run.add_argument("name", nargs="?", help="experiment name (see `jaxae list`)")
    common(run)
    run.add_argument("--epochs", type=int, default=None, help="shorthand for --set train.epochs=E")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field of every arm, e.g. --set optim.learning_rate=3e-3",
    )
    run.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="train every arm at each point of the grid the --sweep lists span, e.g. "
        "--sweep optim.learning_rate=1e-4,1e-3 --sweep optim.weight_decay=0,0.01",
    )
    run.add_argument(
        "--resume", type=Path, default=None, metavar="DIR", help="continue a stopped run"
    )

    repro = sub.add_parser(
        "reproduce", help="run every tutorial experiment and write one report", epilog=ENVIRONMENT
    )
    common(repro)
    repro.add_argument(
        "--resume", action="store_true", help="continue a stopped reproduce in --out"
    )

    rep = sub.add_parser("report", help="re-render figures and report.md of a run directory")
    rep.add_argument("dir", type=Path)

    exp = sub.add_parser(
        "export", help="write one trained arm and seed in another tool's format (SAELens)"
    )
    exp.add_argument("dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    exp.add_argument("out", type=Path, metavar="OUT", help="the new directory to write")
    exp.add_argument("--arm", default=None, help="the arm's label (default: a run's only arm)")
    exp.add_argument("--seed", type=int, default=0, help="the seed, 0..n_seeds-1 (default 0)")
    exp.add_argument(
        "--format",
        dest="fmt",
        default="saelens",
        help=f"one of {', '.join(export.FORMATS)}: SAELens's cfg.json and sae_weights.safetensors",
    )
    return parser


def _checked(fn: Callable[[], Any]) -> Any:
    """Run a validation step; its `ValueError` (bad config, path or name) becomes a usage error."""
    try:
        return fn()
    except ValueError as err:
        raise UsageError(str(err)) from err


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{name}={value} is invalid: allowed is a positive integer")


def _progress(unit: str = "epochs") -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def run_experiment(
    exp: experiments.Experiment,
    n_seeds: int,
    seed: int,
    out_dir: Path,
    overrides: list[str],
    stop: StopFlag,
    resume: list[experiments.GroupCheckpoint] | None = None,
    grid: sweep.Grid | None = None,
) -> dict[str, Any] | None:
    """Train, then write the run directory; on a stop, save `DIR.partial/` and return None.

    With a `grid`, `exp` is its swept experiment and the run directory is keyed by grid point.
    """
    groups = experiments.groups_of(exp)
    total = sum(g[0].config.train.epochs for g in groups)
    specs = grid.specs if grid else None
    with _progress() as bar:
        done_before = sum(g.epochs_done for g in resume or [])
        task = bar.add_task(f"{exp.name} x{n_seeds} seeds", total=total, completed=done_before)
        started: list[bool] = []

        def callback(group: int, p: Any) -> bool:
            results.pause_point("chunk")
            if not started:
                started.append(True)
                console.print(f"{exp.name}: compiled; training {n_seeds} seeds")
            finished = sum(gr[0].config.train.epochs for gr in groups[:group])
            bar.update(task, completed=finished + p.epochs_done)
            return stop.signal is not None

        out = experiments.run(
            exp,
            n_seeds,
            seed,
            callback=callback,
            resume=resume,
            checkpoint=lambda o: results.write_partial(out_dir, o, overrides, specs),
        )
    if not out.finished:
        where = results.write_partial(out_dir, out, overrides, specs)
        console.print(f"stopped; progress saved in {where}; continue with --resume")
        return None
    try:  # the writer writes (`processes.on_writer`); the other processes get {}
        if grid is not None:
            return sweep.write_run(out_dir, out, grid, overrides, render=report.render_run)
        return results.write_run(out_dir, out, overrides, render=report.render_run)
    except results.WriteError as err:  # keep the training: save it for --resume if possible
        try:
            results.write_partial(out_dir, out, overrides, specs)
            kept = (
                f"its trained state is saved: `jaxae run --resume {out_dir}` writes the run "
                "without training again"
            )
        except results.WriteError:
            kept = f"saving its trained state failed too; {_resume_hint(out_dir)}"
        raise results.WriteError(f"{err}; {kept}") from err


def _resume_hint(out_dir: Path) -> str:
    """How to go on after a failure: from the last checkpoint, if there is one."""
    if (results.partial_dir(out_dir) / results.PROGRESS).exists():
        return f"`jaxae run --resume {out_dir}` continues from the last checkpoint"
    return "no checkpoint of it was written"


def _arm_line(arm: schema.ArmSummary) -> str:
    """An arm's figures in one line: held-out ones on real data, else convergence against the PCA
    floor; agreement beside its chance level where it was measured."""
    if isinstance(arm, ImageArm):
        return (
            f"held-out fvu {arm.heldout_fvu_quantiles.q50:.3g}  L0 {arm.heldout_l0_mean:.3g}  "
            f"pw_mcc {arm.pw_mcc_mean:.3f} (chance {arm.pw_mcc_null_mean:.3f})  "
            f"diverged {sum(arm.diverged)}"
        )
    lo, hi = arm.convergence_ci95
    line = (
        f"converged {arm.convergence_rate:.3f} [{lo:.3f}, {hi:.3f}]  reconstructs "
        f"{arm.reconstruction_rate:.3f}  median fvu {arm.fvu_quantiles.q50:.3g} "
        f"(pca floor {arm.pca_floor_fvu:.3g})  diverged {sum(arm.diverged)}"
    )
    if isinstance(arm, schema.AgreementArm):
        for name, values, null in (
            ("gt_mcc", arm.gt_mcc, arm.gt_mcc_null),
            ("pw_mcc", arm.pw_mcc, arm.pw_mcc_null),
        ):
            if values is not None:
                line += f"  median {name} {np.median(values):.3f} (chance {np.median(null):.3f})"
    return line


def _print_summary(data: dict[str, Any], out_dir: Path) -> None:
    timing = data["timing"]
    if "grid" in data:  # a sweep: the main metric per grid point and arm, no top-level arms
        print("\n".join(report.grid.summary_lines(data, out_dir, report.main_metric(data))))
    else:
        print(f"{data['experiment']} ({data['section']}): {data['n_seeds']} seeds -> {out_dir}")
    arms = {} if "grid" in data else results.run_of(data).arms
    for label, arm in arms.items():
        print(f"  {data['arm_axis']}={label}: {_arm_line(arm)}")
    print(
        f"  compile {timing['compile_s']:.1f} s, train {timing['train_s']:.1f} s"
        f"{' (every session)' if timing.get('resumed') else ''}, "
        f"{timing['seed_steps_per_s']:,.0f} seed-steps/s"
    )
    if timing.get("checkpoints"):
        print(
            f"  checkpoints: {timing['checkpoints']} written, {timing['checkpoint_s']:.2f} s "
            f"({100 * timing['checkpoint_share']:.1f}% of training time)"
        )
    memory_line = report.base.memory_summary(data.get("memory", {}))
    if memory_line:
        print(f"  {memory_line}")


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _checked(lambda: export.export(args.dir, args.out, args.arm, args.seed, args.fmt))
    meta = cfg["metadata"]["jaxae"]
    k = f", k={cfg['k']}" if "k" in cfg else ""
    dropped = f"; {meta['dropped_units']} masked units dropped" if meta["dropped_units"] else ""
    print(
        f"{args.out}: SAELens {cfg['architecture']} SAE, d_in={cfg['d_in']}, "
        f"d_sae={cfg['d_sae']}{k}, apply_b_dec_to_input={cfg['apply_b_dec_to_input']} "
        f"(arm {meta['arm']!r}, seed {meta['seed']} of {args.dir}{dropped})"
    )
    return 0


def cmd_list() -> int:
    for exp in experiments.EXPERIMENTS.values():
        print(f"{exp.name:13s} {exp.section:10s} {exp.default_seeds:4d} seeds  {exp.summary}")
    runs = f"{atlas.SEEDS}x{atlas.DICTIONARIES}"
    print(f"{atlas.NAME:13s} {'§1.5 map':10s} {runs:>4s} seeds  {atlas.SUMMARY}")
    return 0


def _experiment(
    name: str, overrides: list[str], sweeps: list[str]
) -> tuple[experiments.Experiment, sweep.Grid | None]:
    """The experiment `run` trains, and its grid when swept (every spec checked, nothing built)."""
    if not sweeps:
        return _checked(lambda: experiments.with_overrides(experiments.get(name), overrides)), None
    grid = _checked(lambda: sweep.expand(experiments.get(name), overrides, sweeps))
    return grid.experiment, grid


@contextlib.contextmanager
def _writing(out_dir: Path, flag: str) -> Iterator[None]:
    """Be the one `jaxae` process writing `out_dir` (`results.locked`; in a multi-process run
    process 0 takes the lock and tells the others whether it got it), having tidied what a killed
    run left there (`results.recover`)."""
    error = None
    with contextlib.ExitStack() as stack:
        if not processes.joined() or processes.is_writer():  # (one process: JAX not started yet)
            try:
                stack.enter_context(results.locked(out_dir, flag))
                results.recover(out_dir)
            except ValueError as err:
                error = err
        if not processes.agree(error is None):
            refused = f"{flag}={str(out_dir)!r} is invalid: process 0 could not take its lock"
            raise UsageError(str(error) if error else refused)
        yield


def _train(
    exp: experiments.Experiment,
    n_seeds: int,
    seed: int,
    out_dir: Path,
    overrides: list[str],
    stop: StopFlag,
    resume: list[experiments.GroupCheckpoint] | None,
    grid: sweep.Grid | None,
) -> int:
    """Train and write a run (`run_experiment`); the exit status."""
    if grid is not None:
        print("\n".join(grid.plan()), flush=True)
    with processes.watching_peers(lambda: _resume_hint(out_dir)):
        data = run_experiment(exp, n_seeds, seed, out_dir, overrides, stop, resume, grid)
    if data is None:
        return 128 + (stop.signal or signal.SIGINT)
    if data:
        _print_summary(data, out_dir)
    return 0


def _resume(out_dir: Path, stop: StopFlag) -> int:
    """`run --resume DIR`, holding DIR's lock."""
    progress = _checked(lambda: results.read_progress(out_dir))
    if _checked(lambda: results.finished_already(out_dir, progress)):
        results.remove_partial(out_dir)
        console.print(
            f"{out_dir} is finished already: the process that wrote it ended before it could "
            f"remove {results.partial_dir(out_dir)}, which is removed now",
            soft_wrap=True,
        )
        return 0
    exp, grid = _experiment(
        progress["experiment"], progress["overrides"], progress.get("sweep", [])
    )
    resume = results.load_partial(out_dir, exp, progress)
    _checked(lambda: results.check_writable(out_dir, resuming=True))
    n_seeds, seed, overrides = progress["n_seeds"], progress["seed"], progress["overrides"]
    return _train(exp, n_seeds, seed, out_dir, overrides, stop, resume, grid)


def cmd_run(args: argparse.Namespace, stop: StopFlag) -> int:
    overrides = list(args.overrides)
    if args.resume is not None:
        given = (args.name, args.seeds, args.epochs)
        if any(a is not None for a in given) or overrides or args.sweeps:
            raise UsageError(
                "--resume takes no experiment, --seeds, --epochs, --set or --sweep: it reuses them"
            )
        _checked(lambda: results.read_progress(args.resume))  # before the lock creates anything
        with _writing(args.resume, "--resume"):
            return _resume(args.resume, stop)
    if args.name is None:
        raise UsageError("run needs an experiment name (see `jaxae list`) or --resume DIR")
    _positive("--seeds", args.seeds)
    _positive("--epochs", args.epochs)
    if args.name == atlas.NAME:
        return _atlas(args, stop)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    exp, grid = _experiment(args.name, overrides, args.sweeps)
    n_seeds = args.seeds or exp.default_seeds
    out_dir = args.out or Path("runs") / exp.name
    with _writing(out_dir, "--out"):
        _checked(lambda: results.check_writable(out_dir))
        return _train(exp, n_seeds, args.seed, out_dir, overrides, stop, None, grid)


def _atlas(args: argparse.Namespace, stop: StopFlag) -> int:
    """`run atlas`: every program of the atlas's grid (jaxae/experiments/atlas.py), then one run
    directory. A stop (Ctrl-C, SIGTERM) ends it between programs with nothing written."""
    if args.sweeps:
        raise UsageError(
            "--sweep is invalid for atlas: allowed is --set atlas.FIELD=V1,V2,... (its grid is "
            "its own)"
        )
    spec = _checked(
        lambda: atlas.spec_of(args.overrides, seeds=args.seeds, epochs=args.epochs, seed=args.seed)
    )
    out_dir = args.out or Path("runs") / atlas.NAME
    with _writing(out_dir, "--out"):
        _checked(lambda: results.check_writable(out_dir))
        with _progress("programs") as bar:
            task = bar.add_task(f"atlas x{spec.seeds} seeds", total=None)

            def progress(i: int, n: int, prog: atlas.Program) -> bool:
                bar.update(task, completed=i, total=n)
                bar.update(task, description=f"atlas: {prog.mechanism} M/D={prog.ratio}")
                return stop.signal is not None

            found = atlas.run(spec, progress=progress)
        if found is None:
            console.print("stopped; nothing written (an atlas run starts again from the top)")
            return 128 + (stop.signal or signal.SIGINT)
        data = results.write_atlas(out_dir, found, render=report.render_run)
    if data:
        t = data["timing"]
        print(f"{out_dir}: {len(data['cells'])} cells in {t['total_s']:.0f} s; report.md")
    return 0


def cmd_reproduce(args: argparse.Namespace, stop: StopFlag) -> int:
    _positive("--seeds", args.seeds)
    out_root = args.out or Path("runs") / "reproduce"
    if args.resume and not out_root.exists():  # before the lock creates anything
        raise UsageError(f"--out={str(out_root)!r} is invalid with --resume: it does not exist")
    with _writing(out_root, "--out"):
        return _reproduce(args, out_root, stop)


def _reproduce(args: argparse.Namespace, out_root: Path, stop: StopFlag) -> int:
    """`reproduce`, holding the lock of its directory (which covers every run inside)."""
    if not args.resume:
        _checked(lambda: results.check_writable(out_root))
    for exp in experiments.EXPERIMENTS.values():
        n_seeds = args.seeds or exp.default_seeds
        out_dir = out_root / exp.name
        results.recover(out_dir)
        if out_dir.exists():  # finished in an earlier, stopped reproduce
            results.remove_partial(out_dir)  # left if it was killed just after writing it
            continue
        resume = None
        if results.partial_dir(out_dir).exists():
            progress = _checked(lambda out_dir=out_dir: results.read_progress(out_dir))
            resume = results.load_partial(out_dir, exp, progress)
        with processes.watching_peers(lambda out_dir=out_dir: _resume_hint(out_dir)):
            data = run_experiment(exp, n_seeds, args.seed, out_dir, [], stop, resume)
        if data is None:
            return 128 + (stop.signal or signal.SIGINT)
        if data:
            _print_summary(data, out_dir)
    if processes.is_writer():
        report.render_reproduction(out_root)
        print(f"report: {out_root / 'report.md'}")
    return 0


def setup_processes() -> None:
    """Check JAXAE_MEMORY_BUDGET and join a multi-process run if the environment names one
    (`processes.init_processes`), before anything touches a device; bad values are usage errors."""
    budget = os.environ.get(memory.MEMORY_BUDGET_ENV)
    if budget:
        _checked(lambda: memory.parse_bytes(budget))
    _checked(processes.init_processes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jaxae` console script."""
    use_every_core(warn=False)  # JAX has not started yet (quiet where main() runs in-process)
    stop = StopFlag()
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "list": lambda a: cmd_list(),
        "run": lambda a: cmd_run(a, stop),
        "reproduce": lambda a: cmd_reproduce(a, stop),
        "report": lambda a: _checked(lambda: report.render_run(a.dir)) or 0,
        "export": cmd_export,
    }
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("run", "reproduce"):
            setup_processes()
        stop.install()
        return commands[args.command](args)
    except UsageError as err:
        return _error_exit(err, 2)
    except (results.WriteError, processes.PeerLost) as err:
        return _error_exit(err, 1)


def _error_exit(err: Exception, code: int) -> int:
    """One line on stderr and the exit status; a process of a multi-process run ends at once (the
    others may be gone: jax.distributed's shutdown would wait for them)."""
    if processes.joined():
        processes.exit_now(code, f"jaxae: error: {err}")
    print(f"jaxae: error: {err}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
