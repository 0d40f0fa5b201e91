"""Critic features for C4: penultimate activations and input gradients.

* :func:`input_gradients` gives ``dQ_e/d(s, a)`` for every ensemble member in one autograd call; with
  ``create_graph=True`` the result is differentiable w.r.t. the critic's weights (double backprop), which the
  ``grad_cross_cov`` penalty needs.
* :func:`clustering_features` gives the per-transition vector that C4 clusters, ``[phi(s, a), phi_bar(s', a')]``,
  computed in chunks without keeping any autograd graph and returned on the CPU.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FEATURE_KINDS", "input_gradients", "clustering_features"]

FEATURE_KINDS = ("penultimate", "gradient")


def _check_obs_act(obs: torch.Tensor, act: torch.Tensor, oname: str, aname: str) -> None:
    for t, name in ((obs, oname), (act, aname)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [B, dim], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}; cast it with .float()")
    if obs.shape[0] != act.shape[0]:
        raise ValueError(f"{oname} and {aname} must have the same number of rows, got {obs.shape[0]} and {act.shape[0]}")


def _ensemble_size(critic: nn.Module) -> int:
    e = getattr(critic, "ensemble_size", None)
    if not isinstance(e, int) or e < 1:
        raise ValueError("critic must be a CriticEnsemble (an nn.Module with an int `ensemble_size` and `from_input`)")
    return e


def input_gradients(critic: nn.Module, obs: torch.Tensor, act: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Per-member input gradients ``dQ_e(s, a)/d(s, a)``.

    The input ``[B, D]`` is expanded to ``[E, B, D]`` (so each member gets its own copy) and one
    ``torch.autograd.grad`` of ``sum(q)`` w.r.t. it gives all ``E x B`` gradients at once: member ``e`` at row ``b``
    depends only on input ``[e, b]``. The input itself is detached: gradients never flow back into ``obs``/``act``.

    Args:
        critic: a ``CriticEnsemble`` (``from_input([E, B, D]) -> q [E, B]``).
        obs, act: ``[B, obs_dim]``, ``[B, act_dim]``.
        create_graph: keep the graph of the gradient computation so a loss on the result backpropagates into the
            critic's weights (training). With ``False`` the result is detached and no graph is kept (features).

    Returns:
        ``[E, B, obs_dim + act_dim]``. Works under ``torch.no_grad()`` too (grad is enabled locally).
    """
    _check_obs_act(obs, act, "obs", "act")
    e = _ensemble_size(critic)
    with torch.enable_grad():
        x = torch.cat([obs.detach(), act.detach()], dim=-1)
        x = x.unsqueeze(0).expand(e, -1, -1).clone().requires_grad_(True)
        q = critic.from_input(x)
        if q.shape != x.shape[:2]:
            raise ValueError(f"critic.from_input must return q of shape [E, B] = {tuple(x.shape[:2])}, got {tuple(q.shape)}")
        (grad,) = torch.autograd.grad(q.sum(), x, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def _critic_device_dtype(critic: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(critic.parameters(), None)
    if p is None:
        raise ValueError("critic has no parameters; pass the CriticEnsemble whose features you want")
    return p.device, p.dtype


def clustering_features(
    critic: nn.Module,
    target_critic: nn.Module,
    obs: torch.Tensor,
    act: torch.Tensor,
    next_obs: torch.Tensor,
    next_act: torch.Tensor,
    kind: str = "penultimate",
    chunk_size: int = 65536,
) -> torch.Tensor:
    """The vector C4 clusters, per transition: ``[phi(s, a), phi_bar(s', a')]``.

    ``phi`` comes from the online ``critic`` at ``(s, a)``, ``phi_bar`` from ``target_critic`` at ``(s', a')``, each
    averaged over the ensemble (the twin critics). ``kind="penultimate"`` uses the last hidden layer (``F = H``),
    ``kind="gradient"`` the input gradients ``dQ/d(s, a)`` (``F = obs_dim + act_dim``).

    Rows are processed ``chunk_size`` at a time on the critic's device (inputs may live anywhere; each chunk is
    moved there) and no autograd graph is kept, so memory stays bounded and the result does not depend on the
    chunk size.

    Returns:
        ``[N, 2F]`` float32 tensor on the CPU.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be one of {list(FEATURE_KINDS)}, got {kind!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per forward pass), got {chunk_size!r}")
    _check_obs_act(obs, act, "obs", "act")
    _check_obs_act(next_obs, next_act, "next_obs", "next_act")
    n = obs.shape[0]
    if next_obs.shape != obs.shape or next_act.shape != act.shape:
        raise ValueError(
            f"next_obs/next_act must have the shapes of obs/act ({tuple(obs.shape)}, {tuple(act.shape)}), got "
            f"{tuple(next_obs.shape)} and {tuple(next_act.shape)}"
        )
    if n == 0:
        raise ValueError("obs has no rows; pass at least one transition")
    _ensemble_size(critic)
    _ensemble_size(target_critic)
    device, dtype = _critic_device_dtype(critic)
    t_device, _ = _critic_device_dtype(target_critic)
    if t_device != device:
        raise ValueError(f"critic is on {device} but target_critic on {t_device}; move both to the same device")

    def phi_of(net: nn.Module, o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if kind == "penultimate":
            _, f = net(o, a, return_features=True)
        else:
            f = input_gradients(net, o, a, create_graph=False)
        return f.mean(dim=0)

    out: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            sl = slice(start, min(start + chunk_size, n))
            o, a = obs[sl].to(device=device, dtype=dtype), act[sl].to(device=device, dtype=dtype)
            no, na = next_obs[sl].to(device=device, dtype=dtype), next_act[sl].to(device=device, dtype=dtype)
            phi = phi_of(critic, o, a)
            phi_bar = phi_of(target_critic, no, na)
            chunk = torch.cat([phi, phi_bar], dim=-1).to(device="cpu", dtype=torch.float32)
            if out is None:
                out = torch.empty(n, chunk.shape[-1], dtype=torch.float32)
            out[sl] = chunk
    assert out is not None
    return out
