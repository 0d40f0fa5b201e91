"""Helpers shared by the benchmark scripts: thread control, data loading, timed Lightning fits,
timed plain-PyTorch loops, refit timing, machine description and plain-text tables.

Everything here measures; nothing asserts a speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

DEFAULT_DATASET = "hopper/random-medium-expert-10k"
BATCH_SIZE = 256
STEPS_PER_EPOCH = 1000  # the package default (OfflineRLDataModule.steps_per_epoch)


# ---------------------------------------------------------------------------------------------- clock
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def set_clock(name: str) -> None:
    """``wall`` (default: what a user waits) or ``cpu`` (this process's CPU time: far less sensitive to other
    processes on a busy machine; with T threads it counts the CPU time of all T)."""
    global _clock
    _clock = _CLOCKS[name]


def now() -> float:
    return _clock()


# ---------------------------------------------------------------------------------------------- environment
def set_threads(threads: int) -> None:
    """Same intra-op thread count for every contender (torch, and OpenMP/MKL/BLAS via env for subprocesses)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # numpy/sklearn BLAS in this process
    except Exception:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


def quiet() -> None:
    """Silence Lightning's info lines and the warnings a CPU benchmark triggers on purpose."""
    warnings.filterwarnings("ignore")
    import lightning  # noqa: F401  (it sets its loggers to INFO on import: import first, then lower them)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def machine_info(threads: int, device: str = "cpu") -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- data
def make_datamodule(
    dataset_id: str = DEFAULT_DATASET,
    max_transitions: int | None = None,
    steps_per_epoch: int = STEPS_PER_EPOCH,
    batch_size: int = BATCH_SIZE,
):
    from c4_lightning.data.datamodule import OfflineRLDataModule

    dm = OfflineRLDataModule(
        dataset_id=dataset_id, max_transitions=max_transitions, batch_size=batch_size, steps_per_epoch=steps_per_epoch
    )
    dm.setup("fit")  # loads, normalises and packs once (CPU); the Trainer moves it to its device
    return dm


# ---------------------------------------------------------------------------------------------- timing
def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class StepTimer:
    """Lightning callback: wall-clock stamp at the end of every training batch (after the update)."""

    def __init__(self, threads: int, device: str):
        from lightning.pytorch import Callback

        timer = self

        class _CB(Callback):
            def on_train_start(self, trainer, pl_module):
                if torch.get_num_threads() != timer.threads:  # Lightning must not change it behind our back
                    timer.thread_note = f"Trainer changed torch threads to {torch.get_num_threads()}; reset"
                    torch.set_num_threads(timer.threads)
                sync(timer.device)
                timer.start = now()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if timer.device.startswith("cuda"):
                    torch.cuda.synchronize()
                timer.stamps.append(now())

        self.threads, self.device = threads, device
        self.stamps: list[float] = []
        self.start = None
        self.thread_note = None
        self.callback = _CB()

    def rate(self, warmup: int, steps: int) -> float:
        """Updates per second over batches ``warmup+1 .. warmup+steps`` (the first ``warmup`` excluded)."""
        if len(self.stamps) < warmup + steps:
            raise RuntimeError(f"only {len(self.stamps)} batches ran, expected {warmup + steps}")
        t0 = self.stamps[warmup - 1] if warmup > 0 else self.start
        return steps / (self.stamps[warmup + steps - 1] - t0)


def c4_settings(spec: str) -> dict:
    """``C4Config`` fields from a contender name: a penalty, optionally with options, ``name[+field=value...]``
    (e.g. ``cross_cov+penalty_rows=128``); values are read as YAML scalars."""
    import yaml

    name, *options = spec.split("+")
    settings = {"penalty": name}
    for option in options:
        field, sep, value = option.partition("=")
        if not sep or not field:
            raise ValueError(f"C4 contender {spec!r}: option {option!r} must read field=value")
        if field.startswith("refit_"):
            raise ValueError(
                f"C4 contender {spec!r}: {field} is not a contender option (timed fits never refit; one refit is "
                "timed separately and amortised over the default interval)"
            )
        settings[field] = yaml.safe_load(value)
    return settings


