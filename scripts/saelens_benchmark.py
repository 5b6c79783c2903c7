"""Every sparse mechanism on SAELens's synthetic defaults, from a random start and from the truth.

The data (jaxae's own Bernoulli generator): 32 atoms in 16 dimensions, each firing independently
with probability 0.1 at magnitude 1, 50,000 samples; width 32 and `sparse`'s recipe (Adam 3e-3,
cosine decay, batch 64), 50 epochs (39,100 steps). Each arm trains twice on the same seeds: from
its usual random start and from the oracle start (`model.init=atoms`: decoder and encoder at the
true atoms), which shows whether the truth is where the mechanism's training ends once there.
Prints one Markdown table (the share of seeds recovering every atom at GT-MCC >= `sparse.AGREE`,
median and least GT-MCC, per start) and writes the figures as JSON to `--out` (atomically; an
existing file is refused):

    python scripts/saelens_benchmark.py [--seeds 16] [--epochs 50] [--data-seed 0]
        [--arms "l1 w=0.03,l1_revive w=0.03"] [--out saelens.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this script is in

from dictionaries import parse_args, train_scored

# SAELens's synthetic defaults, as `--set` values of `jaxae run sparse`.
DATA = {
    "n_features": 16,
    "n_atoms": 32,
    "n_samples": 50_000,
    "firing": "bernoulli",
    "firing_p": 0.1,
    "magnitude": "one",
}
# (mechanism, knob value): the knob of `sparse.KNOBS`, over `sparse`'s grids and one step past.
ARMS = (
    ("relu", None),
    ("topk", 3),
    ("topk", 4),
    ("topk_revive", 3),
    ("topk_revive", 4),
    ("batchtopk", 3),
    ("batchtopk", 4),
    ("jumprelu", 0.003),
    ("jumprelu", 0.01),
    ("jumprelu", 0.03),
    ("l1", 0.01),
    ("l1", 0.03),
    ("l1", 0.1),
    ("l1_revive", 0.01),
    ("l1_revive", 0.03),
    ("l1_revive", 0.1),
)


def arm_config(mechanism: str, value: float | None, epochs: int, data_seed: int = 0):
    """The config of one arm, its knob in the config itself (`model.k` or `loss.weight`)."""
    from jaxae.experiments import sparse
    from jaxae.experiments.base import with_

    base = with_(
        sparse.base_config(),
        data={**DATA, "seed": data_seed},
        model={"n_hidden": DATA["n_atoms"]},
        train={"epochs": epochs},
    )
    if mechanism in sparse.K_MECHANISMS:
        return sparse.mechanism_config(mechanism, base, int(value))
    cfg = sparse.mechanism_config(mechanism, base, 0)
    return cfg if value is None else with_(cfg, loss={"weight": value})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--data-seed", type=int, default=0, help="the draw of atoms")
    parser.add_argument(
        "--arms", default=None, help="comma-separated labels of ARMS to train (default: all)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parse_args(parser, argv)

    from jaxae.experiments import sparse
    from jaxae.experiments.base import with_

    rows = []
    labels = [sparse.label(mechanism, value) for mechanism, value in ARMS]
    chosen = None if args.arms is None else set(args.arms.split(","))
    if chosen is not None and not chosen <= set(labels):
        unknown = ", ".join(sorted(chosen - set(labels)))
        parser.error(f"--arms {unknown}: allowed are {', '.join(labels)}")
    for label, (mechanism, value) in zip(labels, ARMS, strict=True):
        if chosen is not None and label not in chosen:
            continue
        cfg = arm_config(mechanism, value, args.epochs, args.data_seed)
        row = {
            "arm": label,
            "random": train_scored(cfg, args.seeds),
            "oracle": train_scored(with_(cfg, model={"init": "atoms"}), args.seeds),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"\n| arm | every atom, random start ({args.seeds} seeds) | GT-MCC median (least) | "
        "every atom, oracle start | GT-MCC median (least) |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        r, o = row["random"], row["oracle"]
        print(
            f"| {row['arm']} | {r['share']:.3f} | {r['gt_mcc_median']:.4f} "
            f"({r['gt_mcc_min']:.4f}) | {o['share']:.3f} | {o['gt_mcc_median']:.4f} "
            f"({o['gt_mcc_min']:.4f}) |"
        )
    if args.out is not None:
        from jaxae import results

        results.write_json(
            args.out,
            {
                "seeds": args.seeds,
                "epochs": args.epochs,
                "data": {**DATA, "seed": args.data_seed},
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
