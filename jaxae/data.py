"""Data sets: pure, jit-able generators `(key, n, ...) -> x_NxD`, and host loaders of real data.

Shape legend: N samples, D features, M ground-truth atoms (or held-out rows), P patch side.
Every generator is a pure function of its key, so the same key gives the same data set on any
device and inside or outside `jit`/`vmap`. The sparse generator also returns its ground truth
(`atoms_MxD`), which `ground_truth` rebuilds from the same key for the metrics; its codes fire
exactly `active` atoms per sample or, as SAELens's synthetic data do, each atom independently
with its own (uniform or Zipfian) probability (`sparse_codes`, `firing_probabilities`).

Host loaders (`HOST_KINDS`: `digits`, `patches`, `array`) read files that ship inside installed
packages (scikit-learn's 8x8 digits, scikit-image's photographs; never a download) or the user's
own `.npy` file, with, optionally, a `.npy` file of its true atoms (`data.atoms`, the array's
ground truth, so it is scored as the sparse data are). They run outside `jit` (so never per
seed), are deterministic in the data key, and are cached in memory for the run. Each returns a
training split (`make_data`) and a held-out split (`heldout`) chosen by the same key; a bad file
or setting raises `ValueError` naming the field.
Patches are cut from the photographs as they are or from each photograph whitened whole
(`olshausen_whiten`, Olshausen & Field's filter), optionally ZCA-whitened as patches (`zca`), and
always end with Ng's per-patch normalisation (`ng_normalise`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import HOST_KINDS, Config, DataConfig, invalid


def multiples(key: jax.Array, n: int, n_features: int = 10, max_value: int = 200) -> jax.Array:
    """§1.2: rows `x0 * (1, 2, ..., D)` with `x0 = round(U[0,1) * max_value)`, a rank-1 data set."""
    x0_N = jnp.round(jax.random.uniform(key, (n,)) * max_value)
    return x0_N[:, None] * jnp.arange(1, n_features + 1, dtype=jnp.float32)[None, :]


def offset(key: jax.Array, n: int, n_features: int = 10, max_value: int = 200) -> jax.Array:
    """§1.3: `multiples` plus a per-sample offset `k = round(U[0,1) * max_value)` on every feature.

    Rows are `x0 * (1..D) + k * (1..1)`: two numbers per sample, so the data have rank 2.
    """
    multiples_key, offset_key = jax.random.split(key)
    k_N = jnp.round(jax.random.uniform(offset_key, (n,)) * max_value)
    return multiples(multiples_key, n, n_features, max_value) + k_N[:, None]


def gaussian(key: jax.Array, n: int, n_features: int = 10) -> jax.Array:
    """§1.4/§1.5: i.i.d. standard normal features, incompressible by construction."""
    return jax.random.normal(key, (n, n_features))


def sparse_dictionary(key: jax.Array, n_atoms: int, n_features: int) -> jax.Array:
    """`atoms_MxD`: M directions uniform on the unit sphere of R^D (normalised Gaussians)."""
    atoms_MxD = jax.random.normal(key, (n_atoms, n_features))
    return atoms_MxD / jnp.linalg.norm(atoms_MxD, axis=-1, keepdims=True)


def _magnitudes(key: jax.Array, shape: tuple[int, ...], magnitude: str) -> jax.Array:
    if magnitude == "halfnormal":
        return jnp.abs(jax.random.normal(key, shape))
    if magnitude == "uniform":
        return jax.random.uniform(key, shape)
    if magnitude == "exponential":
        return jax.random.exponential(key, shape)
    if magnitude == "one":
        return jnp.ones(shape)
    raise ValueError(f"data.magnitude={magnitude!r} is invalid")  # unreachable: config validates


def firing_probabilities(
    n_atoms: int, active: float = 3, firing_p: float = 0.0, zipf: float = 0.0
) -> jax.Array:
    """`p_M`, each atom's probability of firing in a sample under `data.firing="bernoulli"`.

    `firing_p > 0` gives every atom `p_i = firing_p` (`active` is ignored); otherwise the `p_i`
    sum to `active`, the expected number of atoms per sample: uniform `active / n_atoms` for
    `zipf = 0`, and for `zipf = s > 0` Zipf's law over the atom index,
    `p_i = active * (i+1)^-s / sum_j (j+1)^-s` (atom 0 the most frequent, a log-log slope of
    exactly -s). `DataConfig` refuses settings where `p_0` would exceed 1 (nothing is clipped).

    SAELens's synthetic data (`sae_lens/synthetic/firing_probabilities.py`,
    `zipfian_firing_probabilities`, as SynthSAEBench uses it) weights ranks by `1 / rank^exponent`
    too, but maps the weights affinely onto `[min_prob, max_prob]`; here the power law is kept
    exact and scaled to an expected count instead, so `active` means the same with either firing.
    """
    if firing_p > 0:
        return jnp.full((n_atoms,), firing_p, jnp.float32)
    if zipf > 0:
        weight_M = jnp.arange(1, n_atoms + 1, dtype=jnp.float32) ** -zipf
        return active * weight_M / jnp.sum(weight_M)
    return jnp.full((n_atoms,), active / n_atoms, jnp.float32)


def sparse_codes(
    key: jax.Array,
    n: int,
    n_atoms: int = 20,
    active: int = 3,
    magnitude: str = "halfnormal",
    firing: str = "exact",
    firing_p: float = 0.0,
    zipf: float = 0.0,
) -> jax.Array:
    """`codes_NxM`, non-negative: which atoms fire in each row, and how strongly.

    `firing="exact"`: exactly `active` non-zero coefficients per row, the atoms chosen uniformly
    without replacement (the `active` largest of M uniform keys). `firing="bernoulli"`: atom i
    fires in each row independently with probability `p_i` (`firing_probabilities`), as
    SAELens's `ActivationGenerator` draws it (`torch.bernoulli` per feature), so a row may have
    any number of atoms, none included. Either way the firing atoms are sized by draws from
    `magnitude` (SAELens's default is "one").
    """
    choice_key, size_key = jax.random.split(key)
    if firing == "bernoulli":
        p_1xM = firing_probabilities(n_atoms, active, firing_p, zipf)[None, :]
        fires_NxM = jax.random.bernoulli(choice_key, p_1xM, (n, n_atoms))
        coef_NxM = _magnitudes(size_key, (n, n_atoms), magnitude)
        return jnp.where(fires_NxM, coef_NxM, 0.0)
    if firing != "exact":
        raise ValueError(f"data.firing={firing!r} is invalid")  # unreachable: config validates
    _, chosen_NxA = jax.lax.top_k(jax.random.uniform(choice_key, (n, n_atoms)), active)
    coef_NxA = _magnitudes(size_key, (n, active), magnitude)
    return jnp.zeros((n, n_atoms)).at[jnp.arange(n)[:, None], chosen_NxA].set(coef_NxA)


def sparse(
    key: jax.Array,
    n: int,
    n_features: int = 10,
    n_atoms: int = 20,
    active: int = 3,
    magnitude: str = "halfnormal",
    noise: float = 0.0,
    firing: str = "exact",
    firing_p: float = 0.0,
    zipf: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Sparse superposition: `(x_NxD, atoms_MxD)` with `x = codes @ atoms + noise * N(0, 1)`.

    Each row is the sum of its firing unit-norm atoms (`sparse_codes`: exactly `active` distinct
    ones, or each atom independently with `firing="bernoulli"`), plus Gaussian noise of standard
    deviation `noise` on every feature. The atoms come from their own key, so the firing settings
    leave the dictionary (`ground_truth`) unchanged.
    """
    atom_key, code_key, noise_key = jax.random.split(key, 3)
    atoms_MxD = sparse_dictionary(atom_key, n_atoms, n_features)
    codes_NxM = sparse_codes(code_key, n, n_atoms, active, magnitude, firing, firing_p, zipf)
    x_NxD = codes_NxM @ atoms_MxD + noise * jax.random.normal(noise_key, (n, n_features))
    return x_NxD, atoms_MxD


def atom_usage(key: jax.Array, cfg: DataConfig) -> jax.Array | None:
    """`count_M`: in how many of the samples of `make_data(key, cfg)` each true atom fires (the
    codes `sparse` draws from the same key); None for data other than `kind="sparse"`."""
    if cfg.kind != "sparse":
        return None
    code_key = jax.random.split(key, 3)[1]  # as `sparse` splits it
    codes_NxM = sparse_codes(
        code_key, cfg.n_samples, cfg.n_atoms, cfg.active, cfg.magnitude, cfg.firing,
        cfg.firing_p, cfg.zipf,
    )  # fmt: skip
    return jnp.sum(codes_NxM != 0, axis=0)


def ground_truth(key: jax.Array, cfg: DataConfig) -> jax.Array | None:
    """The true dictionary `atoms_MxD` of the data set `make_data(key, cfg)`: the generated atoms
    of sparse data, the user's file `data.atoms` of an array (read on the host, like the array);
    None without one."""
    if cfg.kind == "array" and cfg.atoms:
        return jnp.asarray(load_atoms(cfg.atoms, cfg.n_features))
    if cfg.kind != "sparse":
        return None
    return sparse_dictionary(jax.random.split(key, 3)[0], cfg.n_atoms, cfg.n_features)


# ----------------------------------------------------------------------------------------------
# Host loaders: real data, read outside jit

# scikit-learn's digits: 1,797 images of 8x8 pixels with grey levels 0..16 (known without loading)
DIGITS_ROWS = 1797
DIGITS_SIDE = 8
DIGITS_LEVELS = 16.0
# The file of each name in `config.IMAGES`, inside scikit-image's package directory `data/`.
IMAGE_FILES: dict[str, str] = {
    "camera": "camera.png",
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "brick": "brick.png",
    "moon": "moon.png",
}
# Ng's normalisation (CS294A, sampleIMAGES.m): clip at this many standard deviations, then map
# [-1, 1] to [0.1, 0.9], inside a sigmoid's range.
CLIP_STD = 3.0
RESCALE_LOW, RESCALE_HIGH = 0.1, 0.9
# ZCA keeps eigen-directions with at least this share of the largest eigenvalue (the per-patch mean
# removal leaves the constant patch with eigenvalue 0, which whitening must not blow up).
ZCA_RANK_TOL = 1e-9


@functools.cache
def load_digits() -> np.ndarray:
    """scikit-learn's bundled handwritten digits (`load_digits`, 1,797 x 64) scaled to [0, 1]."""
    import sklearn.datasets  # here, not at the top: only runs on digits pay for the import

    return (sklearn.datasets.load_digits().data / DIGITS_LEVELS).astype(np.float32)


def image_path(name: str) -> Path:
    """Where scikit-image keeps photograph `name` inside its installed package."""
    return Path(str(importlib.resources.files("skimage") / "data" / IMAGE_FILES[name]))


@functools.cache
def load_image(name: str) -> np.ndarray:
    """Photograph `name` (see `IMAGE_FILES`) as grey levels in [0, 1], float64 `[rows, cols]`.

    Read straight from the file inside the installed package: `skimage.data`'s functions may fetch
    missing files with pooch, this never does. Colour images become luminance (`rgb2gray`).
    """
    import skimage.color  # here, not at the top: only runs on patches pay for the import
    import skimage.io

    pixels = skimage.io.imread(image_path(name))
    if pixels.ndim == 3:
        return skimage.color.rgb2gray(pixels[..., :3]).astype(np.float64)
    return pixels.astype(np.float64) / 255.0


def olshausen_whiten(image_RxC: np.ndarray, f0: float) -> np.ndarray:
    """The photograph whitened whole, as Olshausen & Field (1997) did, float64 `[rows, cols]`.

    The image minus its mean is filtered in the Fourier domain by `f * exp(-(f / f0_abs)^4)`, with
    `f = sqrt(f_row^2 + f_col^2)` the radial frequency in cycles per pixel (`np.fft.fftfreq` along
    each axis, so any rows x cols) and `f0_abs = f0 * 0.5` (`f0` a share of the Nyquist frequency,
    0.5 cycles per pixel), then brought back (real part of the inverse FFT) and scaled to unit
    variance. The ramp `f` flattens natural images' ~1/f amplitude spectrum; the quartic
    exponential cuts the noisy, aliased frequencies above `f0_abs`. This is the whitening of the
    sparsenet code (Olshausen's `make-your-own-images`: `f_0 = 0.4 N` cycles per picture, that is
    `f0 = 0.8` here) that produced Ng's CS294A `IMAGES.mat`.
    """
    x_RxC = np.asarray(image_RxC, np.float64)
    f_row = np.fft.fftfreq(x_RxC.shape[0])[:, None]
    f_col = np.fft.fftfreq(x_RxC.shape[1])[None, :]
    f_RxC = np.sqrt(f_row**2 + f_col**2)
    filt_RxC = f_RxC * np.exp(-((f_RxC / (f0 * 0.5)) ** 4))
    white_RxC = np.fft.ifft2(np.fft.fft2(x_RxC - x_RxC.mean()) * filt_RxC).real
    return white_RxC / white_RxC.std()


@functools.cache
def whitened_image(name: str, f0: float) -> np.ndarray:
    """`olshausen_whiten(load_image(name), f0)`, cached and read-only (shared by every caller)."""
    out = olshausen_whiten(load_image(name), f0)
    out.flags.writeable = False
    return out


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


@functools.lru_cache(maxsize=8)
def _read_array(field: str, rows: str, path: str, mtime_ns: int, size: int) -> np.ndarray:
    allowed = f"a readable .npy file of a 2-D array {rows} x D of finite numbers"
    try:
        x = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except Exception as err:  # any failure to parse the file is the same user error
        raise invalid(field, path, f"{allowed} (reading it failed: {_one_line(err)})") from err
    if not isinstance(x, np.ndarray):
        if hasattr(x, "close"):
            x.close()
        raise invalid(field, path, f"{allowed} (it is an .npz archive, not one array)")
    if x.dtype.kind not in "biuf":
        raise invalid(field, path, f"{allowed} (its dtype is {x.dtype})")
    if x.ndim != 2 or min(x.shape) == 0:
        raise invalid(field, path, f"{allowed} (its shape is {x.shape})")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise invalid(field, path, f"{allowed} ({bad} of its values are not finite)")
    out = np.asarray(x, np.float32)
    out.flags.writeable = False  # shared by every caller of the cache
    return out


def _load_npy(field: str, rows: str, path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise invalid(field, path, f"an existing .npy file of shape {rows} x D (no such file)")
    stat = os.stat(path)
    return _read_array(field, rows, os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def load_array(path: str) -> np.ndarray:
    """The user's `.npy` file as float32 `x_NxD` (read-only); `ValueError` naming `data.path`
    when it is missing, unreadable, pickled, not 2-D or not finite. Cached while the file is
    unchanged."""
    return _load_npy("data.path", "N", path)


def load_atoms(path: str, n_features: int) -> np.ndarray:
    """The user's true atoms (`data.atoms`) as float32 `atoms_MxD` (read-only); `ValueError`
    naming `data.atoms` when the file is missing, unreadable, pickled, not 2-D, not finite, not
    `n_features` wide (the data's width) or has an all-zero row (an atom without a direction)."""
    atoms_MxD = _load_npy("data.atoms", "M", path)
    if atoms_MxD.shape[1] != n_features:
        raise invalid(
            "data.atoms",
            path,
            f"a .npy file of atoms M x {n_features}, as wide as the data (its shape is "
            f"{atoms_MxD.shape})",
        )
    zero = np.flatnonzero(~np.any(atoms_MxD != 0, axis=1))
    if zero.size:
        raise invalid(
            "data.atoms",
            path,
            f"atoms with a direction (its rows {', '.join(map(str, zero[:5].tolist()))}"
            f"{' ...' if zero.size > 5 else ''} are zero)",
        )
    return atoms_MxD


def _key_data(key: jax.Array) -> tuple[int, ...]:
    """A concrete key as a hashable tuple (host loaders cannot run under `jit`/`vmap`)."""
    if isinstance(key, jax.core.Tracer):
        raise ValueError(
            "data.per_seed=True is invalid: allowed is false for host-loaded data (the loaders run "
            "outside jit)"
        )
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def split_rows(key: jax.Array, n_rows: int, heldout: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `(pool, held_out)`: a random `heldout` share of `0..n_rows-1` (at least one row)
    held out, the rest the pool training rows are taken from, both in the key's random order."""
    perm = np.asarray(jax.random.permutation(key, n_rows))
    n_out = max(1, round(heldout * n_rows))
    return perm[n_out:], perm[:n_out]


def heldout_count(cfg: DataConfig, n_rows: int | None = None) -> int:
    """Held-out rows: `heldout` of the file's rows (digits, array) or of `n_samples` (patches)."""
    return max(1, round(cfg.heldout * (cfg.n_samples if n_rows is None else n_rows)))


def sample_patches(key: jax.Array, images: list[np.ndarray], n: int, side: int) -> np.ndarray:
    """`n` square patches (`n x side**2`, raw grey levels) at uniform positions of uniformly
    chosen images (Ng's sampleIMAGES)."""
    image_key, row_key, col_key = jax.random.split(key, 3)
    which_N = np.asarray(jax.random.randint(image_key, (n,), 0, len(images)))
    u_row = np.asarray(jax.random.uniform(row_key, (n,)), np.float64)
    u_col = np.asarray(jax.random.uniform(col_key, (n,)), np.float64)
    out = np.empty((n, side * side), np.float64)
    for i, img in enumerate(images):
        chosen = np.flatnonzero(which_N == i)
        rows = np.floor(u_row[chosen] * (img.shape[0] - side + 1)).astype(int)
        cols = np.floor(u_col[chosen] * (img.shape[1] - side + 1)).astype(int)
        windows = np.lib.stride_tricks.sliding_window_view(img, (side, side))
        out[chosen] = windows[rows, cols].reshape(len(chosen), side * side)
    return out


def remove_patch_mean(x_NxD: np.ndarray) -> np.ndarray:
    """Each patch minus its own mean brightness (its DC component)."""
    return x_NxD - x_NxD.mean(axis=1, keepdims=True)


def ng_normalise(train_NxD: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Ng's `normalizeData`: remove each patch's mean, clip at +-`CLIP_STD` standard deviations of
    the (mean-removed) training pixels, rescale [-1, 1] to [0.1, 0.9]; `others` (held-out patches)
    use the training statistics."""
    limit = CLIP_STD * remove_patch_mean(train_NxD).std()
    out = []
    for x in (train_NxD, *others):
        clipped = np.clip(remove_patch_mean(x), -limit, limit) / limit
        out.append(RESCALE_LOW + (clipped + 1.0) * (RESCALE_HIGH - RESCALE_LOW) / 2.0)
    return out


def zca(train_NxD: np.ndarray, *others: np.ndarray, eps: float = 0.0) -> list[np.ndarray]:
    """ZCA whitening fitted on `train` after removing each patch's mean; `others` use its fit.

    `W = U diag(1 / sqrt(lambda + eps * mean(lambda))) U^T` over the eigen-directions of the
    training covariance with a non-zero eigenvalue. Mean-free patches span only D - 1 dimensions
    (the constant patch is gone), so with `eps = 0` the training covariance after whitening is the
    identity on that subspace: `I - 1 1^T / D`.
    """
    x = remove_patch_mean(train_NxD)
    mu_D = x.mean(axis=0)
    lam_D, u_DxD = np.linalg.eigh(np.cov(x - mu_D, rowvar=False, bias=True))
    keep = lam_D > ZCA_RANK_TOL * lam_D.max()
    lam, u = lam_D[keep], u_DxD[:, keep]
    w_DxD = (u / np.sqrt(lam + eps * lam.mean())) @ u.T
    return [(remove_patch_mean(v) - mu_D) @ w_DxD for v in (train_NxD, *others)]


def _check_width(cfg: DataConfig, width: int, what: str) -> None:
    if cfg.n_features != width:
        raise invalid("data.n_features", cfg.n_features, f"{width}, the width of {what}")


def _check_rows(cfg: DataConfig, pool: int, what: str) -> None:
    if cfg.n_samples > pool:
        raise invalid(
            "data.n_samples",
            cfg.n_samples,
            f"at most {pool}, the {what} left after holding out data.heldout={cfg.heldout:g}",
        )


def _patches(key: jax.Array, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.whiten == "olshausen":
        images = [whitened_image(name, cfg.whiten_f0) for name in cfg.images()]
    else:
        images = [load_image(name) for name in cfg.images()]
    smallest = min(min(img.shape) for img in images)
    if cfg.patch_size > smallest:
        raise invalid(
            "data.patch_size",
            cfg.patch_size,
            f"at most {smallest}, the shortest side among data.image={cfg.image!r}",
        )
    _check_width(cfg, cfg.patch_size**2, f"{cfg.patch_size}x{cfg.patch_size} patches")
    n_out = heldout_count(cfg)
    raw = sample_patches(key, images, cfg.n_samples + n_out, cfg.patch_size)
    train, held = raw[: cfg.n_samples], raw[cfg.n_samples :]
    if cfg.whiten == "zca":
        train, held = zca(train, held, eps=cfg.whiten_eps)
    return tuple(ng_normalise(train, held))


def _training_and_heldout(
    key: jax.Array, cfg: DataConfig, x_NxD: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """The first `n_samples` rows of the training split and the held-out rows, checked."""
    pool, held = split_rows(key, len(x_NxD), cfg.heldout)
    _check_width(cfg, x_NxD.shape[1], what)
    _check_rows(cfg, len(pool), what)
    return x_NxD[pool[: cfg.n_samples]], x_NxD[held]


@functools.lru_cache(maxsize=16)
def _host_split(key_data: tuple[int, ...], cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    key = jax.random.wrap_key_data(jnp.asarray(key_data, jnp.uint32))
    if cfg.kind == "digits":
        train, held = _training_and_heldout(key, cfg, load_digits(), "the digits (8x8 pixels)")
    elif cfg.kind == "patches":
        train, held = _patches(key, cfg)
    else:
        train, held = _training_and_heldout(
            key, cfg, load_array(cfg.path), f"rows of data.path={cfg.path!r}"
        )
    out = (np.array(train, np.float32), np.array(held, np.float32))
    for x in out:
        x.flags.writeable = False  # shared by every caller of the cache
    return out


def host_split(key: jax.Array, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """`(train_NxD, heldout_MxD)` of a host data set (float32, read-only, cached per key and
    config); `ValueError` naming the field when the config does not fit the data."""
    return _host_split(_key_data(key), cfg)


def heldout(key: jax.Array, cfg: DataConfig) -> np.ndarray | None:
    """The held-out rows of the data set `make_data(key, cfg)`; None for generated data."""
    return host_split(key, cfg)[1] if cfg.kind in HOST_KINDS else None


def fit_to_data(cfg: DataConfig) -> DataConfig:
    """`cfg` with the sizes its host data set dictates: the width (64 for digits, the patch size
    squared, the file's columns) and, for digits and arrays, every row not held out."""
    if cfg.kind == "digits":
        n_rows, width = DIGITS_ROWS, DIGITS_SIDE * DIGITS_SIDE
    elif cfg.kind == "array":
        n_rows, width = load_array(cfg.path).shape
    elif cfg.kind == "patches":
        return dataclasses.replace(cfg, n_features=cfg.patch_size**2)
    else:
        return cfg
    return dataclasses.replace(
        cfg, n_features=width, n_samples=max(1, n_rows - heldout_count(cfg, n_rows))
    )


def check(cfg: DataConfig) -> None:
    """Load a host data set once (it stays cached), and its atoms file if it has one, so a bad file
    or setting is a `ValueError` before anything compiles; generated data need no check."""
    if cfg.kind in HOST_KINDS:
        host_split(jax.random.key(cfg.seed), cfg)
    if cfg.kind == "array" and cfg.atoms:
        load_atoms(cfg.atoms, cfg.n_features)


def side(n_features: int) -> int | None:
    """The side of a square image of `n_features` pixels, None if there is none."""
    root = math.isqrt(n_features)
    return root if root * root == n_features else None


def make_data(key: jax.Array, cfg: DataConfig) -> jax.Array:
    """Draw the data set that `cfg` names, as float32 `x_NxD` (the training split of host data)."""
    if cfg.kind in HOST_KINDS:
        return jnp.asarray(host_split(key, cfg)[0])
    if cfg.kind == "multiples":
        return multiples(key, cfg.n_samples, cfg.n_features, cfg.max_value)
    if cfg.kind == "offset":
        return offset(key, cfg.n_samples, cfg.n_features, cfg.max_value)
    if cfg.kind == "gaussian":
        return gaussian(key, cfg.n_samples, cfg.n_features)
    if cfg.kind == "sparse":
        x_NxD, _ = sparse(
            key,
            cfg.n_samples,
            cfg.n_features,
            cfg.n_atoms,
            cfg.active,
            cfg.magnitude,
            cfg.noise,
            cfg.firing,
            cfg.firing_p,
            cfg.zipf,
        )
        return x_NxD
    raise ValueError(f"data.kind={cfg.kind!r} is invalid")  # unreachable: DataConfig validates


# ----------------------------------------------------------------------------------------------
# The data a run trains on


def shared_data(cfg: Config) -> jax.Array:
    """The data set all seeds share (unless `data.per_seed`): drawn from `key(data.seed)`."""
    return make_data(jax.random.key(cfg.data.seed), cfg.data)


# Folded into a seed's key for the rows `data_start` draws (apart from the draws of its init).
DATA_START_SALT = 7


def _seed_data_key(key: jax.Array, cfg: Config) -> jax.Array:
    return jax.random.fold_in(jax.random.key(cfg.data.seed), jax.random.key_data(key)[-1])


def seed_data(key: jax.Array, cfg: Config) -> jax.Array:
    """A per-seed data set (`data.per_seed`): from `fold_in(key(data.seed), seed's key data)`."""
    return make_data(_seed_data_key(key, cfg), cfg.data)


def seed_atoms(key: jax.Array, cfg: Config) -> jax.Array | None:
    """The true dictionary `atoms_MxD` of the data set the seed of `key` trains on (its own with
    `data.per_seed`): what `model.init="atoms"` starts it at. Pure in the key, so it runs per seed
    inside the init program; None for data without one."""
    per_seed = cfg.data.per_seed
    data_key = _seed_data_key(key, cfg) if per_seed else jax.random.key(cfg.data.seed)
    return ground_truth(data_key, cfg.data)


def data_start(key: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """`(rows_HxD, mean_D)` of `model.init="data"`: the mean of the data set the seed of `key`
    trains on, and `model.n_hidden` of its rows (distinct while there are as many rows) drawn from
    the seed's key, minus that mean. Pure in the key, so it runs per seed inside the init
    program."""
    if cfg.data.per_seed:
        x_NxD = seed_data(key, cfg)
    else:  # drawn (or loaded) now, not traced: host data is loaded outside jit
        with jax.ensure_compile_time_eval():
            x_NxD = jnp.asarray(shared_data(cfg), jnp.float32)
    n, h = x_NxD.shape[0], cfg.model.n_hidden
    idx_H = jax.random.choice(jax.random.fold_in(key, DATA_START_SALT), n, (h,), replace=h > n)
    mean_D = jnp.mean(x_NxD, axis=0)
    return x_NxD[idx_H] - mean_D[None, :], mean_D


def trained_atoms(cfg: Config, keys: jax.Array | None = None) -> jax.Array | None:
    """The true dictionary of the data set(s) trained on: `atoms_MxD` for shared data, one per
    seed (`atoms_SxMxD`, for `keys`) with `data.per_seed`; None for data without one."""
    shared = ground_truth(jax.random.key(cfg.data.seed), cfg.data)
    if shared is None or not cfg.data.per_seed or keys is None:
        return shared
    return jax.vmap(lambda k: seed_atoms(k, cfg))(keys)
