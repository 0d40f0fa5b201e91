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
        self.steps.append(
            {
                "step": trainer.global_step,
                "cluster": trainer.datamodule.sampler.last_cluster,
                "indices": batch["indices"][:8].cpu().tolist(),
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        torch.save(
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "steps": self.steps,
                "strategy": type(trainer.strategy).__name__,
                "find_unused_parameters": trainer.strategy._ddp_kwargs.get("find_unused_parameters"),
                "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
                "initial": self.initial,
                "final": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ranks"
    callbacks = json.dumps(
        [
            {"class_path": "c4_lightning.evaluation.EvalCallback", "init_args": {"episodes": 1}},
            {"class_path": "test_ddp.RankRecorder", "init_args": {"out_dir": str(out)}},
        ]
    )
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / "td3bc_c4.yaml"),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--model.init_args.hidden_dims",
        "[16,16]",
        "--data.batch_size",
        "32",
        "--data.steps_per_epoch",
        "6",
        "--trainer.max_epochs",
        "2",
        "--model.c4.refit_every_n_epochs",
        "1",
        "--model.c4.pca_dim",
        "4",
        "--model.c4.fit_subsample",
        "3000",
        "--model.probe_size",
        "256",
        "--trainer.log_every_n_steps",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.callbacks",
        callbacks,
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
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
    changed = [
        k
        for k in r0["initial"]
        if k.startswith(("critic.", "actor.")) and not torch.equal(r0["initial"][k], r0["final"][k])
    ]
    assert changed


# ---------------------------------------------------------------------------------------------- stopping together


class PoisonOnRank(Callback):
    """NaN rewards in the batch of update ``at_step`` on global rank ``rank`` only."""

    def __init__(self, at_step: int, rank: int):
        self.at_step, self.rank = at_step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step and trainer.global_rank == self.rank:
            batch["rewards"].fill_(float("nan"))


class HoldForSignalOnRank(Callback):
    """On global rank ``rank`` after update ``at_step``: write ``marker`` and wait (at most 120 s) for a signal."""

    def __init__(self, at_step: int, rank: int, marker: str):
        self.at_step, self.rank, self.marker = at_step, rank, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step or trainer.global_rank != self.rank:
            return
        import time

        from c4_lightning.training.shutdown import GracefulShutdown

        shutdown = next(c for c in trainer.callbacks if isinstance(c, GracefulShutdown))
        Path(self.marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while shutdown.received is None and time.monotonic() < deadline:
            time.sleep(0.01)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(tmp_path: Path, callbacks: list[dict]) -> list[subprocess.Popen]:
    """Both ranks as independent processes (as torchrun or SLURM start them), so each rank's exit code is seen."""
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / "td3bc.yaml"),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--model.init_args.hidden_dims",
        "[16,16]",
        "--data.batch_size",
        "32",
        "--data.steps_per_epoch",
        "4",
        "--trainer.max_epochs",
        "3",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.callbacks",
        json.dumps(callbacks),
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
    ]
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            NODE_RANK="0",
            LOCAL_WORLD_SIZE="2",
            PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "train.py"), *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err))
    finally:
        for p in procs:  # only the processes this test started; a hang fails the test instead of the machine
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    poison = {"class_path": "test_ddp.PoisonOnRank", "init_args": {"at_step": 6, "rank": 1}}
    (code0, err0), (code1, err1) = _finish(_start_ranks(tmp_path, [poison]))
    assert code0 == code1 == 3, (err0[-2000:], err1[-2000:])
    assert "non-finite critic_loss at update 6" in err1  # the rank that saw it names the loss
    assert "non-finite loss on another rank at update 6" in err0
    saved = list((tmp_path / "runs").rglob("nonfinite-state.ckpt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=True)["global_step"] == 6


def test_a_signal_on_one_rank_stops_every_rank_with_one_checkpoint(tmp_path):
    import signal
    import time

    marker = tmp_path / "rank1.pid"
    hold = {"class_path": "test_ddp.HoldForSignalOnRank", "init_args": {"at_step": 5, "rank": 1, "marker": str(marker)}}
    procs = _start_ranks(tmp_path, [hold])
    deadline = time.monotonic() + 240
    while not marker.exists() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    assert marker.exists(), "rank 1 never reached update 5"
    os.kill(int(marker.read_text()), signal.SIGTERM)  # rank 1 only (the PID this test's run wrote)
    (code0, err0), (code1, err1) = _finish(procs)
    assert code0 == code1 == 128 + signal.SIGTERM, (err0[-2000:], err1[-2000:])
    assert "training stopped by SIGTERM" in err0 and "training stopped by SIGTERM" in err1
    last = list((tmp_path / "runs").rglob("last.ckpt"))
    assert len(last) == 1 and torch.load(last[0], weights_only=True)["global_step"] == 5
