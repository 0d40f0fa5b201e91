"""Critic features for C4: penultimate activations and input gradients.

* :func:`input_gradients` gives ``dQ_e/d(s, a)`` for every ensemble member in one autograd call; with
  ``create_graph=True`` the result is differentiable w.r.t. the critic's weights (double backprop), which the
  ``grad_cross_cov`` penalty needs.
* :func:`clustering_features` gives the per-transition vector that C4 clusters, ``[phi(s, a), phi_bar(s', a')]``,
  computed in chunks without keeping any autograd graph and returned on the CPU.
* :class:`CriticFeatureRows` gives the same rows on demand (``rows(idx)``), so a refit computes only the rows it
  needs, when it needs them, and never holds the ``[N, 2F]`` matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["FEATURE_KINDS", "input_gradients", "clustering_features", "CriticFeatureRows"]

FEATURE_KINDS = ("penultimate", "gradient")
CPU_CHUNK, ACCELERATOR_CHUNK = 2048, 65536  # default rows per forward pass of clustering_features


def _check_obs_act(obs: torch.Tensor, act: torch.Tensor, oname: str, aname: str) -> None:
    for t, name in ((obs, oname), (act, aname)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [B, dim], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}; cast it with .float()")
    if obs.shape[0] != act.shape[0]:
        raise ValueError(
            f"{oname} and {aname} must have the same number of rows, got {obs.shape[0]} and {act.shape[0]}"
        )


def _check_transitions(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, next_act: torch.Tensor) -> None:
    """Both sides are ``[N, dim]`` floating point with the same rows (the next step's widths may differ: a
    state-value backup takes no action)."""
    _check_obs_act(obs, act, "obs", "act")
    _check_obs_act(next_obs, next_act, "next_obs", "next_act")
    if next_obs.shape[0] != obs.shape[0] or next_act.shape[0] != obs.shape[0]:
        raise ValueError(
            f"next_obs/next_act must have the rows of obs/act ({obs.shape[0]}), got {tuple(next_obs.shape)} and "
            f"{tuple(next_act.shape)}"
        )


def _ensemble_size(critic: nn.Module) -> int:
    e = getattr(critic, "ensemble_size", None)
    if not isinstance(e, int) or e < 1:
        raise ValueError("critic must be a CriticEnsemble (an nn.Module with an int `ensemble_size` and `from_input`)")
    return e


def input_gradients(
    critic: nn.Module, obs: torch.Tensor, act: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
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
            raise ValueError(
                f"critic.from_input must return q of shape [E, B] = {tuple(x.shape[:2])}, got {tuple(q.shape)}"
            )
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
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The vector C4 clusters, per transition: ``[phi(s, a), phi_bar(s', a')]``.

    ``phi`` comes from the online ``critic`` at ``(s, a)``, ``phi_bar`` from ``target_critic`` at ``(s', a')``, each
    averaged over the ensemble (the twin critics). ``kind="penultimate"`` uses the last hidden layer (``F = H``),
    ``kind="gradient"`` the input gradients ``dQ/d(s, a)`` (``F = obs_dim + act_dim``).

    Rows are processed ``chunk_size`` at a time on the critic's device (inputs may live anywhere; each chunk is
    moved there) and no autograd graph is kept, so memory stays bounded and the result does not depend on the
    chunk size. The default (None) is 2048 rows on a CPU, where a chunk's ``[E, rows, H]`` activations then stay
    in cache (about twice as fast as 65536 rows for 2x256 critics), and 65536 rows on an accelerator.

    Returns:
        ``[N, 2F]`` float32 tensor on the CPU.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be one of {list(FEATURE_KINDS)}, got {kind!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (rows per forward pass) or None, got {chunk_size!r}")
    _check_transitions(obs, act, next_obs, next_act)
    n = obs.shape[0]
    if n == 0:
        raise ValueError("obs has no rows; pass at least one transition")
    _ensemble_size(critic)
    _ensemble_size(target_critic)
    device, dtype = _critic_device_dtype(critic)
    t_device, _ = _critic_device_dtype(target_critic)
    if t_device != device:
        raise ValueError(f"critic is on {device} but target_critic on {t_device}; move both to the same device")
    if chunk_size is None:
        chunk_size = CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK

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
            phi = phi_of(critic, o, a)
            no, na = next_obs[sl].to(device=device, dtype=dtype), next_act[sl].to(device=device, dtype=dtype)
            phi_next = phi_of(target_critic, no, na)
            if out is None:
                f = phi.shape[-1]
                out = torch.empty(n, f + phi_next.shape[-1], dtype=torch.float32)
            out[sl, :f] = phi  # written in place (one copy, cast included): no [rows, 2F] concatenation
            out[sl, f:] = phi_next
    assert out is not None
    return out


class CriticFeatureRows:
    """:func:`clustering_features` of ``N`` transitions, computed when asked: ``rows(idx)`` returns the features of
    rows ``idx`` as a float32 numpy array ``[len(idx), 2F]`` (equal to ``clustering_features(...)[idx]`` up to
    float rounding), which is the *row source* that :func:`c4_lightning.c4.clustering.fit_partition` and
    ``project_2d`` accept.

    A refit then computes the fit subsample's rows once and every other row once, a block at a time, instead of
    materialising ``[N, 2F]`` (2 GiB at 1M transitions with 256-d features, whose first touch alone costs
    more than a second on a CPU). The critics are used as they are at each call: keep them unchanged (and in
    eval mode, if that matters for them) while the source is in use.

    Args: as :func:`clustering_features`. ``block_rows`` (attribute): rows per call that the labelling pass
    should ask for (65536 on an accelerator, ``4 * CPU_CHUNK`` on a CPU).
    """

    def __init__(
        self,
        critic: nn.Module,
        target_critic: nn.Module,
        obs: torch.Tensor,
        act: torch.Tensor,
        next_obs: torch.Tensor,
        next_act: torch.Tensor,
        kind: str = "penultimate",
        chunk_size: int | None = None,
    ):
        _check_transitions(obs, act, next_obs, next_act)
        self.critic, self.target_critic, self.kind, self.chunk_size = critic, target_critic, kind, chunk_size
        self._data = (obs, act, next_obs, next_act)
        first = clustering_features(
            critic, target_critic, obs[:1], act[:1], next_obs[:1], next_act[:1], kind=kind, chunk_size=chunk_size
        )  # validates the rest (kind, critics, devices, n > 0)
        self.shape = (int(obs.shape[0]), int(first.shape[1]))
        device, _ = _critic_device_dtype(critic)
        self.block_rows = ACCELERATOR_CHUNK if device.type != "cpu" else 4 * CPU_CHUNK

    def rows(self, idx) -> np.ndarray:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        if idx.dim() != 1:
            raise ValueError(f"idx must be 1-D row indices, got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        parts = [t[idx.to(t.device)] for t in self._data]
        return clustering_features(
            self.critic, self.target_critic, *parts, kind=self.kind, chunk_size=self.chunk_size
        ).numpy()
