"""Mixed precision: ``bf16-mixed`` on CPU trains TD3+BC and CQL with C4 (the default ``cross_cov`` penalty and
``grad_cross_cov``, double backprop through the critic's input gradients) for 100 updates, keeps every loss finite,
the master weights, the Q head and the penalty in float32; ``16-mixed`` is CUDA-only (GradScaler) and is
tested only where a GPU is present."""

from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.c4.config import C4Config
from c4_lightning.data.datamodule import OfflineRLDataModule

STEPS = 100


class LossRecorder(Callback):
    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "c4/penalty"))}
        )


def _spy(cls):
    class Spy(cls):
        """Records whether autocast was active (and at which dtype) inside each update."""

        def update(self, batch):
            device = batch["observations"].device.type
            self.autocast_seen.append((torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)))
            return super().update(batch)

    Spy.__name__ = cls.__name__
    return Spy


def fit(cls, precision: str, accelerator: str, penalty: str = "grad_cross_cov"):
    model = _spy(cls)(
        hidden_dims=(32, 32),
        log_every_n_steps=1,
        probe_size=256,
        c4=C4Config(enabled=True, penalty=penalty, penalty_weight=0.5, pca_dim=4, fit_subsample=2000),
    )
    model.autocast_seen = []
    model.dtypes_seen = {"q_head": [], "penalty": []}
    dm = OfflineRLDataModule(batch_size=64, steps_per_epoch=STEPS)
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[recorder],
    )
    before = {k: v.detach().clone() for k, v in model.state_dict().items()} if model._built else None
    _record_dtypes(model)
    trainer.fit(model, datamodule=dm)
    return model, trainer, recorder, before


def _record_dtypes(model) -> None:
    """Record the dtype of every Q-head output and penalty value (the networks are built in ``setup``)."""
    spec = model.c4.spec

    def penalty(*args, **kwargs):
        value = spec.fn(*args, **kwargs)
        model.dtypes_seen["penalty"].append(value.dtype)
        return value

    model.c4.spec = dataclasses.replace(spec, fn=penalty)
    build = model.build_networks

    def build_and_hook(*args, **kwargs):
        out = build(*args, **kwargs)
        model.critic.head.register_forward_hook(lambda m, i, o: model.dtypes_seen["q_head"].append(o.dtype))
        return out

    model.build_networks = build_and_hook


def check_run(model, trainer, recorder, dtype) -> None:
    assert trainer.global_step == STEPS
    assert model.autocast_seen and all(on and dt == dtype for on, dt in model.autocast_seen)
    assert len(recorder.rows) == STEPS
    for row in recorder.rows:
        assert {"train/critic_loss", "c4/penalty"} <= set(row), row
        for name, value in row.items():
            assert torch.isfinite(torch.tensor(value)), (name, value)
    assert any(row["c4/penalty"] > 0 for row in recorder.rows)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name  # master weights stay fp32
    assert torch.isfinite(trainer.callback_metrics["c4/cross_cov_fro"])
    # the Q head and the penalty stay float32 under autocast (Q values and covariance sums need the mantissa)
    assert model.dtypes_seen["q_head"] and set(model.dtypes_seen["q_head"]) == {torch.float32}
    assert model.dtypes_seen["penalty"] and set(model.dtypes_seen["penalty"]) == {torch.float32}


@pytest.mark.parametrize("penalty", ["cross_cov", "grad_cross_cov"])
@pytest.mark.parametrize("cls", [TD3BC, CQL], ids=["TD3BC", "CQL"])
def test_bf16_mixed_cpu_trains_with_c4(cls, penalty):
    """100 updates under bf16-mixed with the default penalty and with the double-backprop one."""
    model, trainer, recorder, _ = fit(cls, "bf16-mixed", "cpu", penalty)
    check_run(model, trainer, recorder, torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed (fp16 + GradScaler) needs CUDA")
@pytest.mark.parametrize("cls", [TD3BC, CQL], ids=["TD3BC", "CQL"])
def test_16_mixed_cuda(cls):
    model, trainer, recorder, _ = fit(cls, "16-mixed", "gpu")
    check_run(model, trainer, recorder, torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_mixed_cuda():
    model, trainer, recorder, _ = fit(TD3BC, "bf16-mixed", "gpu")
    check_run(model, trainer, recorder, torch.bfloat16)
