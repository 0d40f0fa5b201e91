"""``compile=True`` (``--model.compile true``): the critic and actor run through ``torch.compile`` and training works
for both algorithms on a CPU (with C4, whose refits and probe use other batch shapes). Whether it is faster is
measured by ``benchmarks/throughput.py --compile``, never asserted here."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from helpers_lightning import HOPPERLIKE, MemoryLogger, make_datamodule, make_trainer, toy_env  # noqa: F401

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.c4.config import C4Config


@pytest.mark.slow
@pytest.mark.parametrize("algo", [TD3BC, CQL])
def test_compiled_networks_train(toy_env, tmp_path, algo):
    L.seed_everything(0, verbose=False)
    hidden = (32, 32) if algo is TD3BC else (32, 32, 32)
    module = algo(
        hidden_dims=hidden, compile=True, c4=C4Config(enabled=True, pca_dim=4, n_clusters=2, refit_every_n_updates=10)
    )
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_steps=20, logger=logger, log_every_n_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=make_datamodule(HOPPERLIKE, batch_size=32, steps_per_epoch=20))
    assert all(getattr(net, "_compiled_call_impl", None) is not None for net in module.compiled_networks())
    losses = logger.values("train/critic_loss")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in module.parameters())
