"""The one place the optimizer is built: an explicit optax chain of weight decay and Adam or L-BFGS.

Where weight decay sits in Adam's chain is the whole difference between the two PyTorch optimizers:

- `decoupled=False` reproduces `torch.optim.Adam(lr, weight_decay=wd)`: L2 regularisation, `wd * p`
  is added to the gradient *before* Adam's moments, so Adam rescales it like any gradient.
- `decoupled=True` reproduces `torch.optim.AdamW(lr, weight_decay=wd)`: `wd * p` is added *after*
  Adam's scaling and then multiplied by the learning rate (`p -= lr * (adam + wd * p)`), as
  `optax.adamw` does.

`name="lbfgs"` is full-batch L-BFGS (`optax.lbfgs`, with optax's default zoom line search) on the
objective `loss + wd / 2 * |p|^2`: `add_decayed_weights` first adds `wd * p` to the loss's gradient,
so L-BFGS sees the objective's gradient, and its line search evaluates the same objective (the
caller passes `line_search_args(...)` to `update`). It has no learning rate.

`decay_biases=False` decays the kernels (leaves named "kernel": W1, W2) only, in both optimizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxae.config import OptimConfig

# optax.lbfgs's own zoom line search, each step's search starting from the full quasi-Newton step
# (learning rate 1), as optax recommends for quasi-Newton methods; at most 10 evaluations a step
# (optax's default is 20). Where L-BFGS makes progress its searches end well before (Ng's exercise
# on `patches` trains to the same parameters with 10 or 20); at a stationary point every search
# runs to the limit, and under `vmap` every seed waits for the slowest: the limit is what a stalled
# seed costs (`patches`' `ng_zca` stalls at the mean; the README has the figures).
LINESEARCH_STEPS = 10


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


def kernel_mask(params: Any) -> Any:
    """True at the leaves named "kernel" (the weight matrices), False elsewhere (the biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def decay_mask(cfg: OptimConfig) -> Callable[[Any], Any] | None:
    """The mask of the parameters weight decay applies to: None (all) unless `decay_biases` is
    False (the kernels only)."""
    return None if cfg.decay_biases else kernel_mask


def decay_penalty(params: Any, cfg: OptimConfig, weight_decay: jax.Array | float) -> jax.Array:
    """`wd / 2 * |p|^2` over the parameters weight decay applies to: its gradient is the `wd * p`
    that `add_decayed_weights` adds."""
    leaves = jax.tree.leaves(params)
    if not cfg.decay_biases:
        chosen = jax.tree.leaves(kernel_mask(params))
        leaves = [p for p, kernel in zip(leaves, chosen, strict=True) if kernel]
    return weight_decay / 2 * sum(jnp.sum(jnp.square(p)) for p in leaves)


def objective_with_decay(
    value_fn: Callable[[Any], jax.Array], cfg: OptimConfig, weight_decay: jax.Array | float
) -> Callable[[Any], jax.Array]:
    """`params -> value_fn(params) + wd / 2 * |p|^2`: the objective L-BFGS minimises."""
    return lambda params: value_fn(params) + decay_penalty(params, cfg, weight_decay)


def line_search_args(
    value_fn: Callable[[Any], jax.Array],
    value: jax.Array,
    grads: Any,
    params: Any,
    cfg: OptimConfig,
    weight_decay: jax.Array | float,
) -> dict[str, Any]:
    """The extra arguments of an L-BFGS `update` (its line search's): the objective's value,
    gradient and function at `params`, from the loss's `value_fn`, `value` and `grads` there."""
    penalty, penalty_grads = jax.value_and_grad(decay_penalty)(params, cfg, weight_decay)
    return {
        "value": value + penalty,
        "grad": jax.tree.map(jnp.add, grads, penalty_grads),
        "value_fn": objective_with_decay(value_fn, cfg, weight_decay),
    }


def lbfgs_step(
    opt: optax.GradientTransformationExtraArgs,
    grads: Any,
    opt_state: Any,
    params: Any,
    *,
    value_fn: Callable[[Any], jax.Array],
    value: jax.Array,
    cfg: OptimConfig,
    weight_decay: jax.Array | float,
    stopped: jax.Array,
) -> tuple[Any, Any, jax.Array]:
    """One L-BFGS iteration of one seed, which stops where minFunc would:
    `(params, opt_state, stopped)`.

    minFunc (the optimiser of Ng's exercise) only ever lowers the objective (its Wolfe line search
    falls back to its best point, at worst the start), and ends a run at the first iteration that
    lowers it by less than `progTol`. optax's line search accepts approximate Wolfe points that
    may raise it slightly. With `cfg.progress_tol` set, a step that does not lower the objective is
    not taken, and the seed's `stopped` flag is set at the first iteration that lowers it by at
    most `progress_tol`. A stopped seed's later line searches see a constant objective with zero
    slope, which their first trial accepts: under `vmap` it then costs one evaluation an iteration
    instead of the search's limit, which every other seed would wait for, and its parameters stay.
    With `progress_tol=None` every step optax's search returns is taken and no seed stops.
    """
    extra = line_search_args(value_fn, value, grads, params, cfg, weight_decay)
    if cfg.progress_tol is None:
        updates, opt_state = opt.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state, stopped
    f0, objective = extra["value"], extra["value_fn"]

    def zero_if_stopped(tree: Any) -> Any:
        return jax.tree.map(lambda g: jnp.where(stopped, jnp.zeros_like(g), g), tree)

    updates, new_state = opt.update(
        zero_if_stopped(grads),
        opt_state,
        params,
        value=f0,
        grad=zero_if_stopped(extra["grad"]),
        value_fn=lambda p: jnp.where(stopped, f0, objective(p)),
    )
    f1 = optax.tree_utils.tree_get(new_state, "value")
    take = ~stopped & ~(f1 >= f0)  # a NaN step is taken, so that the run's divergence shows

    def pick(new: Any, old: Any) -> Any:
        return jax.tree.map(lambda n, o: jnp.where(take, n, o), new, old)

    params = pick(optax.apply_updates(params, updates), params)
    return params, pick(new_state, opt_state), stopped | (f0 - f1 <= cfg.progress_tol)


def _adam(
    cfg: OptimConfig, lr: jax.Array | float | optax.Schedule, wd: jax.Array | float
) -> optax.GradientTransformation:
    adam = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    step = optax.scale_by_learning_rate(lr)
    mask = decay_mask(cfg)
    if mask is None:
        decay = optax.add_decayed_weights(wd)
        chain = optax.chain(adam, decay, step) if cfg.decoupled else optax.chain(decay, adam, step)
        # One flat vector instead of a tree of small arrays: the same arithmetic in a few fused
        # kernels rather than a few per parameter, which is what a step of a tiny model costs on
        # CPU.
        return optax.flatten(chain)
    # A mask needs the tree's leaf names: the decay runs on the tree, Adam on one flat vector.
    decay = optax.add_decayed_weights(wd, mask)
    if cfg.decoupled:
        return optax.chain(optax.flatten(adam), decay, step)
    return optax.chain(decay, optax.flatten(optax.chain(adam, step)))


def _lbfgs(cfg: OptimConfig, wd: jax.Array | float) -> optax.GradientTransformationExtraArgs:
    # Not flattened: the line search calls the caller's objective with the parameters it is given.
    linesearch = optax.scale_by_zoom_linesearch(
        max_linesearch_steps=LINESEARCH_STEPS, initial_guess_strategy="one"
    )
    return optax.chain(
        optax.add_decayed_weights(wd, decay_mask(cfg)),
        optax.lbfgs(memory_size=cfg.memory_size, linesearch=linesearch),
    )


def make_optimizer(
    cfg: OptimConfig,
    learning_rate: jax.Array | float | None = None,
    weight_decay: jax.Array | float | None = None,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """The optax chain `cfg` describes.

    `learning_rate` and `weight_decay` override the config's values; they may be traced arrays, so
    one compiled program can train many values of them side by side (vmapped). `total_steps`, the
    run's number of optimizer steps, is what a learning-rate schedule spans. L-BFGS ignores
    `learning_rate`; its `update` needs `line_search_args(...)` as keyword arguments.
    """
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    if cfg.name == "lbfgs":
        return _lbfgs(cfg, wd)
    lr = learning_rate_schedule(
        cfg, cfg.learning_rate if learning_rate is None else learning_rate, total_steps
    )
    return _adam(cfg, lr, wd)
