"""The types of metrics.json: each arm's summary, each family's analysis and the run around them.

Analyses build these dataclasses, `results` writes them with `encode`, and the report pages and
the console summary read them back with `read` (or `decode`), so a figure is named once, by a
field, and a renamed field fails where it is read instead of silently emptying a sentence.
Thresholds that the prose states (an agreement level, a share of seeds) are fields too.

Decoding is strict: a missing field, a key no field names, or a value of the wrong JSON type is a
`ValueError` naming its path (`arms.relu.fvu`). JSON has no NaN: the writer stores it as null,
and a `float` field (optional or not) reads null back as NaN; an optional field that is absent
reads as None. A field made with `optional()` is left out of the
JSON when it is None (a figure that only some runs have, such as `gt_mcc` without a ground truth);
one made with `flat()` writes its dataclass's keys into its parent's (the first arm's summary at
the top level of metrics.json); one made with `arrays()` holds arrays for the report's figures,
which `results` writes to arrays.npz instead, and one made with `host()` stays in memory.

The families' own types live with their analyses (`jaxae.experiments.<family>`); each
`Experiment` names its arm and analysis types, which `read` looks up by the run's experiment.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_OMIT, _FLAT, _HOST, _ARRAYS = "jaxae.omit", "jaxae.flat", "jaxae.host", "jaxae.arrays"


def optional() -> Any:
    """A field that may be absent: None, and then left out of the JSON."""
    return dataclasses.field(default=None, metadata={_OMIT: True})


def flat() -> Any:
    """A dataclass field whose keys are written into its parent's."""
    return dataclasses.field(metadata={_FLAT: True})


def host() -> Any:
    """A value kept in memory only (None when read back): never written to metrics.json."""
    return dataclasses.field(default=None, metadata={_HOST: True})


def arrays() -> Any:
    """Arrays for the report's figures (`name -> array`), written to arrays.npz instead."""
    return dataclasses.field(default_factory=dict, metadata={_HOST: True, _ARRAYS: True})


# ----------------------------------------------------------------------------------------------
# The codec


def encode(value: Any) -> Any:
    """JSON-ready Python values (NaN stays NaN; `results.write_json` stores it as null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get(_HOST) or (f.metadata.get(_OMIT) and v is None):
                continue
            if f.metadata.get(_FLAT):
                out.update(encode(v))
            else:
                out[f.name] = encode(v)
        return out
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls: type) -> set[str]:
    """The JSON keys of a dataclass (its flat fields' keys included)."""
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        out |= _keys(_hints(cls)[f.name]) if f.metadata.get(_FLAT) else {f.name}
    return out


def _fail(where: str, value: Any, allowed: str) -> typing.NoReturn:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ValueError(f"metrics.json {where}={shown} is invalid: allowed is {allowed}")


def decode(tp: Any, data: Any, where: str = "", strict: bool = True) -> Any:
    """`data` (parsed JSON) as type `tp`; with `strict=False` unknown keys are dropped."""
    where = where or getattr(tp, "__name__", "value")
    if tp is Any:
        return data
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, data, where, strict)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in args if a is not type(None)]
        if data is None and inner is not float:  # a float's null is a NaN the writer stored
            return None
        return decode(inner, data, where, strict)
    if origin is typing.Literal:
        if data not in args:
            _fail(where, data, " or ".join(map(repr, args)))
        return data
    if origin in (list, tuple):
        if not isinstance(data, list):
            _fail(where, data, "a list")
        if origin is tuple and args[-1] is not Ellipsis:
            if len(data) != len(args):
                _fail(where, data, f"a list of {len(args)}")
            pairs = enumerate(zip(args, data, strict=True))
            return tuple(decode(a, v, f"{where}[{i}]", strict) for i, (a, v) in pairs)
        item = args[0] if args else Any
        seq = [decode(item, v, f"{where}[{i}]", strict) for i, v in enumerate(data)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(data, dict):
            _fail(where, data, "an object")
        return {k: decode(args[1], v, f"{where}.{k}", strict) for k, v in data.items()}
    return _decode_scalar(tp, data, where)


def _decode_scalar(tp: Any, data: Any, where: str) -> Any:
    if tp is float:
        if data is None:
            return math.nan
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            _fail(where, data, "a number")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            _fail(where, data, "an integer")
        return data
    if tp in (str, bool):
        if not isinstance(data, tp):
            _fail(where, data, f"a {tp.__name__}")
        return data
    raise TypeError(f"no JSON decoding for {tp!r} ({where})")


def _decode_dataclass(cls: type[T], data: Any, where: str, strict: bool) -> T:
    if not isinstance(data, dict):
        _fail(where, data, f"an object ({cls.__name__})")
    rest = dict(data)
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get(_HOST):
            continue
        if f.metadata.get(_FLAT):
            keys = _keys(hints[f.name])
            part = {k: rest.pop(k) for k in list(rest) if k in keys}
            kwargs[f.name] = decode(hints[f.name], part, where, strict)
        elif f.name in rest:
            kwargs[f.name] = decode(hints[f.name], rest.pop(f.name), f"{where}.{f.name}", strict)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"metrics.json {where}.{f.name} is missing ({cls.__name__})")
    if rest and strict:
        raise ValueError(
            f"metrics.json {where} has keys {sorted(rest)} that {cls.__name__} does not name"
        )
    return cls(**kwargs)


