"""Throughput of jaxae's trainer on the tutorial's §1.2 set-up, side by side with references.

Prints one JSON object. In one run it measures, after compilation:
- jaxae at 1 seed and at `--seeds` seeds (the seed axis over every XLA device),
- the same loop with `jax.random.permutation` as the shuffle (the straight port's shuffle),
- and, when PyTorch is installed (`pip install torch==2.13.0`), the tutorial's own loop and the best
  hand-batched PyTorch (scripts/torch_baseline.py), so ratios come from one machine at one time.

Run with two XLA CPU devices, as on a 2-core machine:
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python scripts/benchmark.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax

from jaxae import experiments, train


def measure(cfg, n_seeds: int, repeats: int) -> dict:
    """Best of `repeats` runs (compilation is cached after the first)."""
    runs = [train.train_seeds(cfg, n_seeds) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.timing["train_s"])
    return {
        "n_seeds": n_seeds,
        "compile_s": round(runs[0].timing["compile_s"], 3),
        "train_s": round(best.timing["train_s"], 4),
        "seed_steps_per_s": round(best.timing["seed_steps_per_s"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    cfg = experiments.get("multiples").config
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=args.epochs))
    out: dict = {
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "epochs": args.epochs,
        "jaxae_1_seed": measure(cfg, 1, args.repeats),
        "jaxae": measure(cfg, args.seeds, args.repeats),
    }
    fast_shuffle = train.shuffle_indices
    train.shuffle_indices = lambda key, n: jax.random.permutation(key, n)
    train.programs.cache_clear()
    try:
        out["jaxae_with_jax_random_permutation"] = measure(cfg, args.seeds, 1)
    finally:
        train.shuffle_indices = fast_shuffle
        train.programs.cache_clear()

    if args.torch:
        try:
            sys.path.insert(0, str(Path(__file__).parent))
            import torch
            import torch_baseline

            torch.set_num_threads(1)
            out["torch_tutorial_loop"] = torch_baseline.tutorial_loop(min(args.epochs, 300))
            out["torch_batched"] = torch_baseline.batched_loop(1024, 20)
        except ImportError:
            out["torch"] = "not installed: pip install torch==2.13.0"
    jaxae_rate = out["jaxae"]["seed_steps_per_s"]
    ratios = {
        "jaxae / jax.random.permutation shuffle": jaxae_rate
        / out["jaxae_with_jax_random_permutation"]["seed_steps_per_s"]
    }
    if "torch_batched" in out:
        ratios["jaxae / torch batched"] = jaxae_rate / out["torch_batched"]["seed_steps_per_s"]
        ratios["jaxae / torch tutorial loop"] = (
            jaxae_rate / out["torch_tutorial_loop"]["steps_per_s"]
        )
    out["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
