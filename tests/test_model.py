"""The autoencoder of `jaxae.model`: shapes, forward values, initialisers, top-k and masks."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae.config import ModelConfig
from jaxae.model import Autoencoder, make_model, top_k_mask, top_k_relu

D, H = 5, 6
ACTIVATIONS = ["relu", "sigmoid", "identity", "topk"]
NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}
MASK = np.array([1, 0, 1, 1, 0, 1], np.float32)


def build(activation: str, k: int = 2, init: str = "torch") -> Autoencoder:
    cfg = ModelConfig(
        n_hidden=H, activation=activation, k=k if activation == "topk" else None, init=init
    )
    return make_model(cfg, D)


def compile_once(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """`jit(fn)` for arguments like `args`, compiled without LLVM optimisation: these programs are
    tiny and run a few times, so compiling is nearly all their cost."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


@functools.cache
def compiled_init(initializer: str) -> Callable[[jax.Array], Any]:
    model = build("relu", init=initializer)
    return compile_once(lambda k: model.init(k, jnp.zeros((1, D))), jax.random.key(0))


def init(model: Autoencoder, key: jax.Array) -> Any:
    """`model.init`; the parameters depend only on the initialiser, not on the activation."""
    return compiled_init(model.initializer)(key)


def inputs(batch: tuple[int, ...] = (8,), seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(*batch, D)), jnp.float32)


def pre_activation(model: Autoencoder, params: Any, x: jax.Array) -> np.ndarray:
    return np.asarray(model.apply(params, x, method=lambda m, x: m.encoder(x)))


def numpy_top_k_relu(pre: np.ndarray, k: int) -> np.ndarray:
    """Keeps max(pre, 0) at the k largest entries of each row, 0 elsewhere."""
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=-1)[:, :k]
    rows = np.arange(pre.shape[0])[:, None]
    out[rows, top] = np.maximum(pre[rows, top], 0.0)
    return out