def host_arrays(value: Any) -> dict[str, np.ndarray]:
    """The arrays of a dataclass's `arrays()` fields (empty for anything else)."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return {}
    out: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(value):
        if f.metadata.get(_ARRAYS):
            out.update(getattr(value, f.name))
    return out


def fields_of(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as keyword arguments (shallow), to build a subclass from it."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# ----------------------------------------------------------------------------------------------
# What every run has


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quantiles:
    q10: float
    q25: float
    q50: float
    q75: float
    q90: float

    @classmethod
    def of(cls, values: Any) -> Quantiles:
        """`metrics.quantiles` of `values`."""
        from jaxae import metrics

        return cls(**metrics.quantiles(np.asarray(values)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArmSummary:
    """Per-seed figures (lists over seeds) and the summary figures of one arm."""

    n_hidden: int
    hyper: dict[str, float]
    final_loss: list[float]
    final_mse: list[float]
    fvu: list[float]
    converged: list[bool]
    reconstructs: list[bool]
    diverged: list[bool]
    dead_units: list[int]
    convergence_rate: float
    convergence_ci95: tuple[float, float]
    reconstruction_rate: float
    reconstruction_ci95: tuple[float, float]
    pca_floor_fvu: float
    convergence_tol: float
    reconstruction_tol: float
    fvu_quantiles: Quantiles
    final_loss_quantiles_converged: Quantiles
    l0: list[float]
    l0_quantiles: Quantiles

    @property
    def n_seeds(self) -> int:
        return len(self.converged)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Agreement:
    """Agreement across seeds (`experiments.agreement`): per pair of the first `pw_seeds` seeds,
    pw_mcc (decoder), pw_mcc_encoder and shared units, each beside its chance level `*_null` (the
    same seeds' untrained weights); with a ground truth, per seed gt_mcc, recovered, gt_mcc_null."""

    pw_seeds: int
    pw_mcc: list[float]
    pw_mcc_encoder: list[float]
    shared: list[float]
    pw_mcc_null: list[float]
    pw_mcc_encoder_null: list[float]
    shared_null: list[float]
    gt_mcc: list[float] | None = optional()
    recovered: list[float] | None = optional()
    gt_mcc_null: list[float] | None = optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgreementArm(ArmSummary, Agreement):
    """An arm of a family that measures agreement (`overcomplete`, `sparse`, `sparsity`)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """metrics.json of a run: what ran, every arm, the family's analysis, timing and memory.

    `arms` and `analysis` have the types the experiment names (`Experiment.arm_type`,
    `analysis_type`); the first arm's summary is written at the top level too (`primary`)."""

    experiment: str
    family: str
    section: str
    claim: str
    config: dict[str, Any]
    overrides: list[str]
    n_seeds: int
    seed: int
    arm_axis: str
    convergence_fraction: float
    arms: dict[str, Any]
    analysis: Any
    timing: dict[str, Any]
    memory: dict[str, Any]
    versions: dict[str, Any]
    primary: Any = host()


def write(run: Run) -> dict[str, Any]:
    """metrics.json of `run` (JSON-ready, NaN kept): the header, the first arm's summary at the
    top level, every arm, the analysis, timing, memory and versions."""
    out = encode(run)
    tail = {k: out.pop(k) for k in ("arms", "analysis", "timing", "memory", "versions")}
    top = {k: v for k, v in encode(run.primary).items() if k not in out}
    return {**out, **top, **tail}


def read(data: Mapping[str, Any], arm_type: type, analysis_type: Any, strict: bool = True) -> Run:
    """A run's parsed metrics.json as its types (with `strict=False`, unknown keys are dropped)."""
    raw = dict(data)
    # `config` is both the run's and (for images) the first arm's own, which is the same
    own = _keys(Run)
    top = {k: raw[k] if k in own else raw.pop(k) for k in _keys(arm_type) if k in raw}
    arms, analysis = raw.pop("arms", None), raw.pop("analysis", None)
    run = decode(Run, {**raw, "arms": {}, "analysis": None}, "metrics", strict)
    return dataclasses.replace(
        run,
        arms=decode(dict[str, arm_type], arms, "arms", strict),
        analysis=decode(analysis_type, analysis, "analysis", strict),
        primary=decode(arm_type, top, "metrics", strict),
    )