def make_module(algo: str, c4: bool | str, refit_every_n_epochs: int = 0, **model_kwargs):
    """Our LightningModule with the package defaults; C4 (lambda 0.1, K 3) off (``False``), on with the default
    ``cross_cov`` penalty (``True``) or on with the penalty (and options) named by ``c4`` (:func:`c4_settings`).

    ``refit_every_n_epochs=0``: the timed fits never refit (refits are timed and amortised separately).
    ``model_kwargs`` go to the module (e.g. ``compile=True``)."""
    from c4_lightning.algos import CQL, TD3BC
    from c4_lightning.c4.config import C4Config

    cls = {"td3bc": TD3BC, "cql": CQL}[algo]
    settings = c4_settings(c4) if isinstance(c4, str) else {"penalty": "cross_cov"}
    return cls(c4=C4Config(enabled=bool(c4), refit_every_n_epochs=refit_every_n_epochs, **settings), **model_kwargs)


def make_trainer(mode: str, max_steps: int, callbacks: list, root: str, device: str, precision: str = "32-true"):
    import lightning as L

    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    common = dict(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
        precision=precision,
    )
    if mode == "lean":
        return L.Trainer(
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=callbacks,
            **common,
        )
    if mode == "default":
        # what `train.py fit --config configs/...` runs: TensorBoard every 50 steps, the CLI's progress bar, model
        # summary, the configs' ModelCheckpoint(save_last, every epoch); no evaluation callback.
        from lightning.pytorch.callbacks import ModelCheckpoint

        from c4_lightning.cli import C4ProgressBar

        return L.Trainer(
            callbacks=[*callbacks, C4ProgressBar(), ModelCheckpoint(save_last=True, every_n_epochs=1)],
            log_every_n_steps=50,
            **common,
        )
    raise ValueError(f"unknown Trainer mode {mode!r}; use lean or default")


def time_lightning(
    algo: str,
    c4: bool | str,
    dm_factory: Callable,
    warmup: int,
    steps: int,
    threads: int,
    mode: str = "lean",
    device: str = "cpu",
    seed: int = 0,
    return_model: bool = False,
    precision: str = "32-true",
    callbacks: list | None = None,
    **model_kwargs,
) -> dict:
    """One fit of ``warmup + steps`` updates through the real Trainer; returns updates/s of the timed part
    (and, with ``return_model``, the trained module, its datamodule and the C4 partition labels, if any).
    ``callbacks``: more Trainer callbacks (e.g. a profiler window)."""
    import lightning as L

    L.seed_everything(seed, verbose=False)
    torch.set_num_threads(threads)
    dm = dm_factory()
    model = make_module(algo, c4, **model_kwargs)
    timer = StepTimer(threads, device)
    with tempfile.TemporaryDirectory(prefix="c4bench_") as root:
        trainer = make_trainer(mode, warmup + steps, [timer.callback, *(callbacks or [])], root, device, precision)
        sink = io.StringIO()
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):  # progress bar, summaries
            trainer.fit(model, datamodule=dm)
    out = {"ups": timer.rate(warmup, steps), "steps": steps, "warmup": warmup}
    if return_model:
        from c4_lightning.c4.callback import ClusterRefitCallback

        refit_cb = next((c for c in trainer.callbacks if isinstance(c, ClusterRefitCallback)), None)
        out.update(model=model, datamodule=dm, labels=None if refit_cb is None else refit_cb.labels)
    if timer.thread_note:
        out["note"] = timer.thread_note
    return out


def plain_batches(packed: torch.Tensor, layout: dict, batch_size: int, seed: int):
    """Uniform batches gathered with one index_select from the same packed in-memory matrix the datamodule uses."""
    g = torch.Generator().manual_seed(seed)
    n = packed.shape[0]
    obs_s, act_s, nobs_s = layout["observations"], layout["actions"], layout["next_observations"]
    rew_c, term_c = layout["rewards"].start, layout["terminals"].start
    while True:
        idx = torch.randint(n, (batch_size,), generator=g).to(packed.device, non_blocking=True)
        rows = packed.index_select(0, idx)
        yield rows[:, obs_s], rows[:, act_s], rows[:, rew_c], rows[:, nobs_s], rows[:, term_c]


