"""The host side of training: devices, sharding, chunks of epochs, batches of seeds, resume.

`train_seeds` trains many seeds of a config as one program built from `jaxae.train`'s pure pieces
(`init_state`, `run_epochs`, `evaluate_each`), jitted and vmapped over the seed axis once per config
(`programs`). Seed i's key is `fold_in(key(seed), i)`, whatever the number of seeds or devices; the
seed axis is sharded over `jax.devices()` (of every process, after `processes.init_processes`);
the loop runs in chunks of epochs so the caller can show progress, checkpoint or stop between
chunks without changing any result.

Memory: when all seeds would not fit in the budget (jaxae/memory.py plans it), `train_seeds` and
`evaluate_seeds` split them into equal batches that do (the last one padded) and run every batch
through the same compiled program, chunk by chunk; the state of every seed waits on the host
between chunks. A seed's result does not depend on its batch: it equals one big batch's bit for
bit when both have seeds per device in the same size class (`memory.PROBE_SEEDS`).

Many processes: after `processes.init_processes`, the seeds are sharded over the devices of
every process; every process keeps every seed's state on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxae import memory
from jaxae.config import Config, invalid
from jaxae.data import seed_data, shared_data
from jaxae.metrics import evaluate_each
from jaxae.model import Autoencoder, make_model
from jaxae.train import Hyper, TrainState, init_arms, run_epochs, seed_keys, steps_per_epoch


class Programs(NamedTuple):
    """The compiled-once functions of a config, vmapped over the seed axis."""

    model: Autoencoder
    init: Callable[[jax.Array, Hyper], TrainState]
    run_chunk: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array]]
    seed_data: Callable[[jax.Array], jax.Array]
    evaluate: Callable[[TrainState, jax.Array], dict[str, jax.Array]]


@functools.cache
def programs(cfg: Config) -> Programs:
    """Jitted, vmapped init, chunk runner and evaluation for `cfg`, built once per config."""
    model = make_model(cfg.model, cfg.data.n_features)
    chunk = min(cfg.train.chunk_epochs, cfg.train.epochs)
    x_axis = 0 if cfg.data.per_seed else None
    init = functools.partial(init_arms, model=model, cfg=cfg)
    run = functools.partial(run_epochs, n_epochs=chunk, model=model, cfg=cfg)
    return Programs(
        model=model,
        # A loop, not a vmap: XLA:CPU compiles vmapped threefry draws several times slower, and
        # initialisation runs once per seed, so its speed hardly matters.
        init=jax.jit(lambda keys, hyper: lax.map(lambda a: init(*a), (keys, hyper))),
        run_chunk=jax.jit(jax.vmap(run, in_axes=(0, x_axis, None)), donate_argnums=0),
        seed_data=jax.jit(jax.vmap(functools.partial(seed_data, cfg=cfg))),
        evaluate=jax.jit(functools.partial(evaluate_each, model=model, cfg=cfg)),
    )


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (every process holds all of them) as global arrays with `sharding`: each process
    puts the rows of its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharding, v, v.shape), tree
    )


def _gather(tree: Any) -> Any:
    """Arrays as host numpy arrays, whole on every process. Arrays that span processes are first
    replicated over their mesh, by one collective program for the whole tree (`_replicate`)."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(v, "is_fully_addressable", True) for v in leaves):
        return jax.device_get(tree)
    everywhere = _replicate(leaves[0].sharding.mesh)(tree)
    return jax.tree.map(lambda v: np.asarray(v.addressable_data(0)), everywhere)


@functools.cache
def _replicate(mesh: jax.sharding.Mesh) -> Callable[[Any], Any]:
    """The identity with its outputs replicated on every device of `mesh` (compiled once per
    shape: `multihost_utils.process_allgather` would compile one program per leaf)."""
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))


def _to_host(state: TrainState) -> TrainState:
    """Writable host copies of every leaf; the key as its raw data (`key_data`)."""
    raw = state.replace(key=jax.random.key_data(state.key))
    return jax.tree.map(np.array, _gather(raw))


