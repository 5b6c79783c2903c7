"""The one place the optimizer is built: an explicit optax chain of Adam and weight decay.

Where weight decay sits in the chain is the whole difference between the two PyTorch optimizers:

- `decoupled=False` reproduces `torch.optim.Adam(lr, weight_decay=wd)`: L2 regularisation, `wd * p`
  is added to the gradient *before* Adam's moments, so Adam rescales it like any gradient.
- `decoupled=True` reproduces `torch.optim.AdamW(lr, weight_decay=wd)`: `wd * p` is added *after*
  Adam's scaling and then multiplied by the learning rate (`p -= lr * (adam + wd * p)`), as
  `optax.adamw` does.
"""

from __future__ import annotations

import jax
import optax

from jaxae.config import OptimConfig


def learning_rate_schedule(
    cfg: OptimConfig, learning_rate: jax.Array | float, total_steps: int | None
) -> jax.Array | float | optax.Schedule:
    """The step size, or a schedule of it over `total_steps` optimizer steps (`optim.schedule`)."""
    if cfg.schedule == "constant":
        return learning_rate
    if total_steps is None:
        raise ValueError(f"optim.schedule={cfg.schedule!r} needs the number of training steps")
    shape = optax.cosine_decay_schedule(1.0, max(total_steps - 1, 1), alpha=cfg.final_lr_ratio)
    return lambda count: learning_rate * shape(count)


def make_optimizer(
    cfg: OptimConfig,
    learning_rate: jax.Array | float | None = None,
    weight_decay: jax.Array | float | None = None,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """The optax chain `cfg` describes.

    `learning_rate` and `weight_decay` override the config's values; they may be traced arrays, so
    one compiled program can train many values of them side by side (vmapped). `total_steps`, the
    run's number of optimizer steps, is what a learning-rate schedule spans.
    """
    lr = learning_rate_schedule(
        cfg, cfg.learning_rate if learning_rate is None else learning_rate, total_steps
    )
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    adam = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.decoupled:
        chain = optax.chain(adam, optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
    else:
        chain = optax.chain(optax.add_decayed_weights(wd), adam, optax.scale_by_learning_rate(lr))
    # One flat vector instead of a tree of small arrays: the same arithmetic in a few fused kernels
    # rather than a few per parameter, which is what a step of a tiny model costs on CPU.
    return optax.flatten(chain)
