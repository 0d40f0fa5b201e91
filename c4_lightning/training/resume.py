"""What ``--ckpt_path`` may change: a resume trains the checkpoint's networks, so settings that define them are
refused when they differ; settings a restored run can honour are applied and reported.

Lightning's CLI replaces the model's configuration by the checkpoint's hyperparameters when it resumes, which made
every changed setting silently ineffective (and the optimiser state brought the old learning rates back). Here the
requested model configuration is compared with the checkpoint's first: a change of algorithm, network shape, C4 on/off
or C4's partition structure stops the run in one line; any other changed setting (learning rates, penalty weight,
gamma, ...) is kept as requested, and the learning rates are set on the restored optimisers.
"""

from __future__ import annotations

from typing import Any

STRUCTURAL = (
    "hidden_dims",
    "critic_layer_norm",
    "q_normalizer",
    "c4.enabled",
    "c4.n_clusters",
    "c4.pca_dim",
    "c4.feature",
    "c4.extend_with_trajectory_tail",
)
"""Settings that define what the checkpoint holds: a resume cannot change them."""

IGNORED = ("_class_path", "_instantiator", "obs_dim", "act_dim")  # obs/act dims come from the data when None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def compare(requested_class: str | None, requested: dict, checkpoint_hparams: dict, ckpt_path: str) -> dict[str, tuple]:
    """Raise ``ValueError`` (one line) for a change a resume cannot honour; return ``{setting: (checkpoint value,
    requested value)}`` for the changes it applies. ``requested`` are the model's ``init_args`` as configured."""
    saved_class = checkpoint_hparams.get("_class_path")
    if requested_class and saved_class and requested_class.split(".")[-1] != saved_class.split(".")[-1]:
        raise ValueError(
            f"--ckpt_path {ckpt_path} was written by {saved_class.split('.')[-1]}, but the config trains "
            f"{requested_class.split('.')[-1]}: resume with the run's own config (its config.yaml) or "
            "start a new run without --ckpt_path"
        )
    saved, wanted = _flatten(checkpoint_hparams), _flatten(requested)
    changed = {k: (saved[k], wanted[k]) for k in wanted if k in saved and k not in IGNORED and saved[k] != wanted[k]}
    refused = {k: v for k, v in changed.items() if k in STRUCTURAL}
    if refused:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(refused.items()))
        raise ValueError(
            f"--ckpt_path {ckpt_path} cannot resume with a different {what} (the checkpoint's networks "
            "and C4 state were built for the old value): keep the checkpoint's setting, or start a new "
            "run without --ckpt_path"
        )
    return changed
