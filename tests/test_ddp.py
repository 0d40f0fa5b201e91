"""DDP from the command line: ``--trainer.devices 2 --trainer.strategy ddp --trainer.accelerator cpu`` (gloo)
trains TD3BC+C4 with its manual optimisation, every rank draws its batch from the same cluster at the same
step (its own indices), and the ranks end with identical parameters.

Multi-node runs use the same command with ``--trainer.num_nodes N`` on every node (Lightning's launchers);
they are not tested here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]


class RankRecorder(Callback):
    """Written into the run through ``--trainer.callbacks``: per step, the cluster the sampler picked and the
    first batch indices; at the end, the rank's parameters and DDP settings (``<out_dir>/rank<r>.pt``)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.steps: list[dict] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "cluster": trainer.datamodule.sampler.last_cluster,
                           "indices": batch["indices"][:8].cpu().tolist()})

    def on_train_end(self, trainer, pl_module) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": self.steps,
                    "strategy": type(trainer.strategy).__name__,
                    "find_unused_parameters": trainer.strategy._ddp_kwargs.get("find_unused_parameters"),
                    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
                    "initial": self.initial,
                    "final": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ranks"
    callbacks = json.dumps([
        {"class_path": "c4_lightning.evaluation.EvalCallback", "init_args": {"episodes": 1}},
        {"class_path": "test_ddp.RankRecorder", "init_args": {"out_dir": str(out)}},
    ])
    args = ["fit", "--config", str(REPO / "configs" / "td3bc_c4.yaml"),
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
            "--model.init_args.hidden_dims", "[16,16]", "--data.batch_size", "32", "--data.steps_per_epoch", "6",
            "--trainer.max_epochs", "2", "--model.c4.refit_every_n_epochs", "1", "--model.c4.pca_dim", "4",
            "--model.c4.fit_subsample", "3000", "--model.probe_size", "256", "--trainer.log_every_n_steps", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.callbacks", callbacks, "--trainer.default_root_dir", str(tmp_path / "runs")]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "final normalized score" in proc.stdout  # rank 0 finished the run, evaluation summary included

    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["strategy"] == "DDPStrategy" and r0["backend"] == "gloo"
    assert r0["find_unused_parameters"] is True  # plain `ddp` switched on for manual optimisation
    assert len(r0["steps"]) == len(r1["steps"]) == 12
    # the same cluster per step on both ranks (C4 partition active: no uniform batches), own indices per rank
    clusters0, clusters1 = [s["cluster"] for s in r0["steps"]], [s["cluster"] for s in r1["steps"]]
    assert clusters0 == clusters1
    assert all(c >= 0 for c in clusters0)
    assert any(a["indices"] != b["indices"] for a, b in zip(r0["steps"], r1["steps"]))
    # identical parameters on both ranks after training, and training did change them
    assert r0["final"].keys() == r1["final"].keys()
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    changed = [k for k in r0["initial"] if k.startswith(("critic.", "actor."))
               and not torch.equal(r0["initial"][k], r0["final"][k])]
    assert changed
