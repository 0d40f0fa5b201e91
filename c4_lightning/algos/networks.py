"""Actors and the vectorised twin-critic ensemble.

The critic ensemble keeps all members in one set of batched weights
(``[E, in, out]``) so the twin critics cost one ``baddbmm`` per layer, and it
returns the penultimate features that C4 clusters and penalises.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class VectorizedLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul: ``[E, B, in] -> [E, B, out]``."""

    def __init__(self, in_features: int, out_features: int, ensemble_size: int):
        super().__init__()
        self.in_features, self.out_features, self.ensemble_size = in_features, out_features, ensemble_size
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the same distribution as nn.Linear's default, member by member
        for i in range(self.ensemble_size):
            nn.init.kaiming_uniform_(self.weight.data[i].T, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: slice | None = None, detach_weights: bool = False) -> torch.Tensor:
        """``x`` is ``[E', B, in]`` for the ``E'`` members selected by ``members`` (all by default).
        ``detach_weights`` computes with detached weights: gradients still reach ``x``, never the layer."""
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w[members], b[members]
        if detach_weights:
            w, b = w.detach(), b.detach()
        if self.out_features == 1:
            # a Q head: a batched matrix product with one output column runs its backward as K=1 outer products,
            # several times slower on a CPU than this multiply-and-sum (same values up to summation order)
            return (x * w.transpose(-1, -2)).sum(dim=-1, keepdim=True) + b
        return torch.baddbmm(b, x, w)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, ensemble={self.ensemble_size}"


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init_(module: nn.Module, last_layer_gain: float = 1e-2) -> None:
    """Orthogonal (gain sqrt 2) hidden layers, a small xavier-uniform last layer (gain 1e-2), zero biases.

    Close to CORL's CQL initialisation, which uses orthogonal(gain 1e-2) for the critic's last layer and
    PyTorch's default init for the actor; see the CQL class docstring for the differences."""
    linears = [m for m in module.modules() if isinstance(m, (nn.Linear, VectorizedLinear))]
    for i, m in enumerate(linears):
        last = i == len(linears) - 1
        if isinstance(m, VectorizedLinear):
            for j in range(m.ensemble_size):
                w = m.weight.data[j].T
                if last:
                    nn.init.xavier_uniform_(w, gain=last_layer_gain)
                else:
                    nn.init.orthogonal_(w, gain=math.sqrt(2))
        else:
            if last:
                nn.init.xavier_uniform_(m.weight, gain=last_layer_gain)
            else:
                nn.init.orthogonal_(m.weight, gain=math.sqrt(2))
        nn.init.zeros_(m.bias)


class DeterministicActor(nn.Module):
    """TD3 actor: ``max_action * tanh(MLP(s))``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256), max_action: float = 1.0):
        super().__init__()
        self.net = _mlp(obs_dim, tuple(hidden), act_dim)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(obs))

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)


class TanhGaussianActor(nn.Module):
    """SAC/CQL actor: ``a = max_action * tanh(u)``, ``u ~ N(mu(s), sigma(s))``, with tanh-corrected log-densities."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256, 256), max_action: float = 1.0):
        super().__init__()
        self.net = _mlp(obs_dim, tuple(hidden), 2 * act_dim)
        self.max_action = max_action

    def _dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX).exp()

    def _log_prob(self, u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Log-density of ``max_action * tanh(u)`` for ``u ~ N(mean, std)``, summed over the action dims."""
        log_prob = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return log_prob - u.new_tensor(math.log(self.max_action)) * u.shape[-1]

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(action, log_prob)``; log_prob has shape ``obs.shape[:-1]``."""
        mean, std = self._dist(obs)
        u = mean if deterministic else mean + std * torch.randn_like(mean)
        return self.max_action * torch.tanh(u), self._log_prob(u, mean, std)

    def sample_n(self, obs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sampled actions per state and their log-densities, ``[B * n, A]`` and ``[B * n]``; row ``b * n + j``
        belongs to state ``b`` (the layout of ``obs.repeat_interleave(n, 0)``). The same distribution and random
        draws as ``self(obs.repeat_interleave(n, 0))``, but the network runs once per state, not on ``n`` copies."""
        mean, std = self._dist(obs)
        shape = (obs.shape[0], n, mean.shape[-1])
        mean, std = mean.unsqueeze(1).expand(shape), std.unsqueeze(1).expand(shape)
        u = mean + std * torch.randn(shape, dtype=mean.dtype, device=mean.device)
        return (self.max_action * torch.tanh(u)).reshape(-1, shape[-1]), self._log_prob(u, mean, std).reshape(-1)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-density of given (squashed) actions, used by the optional behaviour-cloning term."""
        mean, std = self._dist(obs)
        u = torch.atanh((action / self.max_action).clamp(-1 + 1e-6, 1 - 1e-6))
        return self._log_prob(u, mean, std)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs, deterministic=True)[0]


class VectorizedLayerNorm(nn.Module):
    """``E`` independent LayerNorms over the last dim of ``[E', B, H]``, with per-member gain and bias."""

    def __init__(self, features: int, ensemble_size: int, eps: float = 1e-5):
        super().__init__()
        self.features, self.eps = features, eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor, members: slice | None = None, detach_weights: bool = False) -> torch.Tensor:
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w[members], b[members]
        if detach_weights:
            w, b = w.detach(), b.detach()
        return F.layer_norm(x, (self.features,), eps=self.eps) * w + b


