"""A crafted checkpoint never runs code: ``load_policy``, ``c4-evaluate`` and ``train.py fit --ckpt_path`` all
load with PyTorch's restricted unpickler and refuse such a file in one line. The payload is harmless: it would
write a marker file, and the tests assert the file never appears."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from c4_lightning import load_policy
from c4_lightning.evaluate import main as evaluate_main
from c4_lightning.training import UnsafeCheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``pathlib.Path(marker).touch()``: what a malicious file would do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def crafted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "c4_lightning": {"algo": "TD3BC"}, "evil": _Payload(marker)}, ckpt)
    # sanity: the file really runs the payload when loaded unsafely (so the tests below can fail)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return ckpt, marker


def test_load_checkpoint_refuses_crafted_file(tmp_path):
    ckpt, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load checkpoint.*Unsupported global") as err:
        load_checkpoint(ckpt)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_load_policy_refuses_crafted_file(tmp_path):
    ckpt, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="refusing to load checkpoint"):
        load_policy(ckpt)
    assert not marker.exists()


def test_evaluate_refuses_crafted_file_in_one_line(tmp_path, capsys):
    ckpt, marker = crafted_checkpoint(tmp_path)
    assert evaluate_main(["--ckpt", str(ckpt), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refusing to load checkpoint") and "\n" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", None], ids=["empty", "text", "folder"])
def test_load_checkpoint_bad_files_are_value_errors(tmp_path, content):
    path = tmp_path / "x.ckpt"
    if content is None:
        path.mkdir()
        with pytest.raises(FileNotFoundError, match="is a folder"):
            load_checkpoint(path)
        return
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(path)


def test_resume_from_crafted_checkpoint_refused(tmp_path):
    ckpt, marker = crafted_checkpoint(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "fit",
            "--config",
            str(REPO / "configs" / "td3bc.yaml"),
            "--trainer.max_steps",
            "3",
            "--data.steps_per_epoch",
            "3",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--ckpt_path",
            str(ckpt),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert not marker.exists(), "the checkpoint's payload ran during resume"
    assert "refusing to load checkpoint" in proc.stderr, proc.stderr[-2000:]
