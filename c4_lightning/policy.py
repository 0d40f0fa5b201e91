"""Using a trained policy outside training: ``load_policy(ckpt)`` acts on raw observations."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Policy:
    """A deterministic policy from a checkpoint. ``policy(obs)`` takes raw observations (``[obs_dim]`` or
    ``[N, obs_dim]``, numpy or torch) and returns actions of the same batch shape (numpy for numpy input).
    Observation normalisation is inside (the checkpoint's own statistics)."""

    def __init__(self, module, env_id: str | None = None, ref_scores: tuple[float, float] | None = None):
        self.module = module.eval()
        self.env_id, self.ref_scores = env_id, ref_scores

    def __call__(self, obs):
        as_numpy = not isinstance(obs, torch.Tensor)
        x = torch.as_tensor(np.asarray(obs) if as_numpy else obs, dtype=torch.float32, device=self.module.device)
        act = self.module.act(x)
        return act.cpu().numpy() if as_numpy else act


def algorithm_classes() -> dict:
    from c4_lightning.algos import CQL, TD3BC

    return {"TD3BC": TD3BC, "CQL": CQL}


def load_policy(ckpt: str | Path, map_location: str | torch.device = "cpu") -> Policy:
    """Load the actor (and its normalisation) of a TD3BC or CQL checkpoint."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass the path of a .ckpt written by train.py")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err}): it is corrupt or not a torch checkpoint") from err
    info = checkpoint.get("c4_lightning")
    classes = algorithm_classes()
    if not info or info.get("algo") not in classes:
        raise ValueError(f"checkpoint {path} was not written by a c4_lightning TD3BC/CQL run")
    module = classes[info["algo"]].load_from_checkpoint(path, map_location=map_location)
    ref = info.get("ref_scores")
    return Policy(module, info.get("env_id"), tuple(ref) if ref else None)
