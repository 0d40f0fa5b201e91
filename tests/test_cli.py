"""The command line: configs choose the algorithm, every option overrides, ``--print_config`` round-trips,
bad values give one-line errors naming the option, and a run logs to TensorBoard with a useful progress bar.

Command-line behaviour that depends on the process (exit codes, what reaches stderr) is checked in
subprocesses running ``train.py`` exactly as a user would; parsing checks run in-process (fast).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.cli import C4LightningCLI, main, one_line_error
from c4_lightning.data.minari import locate_dataset

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"
CONFIGS = {p.stem: p for p in sorted((REPO / "configs").glob("*.yaml"))}
DATA_CONFIGS = sorted((REPO / "configs" / "data").glob("*.yaml"))
EVAL_ONE_EPISODE = json.dumps([{"class_path": "c4_lightning.evaluation.EvalCallback", "init_args": {"episodes": 1}}])


def tiny(root: Path, steps: int = 3, epochs: int = 1) -> list[str]:
    """Overrides that make any config a few-second CPU run."""
    return [
        "--model.init_args.hidden_dims",
        "[16,16]",
        "--data.batch_size",
        "32",
        "--data.steps_per_epoch",
        str(steps),
        "--trainer.max_epochs",
        str(epochs),
        "--model.probe_size",
        "256",
        "--model.c4.pca_dim",
        "4",
        "--model.c4.fit_subsample",
        "2000",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.callbacks",
        EVAL_ONE_EPISODE,
        "--trainer.default_root_dir",
        str(root),
    ]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def print_config(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        C4LightningCLI(args=["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- configs


def test_configs_choose_the_algorithm_and_default_to_an_embedded_dataset(capsys):
    assert set(CONFIGS) >= {"td3bc", "td3bc_c4", "cql", "cql_c4", "iql", "iql_c4"}
    for name, path in CONFIGS.items():
        cfg = yaml.safe_load(print_config(["--config", str(path)], capsys))
        expected = f"c4_lightning.algos.{ {'cql': 'CQL', 'iql': 'IQL'}.get(name[:3], 'TD3BC') }"
        assert cfg["model"]["class_path"] == expected, name
        assert cfg["model"]["init_args"]["c4"]["enabled"] is ("_c4" in name), name
        assert locate_dataset(cfg["data"]["dataset_id"]) is not None, name
        assert cfg["trainer"]["logger"] is True  # Lightning's default logger: TensorBoard
        assert cfg["trainer"]["use_distributed_sampler"] is False  # the C4 sampler is distribution-aware
        assert "optimizer" not in cfg  # manual optimisation: no auto-configured optimiser options


def test_default_precision_follows_the_cpu_and_a_config_or_option_wins(capsys, monkeypatch):
    """bf16-mixed where the CPU computes bf16 natively (and no GPU is visible), else 32-true; td3bc.yaml leaves the
    precision to that default, the other configs pin 32-true, --trainer.precision overrides both."""
    import c4_lightning.cli as cli
    import c4_lightning.training.precision as precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(precision, "bf16_native_cpu", lambda native=native: native)
        assert precision.default_precision() == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.default_precision() == "32-true"  # parity was measured on a CPU only
    monkeypatch.setattr(cli, "default_precision", lambda: "bf16-mixed")

    def trainer_precision(*args: str) -> str:
        return yaml.safe_load(print_config(list(args), capsys))["trainer"]["precision"]

    assert trainer_precision("--config", str(CONFIGS["td3bc"])) == "bf16-mixed"
    assert trainer_precision("--config", str(CONFIGS["td3bc"]), "--trainer.precision", "32-true") == "32-true"
    for name in ("td3bc_c4", "cql", "cql_c4", "iql", "iql_c4"):
        assert trainer_precision("--config", str(CONFIGS[name])) == "32-true", name
    assert trainer_precision("--config", str(CONFIGS["cql"]), "--trainer.precision", "bf16-mixed") == "bf16-mixed"


@pytest.mark.parametrize("name", ["td3bc_c4", "cql"])
def test_print_config_is_complete_and_round_trips(name, tmp_path, capsys):
    overrides = [
        "--data.dataset_id",
        "hopper/medium",
        "--data.max_transitions",
        "5000",
        "--model.c4.penalty_weight",
        "0.7",
        "--model.c4.n_clusters",
        "4",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.max_epochs",
        "7",
    ]
    first = print_config(["--config", str(CONFIGS[name]), *overrides], capsys)
    cfg = yaml.safe_load(first)
    model = cfg["model"]["init_args"]
    assert model["c4"]["penalty_weight"] == 0.7 and model["c4"]["n_clusters"] == 4
    assert cfg["data"]["dataset_id"] == "hopper/medium" and cfg["data"]["max_transitions"] == 5000
    assert cfg["trainer"]["precision"] == "bf16-mixed" and str(cfg["trainer"]["devices"]) == "1"
    # complete: every constructor argument of the algorithm, the data and the C4 group is written out
    algo = CQL if name.startswith("cql") else TD3BC
    import inspect

    from c4_lightning.algos import OfflineRLModule

    # the algorithm's own arguments and the shared ones it passes on through **kwargs
    own, shared = inspect.signature(algo.__init__).parameters, inspect.signature(OfflineRLModule.__init__).parameters
    expected = (set(own) | set(shared)) - {"self", "kwargs", "log_every_n_steps"}
    assert expected <= set(model), expected - set(model)
    assert {"enabled", "penalty", "penalty_weight", "n_clusters", "refit_every_n_epochs", "feature"} <= set(model["c4"])
    assert {"batch_size", "steps_per_epoch", "subsample_seed", "sampler_seed"} <= set(cfg["data"])
    saved = tmp_path / "printed.yaml"
    saved.write_text(first)
    second = print_config(["--config", str(saved)], capsys)
    assert second == first


def test_override_spellings_are_equivalent(capsys):
    base = ["--config", str(CONFIGS["td3bc_c4"])]
    short = yaml.safe_load(print_config(base + ["--model.c4.penalty_weight", "0.35"], capsys))
    long = yaml.safe_load(print_config(base + ["--model.init_args.c4.penalty_weight", "0.35"], capsys))
    assert short == long
    assert short["model"]["init_args"]["c4"]["penalty_weight"] == 0.35
    # the paper's name, through the command-line entry point
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, "--model.c4.lambda", "0.35", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out) == short
    # switching the algorithm keeps the shared options
    cql = yaml.safe_load(print_config(base + ["--model", "c4_lightning.algos.CQL"], capsys))
    assert cql["model"]["class_path"] == "c4_lightning.algos.CQL"
    assert cql["model"]["init_args"]["c4"]["enabled"] is True


def test_trainer_log_interval_drives_the_module(capsys):
    cfg = yaml.safe_load(print_config(["--config", str(CONFIGS["td3bc"]), "--trainer.log_every_n_steps", "7"], capsys))
    assert cfg["trainer"]["log_every_n_steps"] == 7
    assert "log_every_n_steps" not in cfg["model"]["init_args"]  # linked: one knob


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.stem)
def test_data_configs_name_embedded_datasets(path, capsys):
    cfg = yaml.safe_load(print_config(["--config", str(CONFIGS["td3bc_c4"]), "--data", str(path)], capsys))
    data = cfg["data"]
    assert locate_dataset(data["dataset_id"]) is not None, data["dataset_id"]
    if path.stem.endswith("_10k"):
        assert data["max_transitions"] == 10000 or data["dataset_id"].endswith("-10k")


def test_data_configs_cover_every_embedded_dataset():
    ids = {yaml.safe_load(p.read_text())["dataset_id"] for p in DATA_CONFIGS}
    assert ids >= {
        "hopper/random",
        "hopper/medium",
        "hopper/medium-replay",
        "hopper/expert",
        "hopper/medium-expert",
        "hopper/random-medium-expert-10k",
    }
    small = [yaml.safe_load(p.read_text()) for p in DATA_CONFIGS]
    assert any(c["dataset_id"] == "hopper/medium-replay" and c.get("max_transitions") == 10000 for c in small)


def test_medium_replay_10k_config_loads_exactly_10k(tmp_path):
    from c4_lightning.data.datamodule import OfflineRLDataModule

    cfg = yaml.safe_load((REPO / "configs" / "data" / "hopper_medium_replay_10k.yaml").read_text())
    dm = OfflineRLDataModule(**cfg, batch_size=32)
    dm.setup("fit")
    assert dm.num_transitions == 10000


# ---------------------------------------------------------------------------------------------- errors


# The bad-option cases run as real processes (exit code, stdout and stderr as file descriptors, the entry point
# reading sys.argv exactly as ``python train.py ...``), forked from one driver interpreter so the ~4 s
# torch/Lightning import is paid once, not per case.
_FORK_DRIVER = r"""
import json, os, sys, traceback
from c4_lightning.cli import main
cases, out_dir = json.loads(sys.argv[1]), sys.argv[2]
results = []
for i, args in enumerate(cases):
    out, err = os.path.join(out_dir, f"{i}.out"), os.path.join(out_dir, f"{i}.err")
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.argv = ["train.py", *args]
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append({"code": os.waitstatus_to_exitcode(status), "stdout": open(out).read(), "stderr": open(err).read()})
print(json.dumps(results))
"""


def run_main_cases(cases: list[list[str]], cwd: Path, timeout: int = 300) -> list[dict]:
    """Run ``train.py <args>`` for each case in its own process; returns exit code, stdout and stderr of each."""
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_DRIVER, json.dumps(cases), str(cwd)],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


BAD_OPTIONS = [  # (option, value, the name the error must contain)
    ("--model.c4.penalty_weight", "-1", "model.c4.penalty_weight"),
    ("--model.c4.n_clusters", "0", "model.c4.n_clusters"),
    ("--model.c4.penalty", "cross_covv", "model.c4.penalty"),
    ("--data.batch_size", "20000", "data.batch_size"),  # the default dataset has 10,000 transitions
    ("--model.init_args.c4.penalty_weight", "-0.5", "model.c4.penalty_weight"),
    ("--model.c4.penalty_wieght", "0.5", "model.c4.penalty_wieght"),
    ("--model.init_args.hidden_dims", "[256,0]", "model.hidden_dims"),
    ("--model.c4.refit_every_n_updates", "-1", "model.c4.refit_every_n_updates"),
]


def test_bad_options_exit_with_one_line_naming_them(tmp_path):
    roots = [tmp_path / f"runs{i}" for i in range(len(BAD_OPTIONS))]
    cases = [
        ["fit", "--config", str(CONFIGS["td3bc_c4"]), *tiny(root), f"{option}={value}"]
        for root, (option, value, _) in zip(roots, BAD_OPTIONS)
    ]
    # a good run through the same driver: proves the harness itself does not fail every case
    cases.append(
        [
            "fit",
            "--config",
            str(CONFIGS["td3bc"]),
            *tiny(tmp_path / "good", steps=1),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    results = run_main_cases(cases, tmp_path)
    for (option, value, name), root, res in zip(BAD_OPTIONS, roots, results):
        where = f"{option}={value}: rc={res['code']} stderr={res['stderr']!r}"
        assert res["code"] == 2, where
        lines = [ln for ln in res["stderr"].splitlines() if ln.strip()]
        assert len(lines) == 1, where
        assert lines[0].startswith("error: ") and name in lines[0], where
        assert "Traceback" not in res["stderr"] + res["stdout"], where
        assert not list(root.glob("lightning_logs/version_*")), f"{where}: a failed run left an empty run folder"
    good = results[-1]
    assert good["code"] == 0, good["stderr"][-2000:]
    assert "last checkpoint:" in good["stdout"]


def test_one_line_error_summaries():
    nested = (
        "Does not validate against any of the Union subtypes\nSubtypes: [A, B]\nErrors:\n"
        "  - model.c4.n_clusters=0 must be >= 1\n  - Expected a <class 'NoneType'>\nGiven value: Namespace(...)"
    )
    assert one_line_error(nested) == "model.c4.n_clusters=0 must be >= 1"
    literal = (
        'Parser key "trainer.precision":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [typing.Literal[64, 32], typing.Literal['bf16-mixed', '32-true'], <class 'NoneType'>]\n"
        "  Errors:\n    - Expected a <class 'int'>\n  Given value type: <class 'str'>\n  Given value: foo"
    )
    assert one_line_error(literal) == "--trainer.precision: 'foo' is not one of: 64, 32, bf16-mixed, 32-true"
    assert (
        one_line_error("Parser key \"data.batch_size\": (Expected a <class 'int'>. Got value: abc)")
        == "--data.batch_size: expected int, got 'abc'"
    )


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("name", ["td3bc", "td3bc_c4", "cql", "cql_c4"])
def test_each_config_trains(name, tmp_path):
    cli = C4LightningCLI(
        args=["fit", "--config", str(CONFIGS[name]), *tiny(tmp_path), "--trainer.enable_progress_bar", "false"]
    )
    assert isinstance(cli.model, CQL if name.startswith("cql") else TD3BC)
    assert cli.model.c4.enabled is name.endswith("_c4")
    assert cli.trainer.global_step == 3
    assert cli.datamodule.sampler.partitioned is name.endswith("_c4")
    assert torch.isfinite(cli.trainer.callback_metrics["c4/cross_cov_fro"])
    assert Path(cli.trainer.checkpoint_callback.last_model_path).is_file()


def _tensorboard(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """Scalars (tag -> [(step, value)]) and plugin names found in a run's event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    plugins: set[str] = set()
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                plugins.add(plugin)
                if plugin == "scalars":
                    scalars.setdefault(value.tag, []).append(
                        (event.step, float(tensor_util.make_ndarray(value.tensor)))
                    )
    return scalars, plugins


