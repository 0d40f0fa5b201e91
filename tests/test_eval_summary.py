"""``EvalCallback`` writes ``summary.json`` also when a run is resumed from the checkpoint of an already finished
run: Lightning then skips training and ``on_train_end``, so the summary comes from ``on_fit_end`` (from the
evaluation history restored from the checkpoint). A normal run writes it once, at ``on_train_end``."""

from __future__ import annotations

import json
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from helpers_lightning import HOPPERLIKE, MemoryLogger, make_datamodule, make_trainer, toy_env  # noqa: F401

from c4_lightning.algos import TD3BC
from c4_lightning.evaluation import EvalCallback

MAX_STEPS, STEPS_PER_EPOCH = 8, 4  # two epochs, two evaluations


class CountWrites(EvalCallback):
    """Counts the summaries written, and by which hook."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.writes: list[str] = []

    def on_train_end(self, trainer, pl_module) -> None:
        before = self._summary_written
        super().on_train_end(trainer, pl_module)
        if self._summary_written and not before:
            self.writes.append("on_train_end")

    def on_fit_end(self, trainer, pl_module) -> None:
        before = self._summary_written
        super().on_fit_end(trainer, pl_module)
        if self._summary_written and not before:
            self.writes.append("on_fit_end")


def fit(root, ckpt_path=None):
    L.seed_everything(0, verbose=False)
    dm = make_datamodule(HOPPERLIKE, batch_size=32, steps_per_epoch=STEPS_PER_EPOCH)  # evaluated on Hopper-v5
    module = TD3BC(obs_dim=11, act_dim=3, hidden_dims=(16, 16))
    ev, logger = CountWrites(episodes=2, max_envs=2), MemoryLogger()
    # the run's log directory (as train.py's): the same for the first run and the resumed one
    tb = TensorBoardLogger(save_dir=str(root), name="run", version=0)
    trainer = make_trainer(root, max_steps=MAX_STEPS, callbacks=[ev], logger=[tb, logger])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, ev, logger


def test_summary_written_once_by_a_normal_run_and_again_when_resuming_a_finished_run(toy_env, tmp_path):
    trainer, ev, logger = fit(tmp_path)
    assert trainer.global_step == MAX_STEPS and len(ev.history) == 2
    assert ev.writes == ["on_train_end"]  # on_fit_end does not write a second time
    summary_path = tmp_path / "run" / "version_0" / "summary.json"
    first = json.loads(summary_path.read_text())
    assert len(first["evaluations"]) == 2 and first["final_normalized_score"] is not None
    ckpt = tmp_path / "finished.ckpt"
    trainer.save_checkpoint(ckpt)

    # the run stopped after its last checkpoint but before writing its summary (or the summary was lost)
    summary_path.unlink()
    trainer2, ev2, logger2 = fit(tmp_path, ckpt_path=str(ckpt))
    assert trainer2.global_step == MAX_STEPS and ev2.writes == ["on_fit_end"]  # training (and on_train_end) skipped
    assert ev2.history == ev.history  # restored from the checkpoint, no new evaluation
    assert json.loads(summary_path.read_text()) == first
    assert logger2.values("eval/final_normalized_score") == [pytest.approx(first["final_normalized_score"])]
    assert logger.values("eval/final_normalized_score") == [pytest.approx(first["final_normalized_score"])]


def test_no_summary_without_evaluations(toy_env, tmp_path):
    """A finished run resumed with an empty history (e.g. evaluation off) writes nothing, as on_train_end."""
    trainer, ev, _ = fit(tmp_path)
    ckpt = tmp_path / "finished.ckpt"
    trainer.save_checkpoint(ckpt)
    summary_path = tmp_path / "run" / "version_0" / "summary.json"
    summary_path.unlink()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    for key in state["callbacks"]:
        if "EvalCallback" in key or "CountWrites" in key:
            state["callbacks"][key]["history"] = []
    torch.save(state, ckpt)
    _, ev2, _ = fit(tmp_path, ckpt_path=str(ckpt))
    assert ev2.history == [] and not summary_path.exists()