class CriticEnsemble(nn.Module):
    """``E`` Q-networks in one batched MLP. ``q(s, a) -> [E, B]``; optionally the penultimate features ``[E, B, H]``.

    ``layer_norm=True`` gives the C4 authors' critics: Linear -> LayerNorm -> ReLU in every hidden layer (LayerNorm
    bounds the features C4 penalises and clusters, and stabilises TD learning on small data)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (256, 256),
        ensemble_size: int = 2,
        layer_norm: bool = False,
    ):
        super().__init__()
        dims = [obs_dim + act_dim, *hidden]
        self.hidden = nn.ModuleList(VectorizedLinear(i, o, ensemble_size) for i, o in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(VectorizedLayerNorm(o, ensemble_size) for o in dims[1:]) if layer_norm else None
        self.head = VectorizedLinear(dims[-1], 1, ensemble_size)
        self.ensemble_size = ensemble_size
        self.input_dim = obs_dim + act_dim
        self.feature_dim = dims[-1]

    def from_input(
        self, x: torch.Tensor, return_features: bool = False, members: slice | None = None, detach_weights: bool = False
    ):
        """``x`` is ``[B, obs+act]`` (shared by all members) or ``[E', B, obs+act]``.

        ``members`` evaluates only those members (e.g. ``slice(0, 1)`` for TD3's Q1): ``[E', B]`` out, and no work
        is spent on the others. ``detach_weights`` lets gradients reach ``x`` (an actor's action) but not the
        critic's weights, which saves their weight-gradient products in an actor update."""
        if x.dim() == 2:
            n = self.ensemble_size if members is None else len(range(self.ensemble_size)[members])
            x = x.unsqueeze(0).expand(n, -1, -1)
        for i, layer in enumerate(self.hidden):
            x = layer(x, members, detach_weights)
            if self.norms is not None:
                x = self.norms[i](x, members, detach_weights)
            x = F.relu(x)
        # the 256 -> 1 head in float32 even under bf16/fp16 autocast: Q values (hundreds) and TD errors need
        # more than bf16's 8 bits of mantissa (a no-op in 32-true training)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = self.head(x.to(self.head.weight.dtype), members, detach_weights).squeeze(-1)
        return (q, x) if return_features else q

    def forward(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        return_features: bool = False,
        members: slice | None = None,
        detach_weights: bool = False,
    ):
        return self.from_input(torch.cat([obs, act], dim=-1), return_features, members, detach_weights)


def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source``, in one fused op per tensor list."""
    with torch.no_grad():
        t_params, s_params = list(target.parameters()), list(source.parameters())
        torch._foreach_lerp_(t_params, s_params, tau)
