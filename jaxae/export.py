"""One trained arm and seed in another tool's format: SAELens's on-disk SAE (`jaxae export`).

SAELens (checked against sae-lens 6.54.12, the version installed for the check, and its source
`sae_lens/saes/sae.py`, `standard_sae.py`, `topk_sae.py`) loads a directory with
`SAE.load_from_disk(path)`: it reads `cfg.json` (`sae_lens.constants.SAE_CFG_FILENAME`) into the
config class of `cfg["architecture"]` (`SAEConfig.from_dict` keeps the dataclass's fields and
rebuilds `metadata`; a config without `metadata.sae_lens_version` >= 6 is first converted from the
pre-6.0 layout) and `sae_weights.safetensors` (`SAE_WEIGHTS_FILENAME`) into the module's state dict
(strict: exactly `W_enc`, `b_enc`, `W_dec`, `b_dec`). The fields written here are those of
`SAEConfig.to_dict()`:

- `d_in`, `d_sae`, `dtype` ("float32"), `device` ("cpu"), `apply_b_dec_to_input`,
  `normalize_activations` ("none"), `reshape_activations` ("none"), `metadata`, `architecture`;
- top-k adds `k` and `rescale_acts_by_decoder_norm` (false: the decoder rows are exported as used).

Weights: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in], `b_dec` [d_in], float32;
JumpReLU adds `threshold` [d_sae]. SAELens computes, with `normalize_activations="none"`
(`SAE.process_sae_in`, `StandardSAE.encode` and `decode`, `TopKSAE.encode` and `decode`, the `TopK`
module, `JumpReLUSAE.encode` and `decode` in `jumprelu_sae.py`):

    sae_in = x - b_dec * apply_b_dec_to_input
    hidden_pre = sae_in @ W_enc + b_enc
    standard: feature_acts = relu(hidden_pre)
    topk:     feature_acts = relu of the k largest entries of hidden_pre (torch.topk), 0 elsewhere
    jumprelu: feature_acts = relu(hidden_pre) * (hidden_pre > threshold)
    x_hat = feature_acts @ W_dec + b_dec

which is jaxae's model (jaxae/model.py) with `W_enc` the encoder kernel, `b_enc` its bias, `b_dec`
the decoder bias and `apply_b_dec_to_input` = `model.pre_bias`; a tied model (`model.tied`) has no
encoder kernel of its own, so its `W_enc` is `W_dec` transposed, the kernel it encodes with. jaxae's
unit-norm decoder (`model.unit_norm_decoder`) is a reparameterisation: the rows in use are the
kernel's rows divided by their norms. They are folded in: `W_dec` holds the rows in use
(`metadata.jaxae.decoder` says so), so SAELens needs no rescaling. Hidden units the arm masks (a
hidden-size sweep's narrower arms, trained inside the widest model) are dropped: they are the last
units, always zero, so the exported SAE has the arm's units in use and computes the same codes
(`metadata.jaxae.dropped_units` counts them). Ties at top-k's k-th value keep every tied unit in
jaxae and exactly k in SAELens; for real-valued inputs ties do not occur.

A JumpReLU arm is exported as SAELens's JumpReLU SAE with its learned thresholds
`exp(log_threshold)` (as SAELens's own `JumpReLUTrainingSAE` saves itself). A BatchTopK arm is
exported as SAELens saves its `BatchTopKTrainingSAE` for inference: a JumpReLU SAE whose every
unit has the one inference threshold theta (`process_state_dict_for_saving_inference`). jaxae
estimates theta after training (`model.batch_top_k_threshold`: the mean over the training data,
in batches of `train.batch_size`, of the smallest activation BatchTopK keeps in each; SAELens keeps
a running average of the same during training), so the export reads the run's training data again
(`Run.data`; for `data.kind="array"` its file must still be there); `metadata.jaxae.batchtopk`
records k, theta and the batch size.

Refused (`ValueError`, the CLI's exit status 2): arms SAELens's standard, top-k and JumpReLU SAEs
cannot express (a sigmoid or identity activation, a KL penalty, a sigmoid output layer), non-finite
parameters, and an existing output path (never overwritten; the directory is written under a
temporary name beside it and renamed into place).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

import jaxae
from jaxae import results
from jaxae.runs import Run, TrainedAutoencoder, load

FORMATS = ("saelens",)
SAELENS_CFG = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
SAELENS_WEIGHTS = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
# The SAELens version whose on-disk format this writes (and that read it back in the check):
# recorded as `metadata.sae_lens_version`, so SAELens reads the config as a 6.x one.
SAELENS_VERSION = "6.54.12"
# jaxae activations and the SAELens architecture that computes them (at inference: BatchTopK with
# its threshold is a JumpReLU SAE, as SAELens saves its own BatchTopK SAEs)
ARCHITECTURES = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
}


def check_saelens(run: Run, arm: str) -> None:
    """`ValueError` unless the arm is one SAELens's standard (ReLU) or top-k SAE expresses."""
    cfg = run.configs[run.check_arm(arm)]
    where = f"arm={arm!r} is invalid for format 'saelens'"
    if cfg.loss.sparsity == "kl" or cfg.model.activation not in ARCHITECTURES:
        penalty = " with a KL penalty" if cfg.loss.sparsity == "kl" else ""
        raise ValueError(
            f"{where}: its activation is {cfg.model.activation!r}{penalty}; allowed is an arm with "
            "model.activation 'relu', 'topk', 'jumprelu' or 'batchtopk' (SAELens's standard, "
            "top-k and JumpReLU SAEs)"
        )
    if cfg.model.output != "linear":
        raise ValueError(
            f"{where}: its output layer is a {cfg.model.output} (model.output="
            f"{cfg.model.output!r}); allowed is an arm with model.output='linear' (SAELens decodes "
            "linearly)"
        )


