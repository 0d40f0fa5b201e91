"""D4RL reference scores and score normalisation.

Normalised score = 100 * (return - min) / (max - min). Dataset metadata
(``ref_min_score``/``ref_max_score``) overrides these constants.
"""

from __future__ import annotations

# (random policy return, expert policy return) from D4RL's infos.py
REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def env_family(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper'; 'HalfCheetah-v4' -> 'halfcheetah'."""
    return env_id.split("-")[0].split("/")[-1].lower()


def reference_scores(env_id: str) -> tuple[float, float] | None:
    """D4RL's (min, max) reference returns for an env id, or None when unknown."""
    return REF_SCORES.get(env_family(env_id))


def normalized_score(ret, ref_min: float, ref_max: float):
    """100 * (ret - ref_min) / (ref_max - ref_min); works on floats, arrays and tensors."""
    if ref_max <= ref_min:
        raise ValueError(f"reference scores must satisfy max > min, got min={ref_min}, max={ref_max}")
    return 100.0 * (ret - ref_min) / (ref_max - ref_min)
