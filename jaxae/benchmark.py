"""Throughput of jaxae's training loop, case by case, each case in a fresh process.

Shape legend: S seeds, N samples, B batch, D features, H hidden units.

A case is one config at one seed count, trained by `runner.train_seeds` as `jaxae run` trains it
(the same devices: one XLA CPU device per core), optionally with other XLA options or the old
shuffles for comparison. `run_all` runs every case once per round, each time in a fresh process,
and reports per case, after compilation, the best and the median of its timed runs:

- seed-steps/s: seeds x optimizer steps per second of training (`train_seeds`' own timing);
- GFLOP/s: `matmul_flops_per_seed_step` x seed-steps/s, beside the GFLOP/s of a large float32
  matmul on the same devices in the same run (`matmul_peak`), so a case reads as a fraction of what
  the hardware does on the work it is best at;
- compile_s: init, tracing and XLA compilation of the training program in a fresh process;
- memory: the process's peak resident set (`ru_maxrss`) after start-up, after compilation and at the
  end, so its growth over start-up is what the case's compilation and training took; on an
  accelerator, also the device's peak bytes in use (`memory_stats`).

Each case runs in a subprocess (`run_in_subprocess`) so that peak memory and compile time are its
own, and a case that fails (out of memory, say) is recorded as an error and the others still run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import data, experiments, runner, shuffle, train
from jaxae.config import Config, DataConfig, ModelConfig, TrainConfig
from jaxae.model import make_model

DEFAULT_SEEDS: tuple[int, ...] = (1, 64, 256, 1024, 4096)
# Seed-steps one timed run of a §1.2 case aims at (about 2-10 s on a 2-core CPU).
SEED_STEPS_PER_RUN = 4_000_000


def matmul_flops_per_seed_step(cfg: Config) -> int:
    """Floating-point operations of the matmuls in one optimizer step of one seed: 10 * B * D * H.

    A matmul of an [M, K] by a [K, N] matrix is 2 * M * K * N operations (a multiply and an add per
    term). One step on a (padded) batch of B rows has five of shape B x D x H:
    forward `x_BxD @ W_DxH` and `h_BxH @ W_HxD`; backward, for the decoder's kernel `h^T @ g_BxD`,
    for the hidden code `g_BxD @ W_HxD^T`, and for the encoder's kernel `x^T @ g_BxH`. The gradient
    with respect to the data `x` is never formed (x is not a parameter), so it is 5, not 6. Biases,
    activations, the loss, top-k selection and Adam are O(B * (D + H) + params) elementwise work,
    left out: this is the work a matmul unit could do, against which `matmul_peak` is the yardstick.
    """
    return 10 * cfg.train.batch_size * cfg.data.n_features * cfg.model.n_hidden


def xla_flops_per_seed_step(cfg: Config) -> float:
    """XLA's own count of floating-point operations in one `train.train_step` of one seed (every
    operation, not only the matmuls): a cross-check of `matmul_flops_per_seed_step`."""
    model = make_model(cfg.model, cfg.data.n_features)
    x_NxD = data.shared_data(cfg)
    state = train.init_state(jax.random.key(0), train.Hyper.from_config(cfg), model=model, cfg=cfg)
    idx_B = jnp.arange(cfg.train.batch_size)

    def step(state: train.TrainState, idx_B: jax.Array) -> Any:
        return train.train_step(state, (idx_B, None), x_NxD=x_NxD, model=model, cfg=cfg)

    return float(jax.jit(step).lower(state, idx_B).cost_analysis()["flops"])


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: a config trained on `n_seeds` seeds."""

    name: str
    what: str  # one line for the table
    config: Config
    n_seeds: int
    # "config": the config's own train.shuffle; "jax.random.permutation": the straight port's.
    shuffle: str = "config"
    compiler_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # XLA's, if any
    repeats: int = 1  # timed runs in each of its processes
    rounds: int | None = None  # processes (one per round of the run); None: the run's repeats

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Case:
        return cls(**{**d, "config": Config.from_dict(d["config"])})