def saelens_weights(
    ae: TrainedAutoencoder, threshold_H: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """`W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in] (the decoder rows in use:
    unit-norm ones folded in), `b_dec` [d_in] of one seed's autoencoder, float32; and a JumpReLU
    SAE's `threshold` [d_sae] when given. A tied model's (`model.tied`) `W_enc` is `W_dec`
    transposed, the kernel its encoder uses."""
    p = ae.params["params"]
    w_dec = ae.atoms
    arrays = {
        "W_enc": w_dec.T if ae.model.tied else p["encoder"]["kernel"],
        "b_enc": p["encoder"]["bias"],
        "W_dec": w_dec,
        "b_dec": p["decoder"]["bias"],
    }
    if threshold_H is not None:
        arrays["threshold"] = threshold_H
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in arrays.items()}


def own_k(run: Run, arm: str) -> int | None:
    """The k of a top-k or BatchTopK arm: its own (`arms.<label>.hyper.k`), else its config's."""
    cfg = run.configs[run.check_arm(arm)]
    if cfg.model.k is None:
        return None
    # metrics.json as a dict, or as its typed record (`Run.metrics` is becoming one)
    arms = run.metrics["arms"] if isinstance(run.metrics, dict) else run.metrics.arms
    hyper = arms[arm]["hyper"] if isinstance(arms[arm], dict) else arms[arm].hyper
    own = hyper.get("k")
    return int(own) if own is not None else int(cfg.model.k)


def jump_thresholds(run: Run, arm: str, seed: int) -> np.ndarray:
    """A JumpReLU arm's learned thresholds `exp(log_threshold)` of one seed, `[d_sae]` (the units in
    use; masked ones dropped)."""
    log_threshold = run.params[arm]["params"]["jump"]["log_threshold"]
    return np.exp(np.asarray(log_threshold, np.float64)[seed, : run.n_hidden(arm)])


def batchtopk_threshold(run: Run, arm: str, ae: TrainedAutoencoder) -> float:
    """A BatchTopK arm's inference threshold theta for one seed: estimated from the run's training
    data in batches of `train.batch_size` (`Autoencoder.batch_threshold`), with the arm's own k."""
    cfg = run.configs[arm]
    x_NxD = jnp.asarray(run.data(arm), jnp.float32)
    theta = ae.model.apply(
        ae.params, x_NxD, cfg.train.batch_size, None, own_k(run, arm), method="batch_threshold"
    )
    return float(jax.device_get(theta))