def test_make_model_fields() -> None:
    model = make_model(ModelConfig(n_hidden=4, activation="topk", k=3, init="flax"), 7)
    assert model == Autoencoder(
        n_features=7, n_hidden=4, activation="topk", k=3, initializer="flax"
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("init_name", ["torch", "flax"])
def test_param_tree(key: jax.Array, init_name: str, activation: str) -> None:
    model = build(activation, init=init_name)
    params = jax.eval_shape(model.init, key, jnp.zeros((1, D)))
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {
        "params": {
            "encoder": {"kernel": (D, H), "bias": (H,)},
            "decoder": {"kernel": (H, D), "bias": (D,)},
        }
    }
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("batch", [(), (8,), (2, 4)], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_output_shapes(key: jax.Array, activation: str, batch: tuple[int, ...]) -> None:
    model = build(activation)
    x_hat, h = model.apply(init(model, key), inputs(batch))
    chex.assert_shape(x_hat, (*batch, D))
    chex.assert_shape(h, (*batch, H))
    chex.assert_tree_all_finite((x_hat, h))


@pytest.mark.parametrize("init_name", ["torch", "flax"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "identity"])
def test_forward_matches_hand_computation(key: jax.Array, activation: str, init_name: str) -> None:
    model = build(activation, init=init_name)
    params = init(model, key)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
    x = inputs()
    h_ref = NUMPY_ACTIVATIONS[activation](
        np.asarray(x, np.float64) @ p["encoder"]["kernel"] + p["encoder"]["bias"]
    )
    x_hat_ref = h_ref @ p["decoder"]["kernel"] + p["decoder"]["bias"]
    x_hat, h = model.apply(params, x)
    # float32 matmuls of length 5-6 over O(1) values: rounding error is a few 1e-7.
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_hat, x_hat_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.apply(params, x, method="encode"), h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.apply(params, h, method="decode"), x_hat_ref, rtol=1e-5, atol=1e-6
    )


N_SEEDS = 200
D_INIT, H_INIT = 16, 8
D_WIDE, H_WIDE = 256, 128
FAN_IN = {"encoder": D_INIT, "decoder": H_INIT}
LAYERS = [(layer, leaf) for layer in ("encoder", "decoder") for leaf in ("kernel", "bias")]


@pytest.fixture(scope="module")
def torch_params() -> Any:
    model = make_model(ModelConfig(n_hidden=H_INIT), D_INIT)
    keys = jax.random.split(jax.random.key(0), N_SEEDS)

    def init_one(k: jax.Array) -> Any:
        return model.init(k, jnp.zeros((1, D_INIT)))

    return compile_once(jax.vmap(init_one), keys)(keys)["params"]


@pytest.fixture(scope="module")
def flax_params() -> Any:
    model = make_model(ModelConfig(n_hidden=H_WIDE, init="flax"), D_WIDE)
    args = (jax.random.key(0), jnp.zeros((1, D_WIDE)))
    return compile_once(model.init, *args)(*args)["params"]


@pytest.mark.parametrize(("layer", "leaf"), LAYERS)
def test_torch_init_is_uniform_within_bound(torch_params: Any, layer: str, leaf: str) -> None:
    w = np.asarray(torch_params[layer][leaf], np.float64)
    assert w.shape[0] == N_SEEDS
    assert not np.array_equal(w[0], w[1])
    w = w.ravel()
    m = w.size
    bound = 1 / math.sqrt(FAN_IN[layer])
    sigma = bound / math.sqrt(3)
    assert np.all(np.abs(w) <= bound)
    # The bound is attained: P(max |w| < bound (1 - 20/m)) = (1 - 20/m)^m ~ e^-20.
    assert np.max(np.abs(w)) > bound * (1 - 20 / m)
    # U(-b, b) has sigma = b/sqrt(3) and kurtosis 9/5, so the sample mean has SE sigma/sqrt(m) and
    # the sample std has relative SE sqrt((9/5 - 1) / (4m)) = sqrt(0.2/m); m >= 1600 here. 5 SE.
    assert abs(w.mean()) < 5 * sigma / math.sqrt(m)
    assert abs(w.std() / sigma - 1) < 5 * math.sqrt(0.2 / m)


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_flax_init(flax_params: Any, layer: str) -> None:
    np.testing.assert_array_equal(flax_params[layer]["bias"], 0.0)
    w = np.asarray(flax_params[layer]["kernel"], np.float64).ravel()
    sigma = 1 / math.sqrt({"encoder": D_WIDE, "decoder": H_WIDE}[layer])
    # lecun_normal: a truncated normal rescaled to std 1/sqrt(fan_in). Its kurtosis is below the
    # normal's 3, so the relative SE of the sample std is below sqrt((3 - 1) / (4m)); m = 32768.
    assert abs(w.std() / sigma - 1) < 5 * math.sqrt(0.5 / w.size)
    assert abs(w.mean()) < 5 * sigma / math.sqrt(w.size)


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_ng_init_is_uniform_within_his_bound(layer: str) -> None:
    model = make_model(ModelConfig(n_hidden=H_INIT, init="ng"), D_INIT)
    keys = jax.random.split(jax.random.key(0), N_SEEDS)
    params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, D_INIT))))(keys)["params"][layer]
    np.testing.assert_array_equal(params["bias"], 0.0)
    w = np.asarray(params["kernel"], np.float64).ravel()
    bound = math.sqrt(6 / (H_INIT + D_INIT + 1))  # the same for both layers: Ng's r
    m = w.size
    assert np.all(np.abs(w) <= bound)
    assert np.max(np.abs(w)) > bound * (1 - 20 / m)  # attained, as for the torch init above
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 5 * math.sqrt(0.2 / m)


