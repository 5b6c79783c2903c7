"""Classical baselines: scikit-learn's PCA and dictionary learning, fitted on the host.

What a user would reach for instead of an autoencoder, measured as the autoencoders are: `images`
sets them beside its arms on real images (PCA's held-out FVU per number of components, and
dictionary learning from two kinds of start), `sparse` sets dictionary learning beside its
mechanisms on data with a known dictionary. Dictionary learning is scikit-learn's
`MiniBatchDictionaryLearning` with OMP codes, fitted once per `random_state`, and its atoms are
compared across random states by the same PW-MCC as the seeds of an autoencoder.

Shape legend: N training samples, M held-out samples, D features, H atoms (the width), R random
states (fits).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import metrics, schema

FIT_ALGORITHMS = ("lars", "cd")


def _host_fvu(x_hat_NxD: np.ndarray, x_NxD: np.ndarray) -> float:
    """`metrics.fvu` on host arrays."""
    return float(metrics.fvu(jnp.asarray(x_hat_NxD), jnp.asarray(x_NxD)))


def finite_mean(values: Any) -> float:
    """The mean of the finite values (NaN if none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def finite_median(values: Any) -> float:
    """The median of the finite values (NaN if none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


# ----------------------------------------------------------------------------------------------
# PCA


def pca_baseline(train_NxD: np.ndarray, held_MxD: np.ndarray) -> dict[str, Any]:
    """scikit-learn's `PCA` fitted on the training split: held-out FVU with 1..D components (the
    linear floor for a code of that many numbers) and the components, largest first."""
    import sklearn.decomposition  # here, not at the top: only the baselines need scikit-learn

    pca = sklearn.decomposition.PCA(n_components=min(train_NxD.shape)).fit(train_NxD)
    centred = held_MxD - pca.mean_
    curve = []
    for m in range(1, len(pca.components_) + 1):
        c = pca.components_[:m]
        curve.append(_host_fvu(pca.mean_ + centred @ c.T @ c, held_MxD))
    return {
        "heldout_fvu_by_components": curve,
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "components": pca.components_,
        "mean": pca.mean_,
    }


def pca_reconstruction(pca: dict[str, Any], x_NxD: np.ndarray, m: int) -> np.ndarray:
    """`x` through the first `m` components of `pca_baseline`."""
    c = pca["components"][:m]
    return pca["mean"] + (x_NxD - pca["mean"]) @ c.T @ c


# ----------------------------------------------------------------------------------------------
# Dictionary learning


@dataclasses.dataclass(frozen=True, kw_only=True)
class DictionaryLearning:
    """`MiniBatchDictionaryLearning` fitted from one kind of start (`dictionary_baseline`)."""

    start: str
    fits: int
    width: int
    k: int
    heldout_fvu: list[float]
    heldout_fvu_median: float
    heldout_l0: list[float]
    dead_atoms: list[int]
    pw_mcc: list[float]
    pw_mcc_mean: float
    pw_mcc_median: float
    # two chance levels: its own start (the analogue of an autoencoder's untrained weights) and
    # random directions
    pw_mcc_start: list[float]
    pw_mcc_start_mean: float
    pw_mcc_null_mean: float
    fit_s: list[float]
    # for the report: the atoms `[R, H, D]`, their firing `[R, H]`, fit 0's example reconstructions
    atoms: np.ndarray | None = schema.host()
    firing: np.ndarray | None = schema.host()
    examples: np.ndarray | None = schema.host()
    # the starting dictionaries `[R, H, D]` (a chance level against a ground truth)
    starts: np.ndarray | None = schema.host()


@dataclasses.dataclass(frozen=True, kw_only=True)
class DictionaryFit:
    """How `dictionary_baseline` fits: scikit-learn's defaults unless a caller says otherwise."""

    alpha: float = 1.0  # the L1 penalty of the (lasso) codes while fitting
    batch_size: int = 256
    max_iter: int = 1000  # passes over the training data, at most
    fit_algorithm: str = "lars"  # "lars" or "cd": the same lasso codes, by two solvers
    # scikit-learn's early stopping: a small change of the dictionary in one step (tol 1e-3) or 10
    # steps without improvement of a smoothed cost; off, every fit makes `max_iter` passes
    early_stopping: bool = True
    centre: bool = True  # fit on mean-removed data (the mean added back to reconstruct)
    # flip every atom to the sign its held-out codes mostly carry (an atom used with negative
    # codes is its negation used with positive ones), so signed cosines compare directions as used
    orient: bool = False
    examples: int = 10  # held-out reconstructions of fit 0 kept for the report

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} is invalid: allowed is a positive number")
        for name in ("batch_size", "max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: allowed is a positive integer")
        if self.fit_algorithm not in FIT_ALGORITHMS:
            raise ValueError(
                f"fit_algorithm={self.fit_algorithm!r} is invalid: allowed is "
                + " or ".join(map(repr, FIT_ALGORITHMS))
            )


# scikit-learn's own settings (`images` fits with these).
SKLEARN_DEFAULTS = DictionaryFit()


