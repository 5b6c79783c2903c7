"""Validation, immutability, serialisation and `--set` overrides of `jaxae.config`."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import numpy as np
import pytest

from jaxae import cli
from jaxae.config import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    override,
)

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def build(**sections: dict[str, Any]) -> Config:
    """A `Config` whose named sections are constructed from keyword dicts (the rest default)."""
    return Config(**{name: SECTIONS[name](**kwargs) for name, kwargs in sections.items()})


def invalid(field: str, value: Any, allowed: str, tag: str = "", **sections: dict[str, Any]) -> Any:
    name = f"{field}={value!r}" + (f"-{tag}" if tag else "")
    return pytest.param(sections, field, value, allowed, id=name)


INVALID = [
    *(
        invalid(f"data.{name}", v, "a positive integer", data={name: v})
        for name in ("n_samples", "n_features", "max_value")
        for v in (0, -1)
    ),
    invalid("model.n_hidden", 0, "a positive integer", model={"n_hidden": 0}),
    invalid("model.n_hidden", -3, "a positive integer", model={"n_hidden": -3}),
    *(
        invalid(f"train.{name}", v, "a positive integer", train={name: v})
        for name in ("epochs", "batch_size", "chunk_epochs")
        for v in (0, -1)
    ),
    *(
        invalid("optim.learning_rate", v, "a finite positive number", optim={"learning_rate": v})
        for v in (0, 0.0, -1e-3, float("nan"))
    ),
    invalid("optim.weight_decay", -0.1, "a finite number >= 0", optim={"weight_decay": -0.1}),
    invalid("optim.b1", 1.0, "a number in [0, 1)", optim={"b1": 1.0}),
    invalid("optim.b2", -0.5, "a number in [0, 1)", optim={"b2": -0.5}),
    invalid("optim.eps", 0.0, "a finite positive number", optim={"eps": 0.0}),
    invalid("loss.weight", -1.0, "a finite number >= 0", loss={"weight": -1.0}),
    invalid("data.seed", -1, "an integer >= 0", data={"seed": -1}),
    invalid(
        "train.batch_size",
        101,
        "at most data.n_samples=100",
        data={"n_samples": 100},
        train={"batch_size": 101},
    ),
    invalid("model.k", None, "an integer in 1..4", model={"n_hidden": 4, "activation": "topk"}),
    invalid(
        "model.k", 0, "an integer in 1..4", model={"n_hidden": 4, "activation": "topk", "k": 0}
    ),
    invalid(
        "model.k", 5, "an integer in 1..4", model={"n_hidden": 4, "activation": "topk", "k": 5}
    ),
    *(
        invalid("model.k", 2, "None unless model.activation is 'topk'", m["activation"], model=m)
        for m in ({"activation": "relu", "k": 2}, {"activation": "sigmoid", "k": 2, "n_hidden": 4})
    ),
    *(
        invalid("loss.rho", rho, "a number in (0, 1)", loss={"rho": rho})
        for rho in (0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"))
    ),
    *(
        invalid(
            "loss.sparsity",
            "kl",
            f"'sigmoid' (model.activation is {model['activation']!r})",
            model["activation"],
            model=model,
            loss={"sparsity": "kl"},
        )
        for model in (
            {"activation": "relu"},
            {"activation": "identity"},
            {"n_hidden": 2, "activation": "topk", "k": 1},
            {"activation": "jumprelu"},
            {"n_hidden": 2, "activation": "batchtopk", "k": 1},
        )
    ),
    invalid("data.kind", "uniform", "'multiples', 'offset', 'gaussian'", data={"kind": "uniform"}),
    invalid("model.activation", "tanh", "'relu', 'sigmoid'", model={"activation": "tanh"}),
    invalid("model.activation", "ReLU", "'relu', 'sigmoid'", model={"activation": "ReLU"}),
    invalid("model.init", "xavier", "'torch', 'flax'", model={"init": "xavier"}),
    invalid("loss.sparsity", "l2", "'none', 'kl', 'l1'", loss={"sparsity": "l2"}),
    invalid("train.shuffle", "random", "'feistel', 'sort'", train={"shuffle": "random"}),
    *(
        invalid(f"{section}.{name}", v, allowed, **{section: {name: v}})
        for section, name, allowed in (
            ("data", "n_samples", "a positive integer"),
            ("data", "n_features", "a positive integer"),
            ("data", "max_value", "a positive integer"),
            ("data", "seed", "an integer >= 0"),
            ("model", "n_hidden", "a positive integer"),
            ("train", "epochs", "a positive integer"),
            ("train", "batch_size", "a positive integer"),
            ("train", "chunk_epochs", "a positive integer"),
            ("optim", "learning_rate", "a finite positive number"),
            ("loss", "rho", "a number in (0, 1)"),
        )
        for v in (True, False)
    ),
    invalid(
        "model.k",
        True,
        "an integer in 1..4",
        model={"n_hidden": 4, "activation": "topk", "k": True},
    ),
    invalid("model.n_hidden", 2.0, "a positive integer", model={"n_hidden": 2.0}),
    invalid("data.n_samples", 1.5, "a positive integer", data={"n_samples": 1.5}),
    invalid(
        "model.k", 2.0, "an integer in 1..4", model={"n_hidden": 4, "activation": "topk", "k": 2.0}
    ),
    # the sparse data set and the sparse-autoencoder options
    *(
        invalid(f"data.{name}", v, "a positive integer", data={name: v})
        for name in ("n_atoms", "active")
        for v in (0, -2, 1.5)
    ),
    invalid("data.active", 5, "at most data.n_atoms=4", data={"n_atoms": 4, "active": 5}),
    invalid("data.magnitude", "normal", "'halfnormal', 'uniform'", data={"magnitude": "normal"}),
    invalid("data.noise", -0.1, "a finite number >= 0", data={"noise": -0.1}),
    invalid("data.noise", float("inf"), "a finite number >= 0", data={"noise": float("inf")}),
    *(
        invalid(f"model.{name}", "yes", "true or false", model={name: "yes"})
        for name in ("unit_norm_decoder", "pre_bias", "tied_init", "tied")
    ),
    invalid("loss.aux_k", -1, "an integer >= 0", loss={"aux_k": -1}),
    invalid("loss.aux_k", 2, "0 unless model.activation is 'topk'", loss={"aux_k": 2}),
    invalid(
        "loss.aux_k",
        9,
        "at most model.n_hidden=8",
        model={"n_hidden": 8, "activation": "topk", "k": 2},
        loss={"aux_k": 9},
    ),
    invalid("loss.aux_weight", -1.0, "a finite number >= 0", loss={"aux_weight": -1.0}),
    invalid("loss.dead_steps", 0, "a positive integer", loss={"dead_steps": 0}),
    invalid("loss.resample_dead", 1, "true or false", loss={"resample_dead": 1}),
    invalid("loss.resample_rare", 1.0, "a number in [0, 1)", loss={"resample_rare": 1.0}),
    invalid("loss.resample_rare", -0.1, "a number in [0, 1)", loss={"resample_rare": -0.1}),
    invalid("loss.resample_pool", 0, "a positive integer", loss={"resample_pool": 0}),
    *(
        invalid(
            "loss.resample_split",
            v,
            "0 (off) or a number > 1",
            loss={"resample_split": v},
        )
        for v in (1.0, 0.5, -2.0, float("nan"), True)
    ),
    invalid("loss.resample_least", 1, "true or false", loss={"resample_least": 1}),
    invalid(
        "loss.resample_least",
        True,
        "false unless loss.resample_split > 0",
        loss={"resample_least": True},
    ),
    invalid("optim.schedule", "step", "one of", optim={"schedule": "step"}),
    invalid("optim.final_lr_ratio", 2.0, "a number in [0, 1]", optim={"final_lr_ratio": 2.0}),
    # sparse firing: exact, or each atom independently (bernoulli) with uniform or Zipf p_i
    invalid("data.firing", "maybe", "one of 'exact', 'bernoulli'", data={"firing": "maybe"}),
    invalid("data.magnitude", "ones", "'exponential', 'one'", data={"magnitude": "ones"}),
    *(
        invalid(
            "data.firing_p",
            v,
            "a number in [0, 1]",
            data={"firing": "bernoulli", "firing_p": v},
        )
        for v in (-0.1, 1.5, float("nan"), True, "0.5")
    ),
    *(
        invalid("data.zipf", v, "a finite number >= 0", data={"firing": "bernoulli", "zipf": v})
        for v in (-1.0, float("nan"), float("inf"))
    ),
    *(
        invalid(f"data.{name}", 0.5, "0 unless data.firing='bernoulli'", data={name: 0.5})
        for name in ("firing_p", "zipf")
    ),
    invalid(
        "data.zipf",
        1.0,
        "0 when data.firing_p=0.2 sets every atom's probability",
        data={"firing": "bernoulli", "firing_p": 0.2, "zipf": 1.0},
    ),
    # 20 atoms at s = 2: sum_i (i+1)^-2 = 1.596 < 3, so atom 0 would fire with probability 1.88
    invalid(
        "data.zipf",
        2.0,
        "atom 0's probability data.active / sum_i (i+1)^-s is at most 1 (here 3 / 1.596 = 1.88",
        data={"firing": "bernoulli", "zipf": 2.0},
    ),
    # BatchTopK and JumpReLU
    invalid(
        "model.k",
        None,
        "an integer in 1..4 for activation 'batchtopk'",
        model={"n_hidden": 4, "activation": "batchtopk"},
    ),
    invalid(
        "model.k",
        5,
        "an integer in 1..4 (model.n_hidden)",
        "batchtopk",
        model={"n_hidden": 4, "activation": "batchtopk", "k": 5},
    ),
    invalid(
        "model.k",
        2,
        "None unless model.activation is 'topk', 'batchtopk' or 'omp'",
        "jumprelu",
        model={"n_hidden": 4, "activation": "jumprelu", "k": 2},
    ),
    *(
        invalid(
            f"model.{name}",
            v,
            "a finite positive number",
            model={"activation": "jumprelu", name: v},
        )
        for name in ("jump_bandwidth", "jump_init")
        for v in (0.0, -0.001, float("nan"), True)
    ),
    *(
        invalid(
            f"model.{name}",
            0.1,
            "0.001 (the default) unless model.activation is 'jumprelu'",
            model={name: 0.1},
        )
        for name in ("jump_bandwidth", "jump_init")
    ),
    *(
        invalid(
            "loss.sparsity",
            "l0",
            f"'l0' only with model.activation='jumprelu' (the count of firing units has a gradient "
            f"only through its thresholds; model.activation is {model['activation']!r})",
            model["activation"],
            model=model,
            loss={"sparsity": "l0"},
        )
        for model in ({"activation": "relu"}, {"n_hidden": 2, "activation": "batchtopk", "k": 1})
    ),
    invalid(
        "loss.aux_k",
        2,
        "0 unless model.activation is 'topk' or 'batchtopk' (it is 'jumprelu')",
        model={"n_hidden": 4, "activation": "jumprelu"},
        loss={"aux_k": 2},
    ),
    invalid("data.atoms", "a.npy", "'' unless data.kind='array'", data={"atoms": "a.npy"}),
    # the oracle start: data with true atoms only, one unit per atom
    *(
        invalid(
            "model.init",
            "atoms",
            "'atoms' only on data with true atoms: data.kind='sparse', or 'array' with data.atoms "
            f"(data.kind is {data['kind']!r}{tail}",
            data["kind"],
            data=data,
            model={"init": "atoms"},
        )
        for data, tail in (
            ({"kind": "multiples"}, ")"),
            ({"kind": "gaussian"}, ")"),
            ({"kind": "digits"}, ")"),
            ({"kind": "patches", "n_features": 64}, ")"),
            ({"kind": "array", "path": "x.npy"}, ", without data.atoms)"),
        )
    ),
    invalid(
        "model.n_hidden",
        6,
        "8 with model.init='atoms', one unit per true atom (data.n_atoms)",
        "atoms",
        data={"kind": "sparse", "n_atoms": 8},
        model={"n_hidden": 6, "init": "atoms"},
    ),
]


@pytest.mark.parametrize(("sections", "field", "value", "allowed"), INVALID)
def test_invalid_config_names_field_value_and_allowed(
    sections: dict[str, dict[str, Any]], field: str, value: Any, allowed: str
) -> None:
    with pytest.raises(ValueError) as info:
        build(**sections)
    message = str(info.value)
    assert message.startswith(f"{field}={value!r} is invalid: allowed is "), message
    assert allowed in message


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"model": {"n_hidden": 4, "activation": "topk", "k": 1}},
        {"model": {"n_hidden": 4, "activation": "topk", "k": 4}},
        {"model": {"activation": "sigmoid"}, "loss": {"sparsity": "kl", "rho": 0.5, "weight": 1}},
        {"model": {"activation": "identity"}, "loss": {"sparsity": "l1", "weight": 0.1}},
        {"data": {"n_samples": 7}, "train": {"batch_size": 7}},
        {"data": {"kind": "gaussian"}, "model": {"init": "flax"}, "optim": {"decoupled": True}},
        {"data": {"kind": "sparse", "firing": "bernoulli", "magnitude": "one"}},
        {"data": {"firing": "bernoulli", "firing_p": 1.0}},
        {"data": {"firing": "bernoulli", "firing_p": 0.3, "active": 20}},  # active is ignored
        {"data": {"firing": "bernoulli", "zipf": 1.0}},  # p_0 = 3 / 3.598 = 0.83
        {"data": {"firing": "bernoulli", "zipf": 2.0, "active": 1}},  # p_0 = 0.63
        {"model": {"n_hidden": 4, "activation": "batchtopk", "k": 2}, "loss": {"aux_k": 2}},
        {
            "model": {"activation": "jumprelu", "jump_bandwidth": 0.05, "jump_init": 0.3},
            "loss": {"sparsity": "l0", "weight": 0.01},
        },
        {"model": {"activation": "jumprelu"}, "loss": {"sparsity": "l1", "weight": 0.1}},
        {"data": {"kind": "array", "path": "x.npy", "atoms": "a.npy"}},
        {"data": {"kind": "sparse", "n_atoms": 8}, "model": {"n_hidden": 8, "init": "atoms"}},
        {
            "data": {"kind": "sparse", "n_atoms": 8, "per_seed": True},
            "model": {"n_hidden": 8, "init": "atoms", "activation": "topk", "k": 2},
        },
    ],
    ids=lambda s: json.dumps(s, sort_keys=True),
)
def test_valid_configs_construct(sections: dict[str, dict[str, Any]]) -> None:
    cfg = build(**sections)
    for name, kwargs in sections.items():
        for field, value in kwargs.items():
            assert getattr(getattr(cfg, name), field) == value


def test_defaults_construct() -> None:
    cfg = Config()
    assert cfg == Config(DataConfig(), ModelConfig(), LossConfig(), OptimConfig(), TrainConfig())
    assert cfg.train.batch_size <= cfg.data.n_samples
    assert cfg.model.activation == "relu"
    assert cfg.model.k is None
    assert cfg.loss.sparsity == "none"


@pytest.mark.parametrize(
    ("obj", "field", "value"),
    [
        (Config(), "model", ModelConfig(n_hidden=3)),
        (DataConfig(), "n_samples", 5),
        (ModelConfig(), "n_hidden", 3),
        (LossConfig(), "rho", 0.5),
        (OptimConfig(), "learning_rate", 0.1),
        (TrainConfig(), "epochs", 1),
    ],
    ids=lambda x: type(x).__name__ if dataclasses.is_dataclass(x) else str(x),
)
def test_frozen(obj: Any, field: str, value: Any) -> None:
    before = getattr(obj, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, value)
    assert getattr(obj, field) == before


def test_hashable_and_equal_by_value() -> None:
    a = build(model={"n_hidden": 3}, optim={"learning_rate": 0.01})
    b = build(model={"n_hidden": 3}, optim={"learning_rate": 0.01})
    c = build(model={"n_hidden": 4}, optim={"learning_rate": 0.01})
    assert a is not b
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c, Config()}) == 3
    assert {a: "x"}[b] == "x"


ROUND_TRIP = [
    Config(),
    build(
        data={"kind": "offset", "n_samples": 64, "n_features": 5, "max_value": 9, "seed": 3},
        model={"n_hidden": 6, "activation": "topk", "k": 2, "init": "flax"},
        loss={"sparsity": "l1", "weight": 0.25},
        optim={"learning_rate": 0.05, "weight_decay": 1e-4, "decoupled": True, "eps": 1e-7},
        train={"epochs": 10, "batch_size": 32, "chunk_epochs": 5},
    ),
    build(model={"activation": "sigmoid"}, loss={"sparsity": "kl", "rho": 0.1, "weight": 3.0}),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=["default", "topk-l1", "sigmoid-kl"])
def test_dict_round_trip(cfg: Config) -> None:
    d = cfg.to_dict()
    assert set(d) == set(SECTIONS)
    assert Config.from_dict(d) == cfg
    assert Config.from_dict(json.loads(json.dumps(d))) == cfg


def test_from_dict_missing_sections_default() -> None:
    assert Config.from_dict({}) == Config()
    assert Config.from_dict({"model": {"n_hidden": 3}}) == build(model={"n_hidden": 3})


@pytest.mark.parametrize(
    ("d", "named"),
    [
        ({"model": {"n_hiden": 3}}, "model.n_hiden=3"),
        ({"optim": {"lr": 0.1}}, "optim.lr=0.1"),
        ({"modle": {"n_hidden": 3}}, "'modle'"),
    ],
)
def test_from_dict_unknown_raises(d: dict[str, dict[str, Any]], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        Config.from_dict(d)


def test_from_dict_validates() -> None:
    with pytest.raises(ValueError, match=re.escape("model.n_hidden=0")):
        Config.from_dict({"model": {"n_hidden": 0}})
    with pytest.raises(ValueError, match=re.escape("train.batch_size=200")):
        Config.from_dict({"data": {"n_samples": 100}, "train": {"batch_size": 200}})


def test_override_parses_types() -> None:
    cfg = override(Config(), ["model.n_hidden=3", "optim.decoupled=true", "model.k=none"])
    assert cfg == build(model={"n_hidden": 3}, optim={"decoupled": True})
    assert type(cfg.model.n_hidden) is int
    assert cfg.optim.decoupled is True
    assert cfg.model.k is None


@pytest.mark.parametrize(
    ("assignment", "section", "field", "value"),
    [
        ("optim.learning_rate=1e-2", "optim", "learning_rate", 0.01),
        ("optim.weight_decay=0", "optim", "weight_decay", 0.0),
        ("loss.weight=2", "loss", "weight", 2.0),
        ("data.kind=gaussian", "data", "kind", "gaussian"),
        ("model.init=flax", "model", "init", "flax"),
        ("optim.decoupled=False", "optim", "decoupled", False),
        ("optim.decoupled=yes", "optim", "decoupled", True),
        ("optim.decoupled=0", "optim", "decoupled", False),
        ("data.seed=17", "data", "seed", 17),
        ("  train.epochs = 5  ", "train", "epochs", 5),
        ("train.shuffle=sort", "train", "shuffle", "sort"),
        ("data.firing=bernoulli", "data", "firing", "bernoulli"),
        ("data.magnitude=one", "data", "magnitude", "one"),
    ],
)
def test_override_single(assignment: str, section: str, field: str, value: Any) -> None:
    cfg = override(Config(), [assignment])
    got = getattr(getattr(cfg, section), field)
    assert got == value
    assert type(got) is type(value)
    assert dataclasses.replace(cfg, **{section: getattr(Config(), section)}) == Config()


def test_override_sets_bernoulli_firing_together() -> None:
    """`data.zipf` alone is refused (exact firing); with `data.firing=bernoulli` in any order it
    is taken, as a float."""
    with pytest.raises(ValueError, match=r"^data\.zipf=1\.0 is invalid: allowed is 0 unless"):
        override(Config(), ["data.zipf=1"])
    for order in (
        ["data.zipf=1", "data.firing=bernoulli"],
        ["data.firing=bernoulli", "data.zipf=1"],
    ):
        data = override(Config(), [*order, "data.firing_p=0"]).data
        assert (data.firing, data.zipf, data.firing_p) == ("bernoulli", 1.0, 0.0)
        assert type(data.zipf) is float
    assert override(Config(), ["data.firing=bernoulli", "data.firing_p=0.25"]).data.firing_p == 0.25


def test_override_leaves_input_alone() -> None:
    cfg = Config()
    override(cfg, ["model.n_hidden=7"])
    assert cfg == Config()
    assert override(cfg, []) == cfg


def test_override_applies_in_order() -> None:
    cfg = override(Config(), ["model.n_hidden=3", "model.n_hidden=5"])
    assert cfg.model.n_hidden == 5
    cfg = override(Config(), ["model.activation=sigmoid", "loss.sparsity=kl"])
    assert (cfg.model.activation, cfg.loss.sparsity) == ("sigmoid", "kl")
    cfg = override(Config(), ["loss.sparsity=kl", "model.activation=sigmoid"])
    assert (cfg.model.activation, cfg.loss.sparsity) == ("sigmoid", "kl")


@pytest.mark.parametrize("field", ["optim.learning_rate", "loss.weight", "optim.eps"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_numbers_are_refused(field, value) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        override(Config(), [f"{field}={value}"])


@pytest.mark.parametrize(
    ("start", "assignments", "expected"),
    [
        (
            Config(),
            ["model.activation=topk", "model.k=1"],
            build(model={"activation": "topk", "k": 1}),
        ),
        (
            Config(),
            ["model.k=1", "model.activation=topk"],
            build(model={"activation": "topk", "k": 1}),
        ),
        (
            build(model={"activation": "topk", "k": 1}),
            ["model.activation=relu", "model.k=none"],
            Config(),
        ),
    ],
    ids=["activation-then-k", "k-then-activation", "topk-to-relu"],
)
def test_override_topk_switch(start: Config, assignments: list[str], expected: Config) -> None:
    assert override(start, assignments) == expected


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("model.n_hidden", "--set='model.n_hidden'"),
        ("n_hidden=3", "--set='n_hidden=3'"),
        ("=3", "--set='=3'"),
        ("modle.n_hidden=3", "a section among"),
        ("model.n_hiden=3", "a field of model"),
        ("model.n_hidden=three", "model.n_hidden='three' is invalid: allowed is an integer"),
        ("model.n_hidden=2.5", "model.n_hidden='2.5' is invalid: allowed is an integer"),
        ("model.k=two", "model.k='two' is invalid: allowed is an integer"),
        ("optim.learning_rate=fast", "optim.learning_rate='fast' is invalid: allowed is a number"),
        ("optim.decoupled=maybe", "optim.decoupled='maybe' is invalid: allowed is true or false"),
    ],
)
def test_override_bad_syntax_raises(assignment: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        override(Config(), [assignment])


@pytest.mark.parametrize(
    ("assignments", "named"),
    [
        (["model.n_hidden=0"], "model.n_hidden=0"),
        (["optim.learning_rate=-1"], "optim.learning_rate=-1.0"),
        (["loss.rho=1"], "loss.rho=1.0"),
        (["model.activation=tanh"], "model.activation='tanh'"),
        (["model.k=2"], "model.k=2"),
        (["train.batch_size=5000"], "train.batch_size=5000"),
        (["loss.sparsity=kl"], "loss.sparsity='kl'"),
        (["data.seed=-1"], "data.seed=-1"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_override_invalid_result_raises(assignments: list[str], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        override(Config(), assignments)


def test_an_arrays_atoms_start_needs_one_unit_per_row_of_its_atoms_file(tmp_path) -> None:
    """`model.init=atoms` on a user's array counts the rows of `data.atoms` (read when the config
    is made, before anything compiles); a missing file is `data.atoms`'s error."""
    np.save(tmp_path / "x.npy", np.ones((200, 4), np.float32))
    np.save(tmp_path / "a.npy", np.eye(5, 4, dtype=np.float32) + 0.5)
    sets = ["data.kind=array", f"data.path={tmp_path / 'x.npy'}", "model.init=atoms"]
    atoms = f"data.atoms={tmp_path / 'a.npy'}"
    assert override(Config(), [*sets, atoms, "model.n_hidden=5"]).model.n_hidden == 5
    with pytest.raises(ValueError) as info:
        override(Config(), [*sets, atoms, "model.n_hidden=4"])
    assert str(info.value) == (
        "model.n_hidden=4 is invalid: allowed is 5 with model.init='atoms', one unit per true atom "
        f"(the rows of data.atoms={str(tmp_path / 'a.npy')!r})"
    )
    with pytest.raises(ValueError, match=re.escape("data.atoms=")):
        override(Config(), [*sets, f"data.atoms={tmp_path / 'missing.npy'}", "model.n_hidden=5"])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["multiples", "--set", "model.init=atoms"], "model.init='atoms' is invalid"),
        (["sparse", "--set", "model.init=atoms", "--set", "data.n_atoms=40"], "model.n_hidden=48"),
        (  # a hidden-size sweep: its narrower arms mask units, so they would drop atoms
            [
                "noise",
                *("--set", "data.kind=sparse", "--set", "data.n_atoms=10"),
                *("--set", "model.init=atoms"),
            ],
            "'atoms' only where every unit is in use (arm ",
        ),
    ],
)
def test_the_cli_refuses_an_atoms_start_in_one_line(capsys, tmp_path, argv, named) -> None:
    code = cli.main(["run", *argv, "--epochs", "1", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxae: error: "), err
    assert named in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
