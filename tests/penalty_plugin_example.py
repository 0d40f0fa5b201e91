"""A penalty defined outside the package, as a user would: one function + one ``register_penalty`` call."""

from __future__ import annotations

import torch

from c4_lightning.c4.penalty import register_penalty

CALLS = {"n": 0}


def mean_product_penalty(phi: torch.Tensor, phi_next: torch.Tensor) -> torch.Tensor:
    """``mean_B mean_H phi * phi_next.detach()`` (a toy: counts its calls)."""
    CALLS["n"] += 1
    return (phi * phi_next.detach()).mean(dim=(-2, -1))


register_penalty("test_mean_product", mean_product_penalty, inputs="features")
