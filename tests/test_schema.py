"""`jaxae.schema`: metrics.json read back as its types, strictly, and written the same again.

`assert_round_trip` is used on a run directory of every family (tests/test_report.py writes the
tutorial's and sparse's, tests/test_images.py the images family's)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from jaxae import experiments, results, schema


def _json(data: Any) -> Any:
    """As metrics.json stores it: NaN and infinities as null."""
    return json.loads(json.dumps(results._jsonable(data), allow_nan=False))


def assert_round_trip(run_dir: Path) -> schema.Run:
    """metrics.json read as its experiment's types (strictly) and written again is the same file:
    no key the types do not name, none they name missing, every value of its type."""
    data = json.loads((run_dir / results.METRICS).read_text())
    run = results.read_run(run_dir)
    exp = experiments.get(run.experiment)
    assert all(isinstance(a, exp.arm_type) for a in run.arms.values())
    if dataclasses.is_dataclass(exp.analysis_type):
        assert isinstance(run.analysis, exp.analysis_type)
    assert _json(schema.write(run)) == data
    return run


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    x: float
    tags: list[str]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    count: int
    inner: dict[str, Inner]
    pair: tuple[float, float]
    maybe: float | None = schema.optional()
    kept: Any = schema.host()


GOOD = {"name": "a", "count": 2, "inner": {"u": {"x": 1.5, "tags": ["p"]}}, "pair": [0.0, 1.0]}


def test_decode_reads_nested_types_and_encode_writes_them_back():
    out = schema.decode(Outer, GOOD)
    assert out == Outer(name="a", count=2, inner={"u": Inner(x=1.5, tags=["p"])}, pair=(0.0, 1.0))
    assert schema.encode(out) == GOOD  # an optional None and a host field are left out
    assert schema.encode(dataclasses.replace(out, maybe=0.5, kept=object())) == {
        **GOOD,
        "maybe": 0.5,
    }


def test_a_null_float_reads_as_nan_and_an_absent_optional_as_none():
    out = schema.decode(Outer, {**GOOD, "inner": {"u": {"x": None, "tags": []}}})
    assert math.isnan(out.inner["u"].x) and out.maybe is None
    assert math.isnan(schema.decode(Outer, {**GOOD, "maybe": None}).maybe)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "count"}, "metrics.json Outer.count is missing"),
        ({**GOOD, "extra": 1}, r"Outer has keys \['extra'\] that Outer does not name"),
        ({**GOOD, "count": 2.5}, "Outer.count=2.5 is invalid: allowed is an integer"),
        ({**GOOD, "count": True}, "Outer.count=True is invalid: allowed is an integer"),
        ({**GOOD, "pair": [1.0]}, r"Outer.pair=\[1.0\] is invalid: allowed is a list of 2"),
        (
            {**GOOD, "inner": {"u": {"x": "1", "tags": []}}},
            "Outer.inner.u.x='1' is invalid: allowed is a number",
        ),
        ({**GOOD, "name": None}, "Outer.name=None is invalid: allowed is a str"),
    ],
)
def test_decode_is_strict(data, message):
    with pytest.raises(ValueError, match=message):
        schema.decode(Outer, data)


def test_lenient_decoding_drops_unknown_keys():
    assert schema.decode(Outer, {**GOOD, "extra": 1}, strict=False) == schema.decode(Outer, GOOD)


def test_every_experiment_names_its_types():
    for exp in experiments.EXPERIMENTS.values():
        assert issubclass(exp.arm_type, schema.ArmSummary), exp.name
        assert (exp.measure is None) == (exp.arm_type is schema.ArmSummary), exp.name
        assert exp.analysis_type is not None, exp.name
