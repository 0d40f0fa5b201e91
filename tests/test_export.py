"""``c4-export``: TorchScript and ONNX policies that run without c4_lightning and act as the module does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.data.datamodule import OfflineRLDataModule
from c4_lightning.export import export_policy, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=[TD3BC, CQL], ids=["TD3BC", "CQL"])
def trained(request, tmp_path_factory):
    """(checkpoint, module, raw observations) of a short run of each algorithm."""
    root = tmp_path_factory.mktemp(request.param.__name__)
    L.seed_everything(0)
    dm = OfflineRLDataModule(max_transitions=2000, batch_size=32, steps_per_epoch=5)
    model = request.param(hidden_dims=[32, 32])
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = root / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    obs = np.concatenate(
        [dm.transitions.observations[:40].numpy(), rng.normal(scale=3.0, size=(9, dm.obs_dim)).astype(np.float32)]
    )
    model.eval()
    return ckpt, model, obs


def _expected(model, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.act(torch.as_tensor(obs)).numpy()


# runs in a fresh interpreter where importing c4_lightning fails: the file must stand alone
_STANDALONE = textwrap.dedent("""
    import sys, json
    import numpy as np
    sys.modules["c4_lightning"] = None  # any import of c4_lightning now raises ImportError
    fmt, path, obs_path, out_path = sys.argv[1:]
    obs = np.load(obs_path)
    if fmt == "torchscript":
        import torch
        policy = torch.jit.load(path)
        act = policy(torch.as_tensor(obs)).detach().numpy()
        one = policy(torch.as_tensor(obs[:1])).detach().numpy()
    else:
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        act = session.run(None, {"obs": obs})[0]
        one = session.run(None, {"obs": obs[:1]})[0]
    np.save(out_path, act)
    assert np.allclose(one, act[:1], atol=1e-5)
    print("c4_lightning loaded:", any(k.startswith("c4_lightning.") for k in sys.modules))
""")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_policy_runs_without_the_package_and_acts_like_the_module(trained, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    ckpt, model, obs = trained
    out = tmp_path / ("policy.pt" if fmt == "torchscript" else "policy.onnx")
    assert main(["--ckpt", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    np.save(tmp_path / "obs.npy", obs)
    script = tmp_path / "run_policy.py"
    script.write_text(_STANDALONE)
    proc = subprocess.run(
        [sys.executable, str(script), fmt, str(out), str(tmp_path / "obs.npy"), str(tmp_path / "act.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "c4_lightning loaded: False" in proc.stdout
    np.testing.assert_allclose(np.load(tmp_path / "act.npy"), _expected(model, obs), rtol=0, atol=1e-5)


def test_export_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "p.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint") and "does not exist" in err[0]
    with pytest.raises(ValueError, match="is not one of: torchscript, onnx"):
        export_policy(tmp_path / "x.ckpt", tmp_path / "p", "tflite")