def dictionary_start(
    key: jax.Array, train_NxD: np.ndarray, width: int, start: str, state: int
) -> np.ndarray:
    """The dictionary `MiniBatchDictionaryLearning` starts from, `start_HxD`.

    "svd" is what scikit-learn does without `dict_init`: a randomized SVD of the mean-removed data
    (at most D atoms, `random_state=state`), padded with zero atoms up to `width`; it hardly depends
    on the random state. "random" is `width` random unit directions drawn from `fold_in(key,
    state)`, so the fits start as independently as an autoencoder's seeds do. "data" is `width`
    distinct training rows drawn from `fold_in(key, state)`, minus the data's mean, as unit
    vectors: k-means' random start, as an autoencoder's `model.init="data"`.
    """
    import sklearn.utils.extmath

    if start == "data":
        pick = jax.random.choice(jax.random.fold_in(key, state), len(train_NxD), (width,), False)
        rows = train_NxD[np.asarray(pick)] - train_NxD.mean(axis=0)
        return rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    if start == "random":
        draw = jax.random.normal(jax.random.fold_in(key, state), (width, train_NxD.shape[1]))
        draw = np.asarray(draw, np.float64)
        return draw / np.linalg.norm(draw, axis=-1, keepdims=True)
    centred = train_NxD - train_NxD.mean(axis=0)
    _, s_R, vt_RxD = sklearn.utils.extmath.randomized_svd(centred, width, random_state=state)
    start_HxD = np.zeros((width, train_NxD.shape[1]))
    start_HxD[: len(s_R)] = (s_R[:, None] * vt_RxD)[:width]
    return start_HxD


def _oriented(atoms_HxD: np.ndarray, code_MxH: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atoms and codes with every atom whose codes sum below zero negated (the product, and so
    every reconstruction, unchanged)."""
    sign_H = np.where(code_MxH.sum(axis=0) < 0, -1.0, 1.0)
    return atoms_HxD * sign_H[:, None], code_MxH * sign_H


def dictionary_baseline(
    train_NxD: np.ndarray,
    held_MxD: np.ndarray,
    width: int,
    k: int,
    fits: int,
    start: str = "svd",
    key: jax.Array | None = None,
    fit: DictionaryFit = SKLEARN_DEFAULTS,
) -> DictionaryLearning:
    """scikit-learn's `MiniBatchDictionaryLearning` (`width` atoms, set as `fit` says) fitted on
    the training split (mean-removed unless `fit.centre` is off) with `random_state` 0..fits-1,
    each from `dictionary_start` (`start` "svd", scikit-learn's own, or "random" or "data" from
    `key`);
    held-out codes by OMP with `k` non-zeros. Its atoms are compared across random states with
    the same pw_mcc as the seeds of an autoencoder; beside it, the same between its starting
    dictionaries and between random directions. `fit_s` times each fit and its held-out codes."""
    import sklearn.decomposition

    mean_D = train_NxD.mean(axis=0) if fit.centre else np.zeros(train_NxD.shape[1])
    key = jax.random.key(0) if key is None else key
    atoms, held_fvu, l0, firing, examples, seconds, starts = [], [], [], [], [], [], []
    for state in range(fits):
        start_HxD = dictionary_start(key, train_NxD, width, start, state)
        starts.append(start_HxD)
        began = time.perf_counter()
        dl = sklearn.decomposition.MiniBatchDictionaryLearning(
            n_components=width,
            alpha=fit.alpha,
            batch_size=fit.batch_size,
            max_iter=fit.max_iter,
            fit_algorithm=fit.fit_algorithm,
            transform_algorithm="omp",
            transform_n_nonzero_coefs=k,
            random_state=state,
            dict_init=None if start == "svd" else start_HxD,
            **({} if fit.early_stopping else {"tol": 0.0, "max_no_improvement": None}),
        )
        with warnings.catch_warnings():
            # chatter: lars not converging, OMP stopping early on linearly dependent atoms
            warnings.simplefilter("ignore")
            dl.fit(train_NxD - mean_D)
            code_MxH = dl.transform(held_MxD - mean_D)
        seconds.append(time.perf_counter() - began)
        atoms_HxD = dl.components_
        if fit.orient:
            atoms_HxD, code_MxH = _oriented(atoms_HxD, code_MxH)
        x_hat = mean_D + code_MxH @ atoms_HxD
        atoms.append(atoms_HxD)
        held_fvu.append(_host_fvu(x_hat, held_MxD))
        l0.append(float(np.mean(np.sum(code_MxH != 0, axis=-1))))
        firing.append(np.mean(code_MxH != 0, axis=0))
        examples.append(x_hat[: fit.examples])
    atoms_RxHxD = np.stack(atoms)
    starts_RxHxD = np.stack(starts)
    pairs = metrics.pairwise_mcc(atoms_RxHxD)["pw_mcc"]
    start_pairs = metrics.pairwise_mcc(starts_RxHxD)["pw_mcc"]
    return DictionaryLearning(
        start=start,
        fits=fits,
        width=width,
        k=k,
        heldout_fvu=held_fvu,
        heldout_fvu_median=float(np.median(held_fvu)),
        heldout_l0=l0,
        dead_atoms=[int(np.sum(f == 0)) for f in firing],
        pw_mcc=pairs.tolist(),
        pw_mcc_mean=finite_mean(pairs),
        pw_mcc_median=finite_median(pairs),
        pw_mcc_start=start_pairs.tolist(),
        pw_mcc_start_mean=finite_mean(start_pairs),
        pw_mcc_null_mean=metrics.random_unit_mcc_chance(width, train_NxD.shape[1]),
        fit_s=seconds,
        atoms=atoms_RxHxD,
        firing=np.stack(firing),
        examples=examples[0],
        starts=starts_RxHxD,
    )