def _from_host(host: TrainState, impl: Any, sharding: NamedSharding | None = None) -> TrainState:
    """`_to_host` undone: placed with `sharding` (or left on the host), the key wrapped again."""
    placed = host if sharding is None else _place(host, sharding)
    return placed.replace(key=jax.random.wrap_key_data(placed.key, impl=impl))


def _seed_slice(tree: Any, lo: int, n: int) -> Any:
    """Rows `lo .. lo + n - 1` of every leaf, padded by repeating the last (copies to drop)."""

    def rows(v: np.ndarray) -> np.ndarray:
        part = v[lo : lo + n]
        extra = n - part.shape[0]
        return part if extra == 0 else np.concatenate([part, np.repeat(part[-1:], extra, axis=0)])

    return jax.tree.map(rows, tree)


def _abstract(tree: Any, n: int, sharding: NamedSharding) -> Any:
    """Shapes and dtypes of `tree` with `n` rows, placed with `sharding`: what a program compiles
    for."""
    return jax.tree.map(
        lambda v: jax.ShapeDtypeStruct((n, *v.shape[1:]), v.dtype, sharding=sharding), tree
    )


class Progress(NamedTuple):
    """What the host loop hands its callback after each chunk."""

    epochs_done: int
    epochs_total: int
    # leading axis = the run's seeds (padding removed); host arrays when trained in batches
    state: TrainState
    history_SxAxE: np.ndarray  # loss per seed, arm and epoch; NaN for epochs not yet run
    # Training time (the callbacks' own excluded) and seed-steps of this call so far: what a
    # checkpoint taken now records beside the state.
    train_s: float = 0.0
    seed_steps: float = 0.0


@dataclasses.dataclass
class TrainResult:
    """The outcome of `train_seeds`: stacked per-seed state and history, and how long it took."""

    cfg: Config
    seed: int
    n_seeds: int
    state: TrainState  # leading axis S; numpy leaves (the key a jax array) if trained in batches
    history_SxAxE: np.ndarray
    x: jax.Array  # the data trained on: x_NxD, or x_SxNxD with data.per_seed
    epochs_done: int
    timing: dict[str, float]
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)  # memory.MemoryPlan.to_dict()

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.cfg.train.epochs

    @property
    def diverged(self) -> np.ndarray:
        return np.asarray(self.state.diverged)


def _pad_seeds(tree: Any, n_total: int) -> Any:
    """Repeat the last seed so the seed axis divides the device count (the copies are dropped)."""

    def pad(leaf: jax.Array) -> jax.Array:
        extra = n_total - leaf.shape[0]
        if extra == 0:
            return leaf
        return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


