"""PyTorch reference timings for scripts/benchmark.py.

Times the tutorial's 10-1-10 autoencoder (Linear(10, 1) -> ReLU -> Linear(1, 10), MSE loss,
Adam lr=1e-3 with weight_decay=1e-3, batches of 100 out of 1000 rows) three ways:

* ``tutorial_loop(dataloader=True)``: the tutorial as written, one seed, with a DataLoader;
* ``tutorial_loop(dataloader=False)``: the same with a manual randperm and slicing;
* ``batched_loop``: many independent seeds trained at once with batched weights, hand-written
  gradients and a hand-written Adam, the fastest plain-PyTorch form we know of.

Needs ``pip install torch==2.13.0`` (a CPU build). ``main()`` pins torch to one thread per
process (``--threads`` to change it) so the figures compare with single-core JAX runs.

Usage: ``python scripts/torch_baseline.py [--epochs 1500] [--seeds 1024] [--batched-epochs 50]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

N_ROWS = 1000
N_FEATURES = 10
BATCH_SIZE = 100
LR = 1e-3
WEIGHT_DECAY = 1e-3
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8
# Parameters per seed: W1 (10) + b1 (1) + W2 (10) + b2 (10).
N_PARAMS = 31


def make_features(x: torch.Tensor) -> torch.Tensor:
    """Return the tutorial's features ``x*1 .. x*10`` stacked on a new last axis."""
    scales = torch.arange(1, N_FEATURES + 1, dtype=torch.float32)
    return x.unsqueeze(-1) * scales


def tutorial_loop(epochs: int, seed: int = 0, dataloader: bool = True) -> dict:
    """Train the tutorial's autoencoder for one seed with nn.Module, autograd and optim.Adam.

    Args:
        epochs: passes over the 1000 rows (10 steps each).
        seed: seeds torch's global RNG, which drives the data, the init and the shuffles.
        dataloader: shuffle with ``DataLoader(shuffle=True)`` as the tutorial does; if False,
            use ``torch.randperm`` and index the tensor directly.

    Returns:
        ``{"steps", "seconds", "steps_per_s", "final_loss"}``; ``seconds`` covers the training
        loop only, and ``final_loss`` is the loss of the last batch.
    """
    from torch import nn, optim
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    x = torch.round(torch.rand(N_ROWS) * 200)
    features = make_features(x)
    model = nn.Sequential(nn.Linear(N_FEATURES, 1), nn.ReLU(), nn.Linear(1, N_FEATURES))
    criterion = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(TensorDataset(features), batch_size=BATCH_SIZE, shuffle=True)

    steps = 0
    loss = torch.tensor(float("nan"))
    start = time.perf_counter()
    for _ in range(epochs):
        if dataloader:
            batches = (batch for (batch,) in loader)
        else:
            perm = torch.randperm(N_ROWS)
            batches = (features[perm[i : i + BATCH_SIZE]] for i in range(0, N_ROWS, BATCH_SIZE))
        for batch in batches:
            optimizer.zero_grad()
            loss = criterion(model(batch), batch)
            loss.backward()
            optimizer.step()
            steps += 1
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "final_loss": float(loss.item()),
    }


def _param_views(flat: torch.Tensor, n_seeds: int) -> tuple[torch.Tensor, ...]:
    """Split a flat ``(n_seeds * 31,)`` buffer into W1 (S,10,1), b1 (S,1), W2 (S,1,10), b2 (S,10).

    Every parameter lives in one buffer so Adam runs as a handful of ops over all of them
    instead of a handful per parameter; each view stays contiguous so ``out=`` writes land
    in place.
    """
    s = n_seeds
    w1 = flat[: 10 * s].view(s, N_FEATURES, 1)
    b1 = flat[10 * s : 11 * s].view(s, 1)
    w2 = flat[11 * s : 21 * s].view(s, 1, N_FEATURES)
    b2 = flat[21 * s :].view(s, N_FEATURES)
    return w1, b1, w2, b2


def _init_params(n_seeds: int, generator: torch.Generator) -> torch.Tensor:
    """Return a flat parameter buffer drawn like nn.Linear's default init, per seed."""
    flat = torch.empty(n_seeds * N_PARAMS)
    w1, b1, w2, b2 = _param_views(flat, n_seeds)
    # nn.Linear draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound1 = 1.0 / N_FEATURES**0.5
    w1.uniform_(-bound1, bound1, generator=generator)
    b1.uniform_(-bound1, bound1, generator=generator)
    w2.uniform_(-1.0, 1.0, generator=generator)
    b2.uniform_(-1.0, 1.0, generator=generator)
    return flat