def saelens_config(run: Run, arm: str, seed: int, threshold: float | None = None) -> dict[str, Any]:
    """cfg.json of the arm's SAE (`SAEConfig.to_dict()`'s fields; jaxae's provenance under
    `metadata.jaxae`; for a BatchTopK arm its k and inference `threshold`)."""
    cfg = run.configs[arm]
    h, width = run.n_hidden(arm), cfg.model.n_hidden
    architecture = ARCHITECTURES[cfg.model.activation]
    out: dict[str, Any] = {
        "d_in": cfg.data.n_features,
        "d_sae": h,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.model.pre_bias,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": None,  # trained by jaxae, not SAELens
            "jaxae": {
                "version": jaxae.__version__,
                "run": str(run.path.resolve()),
                "experiment": run.experiment,
                "arm": arm,
                "seed": seed,
                "base_seed": run.seed,
                "decoder": (
                    "W_dec holds the decoder rows in use: jaxae's unit-norm reparameterisation "
                    "(kernel rows divided by their norms) folded in"
                    if cfg.model.unit_norm_decoder
                    else "W_dec is jaxae's decoder kernel"
                ),
                "encoder": (
                    "W_enc is W_dec transposed: jaxae's tied encoder (model.tied) reads the "
                    "decoder rows in use"
                    if cfg.model.tied
                    else "W_enc is jaxae's encoder kernel"
                ),
                "dropped_units": width - h,  # masked (never active) hidden units left out
                "config": cfg.to_dict(),
            },
        },
    }
    if architecture == "topk":
        k = run.k(arm)
        assert k is not None
        out["k"] = min(k, h)
        out["rescale_acts_by_decoder_norm"] = False
    if cfg.model.activation == "jumprelu":
        out["metadata"]["jaxae"]["threshold"] = "JumpReLU's learned thresholds exp(log_threshold)"
    if cfg.model.activation == "batchtopk":
        out["metadata"]["jaxae"]["batchtopk"] = {
            "k": own_k(run, arm),
            "threshold": threshold,
            "batch_size": cfg.train.batch_size,
            "estimate": (
                "every unit's threshold is BatchTopK's inference threshold: the mean over the "
                "training data, in batches of batch_size rows, of the smallest activation "
                "BatchTopK keeps in each, after training"
            ),
        }
    out["architecture"] = architecture
    return out


def export_saelens(run: Run, arm: str, seed: int, out: Path) -> dict[str, Any]:
    """Write seed `seed` of `arm` as SAELens's on-disk SAE into the new directory `out`
    (cfg.json and sae_weights.safetensors, written atomically); returns cfg.json's content."""
    check_saelens(run, arm)
    ae = run.autoencoder(arm, seed)
    activation = run.configs[arm].model.activation
    threshold = batchtopk_threshold(run, arm, ae) if activation == "batchtopk" else None
    if activation == "jumprelu":
        weights = saelens_weights(ae, jump_thresholds(run, arm, ae.seed))
    elif threshold is not None:
        weights = saelens_weights(ae, np.full(ae.n_hidden, threshold))
    else:
        weights = saelens_weights(ae)
    bad = [name for name, v in weights.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(
            f"seed={seed} is invalid for arm {arm!r}: its {', '.join(bad)} are not finite "
            "(the seed diverged); allowed is a seed with finite parameters"
        )
    cfg = saelens_config(run, arm, ae.seed, threshold)
    if out.exists() or out.is_symlink():
        raise ValueError(
            f"OUT={str(out)!r} is invalid: it already exists; allowed is a new path (an export "
            "never overwrites)"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as err:
        raise ValueError(
            f"OUT={str(out)!r} is invalid: its directory cannot be written ({err.strerror}); "
            "allowed is a path in a writable directory"
        ) from err
    try:
        os.chmod(staging, 0o755)
        safetensors.numpy.save_file(weights, str(staging / SAELENS_WEIGHTS))
        results.write_json(staging / SAELENS_CFG, cfg)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cfg


def export(
    run_dir: str | Path,
    out: str | Path,
    arm: str | None = None,
    seed: int = 0,
    fmt: str = "saelens",
) -> dict[str, Any]:
    """`jaxae export`: load the run, then write seed `seed` of `arm` (the only arm by default) in
    format `fmt` (one of `FORMATS`) into the new directory `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r} is invalid: allowed is one of {', '.join(FORMATS)}")
    run = load(run_dir)
    if arm is None:
        if len(run.arms) != 1:
            raise ValueError(
                f"--arm is missing: the run has {len(run.arms)} arms; allowed is one of "
                + ", ".join(repr(a) for a in run.arms)
            )
        arm = run.arms[0]
    run.check_arm(arm)
    run.check_seed(seed)
    return export_saelens(run, arm, seed, Path(out))