@dataclasses.dataclass(frozen=True)
class SeedMesh:
    """The devices that carry the seed axis and the two placements on them: by seed (each device
    holds its share of the seeds) and replicated (every device holds all)."""

    devices: tuple[jax.Device, ...]

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh:
        return jax.sharding.Mesh(np.array(self.devices), ("seed",))

    @property
    def by_seed(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("seed"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())


@dataclasses.dataclass
class SeedData:
    """The data a run trains on: one set shared by every seed (`x_NxD`, replicated on every
    device once) or, with `data.per_seed`, one per seed (`x_SxNxD` on the host, placed with the
    seeds of each batch)."""

    per_seed: bool
    x: Any  # x_NxD, or x_SxNxD with data.per_seed
    shared: Any = None  # the replicated device copy of a shared x_NxD

    @classmethod
    def of(
        cls,
        cfg: Config,
        keys: jax.Array,
        mesh: SeedMesh,
        batch: int,
        resident: bool,
        given: np.ndarray | None = None,
    ) -> SeedData:
        """The run's data: the shared set, placed on every device; or the per-seed sets, drawn
        on the devices and kept there for a `resident` run (one batch of `batch` seeds, padded),
        else drawn `batch` seeds at a time to the host; or the per-seed sets `given`."""
        if given is not None:
            if resident:
                return cls(True, given, jax.device_put(_pad_seeds(given, batch), mesh.by_seed))
            return cls(True, given)
        if not cfg.data.per_seed:
            x = shared_data(cfg)
            return cls(False, x, _place(np.asarray(x), mesh.replicated))
        if resident:
            x = programs(cfg).seed_data(keys)
            return cls(True, x, jax.device_put(_pad_seeds(x, batch), mesh.by_seed))
        return cls(True, seed_data_batches(cfg, keys, batch))

    def rows(self, lo: int, n: int, mesh: SeedMesh) -> Any:
        """What seeds `lo..lo+n-1` train on, placed (the shared set is the same for all)."""
        return _place(_seed_slice(self.x, lo, n), mesh.by_seed) if self.per_seed else self.shared


def _start(
    cfg: Config, keys: jax.Array, hyper: Hyper | None, resume: tuple | None
) -> tuple[TrainState, np.ndarray, int]:
    """`(state, history, epochs_done)` of a fresh run (`hyper` per seed, default the config's),
    or of the stopped run `resume` continues."""
    if resume is not None:
        state, history, epochs_done = resume
        return state, np.array(history, np.float32), epochs_done
    n_seeds = keys.shape[0]
    if hyper is None:  # one arm: the config's own values
        hyper = jax.tree.map(lambda v: jnp.broadcast_to(v, (n_seeds, 1)), Hyper.from_config(cfg))
    state = programs(cfg).init(keys, hyper)
    return state, np.full((*state.diverged.shape, cfg.train.epochs), np.nan, np.float32), 0


def _prepare(
    cfg: Config,
    keys: jax.Array,
    state: TrainState,
    mesh: SeedMesh,
    memory_budget: int | None,
    compiler_options: dict[str, Any] | None,
    given: np.ndarray | None = None,
) -> tuple[memory.MemoryPlan, SeedData, _Chunks]:
    """The memory plan and compiled chunk program of a run, its data placed, and where its state
    lives: one batch on one process keeps it on the devices from chunk to chunk; otherwise it
    waits on the host and every chunk runs batch after batch through the same program."""
    n_seeds = keys.shape[0]
    per_seed = cfg.data.per_seed
    if given is not None:
        x_one = jax.ShapeDtypeStruct((1, *given.shape[1:]), given.dtype)
    elif per_seed:
        x_one = jax.eval_shape(programs(cfg).seed_data, keys[:1])
    else:
        x_one = shared_data(cfg)
    plan, run_chunk = _chunk_program(
        cfg, state, x_one, n_seeds, mesh, memory_budget, compiler_options
    )
    resident = plan.n_batches == 1 and jax.process_count() == 1
    data = SeedData.of(cfg, keys, mesh, plan.batch_seeds, resident, given)
    chunks = (_ResidentChunks if resident else _HostChunks)(
        run_chunk, state, data, mesh, n_seeds, plan.batch_seeds
    )
    return plan, data, chunks


def _stop_requested(
    callback: Callable[[Progress], bool | None] | None, progress: Callable[[], Progress]
) -> bool:
    """The callback's answer after a chunk; in a multi-process run process 0's, for all (so that
    none waits for the others in vain)."""
    stop = False if callback is None else bool(callback(progress()))
    if jax.process_count() > 1:
        stop = bool(multihost_utils.broadcast_one_to_all(np.int32(stop)))
    return stop


def _given_data(cfg: Config, keys: jax.Array, x: np.ndarray) -> np.ndarray:
    """`train_seeds`' `x`, checked: float32 `x_SxNxD`, one data set per seed of `keys`."""
    if cfg.model.init == "data":
        raise invalid(
            "model.init", "data", "a start that needs no data when train_seeds is given x"
        )
    x = np.asarray(x)
    want = (keys.shape[0], cfg.data.n_samples, cfg.data.n_features)
    if not cfg.data.per_seed or x.shape != want or x.dtype != np.float32:
        raise ValueError(
            f"x of shape {x.shape} ({x.dtype}) is invalid: allowed is float32 {want}, one "
            "data set per seed, with data.per_seed=true"
        )
    return x


def train_seeds(
    cfg: Config,
    n_seeds: int,
    seed: int = 0,
    *,
    hyper: Hyper | None = None,
    keys: jax.Array | None = None,
    devices: list[jax.Device] | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    resume: tuple[TrainState, np.ndarray, int] | None = None,
    compiler_options: dict[str, Any] | None = None,
    memory_budget: int | None = None,
    x: np.ndarray | None = None,
) -> TrainResult:
    """Train seeds `0..n_seeds-1` of `cfg` as one sharded program, chunk by chunk.

    `hyper`, if given, holds every seed's arms, `[S, A]` leaves: A settings per seed that share
    its key and shuffle (e.g. a learning-rate sweep); by default one arm of the config's own
    values, `[S, 1]`. The state and history carry the arm axis after the seed axis.
    `keys`, if given, replaces `seed_keys(seed, n_seeds)` (e.g. to train a chosen subset of seeds).
    `x`, if given, is every seed's own data set `x_SxNxD` (float32, with `data.per_seed`, whose
    `n_samples` and `n_features` it must have), trained on instead of the config's draw: the atlas
    (jaxae/experiments/atlas.py) trains seeds of different data in one program this way.
    `callback(progress)` runs after every chunk; returning True stops the run at that chunk boundary
    (the result then has `finished == False` and can be resumed). Its own time (e.g. writing a
    checkpoint) is left out of the training time. `resume=(state, history, epochs)`
    continues such a run and ends with the same parameters as an uninterrupted one.
    `compiler_options` are XLA options for compiling the training program (e.g.
    `{"xla_cpu_prefer_vector_width": 512}`; scripts/benchmark.py compares some). Fewer seeds than
    devices use only as many devices as seeds: a device without a seed of its own would only run a
    padding copy in lockstep.

    `memory_budget` (bytes per device; default `device_memory_budget`) bounds what one device
    trains at once; the seeds then train in equal batches (the plan is `TrainResult.memory`) with
    the callback still once per chunk and every seed's result unchanged (see the module
    docstring and `memory.PROBE_SEEDS`). In a multi-process run every process calls this with the
    same arguments and returns the same result; process 0's callback decides a stop for all.
    """
    keys = _checked_keys(n_seeds, seed, keys)
    mesh = SeedMesh(tuple(_seed_devices(devices, n_seeds)))
    t0 = time.perf_counter()
    x = None if x is None else _given_data(cfg, keys, x)
    state, history, epochs_done = _start(cfg, keys, hyper, resume)
    plan, data, chunks = _prepare(cfg, keys, state, mesh, memory_budget, compiler_options, x)
    compile_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    first_epoch = epochs_done
    callback_s = 0.0  # time in the callback (e.g. writing a checkpoint) is not training
    total, chunk = cfg.train.epochs, min(cfg.train.chunk_epochs, cfg.train.epochs)
    runs_per_epoch = history[..., 0].size * steps_per_epoch(cfg)  # seed-steps: every arm is a run

    def progress(done: int, paused_at: float) -> Progress:
        trained = paused_at - t1 - callback_s
        steps = runs_per_epoch * (done - first_epoch)
        return Progress(done, total, chunks.state(), history, trained, float(steps))

    while epochs_done < total:
        n_new = min(chunk, total - epochs_done)
        chunks.run(np.int32(epochs_done), history, epochs_done, n_new)
        epochs_done += n_new
        paused_at = time.perf_counter()
        stop = _stop_requested(callback, lambda done=epochs_done, at=paused_at: progress(done, at))
        callback_s += time.perf_counter() - paused_at
        if stop and epochs_done < total:
            break
    state = chunks.state()
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t1 - callback_s
    seed_steps = runs_per_epoch * (epochs_done - first_epoch)
    rate = seed_steps / train_s if train_s > 0 else float("nan")
    return TrainResult(
        cfg=cfg,
        seed=seed,
        n_seeds=n_seeds,
        state=state,
        history_SxAxE=history,
        x=data.x,
        epochs_done=epochs_done,
        timing={"compile_s": compile_s, "train_s": train_s, "seed_steps_per_s": rate},
        memory={**plan.to_dict(), **memory.peak_memory()},
    )


def _checked_keys(n_seeds: int, seed: int, keys: jax.Array | None) -> jax.Array:
    """`keys`, else `seed_keys(seed, n_seeds)`; `ValueError` unless `n_seeds` is a positive
    integer and there is one key per seed."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds <= 0:
        raise ValueError(f"n_seeds={n_seeds!r} is invalid: allowed is a positive integer")
    keys = seed_keys(seed, n_seeds) if keys is None else keys
    if keys.shape != (n_seeds,):
        raise ValueError(f"keys has shape {keys.shape}: allowed is ({n_seeds},), one per seed")
    return keys


_ChunkProgram = Callable[[TrainState, Any, np.int32], tuple[TrainState, jax.Array]]


class _Chunks:
    """Where a run's state lives between chunks (`_ResidentChunks`, `_HostChunks`): `run` trains
    one chunk of every seed and writes its losses into the history, `state` is every seed's."""

    def __init__(
        self,
        run_chunk: _ChunkProgram,
        state: TrainState,
        data: SeedData,
        mesh: SeedMesh,
        n_seeds: int,
        batch: int,
    ) -> None:
        self.run_chunk, self.data, self.mesh = run_chunk, data, mesh
        self.n_seeds, self.batch = n_seeds, batch
        self.keep(state)

    def keep(self, state: TrainState) -> None:
        raise NotImplementedError


class _ResidentChunks(_Chunks):
    """Every seed's state on the devices (one batch, one process), updated chunk by chunk."""

    def keep(self, state: TrainState) -> None:
        self.placed = jax.device_put(_pad_seeds(state, self.batch), self.mesh.by_seed)

    def run(self, epoch: np.int32, history: np.ndarray, first: int, n_new: int) -> None:
        self.placed, loss = self.run_chunk(self.placed, self.data.shared, epoch)  # loss [S, C, A]
        _record(history, np.asarray(loss)[: self.n_seeds], 0, first, n_new)

    def state(self) -> TrainState:
        return jax.tree.map(lambda leaf: leaf[: self.n_seeds], self.placed)


class _HostChunks(_Chunks):
    """Every seed's state on the host; each chunk runs the seeds batch after batch through the same
    program and brings their states back."""

    def keep(self, state: TrainState) -> None:
        self.impl = jax.random.key_impl(state.key)
        self.host = _to_host(state)

    def run(self, epoch: np.int32, history: np.ndarray, first: int, n_new: int) -> None:
        for lo in range(0, self.n_seeds, self.batch):
            x_arg = self.data.rows(lo, self.batch, self.mesh)
            placed = _from_host(
                _seed_slice(self.host, lo, self.batch), self.impl, self.mesh.by_seed
            )
            out, loss = self.run_chunk(placed, x_arg, epoch)
            out, loss = _gather((out.replace(key=jax.random.key_data(out.key)), loss))
            hi = min(lo + self.batch, self.n_seeds)
            for dst, src in zip(jax.tree.leaves(self.host), jax.tree.leaves(out), strict=True):
                dst[lo:hi] = src[: hi - lo]
            _record(history, loss[: hi - lo], lo, first, n_new)

    def state(self) -> TrainState:
        return _from_host(jax.tree.map(np.copy, self.host), self.impl)


def _seed_devices(devices: Sequence[jax.Device] | None, n_seeds: int) -> list[jax.Device]:
    """The devices that carry the seed axis: `devices` (default: every process's), on one process
    no more than there are seeds; in a multi-process run every process keeps its share."""
    devices = list(jax.devices() if devices is None else devices)
    return devices if jax.process_count() > 1 else devices[:n_seeds]


def _chunk_program(
    cfg: Config,
    state: Any,
    x_one: Any,
    n_seeds: int,
    mesh: SeedMesh,
    memory_budget: int | None,
    compiler_options: dict[str, Any] | None,
) -> tuple[memory.MemoryPlan, jax.stages.Compiled]:
    """The batches of `train_seeds` and its chunk program compiled for one batch. `state` (or its
    shapes) gives the shapes of a seed; `x_one` those of the shared data set `x_NxD`, or with
    `data.per_seed` of one seed's `x_1xNxD`."""
    progs = programs(cfg)
    devices, by_seed = list(mesh.devices), mesh.by_seed
    budget = memory.device_memory_budget(devices, memory_budget)
    if (
        jax.process_count() > 1
        and memory_budget is None
        and not os.environ.get(memory.MEMORY_BUDGET_ENV)
    ):
        # Every process must cut the same batches: the smallest budget of any, in KiB (int32).
        kib = np.int32(min(budget // 1024, 2**31 - 1))
        budget = 1024 * int(np.min(multihost_utils.process_allgather(kib)))
    x_shared = jax.ShapeDtypeStruct(x_one.shape, x_one.dtype, sharding=mesh.replicated)

    def compile_at(per_device: int) -> jax.stages.Compiled:
        n = per_device * len(devices)
        x_arg = _abstract(x_one, n, by_seed) if cfg.data.per_seed else x_shared
        lowered = progs.run_chunk.lower(_abstract(state, n, by_seed), x_arg, np.int32(0))
        return lowered.compile(compiler_options=compiler_options)

    fixed = 0 if cfg.data.per_seed else math.prod(x_one.shape) * x_one.dtype.itemsize
    return memory.plan_batches(
        compile_at, n_seeds=n_seeds, n_devices=len(devices), fixed_bytes=fixed, budget=budget
    )


def training_memory(
    cfg: Config,
    n_seeds: int,
    *,
    hyper: Hyper | None = None,
    devices: list[jax.Device] | None = None,
    memory_budget: int | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> memory.MemoryPlan:
    """The batches `train_seeds` would cut for `n_seeds` seeds of `cfg`, and its memory estimate
    (`MemoryPlan.bytes_at`), from compiling its program for a few seeds; nothing is trained.
    `hyper` with an arm axis ([S, A] leaves) sizes a run with arms."""
    one = (
        jax.tree.map(lambda v: jnp.broadcast_to(v, (1, 1)), Hyper.from_config(cfg))
        if hyper is None
        else jax.tree.map(lambda v: v[:1], hyper)
    )
    progs = programs(cfg)
    state = jax.eval_shape(progs.init, seed_keys(0, 1), one)
    x_one = (
        jax.eval_shape(progs.seed_data, seed_keys(0, 1)) if cfg.data.per_seed else shared_data(cfg)
    )
    mesh = SeedMesh(tuple(_seed_devices(devices, n_seeds)))
    return _chunk_program(cfg, state, x_one, n_seeds, mesh, memory_budget, compiler_options)[0]


def _record(history: np.ndarray, loss: np.ndarray, lo: int, first: int, n_new: int) -> None:
    """Write a chunk's losses `[b, C, A]` of seeds `lo..lo+b-1` into the
    history `[S, A, E]` at epochs `first..first+n_new-1`."""
    history[lo : lo + loss.shape[0], ..., first : first + n_new] = np.moveaxis(
        loss[:, :n_new], 1, -1
    )


def seed_data_batches(cfg: Config, keys: jax.Array, batch: int) -> np.ndarray:
    """Per-seed data sets (`data.per_seed`) `x_SxNxD` of `keys` on the host, drawn `batch` seeds
    at a time on the default device (each seed's set is the one `train_seeds` trains it on)."""
    progs = programs(cfg)
    parts = []
    for lo in range(0, keys.shape[0], batch):
        part = np.asarray(progs.seed_data(_pad_seeds(keys[lo : lo + batch], batch)))
        parts.append(part[: keys.shape[0] - lo])
    return np.concatenate(parts)


def evaluate_seeds(
    cfg: Config,
    state: TrainState,
    x: jax.Array | np.ndarray,
    *,
    devices: list[jax.Device] | None = None,
    memory_budget: int | None = None,
) -> tuple[dict[str, np.ndarray], memory.MemoryPlan]:
    """`evaluate_state` of every seed (and arm) of `state` on its whole data set, in batches.

    `x` is the shared `x_NxD` or, with `data.per_seed`, `x_SxNxD`. Every device loops over its
    share of the seeds (`evaluate_each`, so a seed's figures are the same whatever the number of
    seeds); the seeds are split into batches as `train_seeds` splits them (`plan_batches`, with
    the same budget), over `devices` (default: this process's own: in a multi-process run, the
    analysis runs on process 0 alone). Returns host arrays with a leading seed axis, and the plan.
    """
    progs = programs(cfg)
    n_seeds = int(state.diverged.shape[0])
    devices = list(jax.local_devices() if devices is None else devices)[:n_seeds]
    seed_mesh = SeedMesh(tuple(devices))
    mesh, by_seed, replicated = seed_mesh.mesh, seed_mesh.by_seed, seed_mesh.replicated
    x = np.asarray(x)
    fixed = 0 if cfg.data.per_seed else x.nbytes
    budget = memory.device_memory_budget(devices, memory_budget)
    key = (cfg, n_seeds, jax.tree.structure(state), tuple(devices), x.shape)
    key += tuple((v.shape[1:], v.dtype) for v in jax.tree.leaves(state))
    compiled = _EVALUATE_PROGRAMS.setdefault(key, {})  # seeds per device -> program

    def compile_at(per_device: int) -> jax.stages.Compiled:
        if per_device not in compiled:
            n = per_device * len(devices)
            x_arg = (
                _abstract(x, n, by_seed)
                if cfg.data.per_seed
                else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
            )
            x_spec = PartitionSpec("seed") if cfg.data.per_seed else PartitionSpec()
            each_device = jax.shard_map(  # every device loops over its own seeds
                progs.evaluate,
                mesh=mesh,
                in_specs=(PartitionSpec("seed"), x_spec),
                out_specs=PartitionSpec("seed"),
            )
            lowered = jax.jit(each_device).lower(_abstract(state, n, by_seed), x_arg)
            compiled[per_device] = lowered.compile()
        return compiled[per_device]

    plan, evaluate = memory.plan_batches(
        compile_at, n_seeds=n_seeds, n_devices=len(devices), fixed_bytes=fixed, budget=budget
    )
    host, impl = _to_host(state), jax.random.key_impl(state.key)
    x_dev = None if cfg.data.per_seed else jax.device_put(x, replicated)
    parts = []
    for lo in range(0, n_seeds, plan.batch_seeds):
        x_arg = (
            jax.device_put(_seed_slice(x, lo, plan.batch_seeds), by_seed)
            if x_dev is None
            else x_dev
        )
        figures = evaluate(
            _from_host(_seed_slice(host, lo, plan.batch_seeds), impl, by_seed), x_arg
        )
        parts.append(jax.tree.map(lambda v, lo=lo: np.asarray(v)[: n_seeds - lo], figures))
    return jax.tree.map(lambda *v: np.concatenate(v), *parts), plan


# Compiled evaluation programs by config, shapes and devices, then seeds per device: a run
# evaluates its trained and its untrained weights with the same programs.
_EVALUATE_PROGRAMS: dict[tuple, dict[int, jax.stages.Compiled]] = {}
