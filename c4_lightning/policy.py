"""Using a trained policy outside training: ``load_policy(ckpt)`` acts on raw observations.

from c4_lightning import load_policy
policy = load_policy("runs/td3bc_c4/lightning_logs/version_0/checkpoints/last.ckpt")
action = policy(obs)            # raw env observation(s), numpy or torch; normalisation is inside
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from c4_lightning.training.checkpoint import load_checkpoint


class Policy:
    """A deterministic policy from a checkpoint. ``policy(obs)`` takes raw observations (``[obs_dim]`` or
    ``[N, obs_dim]``, numpy, list or torch) and returns actions of the same batch shape (numpy float32 for
    non-torch input, a tensor on the module's device for torch input). Observation normalisation is inside
    (the checkpoint's own statistics). TD3BC acts with its deterministic actor, CQL with the mean action
    ``tanh(mu(s))``: the same :meth:`OfflineRLModule.act` the evaluation during training uses.

    Attributes: ``module`` (the LightningModule, in eval mode), ``env_id`` and ``ref_scores`` (from the
    dataset the run trained on; ``None`` when unknown), ``obs_dim``, ``act_dim``, ``algo``.
    """

    def __init__(self, module, env_id: str | None = None, ref_scores: tuple[float, float] | None = None):
        self.module = module.eval()
        self.env_id, self.ref_scores = env_id, ref_scores

    @property
    def obs_dim(self) -> int:
        return int(self.module.hparams["obs_dim"])

    @property
    def act_dim(self) -> int:
        return int(self.module.hparams["act_dim"])

    @property
    def algo(self) -> str:
        return type(self.module).__name__

    @property
    def device(self) -> torch.device:
        return self.module.device

    def to(self, device: str | torch.device) -> "Policy":
        self.module.to(device)
        return self

    def __call__(self, obs):
        as_numpy = not isinstance(obs, torch.Tensor)
        x = torch.as_tensor(
            np.asarray(obs, dtype=np.float32) if as_numpy else obs, dtype=torch.float32, device=self.module.device
        )
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise ValueError(
                f"observations of shape {tuple(x.shape)} do not fit this {self.algo} policy, which "
                f"takes [{self.obs_dim}] or [N, {self.obs_dim}] raw observations of {self.env_id}"
            )
        act = self.module.act(x)
        return act.float().cpu().numpy() if as_numpy else act

    def __repr__(self) -> str:
        return (
            f"Policy({self.algo}, env_id={self.env_id!r}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
            f"device={self.device})"
        )


def load_policy(ckpt: str | Path, map_location: str | torch.device = "cpu") -> Policy:
    """Load the actor (and its normalisation) of a checkpoint of any registered algorithm written by ``train.py``,
    the Python API (``trainer.save_checkpoint``) or a graceful stop."""
    from c4_lightning.algos.registry import algorithm_classes

    path = Path(ckpt)
    checkpoint = load_checkpoint(path, map_location=map_location)  # never runs code from the file
    info = checkpoint.get("c4_lightning") if isinstance(checkpoint, dict) else None
    classes = algorithm_classes()
    if not info or info.get("algo") not in classes:
        raise ValueError(
            f"checkpoint {path} was not written by a c4_lightning run of a registered algorithm ({', '.join(classes)})"
        )
    module = classes[info["algo"]].load_from_checkpoint(path, map_location=map_location, weights_only=True)
    ref = info.get("ref_scores")
    return Policy(module, info.get("env_id"), tuple(ref) if ref else None)
