"""A finished run directory read back: its configs, arms, metrics and trained autoencoders.

    import jaxae

    run = jaxae.load("runs/sparse")
    ae = run.autoencoder("topk k=3", seed=0)  # jitted encode / decode / __call__ of one seed
    h_NxH = ae.encode(x_NxD)
    atoms_HxD = ae.atoms  # the decoder rows in use, one per hidden unit
    every = run.autoencoders("topk k=3")  # all seeds at once: outputs [S, ...]

`load` reads metrics.json and the Orbax checkpoint `params/` (every arm's parameters, leading axis
seed) that `jaxae run` writes (results.py). Each arm's own config is rebuilt as the run built it:
the named experiment with metrics.json's `overrides` (`experiments.with_overrides`), checked
against the config metrics.json recorded; an arm's per-arm values (its k, its hidden units in use)
come from metrics.json `arms.<label>` (`hyper`, `n_hidden`).

Hidden units an arm masks (the hidden-size sweeps train every size inside the widest model; the
masked units are always the last ones, held at zero) are dropped: an arm's autoencoder has exactly
the units it uses, which computes the same codes and reconstructions as the masked model.

Activations that are more than a function of each pre-activation (jaxae/model.py) come back as
they are used after training: a JumpReLU arm with its learned per-unit thresholds
(`jump.log_threshold`, the units in use), a BatchTopK arm with BatchTopK's inference rule, each unit
firing where its pre-activation exceeds one global threshold theta (`TrainedAutoencoder.threshold`),
estimated once per seed from the data the arm trained on (`Run.data`), its own k and
`train.batch_size` (`Autoencoder.batch_threshold`, as `jaxae export` writes it), rather than
training's rule (the k x B largest pre-activations of a batch, which makes a row's code depend on
the other rows it is encoded with).

A swept run (`jaxae run --sweep`) keeps one complete run per grid point under `grid/`; `load` takes
a grid point's directory, not the sweep's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import data, experiments, results, schema
from jaxae.config import K_ACTIVATIONS, Config, invalid
from jaxae.model import Autoencoder


@functools.cache
def _functions(model: Autoencoder, batched: bool) -> tuple[Callable[..., Any], ...]:
    """Jitted `(encode, decode, call, decoder rows)` of `model`'s params, vmapped over seeds when
    `batched` (one compilation per model and shape, whichever seed or arm it serves). `encode` and
    `call` take BatchTopK's inference `threshold` (one per seed when batched; None otherwise)."""

    def encode(params: Any, x: jax.Array, threshold: jax.Array | None) -> jax.Array:
        return model.apply(params, x, None, None, threshold, method="encode")

    def decode(params: Any, h: jax.Array) -> jax.Array:
        return model.apply(params, h, method="decode")

    def both(params: Any, x: jax.Array, threshold: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        return model.apply(params, x, None, None, threshold)

    def rows(params: Any) -> jax.Array:
        return model.apply(params, method="decoder_weights")

    if not batched:
        return jax.jit(encode), jax.jit(decode), jax.jit(both), jax.jit(rows)

    def decode_each(params: Any, h: jax.Array) -> jax.Array:  # h_SxNxH per seed or h_NxH shared
        return jax.vmap(decode, in_axes=(0, 0 if h.ndim == 3 else None))(params, h)

    return (
        jax.jit(jax.vmap(encode, in_axes=(0, None, 0))),
        jax.jit(decode_each),
        jax.jit(jax.vmap(both, in_axes=(0, None, 0))),
        jax.jit(jax.vmap(rows)),
    )


@functools.cache
def _threshold_function(model: Autoencoder, batched: bool, batch_size: int) -> Callable[..., Any]:
    """Jitted `(params, x_NxD, k) -> theta` of a BatchTopK model (`Autoencoder.batch_threshold` in
    batches of `batch_size`), vmapped over the seeds' params (theta_S) when `batched`."""

    def theta(params: Any, x: jax.Array, k: jax.Array) -> jax.Array:
        return model.apply(params, x, batch_size, None, k, method="batch_threshold")

    return jax.jit(jax.vmap(theta, in_axes=(0, None, None)) if batched else theta)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedAutoencoder:
    """One arm's trained autoencoder: one seed's (`seed` an int) or every seed's (`seed` None,
    parameters with a leading seed axis S), with the arm's own k and hidden units in use.

    `encode(x_NxD) -> h_NxH`, `decode(h_NxH) -> x_hat_NxD` and `__call__(x_NxD) -> (x_hat, h)` are
    jitted. For every seed at once the inputs `x_NxD` are shared and every output gains a leading
    seed axis; `decode` takes the seeds' own codes `h_SxNxH` or codes `h_NxH` shared by all.

    BatchTopK (`model.activation="batchtopk"`) encodes with its inference rule, not its training
    rule: a unit fires where its pre-activation exceeds the one global threshold `threshold`
    (theta, estimated after training from the training data: `Run.autoencoder`), so each row's
    code is its own, whatever rows it is encoded with. (Training kept the k x B largest
    pre-activations of each batch of B rows; `model.apply(params, x)` without a threshold still
    does that to the rows it is given.) JumpReLU encodes with its learned per-unit thresholds.
    """

    arm: str
    seed: int | None  # None: every seed at once
    model: Autoencoder  # the Flax module, `n_hidden` = the units in use
    params: Any = dataclasses.field(repr=False)  # Flax params (leading axis S when seed is None)
    config: Config = dataclasses.field(repr=False)  # the arm's config, as trained
    # BatchTopK's inference threshold theta: a float32 scalar (theta_S for every seed); else None
    threshold: jax.Array | None = None

    @property
    def n_hidden(self) -> int:
        """Hidden units in use."""
        return self.model.n_hidden

    @property
    def n_features(self) -> int:
        return self.model.n_features

    @property
    def k(self) -> int | None:
        """Top-k's k, or BatchTopK's (on average per row); None for other activations."""
        return self.model.k if self.model.activation in K_ACTIVATIONS else None

    @property
    def n_seeds(self) -> int | None:
        """Seeds in `params` (None for one seed's autoencoder)."""
        if self.seed is not None:
            return None
        return int(self.params["params"]["decoder"]["bias"].shape[0])

    def _input(self, x: Any, width: int, name: str, per_seed_ok: bool = False) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        shapes = [f"[N, {width}]"]
        if per_seed_ok and self.seed is None:
            shapes.append(f"[{self.n_seeds}, N, {width}] (one per seed)")
            if x.ndim == 3 and x.shape[0] == self.n_seeds and x.shape[-1] == width:
                return x
        if x.ndim != 2 or x.shape[-1] != width:
            raise invalid(f"{name}.shape", tuple(x.shape), " or ".join(shapes))
        return x

    def _fn(self, i: int) -> Callable[..., Any]:
        return _functions(self.model, self.seed is None)[i]

    def encode(self, x_NxD: Any) -> jax.Array:
        """The hidden code `h_NxH` (`h_SxNxH` for every seed)."""
        return self._fn(0)(self.params, self._input(x_NxD, self.n_features, "x"), self.threshold)

    def decode(self, h_NxH: Any) -> jax.Array:
        """The reconstruction `x_hat_NxD` (`x_hat_SxNxD` for every seed)."""
        h = self._input(h_NxH, self.n_hidden, "h", per_seed_ok=True)
        return self._fn(1)(self.params, h)

    def __call__(self, x_NxD: Any) -> tuple[jax.Array, jax.Array]:
        """`(x_hat, h)` of `x_NxD`."""
        return self._fn(2)(self.params, self._input(x_NxD, self.n_features, "x"), self.threshold)

    @property
    def atoms(self) -> np.ndarray:
        """The decoder rows in use, one per hidden unit (unit vectors with a unit-norm decoder):
        `w_HxD` (`w_SxHxD` for every seed)."""
        return np.asarray(self._fn(3)(self.params))


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A finished run directory (see `load`)."""

    path: Path
    experiment: str
    config: Config  # metrics.json's config: the first arm's
    arms: tuple[str, ...]  # the arm labels, in metrics.json's order
    configs: dict[str, Config] = dataclasses.field(repr=False)  # each arm's own config
    metrics: schema.Run = dataclasses.field(repr=False)  # metrics.json, as its types
    params: dict[str, Any] = dataclasses.field(repr=False)  # arm -> Flax params, leading axis S
    n_seeds: int = 0
    seed: int = 0  # the base seed: seed i trained from fold_in(key(seed), i)

    def check_arm(self, arm: str) -> str:
        """`arm` if it is one of the run's arm labels, else `ValueError` listing them."""
        if arm not in self.configs:
            raise invalid("arm", arm, "one of " + ", ".join(repr(a) for a in self.arms))
        return arm

    def check_seed(self, seed: Any) -> int:
        """`seed` as an int if it is one of the run's seeds `0..n_seeds-1`, else `ValueError`."""
        try:
            if isinstance(seed, bool):
                raise TypeError
            i = operator.index(seed)
        except TypeError:
            i = None
        if i is None or not 0 <= i < self.n_seeds:
            raise invalid(
                "seed",
                seed,
                f"an integer in 0..{self.n_seeds - 1} (the run's {self.n_seeds} seeds)",
            )
        return i

    def n_hidden(self, arm: str) -> int:
        """Hidden units the arm uses (metrics.json `arms.<label>.n_hidden`)."""
        return self.metrics.arms[self.check_arm(arm)].n_hidden

    def k(self, arm: str) -> int | None:
        """Top-k's or BatchTopK's k of the arm: its own (`arms.<label>.hyper.k`), else its
        config's; a pursuit's (`omp`) steps it codes with, `model.infer_k` if set; None for other
        activations."""
        cfg = self.configs[self.check_arm(arm)]
        if cfg.model.activation not in K_ACTIVATIONS:
            return None
        own = self.metrics.arms[arm].hyper.get("k")
        return int(cfg.model.code_k(own))

    def _model(self, arm: str) -> Autoencoder:
        cfg = self.configs[arm]
        h = self.n_hidden(arm)
        k = self.k(arm)
        return Autoencoder(
            n_features=cfg.data.n_features,
            n_hidden=h,
            activation=cfg.model.activation,
            # a top-k arm with more k than units in use keeps them all, as its masked model did
            # (BatchTopK too: k x B of B x h entries keeps them all either way)
            k=None if k is None else min(k, h),
            initializer=cfg.model.init,
            unit_norm_decoder=cfg.model.unit_norm_decoder,
            pre_bias=cfg.model.pre_bias,
            tied_init=cfg.model.tied_init,
            tied=cfg.model.tied,
            output=cfg.model.output,
            jump_bandwidth=cfg.model.jump_bandwidth,
            jump_init=cfg.model.jump_init,
        )

    def _params(self, arm: str, seed: int | None) -> Any:
        """The arm's parameters (one seed's, or all), masked units dropped (JumpReLU's
        thresholds `jump.log_threshold` too). A tied arm (`model.tied`) has no encoder kernel."""
        h = self.n_hidden(arm)
        p = self.params[arm]["params"]
        pick = (lambda v: v) if seed is None else (lambda v: v[seed])
        enc, dec = p["encoder"], p["decoder"]
        encoder = {"bias": jnp.asarray(pick(enc["bias"])[..., :h])}
        if "kernel" in enc:
            encoder["kernel"] = jnp.asarray(pick(enc["kernel"])[..., :h])
        out = {
            "encoder": encoder,
            "decoder": {
                "kernel": jnp.asarray(pick(dec["kernel"])[..., :h, :]),
                "bias": jnp.asarray(pick(dec["bias"])),
            },
        }
        if "jump" in p:
            out["jump"] = {"log_threshold": jnp.asarray(pick(p["jump"]["log_threshold"])[..., :h])}
        return {"params": out}

    def _threshold(self, arm: str, model: Autoencoder, params: Any, batched: bool) -> Any:
        """BatchTopK's inference threshold theta of the arm's params (theta_S when `batched`),
        from the data it trained on (`data`) with its own k and `train.batch_size`; None for
        other activations."""
        if model.activation != "batchtopk":
            return None
        cfg = self.configs[arm]
        x_NxD = jnp.asarray(self.data(arm), jnp.float32)
        k = jnp.asarray(self.k(arm), jnp.int32)
        return _threshold_function(model, batched, cfg.train.batch_size)(params, x_NxD, k)

    def _trained(self, arm: str, seed: int | None) -> TrainedAutoencoder:
        model, params = self._model(arm), self._params(arm, seed)
        threshold = self._threshold(arm, model, params, seed is None)
        return TrainedAutoencoder(arm, seed, model, params, self.configs[arm], threshold)

    def autoencoder(self, arm: str, seed: int = 0) -> TrainedAutoencoder:
        """Seed `seed`'s trained autoencoder of `arm` (jitted encode, decode and call).

        For a BatchTopK arm this computes its inference threshold theta (`threshold`) once, from
        the data the arm trained on (`data`: drawn again, so `data.kind="array"` needs its file
        and `data.per_seed` is refused), and encodes with BatchTopK's inference rule (units above
        theta), not its training rule (the k x B largest of a batch)."""
        arm, seed = self.check_arm(arm), self.check_seed(seed)
        return self._trained(arm, seed)

    def autoencoders(self, arm: str) -> TrainedAutoencoder:
        """Every seed's trained autoencoder of `arm` at once (vmapped over the seed axis); a
        BatchTopK arm's thresholds `threshold` (theta_S) are each seed's, as `autoencoder`'s."""
        arm = self.check_arm(arm)
        return self._trained(arm, None)

    def data(self, arm: str | None = None) -> np.ndarray:
        """The data set `arm` (default the first) trained and was evaluated on: `x_NxD` (for real
        data the training split). Drawn again from the config's data key, so for
        `data.kind="array"` its file must still be there."""
        cfg = self.configs[self.check_arm(self.arms[0] if arm is None else arm)]
        if cfg.data.per_seed:
            raise invalid(
                "data.per_seed",
                True,
                "false for Run.data (every seed drew its own data set; nothing to share)",
            )
        return np.asarray(data.make_data(jax.random.key(cfg.data.seed), cfg.data))

    def heldout(self, arm: str | None = None) -> np.ndarray | None:
        """The held-out rows of real data (`data.heldout`) for `arm`; None for generated data."""
        cfg = self.configs[self.check_arm(self.arms[0] if arm is None else arm)]
        return data.heldout(jax.random.key(cfg.data.seed), cfg.data)

    @property
    def ground_truth(self) -> np.ndarray | None:
        """The data's true dictionary `atoms_MxD`, for data that has one (`data.kind="sparse"`)."""
        path = self.path / results.GROUND_TRUTH
        return np.load(path, allow_pickle=False) if path.exists() else None


def _read_metrics(path: Path) -> dict[str, Any]:
    what = "run_dir"
    if not path.is_dir():
        stopped = results.partial_dir(path)
        if stopped.is_dir():
            raise invalid(
                what,
                str(path),
                f"a finished run directory: this run was stopped and is saved in {stopped}; "
                f"finish it with `jaxae run --resume {path}`",
            )
        raise invalid(what, str(path), "a run directory written by `jaxae run` (it does not exist)")
    metrics_path = path / results.METRICS
    if not metrics_path.is_file():
        hint = ""
        if (path / results.PROGRESS).is_file():
            resume = path.with_suffix("")
            hint = f" (this is a stopped run's: finish it with `jaxae run --resume {resume}`)"
        raise invalid(what, str(path), f"a run directory with {results.METRICS}{hint}")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise invalid(
            what, str(path), f"a run directory with a readable {results.METRICS} ({err})"
        ) from err
    if "grid" in metrics:
        points = metrics["grid"].get("points", {})
        first = next(iter(points.values()), {}).get("dir", "grid/p0")
        raise invalid(
            what,
            str(path),
            f"one grid point's run directory, e.g. {path / first} (a sweep of "
            f"{len(points)} grid points; metrics.json grid.points.<point>.dir names each)",
        )
    for key in ("experiment", "config", "overrides", "arms", "n_seeds"):
        if key not in metrics:
            raise invalid(what, str(path), f"a run directory whose {results.METRICS} has {key!r}")
    if not (path / results.PARAMS).is_dir():
        raise invalid(what, str(path), f"a run directory with {results.PARAMS}/ (the checkpoint)")
    return metrics


def _widths(params: dict[str, Any]) -> dict[str, int]:
    """Every arm's stored width H: the decoder kernel's `[S, H, D]` middle axis (every model has a
    decoder kernel; a tied one has no encoder kernel)."""
    return {arm: int(np.shape(p["params"]["decoder"]["kernel"])[-2]) for arm, p in params.items()}


def _arm_configs(path: Path, metrics: dict[str, Any], widths: dict[str, int]) -> dict[str, Config]:
    """Every arm's config, rebuilt as the run built it, checked against metrics.json's config."""
    where = f"run_dir={str(path)!r} is invalid"
    try:
        exp = experiments.with_overrides(
            experiments.get(metrics["experiment"]), list(metrics["overrides"])
        )
    except ValueError as err:
        raise ValueError(f"{where}: its arms cannot be rebuilt ({err})") from err
    built = {arm.label: arm.config for arm in exp.arms}
    labels = list(metrics["arms"])
    missing = [label for label in labels if label not in built]
    if missing:
        raise ValueError(
            f"{where}: its arms {', '.join(map(repr, missing))} are not arms of experiment "
            f"{metrics['experiment']!r} now ({', '.join(map(repr, built))}); the preset changed "
            "since the run was written"
        )
    configs = {}
    for label in labels:
        cfg = built[label]
        if widths[label] < int(metrics["arms"][label]["n_hidden"]):
            raise ValueError(
                f"{where}: arm {label!r} has {widths[label]} hidden units in {results.PARAMS}/, "
                f"fewer than the {metrics['arms'][label]['n_hidden']} its metrics.json records"
            )
        if (
            widths[label] != cfg.model.n_hidden
        ):  # a width sweep's point: trained in the widest model
            cfg = dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, n_hidden=widths[label])
            )
        configs[label] = cfg
    recorded = Config.from_dict(metrics["config"])
    first = configs[labels[0]]
    if first != recorded:
        old, new = recorded.to_dict(), first.to_dict()
        differ = [
            f"{s}.{f}={old[s][f]!r} (now {new[s][f]!r})"
            for s in old
            for f in old[s]
            if old[s][f] != new[s][f]
        ]
        raise ValueError(
            f"{where}: arm {labels[0]!r} rebuilds with another config than metrics.json records "
            f"({', '.join(differ)}); the preset changed since the run was written"
        )
    return configs


def load(run_dir: str | Path) -> Run:
    """Read a finished run directory (`jaxae run`'s, or one grid point's of a sweep).

    `ValueError` naming the directory and what is allowed when it is missing, stopped (only
    `DIR.partial/` exists), a whole sweep, or not a run directory.
    """
    path = Path(run_dir)
    metrics = _read_metrics(path)
    params = results.load_checkpoint(path / results.PARAMS)
    if set(params) != set(metrics["arms"]):
        raise invalid(
            "run_dir",
            str(path),
            f"a run directory whose {results.PARAMS}/ holds the arms of its {results.METRICS} "
            f"({', '.join(metrics['arms'])}; it holds {', '.join(params)})",
        )
    configs = _arm_configs(path, metrics, _widths(params))
    labels = tuple(metrics["arms"])
    return Run(
        path=path,
        experiment=metrics["experiment"],
        config=Config.from_dict(metrics["config"]),
        arms=labels,
        configs=configs,
        metrics=results.read_run(path),
        params={label: params[label] for label in labels},
        n_seeds=int(metrics["n_seeds"]),
        seed=int(metrics.get("seed", 0)),
    )