def test_sigmoid_output_is_the_sigmoid_of_the_linear_output(key: jax.Array) -> None:
    linear = make_model(ModelConfig(n_hidden=H, activation="sigmoid"), D)
    squashed = make_model(ModelConfig(n_hidden=H, activation="sigmoid", output="sigmoid"), D)
    params = init(linear, key)
    x = inputs()
    x_lin, h_lin = linear.apply(params, x)
    x_sig, h_sig = squashed.apply(params, x)
    np.testing.assert_array_equal(h_sig, h_lin)
    np.testing.assert_allclose(x_sig, jax.nn.sigmoid(x_lin), rtol=1e-6)
    np.testing.assert_allclose(squashed.apply(params, h_lin, method="decode"), x_sig, rtol=1e-6)
    assert np.all((np.asarray(x_sig) > 0) & (np.asarray(x_sig) < 1))


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_top_k_relu_keeps_k_largest(k: int) -> None:
    pre = np.random.default_rng(k).normal(size=(64, 12)).astype(np.float32)
    h = np.asarray(top_k_relu(jnp.asarray(pre), k))
    np.testing.assert_array_equal(h, numpy_top_k_relu(pre, k))
    assert np.all(np.count_nonzero(h, axis=1) <= k)
    kept = h != 0
    np.testing.assert_array_equal(h[kept], np.maximum(pre[kept], 0.0))
    shifted = pre + 10.0
    h_pos = np.asarray(top_k_relu(jnp.asarray(shifted), k))
    np.testing.assert_array_equal(np.count_nonzero(h_pos, axis=1), k)
    np.testing.assert_array_equal(h_pos, numpy_top_k_relu(shifted, k))