def test_fit_from_the_command_line_logs_everything(tmp_path):
    root = tmp_path / "runs"
    proc = run_train(
        [
            "fit",
            "--config",
            str(CONFIGS["td3bc_c4"]),
            *tiny(root, steps=6, epochs=2),
            "--model.c4.penalty_weight",
            "0.3",
            "--data.max_transitions",
            "5000",
            "--trainer.log_every_n_steps",
            "2",
            "--trainer.devices",
            "1",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # progress bar: gradient updates, the latest losses and the latest normalised score
    bar = proc.stdout + proc.stderr
    assert re.search(r"step=12\b", bar), bar[-2000:]
    assert "critic_loss=" in bar and "actor_loss=" in bar and "score=" in bar
    assert "v_num" not in bar
    log_dir = root / "lightning_logs" / "version_0"
    assert f"TensorBoard logs: {log_dir}" in proc.stdout
    # a quiet console: the final score once, where training stopped on a line of its own (not inside the bar)
    assert proc.stdout.count("final normalized score") == 1 and "final score (mean" not in proc.stdout
    assert "`Trainer.fit` stopped" not in proc.stdout
    assert any(line.startswith("training finished after ") for line in proc.stdout.splitlines())
    # hyper-parameters of the model (with the C4 group) and of the data are recorded
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["c4"]["penalty_weight"] == 0.3 and hparams["c4"]["enabled"] is True
    assert hparams["max_transitions"] == 5000 and hparams["dataset_id"] == "hopper/random-medium-expert-10k"
    assert hparams["log_every_n_steps"] == 2
    assert hparams["algorithm"] == "TD3BC" and hparams["seed"] == 0  # what the HParams tab needs to tell runs apart
    scalars, plugins = _tensorboard(log_dir)
    assert "hparams" in plugins
    for tag in (
        "train/critic_loss",
        "train/actor_loss",
        "train/q_mean",
        "c4/penalty",
        "c4/cross_cov_fro",
        "eval/normalized_score",
        "eval/return",
        "c4/cluster_size_0",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    assert [s for s, _ in scalars["train/critic_loss"]] == [1, 3, 5, 7, 9, 11]
    assert len(scalars["eval/normalized_score"]) == 2
    # the saved config reproduces the run, and the checkpoint is where the run says
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["c4"]["penalty_weight"] == 0.3
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    assert "last checkpoint:" in proc.stdout and "final normalized score" in proc.stdout


def test_progress_bar_redraws_every_ten_updates_by_default():
    from c4_lightning.cli import C4ProgressBar

    assert C4ProgressBar().refresh_rate == 10
    assert C4ProgressBar(refresh_rate=1).refresh_rate == 1


def test_every_listed_subcommand_works_on_the_embedded_dataset(tmp_path):
    """No advertised command fails: each subcommand ``train.py --help`` lists runs a tiny budget successfully."""
    help_text = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    listed = re.search(r"\{([a-z,]+)\}", help_text).group(1).split(",")
    assert listed == ["fit"]
    for sub in listed:
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "train.py"),
                sub,
                "--config",
                str(REPO / "configs" / "td3bc_c4.yaml"),
                "--trainer.max_steps",
                "4",
                "--data.steps_per_epoch",
                "4",
                "--model.c4.pca_dim",
                "4",
                "--trainer.callbacks",
                "[]",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path / sub),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, f"{sub}: {proc.stderr[-2000:]}"


@pytest.mark.parametrize("devices", ["99", "0"])
def test_cpu_devices_beyond_the_cores_are_refused_before_any_process_starts(tmp_path, capsys, devices):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs" / "td3bc.yaml"),
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                devices,
                "--trainer.strategy",
                "ddp",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "trainer.devices" in err[0] and ("cores" in err[0] or ">= 1" in err[0]), err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_default_root_dir_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS["td3bc"]), "--trainer.default_root_dir", str(afile)])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "is a file, not a folder" in err[0]
    assert afile.read_text() == "x"


