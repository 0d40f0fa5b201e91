"""The contract every registered algorithm keeps (``c4_lightning.algos.registry.ALGORITHMS``; see CONTRIBUTING.md):
it builds its networks from a datamodule, makes exactly one counted update per batch, checkpoints and reloads to the
same weights, ``load_policy`` acts like the module, and C4 plugs in (penalty logged, refit callback added) or stays
out (no C4 metrics, no callback). A new algorithm is checked by registering it: nothing here names one."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch

from helpers_lightning import MemoryLogger, make_datamodule, make_trainer

from c4_lightning import load_policy
from c4_lightning.algos import ALGORITHMS, OfflineRLModule, algorithm_class
from c4_lightning.c4.callback import ClusterRefitCallback
from c4_lightning.c4.config import C4Config

UPDATES = 50


@pytest.mark.parametrize("c4", [False, True], ids=["c4-off", "c4-on"])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_registered_algorithm_keeps_the_contract(name, c4, tmp_path):
    cls = algorithm_class(name)
    assert issubclass(cls, OfflineRLModule)
    L.seed_everything(0, verbose=False)
    cfg = C4Config(enabled=True, n_clusters=2, pca_dim=4, refit_every_n_updates=20) if c4 else None
    module = cls(hidden_dims=(16, 16), c4=cfg, probe_size=64)
    dm = make_datamodule(batch_size=32, steps_per_epoch=25, max_transitions=1500)
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_steps=UPDATES, logger=logger, log_every_n_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)

    # built from the data, one counted update per batch
    assert (module.hparams["obs_dim"], module.hparams["act_dim"]) == (dm.obs_dim, dm.act_dim)
    assert trainer.global_step == UPDATES and int(module.updates_done) == UPDATES
    assert logger.values("train/critic_loss") and all(np.isfinite(logger.values("train/critic_loss")))

    # C4 plugs in or stays out
    refit = [cb for cb in trainer.callbacks if isinstance(cb, ClusterRefitCallback)]
    if c4:
        assert len(refit) == 1 and refit[0].refits >= 2  # the initial partition and the refits at 20, 40
        assert logger.values("c4/penalty") and dm.sampler.partitioned
    else:
        assert not refit and not logger.values("c4/penalty")

    # checkpoint round trip and load_policy
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = cls.load_from_checkpoint(ckpt, weights_only=True)
    for key, value in module.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    policy = load_policy(ckpt)
    assert policy.algo == name
    obs = dm.transitions.observations[:16].numpy()
    module.eval()
    with torch.no_grad():
        expected = module.act(torch.as_tensor(obs)).numpy()
    np.testing.assert_array_equal(policy(obs), expected)
    assert np.all(np.abs(expected) <= module.hparams.max_action)