@pytest.mark.parametrize("width", [12, 48, 80])
def test_top_k_relu_both_selections_agree_with_ties(width: int) -> None:
    """Counting larger entries (narrow rows) and iterated maxima (wider rows) keep the same units,
    including every unit tied at the k-th value, and the same gradient."""
    rng = np.random.default_rng(width)
    pre = rng.integers(-3, 4, size=(64, width)).astype(np.float32)  # many ties
    pre[0] = -np.inf  # masked units
    pre[0, :2] = 1.0
    for k in (1, 3, width // 2):
        kth = -np.sort(-pre, axis=1)[:, k - 1 : k]
        want = np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
        np.testing.assert_array_equal(np.asarray(top_k_relu(jnp.asarray(pre), k)), want)
        grad = jax.grad(lambda p, k=k: jnp.sum(top_k_relu(p, k) * 2.0))(jnp.asarray(pre))
        np.testing.assert_array_equal(np.asarray(grad), np.where((pre >= kth) & (pre > 0), 2, 0))


@pytest.mark.parametrize("k", [1, 2, H])
def test_topk_model_matches_hand_computation(key: jax.Array, k: int) -> None:
    model = build("topk", k=k)
    params = init(model, key)
    x = inputs()
    _, h = model.apply(params, x)
    h_ref = numpy_top_k_relu(pre_activation(model, params, x), k)
    np.testing.assert_array_equal(h, h_ref)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mask_zeroes_units(key: jax.Array, activation: str) -> None:
    model = build(activation)
    params = init(model, key)
    x = inputs()
    x_hat_ones, h_ones = model.apply(params, x, jnp.ones(H))
    x_hat_free, h_free = model.apply(params, x)
    np.testing.assert_array_equal(h_ones, h_free)
    np.testing.assert_array_equal(x_hat_ones, x_hat_free)
    _, h = model.apply(params, x, jnp.asarray(MASK))
    h = np.asarray(h)
    np.testing.assert_array_equal(h[:, MASK == 0], 0.0)
    if activation != "topk":
        np.testing.assert_array_equal(h[:, MASK == 1], np.asarray(h_free)[:, MASK == 1])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_masked_units_weights_do_not_matter(key: jax.Array, activation: str) -> None:
    model = build(activation)
    params = init(model, key)
    x = inputs()
    off = MASK == 0
    noise = np.random.default_rng(1).normal(size=(3, H, D)).astype(np.float32) * 100
    p = jax.tree.map(np.array, params["params"])
    p["encoder"]["kernel"][:, off] = noise[0].T[:, off]
    p["encoder"]["bias"][off] = noise[1, off, 0]
    p["decoder"]["kernel"][off, :] = noise[2][off, :]
    changed = {"params": p}
    assert not np.array_equal(p["encoder"]["kernel"], params["params"]["encoder"]["kernel"])
    mask = jnp.asarray(MASK)
    x_hat, h = model.apply(params, x, mask)
    x_hat_changed, h_changed = model.apply(changed, x, mask)
    np.testing.assert_array_equal(h_changed, h)
    np.testing.assert_array_equal(x_hat_changed, x_hat)


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_topk_never_selects_masked_units(key: jax.Array, k: int) -> None:
    model = build("topk", k=k)
    params = init(model, key)
    on = MASK == 1
    params = jax.tree.map(np.array, params)
    params["params"]["encoder"]["bias"][~on] = 100.0
    x = inputs()
    pre = pre_activation(model, params, x)
    assert np.all(pre[:, ~on].min(axis=1) > pre[:, on].max(axis=1))
    _, h = model.apply(params, x, jnp.asarray(MASK))
    h = np.asarray(h)
    np.testing.assert_array_equal(h[:, ~on], 0.0)
    np.testing.assert_array_equal(h[:, on], numpy_top_k_relu(pre[:, on], k))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_masked_gradient_is_finite_and_zero_on_masked_units(
    key: jax.Array, activation: str
) -> None:
    model = build(activation, k=5)
    params = init(model, key)
    x = inputs()

    def loss(p: Any) -> jax.Array:
        return jnp.mean(jnp.square(model.apply(p, x, jnp.asarray(MASK))[0] - x))

    grads = jax.jit(jax.grad(loss))(params)["params"]
    chex.assert_tree_all_finite(grads)
    off = MASK == 0
    np.testing.assert_array_equal(np.asarray(grads["encoder"]["kernel"])[:, off], 0.0)
    np.testing.assert_array_equal(np.asarray(grads["encoder"]["bias"])[off], 0.0)
    np.testing.assert_array_equal(np.asarray(grads["decoder"]["kernel"])[off, :], 0.0)


# ------------------------------------------------------------------------------------------------
# Sparse-autoencoder options: traced k, unit-norm decoder, tied init, pre-encoder bias


@pytest.mark.parametrize(
    ("width", "k_max"),
    [(12, 7), (48, 7), (80, 40)],
    ids=["counting", "iterated-max", "lax.top_k"],
)
def test_traced_k_equals_static_k(width: int, k_max: int) -> None:
    """One program with k traced (vmapped over a sweep, up to k_max) gives every static-k result,
    on each of the three ways of finding the k-th largest value."""
    pre = jnp.asarray(np.random.default_rng(width).normal(size=(32, width)), jnp.float32)
    ks = jnp.arange(1, k_max + 1, dtype=jnp.int32)
    traced = jax.jit(jax.vmap(lambda k: top_k_relu(pre, k, k_max)))(ks)
    for k, h in zip(np.asarray(ks), np.asarray(traced), strict=True):
        np.testing.assert_array_equal(h, np.asarray(top_k_relu(pre, int(k))))
        np.testing.assert_array_equal(h, numpy_top_k_relu(np.asarray(pre), int(k)))


@pytest.mark.parametrize(("width", "k_max"), [(12, 6), (48, 6), (80, 40)])
def test_top_k_keeps_every_unit_tied_with_the_kth(width: int, k_max: int) -> None:
    """With ties (values on a coarse grid), a unit is kept exactly when fewer than k units of its
    row are strictly larger, on every path."""
    pre = np.round(np.random.default_rng(1).normal(size=(64, width)) * 2) / 2
    for k in range(1, k_max + 1):
        keep = np.asarray(top_k_mask(jnp.asarray(pre, jnp.float32), jnp.int32(k), k_max))
        above = np.sum(pre[:, None, :] > pre[:, :, None], axis=-1)
        np.testing.assert_array_equal(keep, above < k)


def test_traced_k_through_the_model(key: jax.Array) -> None:
    model = build("topk", k=4)
    params = init(model, key)
    x = inputs()
    for k in (1, 2, 4):
        _, h = model.apply(params, x, None, jnp.int32(k))
        np.testing.assert_array_equal(h, numpy_top_k_relu(pre_activation(model, params, x), k))


def sae(**options: Any) -> Autoencoder:
    return make_model(ModelConfig(n_hidden=H, activation="relu", **options), D)


def test_unit_norm_decoder_is_a_reparameterisation(key: jax.Array) -> None:
    model = sae(unit_norm_decoder=True)
    params = model.init(key, jnp.zeros((1, D)))
    w = np.asarray(model.apply(params, method="decoder_weights"))
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    raw = np.asarray(params["params"]["decoder"]["kernel"])
    np.testing.assert_allclose(w, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    # Scaling a raw decoder row changes nothing: the code cannot shrink while the decoder grows.
    scaled = jax.tree.map(np.array, params)
    scaled["params"]["decoder"]["kernel"] *= np.arange(1.0, H + 1.0)[:, None] * 7.0
    x = inputs()
    x_hat, h = model.apply(params, x)
    x_hat_scaled, h_scaled = model.apply(scaled, x)
    np.testing.assert_allclose(x_hat_scaled, x_hat, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(h_scaled, h)
    bias = np.asarray(params["params"]["decoder"]["bias"])
    np.testing.assert_allclose(x_hat, np.asarray(h) @ w + bias, rtol=1e-5, atol=1e-6)


def test_plain_decoder_uses_its_raw_kernel(key: jax.Array) -> None:
    model = sae()
    params = model.init(key, jnp.zeros((1, D)))
    np.testing.assert_array_equal(
        model.apply(params, method="decoder_weights"), params["params"]["decoder"]["kernel"]
    )


@pytest.mark.parametrize("unit_norm", [False, True])
def test_tied_init_starts_the_encoder_at_the_decoder_transposed(
    key: jax.Array, unit_norm: bool
) -> None:
    from jaxae.model import init_params

    model = sae(tied_init=True, unit_norm_decoder=unit_norm)
    params = init_params(model, key)
    w = np.asarray(model.apply(params, method="decoder_weights"))
    np.testing.assert_array_equal(params["params"]["encoder"]["kernel"], w.T)
    untied = init_params(sae(unit_norm_decoder=unit_norm), key)
    assert not np.allclose(untied["params"]["encoder"]["kernel"], w.T)
    # Only the encoder kernel changes; everything else is the untied draw.
    for layer, leaf in [("encoder", "bias"), ("decoder", "kernel"), ("decoder", "bias")]:
        np.testing.assert_array_equal(params["params"][layer][leaf], untied["params"][layer][leaf])


@pytest.mark.parametrize("unit_norm", [False, True])
def test_an_atoms_start_is_the_atoms_and_their_transpose(key: jax.Array, unit_norm: bool) -> None:
    """`init="atoms"`: the decoder kernel is the atoms as given (rows of any length), the encoder
    the decoder rows in use transposed (unit rows with `unit_norm_decoder`), every bias zero."""
    from jaxae.model import init_params, unit_rows

    rows = np.asarray(jax.random.normal(jax.random.key(7), (H, D)))
    atoms = (rows * np.arange(1.0, H + 1)[:, None]).astype(np.float32)  # rows of any length
    model = sae(init="atoms", unit_norm_decoder=unit_norm, pre_bias=True).clone(atoms=atoms)
    params = init_params(model, key)["params"]
    np.testing.assert_array_equal(params["decoder"]["kernel"], atoms)
    in_use = np.asarray(unit_rows(jnp.asarray(atoms))) if unit_norm else atoms
    np.testing.assert_array_equal(model.apply({"params": params}, method="decoder_weights"), in_use)
    np.testing.assert_array_equal(params["encoder"]["kernel"], in_use.T)
    for layer in ("encoder", "decoder"):
        np.testing.assert_array_equal(params[layer]["bias"], 0.0)
    # without atoms handed over it refuses; a module only applied (`jaxae.load`'s) needs none
    with pytest.raises(ValueError, match=re.escape("model.init='atoms' is invalid")):
        init_params(sae(init="atoms"), key)
    x = inputs()
    x_hat, _ = sae(init="atoms", unit_norm_decoder=unit_norm).apply({"params": params}, x)
    chex.assert_trees_all_close(x_hat, model.apply({"params": params}, x)[0])


def test_pre_bias_subtracts_the_decoder_bias_before_encoding(key: jax.Array) -> None:
    model = sae(pre_bias=True)
    params = jax.tree.map(np.array, model.init(key, jnp.zeros((1, D))))
    params["params"]["decoder"]["bias"] = np.linspace(-2.0, 3.0, D).astype(np.float32)
    p = params["params"]
    x = np.asarray(inputs())
    pre = (x - p["decoder"]["bias"]) @ p["encoder"]["kernel"] + p["encoder"]["bias"]
    np.testing.assert_allclose(
        model.apply(params, jnp.asarray(x), method="encode"),
        np.maximum(pre, 0),
        rtol=1e-5,
        atol=1e-6,
    )
    plain = sae().apply(params, jnp.asarray(x), method="encode")
    assert not np.allclose(plain, np.maximum(pre, 0))


@pytest.mark.parametrize(
    ("activation", "h", "active"),
    [
        ("relu", [0.0, 0.1, 2.0], [False, True, True]),
        ("topk", [0.0, 0.1, 2.0], [False, True, True]),
        ("sigmoid", [0.2, 0.5, 0.7], [False, False, True]),
    ],
)
def test_is_active_means_positive_pre_activation(activation, h, active) -> None:
    model = build(activation)
    np.testing.assert_array_equal(model.is_active(jnp.asarray([h])), [active])


# ------------------------------------------------------------------------------------------------
# Tied weights (`model.tied`): the encoder kernel is the decoder rows in use, transposed


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_a_tied_model_has_no_encoder_kernel(key: jax.Array, activation: str) -> None:
    k = 2 if activation == "topk" else None
    model = make_model(ModelConfig(n_hidden=H, activation=activation, k=k, tied=True), D)
    shapes = jax.tree.map(lambda a: a.shape, jax.eval_shape(model.init, key, jnp.zeros((1, D))))
    want = {"encoder": {"bias": (H,)}, "decoder": {"kernel": (H, D), "bias": (D,)}}
    if activation == "jumprelu":
        want["jump"] = {"log_threshold": (H,)}
    assert shapes == {"params": want}


@pytest.mark.parametrize("pre_bias", [False, True])
@pytest.mark.parametrize("unit_norm", [False, True])
def test_tied_pre_activations_read_the_decoder_rows_in_use(
    key: jax.Array, unit_norm: bool, pre_bias: bool
) -> None:
    """`pre = (x - b_d if pre_bias) @ W_d_in_use^T + b_e`, masked units as untied ones."""
    model = sae(tied=True, unit_norm_decoder=unit_norm, pre_bias=pre_bias)
    params = jax.tree.map(np.array, model.init(key, jnp.zeros((1, D))))
    p = params["params"]
    p["encoder"]["bias"] = np.linspace(-1.0, 1.0, H).astype(np.float32)
    p["decoder"]["bias"] = np.linspace(-2.0, 3.0, D).astype(np.float32)
    w = np.asarray(model.apply(params, method="decoder_weights"), np.float64)
    np.testing.assert_array_equal(model.apply(params, method="encoder_weights"), w.T)
    x = np.asarray(inputs(), np.float64)
    pre = (x - p["decoder"]["bias"] * pre_bias) @ w.T + p["encoder"]["bias"]
    got = model.apply(params, jnp.asarray(x, jnp.float32), method="pre_activations")
    np.testing.assert_allclose(got, pre, rtol=1e-5, atol=1e-5)
    masked = model.apply(params, jnp.asarray(x, jnp.float32), jnp.asarray(MASK), method="encode")
    want = np.where(MASK > 0, np.maximum(pre, 0.0), 0.0)
    np.testing.assert_allclose(masked, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init_name", ["torch", "flax", "ng"])
def test_a_tied_model_starts_as_a_tied_init_one(key: jax.Array, init_name: str) -> None:
    """Same key, same decoder and encoder bias as the untied model (its bias initialiser, its
    draw); with `tied_init` the untied one starts as the same function."""
    from jaxae.model import init_params

    tied = init_params(sae(tied=True, init=init_name), key)["params"]
    untied = init_params(sae(tied_init=True, init=init_name), key)["params"]
    chex.assert_trees_all_equal(tied["decoder"], untied["decoder"])
    np.testing.assert_array_equal(tied["encoder"]["bias"], untied["encoder"]["bias"])
    if init_name == "torch":  # uniform on +-1/sqrt(D), not zero
        assert np.all(np.abs(tied["encoder"]["bias"]) <= 1 / math.sqrt(D))
        assert np.any(tied["encoder"]["bias"] != 0)
    x = inputs()
    chex.assert_trees_all_close(
        sae(tied=True).apply({"params": tied}, x),
        sae().apply({"params": untied}, x),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("unit_norm", [False, True])
def test_a_tied_atoms_start_is_the_atoms(key: jax.Array, unit_norm: bool) -> None:
    from jaxae.model import init_params, unit_rows

    atoms = (
        np.asarray(jax.random.normal(jax.random.key(7), (H, D))) * np.arange(1.0, H + 1)[:, None]
    )
    atoms = atoms.astype(np.float32)
    model = sae(init="atoms", tied=True, unit_norm_decoder=unit_norm).clone(atoms=atoms)
    params = init_params(model, key)
    np.testing.assert_array_equal(params["params"]["decoder"]["kernel"], atoms)
    np.testing.assert_array_equal(params["params"]["encoder"]["bias"], 0.0)
    in_use = np.asarray(unit_rows(jnp.asarray(atoms))) if unit_norm else atoms
    np.testing.assert_array_equal(model.apply(params, method="encoder_weights"), in_use.T)


def test_tied_gradient_adds_the_encoder_path_to_the_decoder_kernel(key: jax.Array) -> None:
    """The tied decoder kernel's gradient is the untied model's (same decoder, encoder kernel its
    transpose) plus the untied encoder kernel's gradient, transposed: the encoder path
    contributes."""
    from jaxae.model import init_params

    tied_model, untied_model = sae(tied=True), sae(tied_init=True)
    untied = init_params(untied_model, key)
    tied = {
        "params": {**untied["params"], "encoder": {"bias": untied["params"]["encoder"]["bias"]}}
    }
    x = inputs()

    def loss(model: Autoencoder, p: Any) -> jax.Array:
        return jnp.mean(jnp.square(model.apply(p, x)[0] - x))

    g_tied = jax.grad(functools.partial(loss, tied_model))(tied)["params"]
    g_untied = jax.grad(functools.partial(loss, untied_model))(untied)["params"]
    chex.assert_tree_all_finite(g_tied)
    assert not np.allclose(g_tied["decoder"]["kernel"], g_untied["decoder"]["kernel"])
    np.testing.assert_allclose(
        g_tied["decoder"]["kernel"],
        g_untied["decoder"]["kernel"] + g_untied["encoder"]["kernel"].T,
        rtol=1e-5,
        atol=1e-7,
    )
    for layer in ("encoder", "decoder"):
        np.testing.assert_allclose(
            g_tied[layer]["bias"], g_untied[layer]["bias"], rtol=1e-5, atol=1e-7
        )
