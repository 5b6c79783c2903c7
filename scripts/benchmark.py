"""Throughput of jaxae's trainer, case by case, side by side in one run (jaxae/benchmark.py).

Prints the results as JSON (or writes them to `--out`), then as one Markdown table: §1.2 (10-1-10
ReLU) at 1, 64, 256, 1,024 and 4,096 seeds; at 256 seeds the exact sort shuffle and
`jax.random.permutation`, and on CPU two XLA options beside the defaults; 10-10-10 ReLU beside
top-k; a digits-sized 64-256-64 ReLU model; each with compile time, peak memory and GFLOP/s against
a large matmul measured in the same run. With PyTorch installed (`pip install torch==2.13.0`), also
the tutorial's loop and the best hand-batched PyTorch (scripts/torch_baseline.py).

Uses one XLA CPU device per core, as `jaxae` does (an XLA_FLAGS device count wins):
    python scripts/benchmark.py [--quick] [--seeds 1,64,256,1024,4096] [--out bench.json]
(The machine should be otherwise idle: on a shared one, compare rows of one run, not runs.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this script is in

from jaxae import benchmark
from jaxae.cores import use_every_core


def _seeds(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_seeds, default=benchmark.DEFAULT_SEEDS)
    parser.add_argument("--quick", action="store_true", help="a fifth of the epochs, one round")
    parser.add_argument("--repeats", type=int, default=None, help="rounds over all cases (3)")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here, not to stdout")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per case (else none)")
    parser.add_argument(
        "--only", type=lambda t: tuple(t.split(",")), default=(), help="case name prefixes"
    )
    args = parser.parse_args(argv)
    use_every_core()  # before any case process starts: they inherit XLA_FLAGS

    repeats = args.repeats or (1 if args.quick else 3)
    out = benchmark.run_all(
        args.seeds,
        args.quick,
        repeats,
        progress=lambda line: print(line, file=sys.stderr),
        timeout_s=args.timeout,
        only=args.only,
    )
    if args.torch:
        try:
            sys.path.insert(0, str(Path(__file__).parent))
            import torch
            import torch_baseline

            torch.set_num_threads(1)
            out["torch"] = {
                "tutorial_loop": torch_baseline.tutorial_loop(60 if args.quick else 300),
                "batched_1024_seeds": torch_baseline.batched_loop(1024, 5 if args.quick else 20),
            }
        except ImportError:
            out["torch"] = "not installed: pip install torch==2.13.0"
    text = json.dumps(out, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    else:
        print(text + "\n")
    print(benchmark.table(out))


if __name__ == "__main__":
    main()