def _with_epochs(cfg: Config, epochs: int) -> Config:
    """`cfg` trained for `epochs`, in equal chunks (no partial last chunk to guard), with the
    Feistel shuffle (the fast one; rows named "sort" measure the exact one)."""
    chunk = math.gcd(cfg.train.chunk_epochs, epochs)
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, epochs=epochs, chunk_epochs=chunk, shuffle="feistel"),
    )


def multiples_epochs(n_seeds: int, quick: bool) -> int:
    """§1.2's 1,500 epochs up to 256 seeds; above, about `SEED_STEPS_PER_RUN` seed-steps (whole
    chunks of 50 epochs, at least one). `quick`: a fifth, at least 10."""
    epochs = 1500 if n_seeds <= 256 else max(50, SEED_STEPS_PER_RUN // (10 * n_seeds) // 50 * 50)
    return max(10, epochs // 5) if quick else epochs


# XLA:CPU options the benchmark compares with XLA's defaults (CPU only).
XLA_LOOPS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # XLA's loops, not YNNPACK, for reductions
VECTOR_512 = {"xla_cpu_prefer_vector_width": 512}


def cases(
    seeds: tuple[int, ...] = DEFAULT_SEEDS, quick: bool = False, platform: str = "cpu"
) -> list[Case]:
    """The benchmark: §1.2 at every seed count, then at 256 seeds the old shuffles and two XLA:CPU
    options beside the default; 10-10-10 ReLU beside top-k; a digits-sized 64-256-64 ReLU model."""
    multiples = experiments.get("multiples").config
    gaussian = experiments.get("overcomplete").arms[0].config  # 10-10-10 ReLU, randn(1000, 10)
    out = [
        Case(
            f"multiples_{s}",
            f"§1.2 10-1-10 ReLU, {s:,} seed{'s' * (s > 1)}",
            _with_epochs(multiples, multiples_epochs(s, quick)),
            s,
            repeats=5 if s == 1 else 1,  # one seed's run is 0.1 s: several per process
        )
        for s in seeds
    ]
    side = 256
    at_side = _with_epochs(multiples, multiples_epochs(side, quick))
    sort = dataclasses.replace(at_side, train=dataclasses.replace(at_side.train, shuffle="sort"))
    out += [
        Case("multiples_sort", "§1.2, 256 seeds, exact sort shuffle", sort, side),
        Case(
            "multiples_jax_permutation",
            "§1.2, 256 seeds, jax.random.permutation shuffle",
            at_side,
            side,
            shuffle="jax.random.permutation",
            rounds=1,  # ~40 s a run
        ),
    ]
    if platform == "cpu":
        out += [
            Case(
                "multiples_xla_loops",
                "§1.2, 256 seeds, XLA loops for reductions",
                at_side,
                side,
                compiler_options=XLA_LOOPS,
            ),
            Case(
                "multiples_vector_512",
                "§1.2, 256 seeds, 512-bit vectors preferred",
                at_side,
                side,
                compiler_options=VECTOR_512,
            ),
        ]
    return out + _width_cases(gaussian, side, quick, platform)


def _width_cases(gaussian: Config, side: int, quick: bool, platform: str) -> list[Case]:
    """10-10-10 ReLU beside top-k, the `sparse` width's programs, a digits-sized 64-256-64."""
    epochs = 60 if quick else 300
    relu = _with_epochs(gaussian, epochs)
    topk = dataclasses.replace(relu, model=ModelConfig(n_hidden=10, activation="topk", k=3))
    wide = _with_epochs(
        Config(
            data=DataConfig(kind="gaussian", n_samples=1797, n_features=64),
            model=ModelConfig(n_hidden=256, activation="relu"),
            optim=gaussian.optim,
            train=TrainConfig(batch_size=100),
        ),
        2 if quick else 10,
    )
    out = [
        Case("relu_10", "10-10-10 ReLU, randn(1000, 10), 256 seeds", relu, side),
        Case("topk_10", "10-10-10 top-k (k=3), randn(1000, 10), 256 seeds", topk, side),
    ]
    if platform == "cpu":
        out += [
            Case(
                "relu_10_xla_loops",
                "10-10-10 ReLU, 256 seeds, XLA loops for reductions",
                relu,
                side,
                compiler_options=XLA_LOOPS,
            ),
        ]
    # The `sparse` experiment's width: 24-48-24 on 48 atoms, batch 64, its programs side by side.
    sparse_base = _with_epochs(experiments.get("sparse").base, 10 if quick else 50)
    out += [
        Case(
            f"sparse_{mechanism}",
            f"24-48-24 {what}, sparse data (48 atoms), 64 seeds",
            experiments.sparse.mechanism_config(mechanism, sparse_base, 3),
            64,
        )
        for mechanism, what in (
            ("relu", "ReLU"),
            ("topk", "top-k (k=3)"),
            ("topk_revive", "top-k (k=3), dead and rare units resampled"),
        )
    ]
    out += [
        Case(
            "wide_64_256", "64-256-64 ReLU, randn(1797, 64) (digits-sized), 256 seeds", wide, side
        ),
    ]
    if platform == "cpu":
        out += [
            Case(
                "wide_64_256_xla_loops",
                "64-256-64 ReLU, 256 seeds, XLA loops for reductions",
                wide,
                side,
                compiler_options=XLA_LOOPS,
            ),
        ]
    return out


def _rss_mib() -> float:
    """Peak resident set of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_peak_mib() -> float | None:
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def run_case(case: Case, repeats: int) -> dict[str, Any]:
    """Train `case` `repeats` times in this process (compiled once); timings, FLOPs and memory."""
    rss_start = _rss_mib()
    if case.shuffle == "jax.random.permutation":
        # The straight port's shuffle, for comparison only (this process is the case's own).
        shuffle.feistel_permutation = lambda key, n: jax.random.permutation(key, n)
        cfg = dataclasses.replace(
            case.config, train=dataclasses.replace(case.config.train, shuffle="feistel")
        )
    else:
        cfg = case.config
    n_devices = min(case.n_seeds, len(jax.devices()))  # as train_seeds uses them
    options = case.compiler_options
    first = runner.train_seeds(cfg, case.n_seeds, compiler_options=options)
    rss_compiled = _rss_mib()
    runs = [first] + [
        runner.train_seeds(cfg, case.n_seeds, compiler_options=options) for _ in range(repeats - 1)
    ]
    times = [r.timing["train_s"] for r in runs]
    steps = case.n_seeds * cfg.train.epochs * train.steps_per_epoch(cfg)
    best, median = steps / min(times), steps / statistics.median(times)
    flops = matmul_flops_per_seed_step(cfg)
    return {
        "name": case.name,
        "what": case.what,
        "n_seeds": case.n_seeds,
        "devices": n_devices,
        "epochs": cfg.train.epochs,
        "steps_per_epoch": train.steps_per_epoch(cfg),
        "shape": f"{cfg.data.n_features}-{cfg.model.n_hidden}-{cfg.data.n_features}",
        "activation": cfg.model.activation,
        "shuffle": case.shuffle if case.shuffle != "config" else cfg.train.shuffle,
        "compiler_options": options,
        "repeats": repeats,
        "compile_s": first.timing["compile_s"],
        "train_s_best": min(times),
        "train_s_all": times,
        "seed_steps_per_s_best": best,
        "seed_steps_per_s_median": median,
        "matmul_flops_per_seed_step": flops,
        "xla_flops_per_seed_step": xla_flops_per_seed_step(cfg),
        "gflops_best": best * flops / 1e9,
        "final_loss_median": float(np.nanmedian(first.history_SxAxE[..., -1])),
        "rss_start_mib": rss_start,
        "rss_after_compile_mib": rss_compiled,
        "rss_peak_mib": _rss_mib(),
        "device_peak_mib": _device_peak_mib(),
    }


def matmul_peak(n: int, repeats: int) -> dict[str, Any]:
    """GFLOP/s of one float32 [n, n] @ [n, n] matmul per device, all devices at once (best run).

    At jax's default matmul precision, as the training runs (on recent NVIDIA GPUs that may be
    TF32, not full float32)."""
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    key_a, key_b = jax.random.split(jax.random.key(0))
    shape = (len(devices), n, n)
    a = jax.device_put(jax.random.normal(key_a, shape, jnp.float32), sharding)
    b = jax.device_put(jax.random.normal(key_b, shape, jnp.float32), sharding)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3 * len(devices)
    return {
        "n": n,
        "devices": len(devices),
        "seconds_best": min(times),
        "gflops_best": flops / min(times) / 1e9,
        "gflops_median": flops / statistics.median(times) / 1e9,
    }


def environment() -> dict[str, Any]:
    """Where the figures come from: devices, versions, flags, and how busy the machine was."""
    import jaxlib

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": len(jax.devices()),
        "cpus": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": list(os.getloadavg()),
    }


def _child(spec_json: str) -> None:
    """Entry point of a case's subprocess: run one spec, print its result as one JSON line."""
    spec = json.loads(spec_json)
    if spec["kind"] == "matmul":
        result = matmul_peak(spec["n"], spec["repeats"])
    elif spec["kind"] == "environment":
        result = environment()
    else:
        result = run_case(Case.from_json(spec["case"]), spec["repeats"])
    print(json.dumps(result))


def run_in_subprocess(spec: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """`_child(spec)` in a fresh Python with this jaxae and this environment; an error is returned
    as `{"error": ...}` (the last lines of its stderr), not raised."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    code = "import sys; from jaxae.benchmark import _child; _child(sys.argv[1])"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return {
            "error": "\n".join(out.stderr.strip().splitlines()[-5:]) or f"exit {out.returncode}"
        }
    return json.loads(lines[-1])


def _merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's results over its rounds: every timed run counts; memory is the largest peak."""
    done = [r for r in rounds if "error" not in r]
    if not done:
        return rounds[-1]
    out = dict(done[0])
    times = [t for r in done for t in r["train_s_all"]]
    steps = done[0]["seed_steps_per_s_best"] * done[0]["train_s_best"]
    out.update(
        rounds=len(done),
        failed_rounds=len(rounds) - len(done),
        compile_s=statistics.median(r["compile_s"] for r in done),
        train_s_best=min(times),
        train_s_all=times,
        seed_steps_per_s_best=steps / min(times),
        seed_steps_per_s_median=steps / statistics.median(times),
        gflops_best=steps / min(times) * done[0]["matmul_flops_per_seed_step"] / 1e9,
        rss_start_mib=min(r["rss_start_mib"] for r in done),
        rss_peak_mib=max(r["rss_peak_mib"] for r in done),
    )
    return out


def run_all(
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
    quick: bool = False,
    repeats: int = 3,
    progress: Any = None,
    timeout_s: float | None = None,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Environment, the matmul yardstick and the cases of `cases(seeds, quick)`.

    The cases run in `repeats` rounds, every case once per round, each run a fresh process (given
    up after `timeout_s`): on a shared machine the load changes over minutes, and rounds spread
    that change over all cases alike, so the rows of one run compare. With `only`, the cases whose
    names start with one of its prefixes. `progress(line)` is called before each process.
    """
    say = progress or (lambda line: None)
    out: dict[str, Any] = {"environment": run_in_subprocess({"kind": "environment"})}
    platform = out["environment"].get("platform", "cpu")
    n = (1024 if quick else 2048) if platform == "cpu" else 8192  # an accelerator needs more work
    todo = [c for c in cases(seeds, quick, platform) if not only or c.name.startswith(only)]
    matmuls: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in todo}
    out["load_average_rounds"] = []
    for r in range(repeats):
        out["load_average_rounds"].append(os.getloadavg()[0])
        say(f"round {r + 1}/{repeats}: matmul yardstick")
        matmuls.append(run_in_subprocess({"kind": "matmul", "n": n, "repeats": 3}))
        for case in todo:
            if r >= (case.rounds or repeats):
                continue
            say(f"round {r + 1}/{repeats}: {case.name}")
            spec = {"kind": "case", "case": case.to_json(), "repeats": case.repeats}
            runs[case.name].append(run_in_subprocess(spec, timeout_s))
    good = [m for m in matmuls if "error" not in m]
    out["matmul"] = max(good, key=lambda m: m["gflops_best"]) if good else matmuls[-1]
    out["matmul"]["gflops_all"] = [m["gflops_best"] for m in good]
    results = []
    for case in todo:
        merged = _merge(runs[case.name])
        results.append({"name": case.name, "what": case.what, "n_seeds": case.n_seeds, **merged})
    out["cases"] = results
    out["load_average_end"] = list(os.getloadavg())
    peak = out["matmul"].get("gflops_best")
    for r in results:
        if peak and "gflops_best" in r:
            r["fraction_of_matmul_peak"] = r["gflops_best"] / peak
    out["ratios_to_relu"] = sparse_ratios(out)
    return out


def table(out: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per case."""
    env, mm = out["environment"], out["matmul"]
    lines = [
        f"{env.get('devices')} x {env.get('device_kind')} ({env.get('platform')}), "
        f"jax {env.get('jax')}, XLA_FLAGS={env.get('xla_flags')!r}, "
        "load average (1 min) at each round's start: "
        + ", ".join(f"{x:.1f}" for x in out["load_average_rounds"])
        + f"; at the end {out['load_average_end'][0]:.1f}",
        f"matmul yardstick: {mm.get('gflops_best', float('nan')):.1f} GFLOP/s best of rounds "
        f"{[round(g) for g in mm.get('gflops_all', [])]} "
        f"(float32 {mm.get('n')}^2 @ {mm.get('n')}^2 on each device)",
        "",
        "| case | seeds | epochs | compile s | train s | seed-steps/s best (median) | "
        "GFLOP/s | of matmul | peak RSS MiB (+start-up) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["cases"]:
        if "error" in r:
            lines.append(
                f"| {r['what']} | {r['n_seeds']:,} | error: {r['error'].splitlines()[-1]} |"
            )
            continue
        device = f"; device {r['device_peak_mib']:.0f}" if r.get("device_peak_mib") else ""
        lines.append(
            f"| {r['what']} | {r['n_seeds']:,} | {r['epochs']:,} | {r['compile_s']:.2f} | "
            f"{r['train_s_best']:.3f} | {r['seed_steps_per_s_best']:,.0f} "
            f"({r['seed_steps_per_s_median']:,.0f}) | {r['gflops_best']:.2f} | "
            f"{100 * r.get('fraction_of_matmul_peak', float('nan')):.1f}% | "
            f"{r['rss_peak_mib']:.0f} (+{r['rss_peak_mib'] - r['rss_start_mib']:.0f}){device} |"
        )
    ratios = sparse_ratios(out)
    if ratios:
        against = "; ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items())
        lines += ["", f"Against ReLU of the same width and seeds (seed-steps/s, best): {against}"]
    if "torch" in out:
        lines += ["", "PyTorch (one thread): " + json.dumps(out["torch"])]
    return "\n".join(lines)


# (case, its ReLU reference): the sparse mechanisms' speed beside ReLU at the same width and seeds.
RATIO_PAIRS = (
    ("topk_10", "relu_10"),
    ("sparse_topk", "sparse_relu"),
    ("sparse_topk_revive", "sparse_relu"),
)


def sparse_ratios(out: dict[str, Any]) -> dict[str, float]:
    """Seed-steps/s of each top-k case over its ReLU reference's, for the pairs both measured."""
    best = {
        r["name"]: r["seed_steps_per_s_best"] for r in out["cases"] if "seed_steps_per_s_best" in r
    }
    pairs = [(case, ref) for case, ref in RATIO_PAIRS if case in best and ref in best]
    return {case: best[case] / best[ref] for case, ref in pairs}


if __name__ == "__main__":
    _child(sys.argv[1])
