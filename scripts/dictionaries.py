"""The revived top-k (k = active) on several draws of `sparse`'s dictionary, side by side.

For each data seed (`--set data.seed=S` of `jaxae run sparse`), the share of seeds whose decoder
recovers every atom (GT-MCC >= `sparse.AGREE`) with and without the split of the busiest unit
(`loss.resample_split`), each draw's coherence and least-used atom (`sparse.draw_of`), and every
program's seed-steps/s beside plain ReLU's on the first draw. Prints one Markdown table and writes
the figures as JSON to `--out` (atomically; an existing file is refused):

    python scripts/dictionaries.py [--data-seeds 0,1,...,7] [--seeds 64] [--out dictionaries.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this script is in

from jaxae.cores import use_every_core


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def train_scored(cfg, n_seeds: int) -> dict:
    """Seeds `0..n_seeds-1` of `cfg` (on data with true atoms): the share recovering every atom,
    the median and least GT-MCC, seed-steps/s."""
    import jax
    import numpy as np

    from jaxae import data, metrics, runner
    from jaxae.experiments import sparse
    from jaxae.experiments.base import decoder_rows

    result = runner.train_seeds(cfg, n_seeds)
    w = decoder_rows(result.state.params)
    w_SxHxD = w.reshape(w.shape[0], -1, *w.shape[-2:])[:, 0]
    atoms_MxD = np.asarray(data.ground_truth(jax.random.key(cfg.data.seed), cfg.data))
    gt = metrics.ground_truth_mcc(w_SxHxD, atoms_MxD)["gt_mcc"]
    return {
        "share": float(np.mean(gt >= sparse.AGREE)),
        "gt_mcc_median": float(np.median(gt)),
        "gt_mcc_min": float(gt.min()),
        "seed_steps_per_s": result.timing["seed_steps_per_s"],
    }


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, after `--out` (if given) is checked not to exist; then every core in use."""
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists: choose another path")
    use_every_core()
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seeds", type=_ints, default=tuple(range(8)))
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None, help="default: sparse's")
    parser.add_argument("--out", type=Path, default=None)
    args = parse_args(parser, argv)

    from jaxae.experiments import sparse
    from jaxae.experiments.base import with_

    rows = []
    for i, data_seed in enumerate(args.data_seeds):
        base = with_(sparse.base_config(), data={"seed": data_seed})
        if args.epochs is not None:
            base = with_(base, train={"epochs": args.epochs})
        k = base.data.active
        split = sparse.mechanism_config("topk_revive", base, k)
        plain = with_(split, loss={"resample_split": 0.0})
        row = {
            "data_seed": data_seed,
            **dataclasses.asdict(sparse.draw_of(base)),
            "split": train_scored(split, args.seeds),
            "no_split": train_scored(plain, args.seeds),
        }
        if i == 0:
            row["relu"] = train_scored(sparse.mechanism_config("relu", base, 0), args.seeds)
        rows.append(row)
        print(json.dumps(row), flush=True)

    relu_rate = rows[0]["relu"]["seed_steps_per_s"]
    print(
        "\n| data seed | coherence | least-used atom | every atom, split | without | "
        "split seed-steps/s vs ReLU |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["split"]["seed_steps_per_s"] / relu_rate
        print(
            f"| {row['data_seed']} | {row['coherence']:.3f} | {row['least_used']} | "
            f"{row['split']['share']:.3f} | {row['no_split']['share']:.3f} | {ratio:.2f}x |"
        )
    if args.out is not None:
        from jaxae import results

        results.write_json(args.out, {"seeds": args.seeds, "rows": rows})


if __name__ == "__main__":
    main()
