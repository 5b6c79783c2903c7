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


def make_optimizer(
    cfg: OptimConfig,
    learning_rate: jax.Array | float | None = None,
    weight_decay: jax.Array | float | None = None,
) -> optax.GradientTransformation:
    """The optax chain `cfg` describes.

    `learning_rate` and `weight_decay` override the config's values; they may be traced arrays, so
    one compiled program can train many values of them side by side (vmapped).
    """
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    adam = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.decoupled:
        chain = optax.chain(adam, optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
    else:
        chain = optax.chain(optax.add_decayed_weights(wd), adam, optax.scale_by_learning_rate(lr))
    # One flat vector instead of a tree of small arrays: the same arithmetic in a few fused kernels
    # rather than a few per parameter, which is what a step of a tiny model costs on CPU.
    return optax.flatten(chain)