def time_plain(
    algo: str,
    dm,
    warmup: int,
    steps: int,
    threads: int,
    device: str = "cpu",
    seed: int = 0,
    adam_kwargs: dict | None = None,
    precision: str = "32-true",
    hidden: tuple[int, ...] | None = None,
) -> dict:
    """The plain PyTorch reference loop (benchmarks/plain_loop.py), same networks, batch 256, same packed data;
    ``adam_kwargs`` go to its ``torch.optim.Adam`` (default: PyTorch's default, the for-loop Adam on a CPU).
    ``precision="bf16-mixed"`` runs each update under ``torch.autocast(dtype=bfloat16)`` (what a user adds to a
    plain loop), ``"16-mixed"`` under float16 autocast (CUDA; no gradient scaler: a speed reference only).
    ``hidden``: the networks' hidden layer widths (default: the algorithm's)."""
    from plain_loop import PlainCQL, PlainTD3BC

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    sizes = {} if hidden is None else {"hidden": tuple(hidden)}
    agent = (PlainTD3BC if algo == "td3bc" else PlainCQL)(dm.obs_dim, dm.act_dim, adam_kwargs=adam_kwargs, **sizes)
    if device != "cpu":
        for name in ("actor", "critic", "actor_target", "critic_target"):
            if hasattr(agent, name):
                getattr(agent, name).to(device)
        for name in ("log_alpha", "log_alpha_prime"):
            if hasattr(agent, name):  # parameters are moved in place so the optimisers keep them
                getattr(agent, name).data = getattr(agent, name).data.to(device)
    packed = dm.packed.to(device)
    batches = plain_batches(packed, dm.layout, BATCH_SIZE, seed)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    amp = (lambda: torch.autocast(device.split(":")[0], dtype=dtype)) if dtype else contextlib.nullcontext
    for _ in range(warmup):
        with amp():
            agent.update(*next(batches))
    sync(device)
    t0 = now()
    for _ in range(steps):
        with amp():
            agent.update(*next(batches))
    sync(device)
    return {"ups": steps / (now() - t0), "steps": steps, "warmup": warmup}


# ---------------------------------------------------------------------------------------------- refit
class _TimedRows:
    """A row source wrapper that adds up the time spent computing critic features."""

    def __init__(self, source):
        self.source, self.shape, self.block_rows, self.seconds = source, source.shape, source.block_rows, 0.0

    def rows(self, idx):
        t0 = now()
        out = self.source.rows(idx)
        self.seconds += now() - t0
        return out


def time_refit(
    critic, critic_target, obs, act, next_obs, next_act, previous_labels, cfg, seed: int, scatter: bool, device: str
) -> dict:
    """One refit as ``ClusterRefitCallback.partition`` runs it, split into phases (seconds):

    ``fit_partition`` on a ``CriticFeatureRows`` source (the features are computed inside the fit: the fit
    subsample once, then every other row once, block by block, never the whole ``[N, 2H]``).
    ``features``: time inside the source (critic forward passes, online + target, no grad, all N rows);
    ``predict``: time inside ``ClusterModel.predict`` (projection + GMM labels of all N rows, features excluded);
    ``fit``: the rest (subsample standardise, PCA, warm start, EM);
    ``scatter``: the callback's TensorBoard image (``cluster_scatter_image``: 5,000 points computed + drawn).
    """
    from c4_lightning.c4.callback import cluster_scatter_image
    from c4_lightning.c4.clustering import ClusterModel, fit_partition
    from c4_lightning.c4.features import CriticFeatureRows

    predict_seconds = [0.0]
    real_predict = ClusterModel.predict

    def timed_predict(self, *a, **kw):
        t = now()
        try:
            return real_predict(self, *a, **kw)
        finally:
            predict_seconds[0] += now() - t

    critic.eval(), critic_target.eval()
    sync(device)
    t0 = now()
    src = _TimedRows(CriticFeatureRows(critic, critic_target, obs, act, next_obs, next_act, kind=cfg.feature))
    ClusterModel.predict = timed_predict
    try:
        labels, model = fit_partition(
            src,
            n_clusters=cfg.n_clusters,
            pca_dim=cfg.pca_dim,
            fit_subsample=cfg.fit_subsample,
            seed=seed,
            previous_labels=previous_labels,
        )
    finally:
        ClusterModel.predict = real_predict
    total = now() - t0
    out = {
        "features": src.seconds,
        "predict": predict_seconds[0],
        "refit": total,
        "n": int(src.shape[0]),
        "feature_dim": int(src.shape[1]),
        "warm_started": bool(model.warm_started),
        "gmm_iters": int(model.n_iter),
    }
    out["fit"] = total - out["features"] - out["predict"]
    if scatter:
        t4 = now()
        cluster_scatter_image(
            src.source, model, labels, np.zeros(len(labels), dtype=np.int64), ["data"], max_points=5000
        )
        out["scatter"] = now() - t4
    return out


# ---------------------------------------------------------------------------------------------- output
def format_table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def _fmt(c) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        if c != c:
            return "-"
        if abs(c) >= 100:
            return f"{c:.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.2f}"
    return str(c)


def write_json(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