def _tiny_fit(tmp_path, *extra):
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "fit",
            "--config",
            str(REPO / "configs" / "td3bc.yaml"),
            "--trainer.max_epochs",
            "2",
            "--data.steps_per_epoch",
            "3",
            "--data.batch_size",
            "32",
            "--model.init_args.hidden_dims",
            "[16,16]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_eval_options_set_the_one_evaluator_and_summary_keeps_best_and_final(tmp_path):
    proc = _tiny_fit(tmp_path, "--eval.episodes", "2", "--eval.every_n_epochs", "1", "--eval.final_window", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    evals = summary["evaluations"]
    assert [e["epoch"] for e in evals] == [0, 1] and all(e["episodes"] == 2 for e in evals)
    assert all(e["episode_length"] >= 1 and e["return_std"] >= 0 for e in evals)
    best = max(evals, key=lambda e: e["normalized_score"])
    assert summary["best_normalized_score"] == best["normalized_score"] and summary["best_step"] == best["step"]
    assert summary["final_normalized_score"] == pytest.approx(np.mean([e["normalized_score"] for e in evals]))
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert saved["eval"]["episodes"] == 2  # the run's config reproduces it


def test_eval_options_add_an_evaluator_when_the_config_has_none(tmp_path):
    proc = _tiny_fit(tmp_path, "--trainer.callbacks", "[]", "--eval.episodes", "1", "--eval.every_n_epochs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = json.loads(next(tmp_path.rglob("summary.json")).read_text())["evaluations"]
    assert [(e["epoch"], e["episodes"]) for e in evals] == [(1, 1)]


def test_a_second_evaluator_is_refused_in_one_line(tmp_path):
    proc = _tiny_fit(tmp_path, "--trainer.callbacks+=c4_lightning.evaluation.EvalCallback")
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "2 EvalCallbacks are configured" in errors[0] and "--eval.episodes" in errors[0]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_csv_logger_gets_metrics_cluster_images_and_the_real_log_location(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "fit",
            "--config",
            str(REPO / "configs" / "td3bc_c4.yaml"),
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "1",
            "--data.steps_per_epoch",
            "4",
            "--data.batch_size",
            "32",
            "--model.init_args.hidden_dims",
            "[16,16]",
            "--model.c4.pca_dim",
            "4",
            "--model.c4.refit_every_n_updates",
            "2",
            "--trainer.log_every_n_steps",
            "2",
            "--eval.episodes",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = next(tmp_path.rglob("metrics.csv"))
    assert f"CSV logs: {metrics}" in proc.stdout and "TensorBoard" not in proc.stdout
    header = metrics.read_text().splitlines()[0]
    assert "train/critic_loss" in header and "c4/cluster_size_0" in header and "eval/normalized_score" in header
    images = sorted(p.name for p in (metrics.parent / "images").glob("*.png"))
    assert images == ["c4_clusters_step0.png", "c4_clusters_step2.png"]  # the initial partition and one per refit