def _grads(
    params: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor, ...], xb: torch.Tensor
) -> torch.Tensor:
    """Write the per-seed MSE gradients for batch ``xb`` (S,100,10) into ``grads``.

    The gradients come out unscaled: the caller multiplies them by ``2 / xb[0].numel()``
    (MSELoss's mean over the batch's 100x10 elements) in one op over the flat buffer,
    which is cheaper than scaling the (S,100,10) residual. Returns the residual ``y - xb``
    so the caller can get the loss without another forward pass.
    """
    w1, b1, w2, b2 = params
    gw1, gb1, gw2, gb2 = grads
    n_seeds = xb.shape[0]
    # The hidden layer is kept as a row (S,1,100): bmm with a batch of rows runs several
    # times faster on CPU than with a batch of (100,10)x(10,1) matrix-vector products.
    pre = torch.baddbmm(b1.unsqueeze(2), w1.transpose(1, 2), xb.transpose(1, 2))
    h = pre.clamp_min(0.0)
    # A broadcast multiply beats a K=1 baddbmm for the outer product.
    resid = torch.addcmul(b2.unsqueeze(1), h.transpose(1, 2), w2).sub_(xb)  # (S,100,10)
    torch.bmm(h, resid, out=gw2)
    torch.sum(resid, dim=1, out=gb2)
    # ReLU's gradient at exactly 0 is 0, as in autograd.
    dh = torch.bmm(w2, resid.transpose(1, 2)).masked_fill_(pre <= 0, 0.0)  # (S,1,100)
    # gw1 is (S,10,1); its (S,1,10) view is the same memory, which bmm fills as a row.
    torch.bmm(dh, xb, out=gw1.view(n_seeds, 1, N_FEATURES))
    torch.sum(dh, dim=2, out=gb1)
    return resid


def _adam_step(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int
) -> None:
    """One torch.optim.Adam step (L2 weight decay folded into the gradient), in place."""
    g.add_(p, alpha=WEIGHT_DECAY)
    m.lerp_(g, 1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    bias_c1 = 1 - BETA1**step
    bias_c2 = 1 - BETA2**step
    # Same operation order as torch.optim.Adam's single-tensor path, so results agree closely.
    denom = v.sqrt().div_(bias_c2**0.5).add_(EPS)
    p.addcdiv_(m, denom, value=-LR / bias_c1)


def batched_loop(n_seeds: int, epochs: int, seed: int = 0) -> dict:
    """Train ``n_seeds`` independent copies of the tutorial at once, by hand, without autograd.

    Each seed gets its own data draw, its own init and its own shuffle every epoch; the
    weights are stacked on a leading seed axis, the forward pass uses ``torch.baddbmm`` and the
    gradients and Adam are written by hand (no autograd), all in place under ``no_grad``.

    Args:
        n_seeds: number of independent runs S.
        epochs: passes over the 1000 rows (10 steps each).
        seed: seeds the generator from which all S runs are drawn.

    Returns:
        ``{"n_seeds", "steps", "seconds", "seed_steps_per_s", "final_loss_median"}``, where
        ``steps`` counts steps of one seed, ``seed_steps_per_s`` is ``n_seeds * steps /
        seconds`` and ``final_loss_median`` is the median over seeds of the last batch's loss.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = torch.round(torch.rand(n_seeds, N_ROWS, generator=gen) * 200)
        features = make_features(x)  # (S,1000,10)
        flat_p = _init_params(n_seeds, gen)
        flat_g = torch.zeros_like(flat_p)
        flat_m = torch.zeros_like(flat_p)
        flat_v = torch.zeros_like(flat_p)
        params = _param_views(flat_p, n_seeds)
        grads = _param_views(flat_g, n_seeds)
        # MSELoss's mean over the batch's 100x10 elements, folded into the gradient buffer.
        grad_scale = 2.0 / (BATCH_SIZE * N_FEATURES)
        flat_rows = features.view(n_seeds * N_ROWS, N_FEATURES)
        row_offsets = torch.arange(n_seeds).unsqueeze(1) * N_ROWS
        perm = torch.empty(n_seeds, N_ROWS, dtype=torch.long)
        shuffled = torch.empty_like(features)
        flat_shuffled = shuffled.view(n_seeds * N_ROWS, N_FEATURES)

        steps = 0
        resid = torch.full((n_seeds, BATCH_SIZE, N_FEATURES), float("nan"))
        start = time.perf_counter()
        for _ in range(epochs):
            # A randperm per seed is ~6x faster than argsort over (S,1000) uniforms.
            for s in range(n_seeds):
                torch.randperm(N_ROWS, generator=gen, out=perm[s])
            # One row gather per epoch (index_select on the flattened rows is ~3x faster than
            # gather or advanced indexing) makes every batch below a contiguous slice.
            torch.index_select(flat_rows, 0, (perm + row_offsets).view(-1), out=flat_shuffled)
            for i in range(0, N_ROWS, BATCH_SIZE):
                resid = _grads(params, grads, shuffled[:, i : i + BATCH_SIZE])
                flat_g.mul_(grad_scale)
                steps += 1
                _adam_step(flat_p, flat_g, flat_m, flat_v, steps)
        seconds = time.perf_counter() - start
        losses = resid.square().mean(dim=(1, 2)).tolist()
    return {
        "n_seeds": n_seeds,
        "steps": steps,
        "seconds": seconds,
        "seed_steps_per_s": n_seeds * steps / seconds,
        "final_loss_median": statistics.median(losses),
    }


def main() -> None:
    """Run the three timings and print them as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1500, help="epochs for the tutorial loops")
    parser.add_argument("--seeds", type=int, default=1024, help="seeds for the batched loop")
    parser.add_argument(
        "--batched-epochs", type=int, default=50, help="epochs for the batched loop (kept short)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    # One thread so the figures compare with single-core JAX runs and don't fight each other.
    torch.set_num_threads(args.threads)
    result = {
        "tutorial_dataloader": tutorial_loop(args.epochs, args.seed, dataloader=True),
        "tutorial_plain": tutorial_loop(args.epochs, args.seed, dataloader=False),
        "batched": batched_loop(args.seeds, args.batched_epochs, args.seed),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
