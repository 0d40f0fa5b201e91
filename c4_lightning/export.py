"""``c4-export --ckpt last.ckpt --format torchscript|onnx --out policy.pt``: a policy file that runs without
c4_lightning (d3rlpy's ``save_policy`` is the model).

The exported graph takes raw observations ``[N, obs_dim]`` (float32, any N) and returns actions ``[N, act_dim]``: the
observation normalisation of the run is inside, and the action is the one :meth:`OfflineRLModule.act` gives (TD3+BC's
deterministic actor, CQL's mean action ``max_action * tanh(mu(s))``).

    policy = torch.jit.load("policy.pt")                          # TorchScript: PyTorch only
    action = policy(torch.as_tensor(obs[None], dtype=torch.float32))[0]

    import onnxruntime as ort                                      # ONNX: pip install onnxruntime
    session = ort.InferenceSession("policy.onnx")
    action = session.run(None, {"obs": obs[None].astype("float32")})[0][0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

FORMATS = ("torchscript", "onnx")


class ExportablePolicy(nn.Module):
    """Raw observations in, deterministic actions out: ``actor.act((obs - mean) / std)`` as one module."""

    def __init__(self, module):
        super().__init__()
        self.actor = module.actor
        self.register_buffer("obs_mean", module.obs_mean.detach().clone().float())
        self.register_buffer("obs_std", module.obs_std.detach().clone().float())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.act((obs - self.obs_mean) / self.obs_std)


def export_policy(ckpt: str | Path, out: str | Path, fmt: str = "torchscript") -> Path:
    """Write the policy of checkpoint ``ckpt`` to ``out`` as TorchScript (``torch.jit.load``) or ONNX (input
    ``obs`` ``[N, obs_dim]``, output ``action`` ``[N, act_dim]``, N dynamic). Returns ``out``."""
    from c4_lightning.policy import load_policy

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    policy = load_policy(ckpt, map_location="cpu")
    net = ExportablePolicy(policy.module.float()).eval()
    example = torch.zeros(2, policy.obs_dim)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(net, example)  # a fixed graph of linear layers: any batch size
            traced.save(str(out))
        else:
            try:
                import onnx  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "ONNX export needs the 'export' extra: pip install 'c4_lightning[export]' "
                    "(onnx, onnxscript, onnxruntime)"
                ) from err
            torch.onnx.export(
                net,
                (example,),
                str(out),
                input_names=["obs"],
                output_names=["action"],
                dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                dynamo=False,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="c4-export", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (e.g. .../checkpoints/last.ckpt)")
    p.add_argument("--format", default="torchscript", choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (e.g. policy.pt or policy.onnx)")
    args = p.parse_args(argv)
    try:
        path = export_policy(args.ckpt, args.out, args.format)
    except (FileNotFoundError, ValueError, ImportError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} policy to {path} (raw observations [N, obs_dim] in, actions [N, act_dim] out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
