"""How one C4 refit scales with the dataset size, as a share of the training time between refits.

    python benchmarks/refit_scale.py                       # 10k (real Hopper mixture), 100k, 1M (synthetic)
    python benchmarks/refit_scale.py --quick               # 10k real + 20k/50k synthetic, short rate measurement
    python benchmarks/refit_scale.py --sizes 10000,1000000 --ups 60 --json benchmarks/results/refit_scale.json

One refit is what ``ClusterRefitCallback`` does at the C4 refit cadence, timed phase by phase:
critic features ``[phi(s,a), phi_bar(s',a')]`` on all N transitions (online + target critic, no grad, chunked),
then ``fit_partition``: standardise + PCA(32) + GMM(K=3, full covariance) on at most ``fit_subsample`` (50k)
rows, warm-started from the previous partition (its clusters' statistics on the fit subsample), and the
prediction of all N labels (float32 projection with the standardisation folded in, finite check included).
As in the callback, the features are a ``CriticFeatureRows`` source computed inside the fit (subsample once,
every other row once, block by block); the ``features`` column is the time spent in it. ``--scatter`` adds the
TensorBoard image exactly as the callback draws it (``cluster_scatter_image``: the 5,000 plotted rows only).

Data: the size equal to the embedded ``--real-dataset`` (10k transitions) uses it; every other size uses
*synthetic* Hopper-shaped transitions (obs 11, act 3: three Gaussian blobs, tanh-squashed actions, next state
= state + noise), which is all a refit's cost depends on. The critic is a freshly initialised TD3+BC-sized twin
critic (2x256; ``--algo cql`` for 3x256): the cost does not depend on its weights, only the GMM's EM iteration
count does (reported).

Training time between refits = the default cadence's updates at that N (``C4Config().refit_interval_updates`` with
the dataset size and batch 256: ``max(10000, ceil(5 N / 256))``, i.e. 10,000 at 10k and 100k, 19,532 at 1M)
at the TD3BC+C4 update rate: ``--ups``, else ``--throughput-json`` (median ``td3bc/lean+c4`` of throughput.py), else
measured here with a short lean Lightning run on the 10k data (the update rate does not depend on N).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_utils as bu  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Time one C4 refit at 10k/100k/1M transitions", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (10k real, 20k, 50k synthetic), short rate run")
    ap.add_argument("--sizes", default=None, help="comma list of transition counts (default 10000,100000,1000000)")
    ap.add_argument("--repeats", type=int, default=1, help="timed refits per size, median reported (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    ap.add_argument("--algo", default="td3bc", choices=["td3bc", "cql"], help="critic size: td3bc 2x256, cql 3x256")
    ap.add_argument(
        "--real-dataset",
        default=bu.DEFAULT_DATASET,
        help="embedded dataset used for the size equal to its length ('' = synthetic only)",
    )
    ap.add_argument("--ups", type=float, default=None, help="TD3BC+C4 updates/s to use (skips the rate measurement)")
    ap.add_argument("--throughput-json", default=None, help="take the rate from throughput.py --json output")
    ap.add_argument(
        "--ups-steps", type=int, default=None, help="timed updates of the rate measurement (default 300, quick 40)"
    )
    ap.add_argument("--scatter", action="store_true", help="also time the TensorBoard scatter image of a refit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall (default) or cpu: process CPU time, robust on a machine shared with other jobs",
    )
    ap.add_argument("--json", default=None, help="write the measurements to this JSON file")
    args = ap.parse_args(argv)
    args.sizes = [
        int(float(s))
        for s in (args.sizes or ("10000,20000,50000" if args.quick else "10000,100000,1000000")).split(",")
        if s
    ]
    args.ups_steps = args.ups_steps or (40 if args.quick else 300)
    return args


def synthetic_hopper(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Normalised Hopper-shaped (obs 11, act 3) transitions from three Gaussian blobs (float32, CPU)."""
    rng = np.random.default_rng(seed)
    obs_dim, act_dim, k = 11, 3, 3
    centres = rng.normal(0, 1.5, (k, obs_dim))
    comp = rng.integers(0, k, n)
    obs = centres[comp] + rng.normal(0, 1.0, (n, obs_dim))
    w = rng.normal(0, 0.5, (obs_dim, act_dim))
    act = np.tanh(obs @ w + rng.normal(0, 0.3, (n, act_dim)))
    next_obs = obs + rng.normal(0, 0.1, (n, obs_dim))
    next_act = np.clip(act + rng.normal(0, 0.05, (n, act_dim)), -1, 1)
    mean, std = obs.mean(0), obs.std(0) + 1e-3
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return f((obs - mean) / std), f(act), f((next_obs - mean) / std), f(next_act)


def real_data(dataset_id: str):
    dm = bu.make_datamodule(dataset_id)
    return tuple(t.contiguous() for t in dm.features_input())


def measure_ups(args) -> tuple[float, str]:
    if args.ups:
        return args.ups, "given (--ups)"
    if args.throughput_json:
        data = json.loads(Path(args.throughput_json).read_text())
        key = f"{args.algo}/lean+c4"
        return float(data["median_ups"][key]), f"{key} from {args.throughput_json}"
    warm = max(2, args.ups_steps // 10)
    res = bu.time_lightning(
        args.algo,
        True,
        lambda: bu.make_datamodule(bu.DEFAULT_DATASET),
        warm,
        args.ups_steps,
        args.threads,
        "lean",
        bu.resolve_device(args.device),
    )
    return res["ups"], f"measured: Lightning lean {args.algo}+C4, {args.ups_steps} updates after {warm} warm-up"


def main(argv=None) -> dict:
    args = parse_args(argv)
    bu.quiet()
    bu.set_threads(args.threads)
    bu.set_clock(args.clock)
    device = bu.resolve_device(args.device)
    from c4_lightning.algos.networks import CriticEnsemble
    from c4_lightning.c4.clustering import fit_partition, raw_features
    from c4_lightning.c4.config import C4Config

    cfg = C4Config(enabled=True)
    interval = cfg.refit_interval_updates(bu.STEPS_PER_EPOCH)  # as configured; per N below with the pass floor
    info = bu.machine_info(args.threads, device)
    t_start = time.perf_counter()
    print(
        f"# refit_scale: {info['cpu']}, torch {info['torch']} ({args.threads} thread(s)), device {device}, "
        f"load avg {info.get('loadavg_1m', '?')}, {args.clock} clock",
        flush=True,
    )
    print(
        f"# C4 defaults: K={cfg.n_clusters}, pca_dim={cfg.pca_dim}, fit_subsample={cfg.fit_subsample}, "
        f"refit every max({interval}, 5 passes over the data) updates",
        flush=True,
    )
    ups, ups_note = measure_ups(args)
    print(
        f"# TD3BC+C4 rate: {ups:.1f} updates/s ({ups_note})",
        flush=True,
    )

    real_n, real = None, None
    if args.real_dataset:
        real = real_data(args.real_dataset)
        real_n = real[0].shape[0]
    hidden = (256, 256) if args.algo == "td3bc" else (256, 256, 256)
    rows, records = [], []
    for n in args.sizes:
        torch.manual_seed(args.seed)
        if real is not None and n == real_n:
            data, source = real, f"real ({args.real_dataset})"
        else:
            data, source = synthetic_hopper(n, args.seed), "synthetic Hopper-shaped"
        critic = CriticEnsemble(
            11 if source.startswith("synthetic") else data[0].shape[1],
            3 if source.startswith("synthetic") else data[1].shape[1],
            hidden,
            2,
        ).to(device)
        target = CriticEnsemble(critic.input_dim - data[1].shape[1], data[1].shape[1], hidden, 2).to(device)
        target.load_state_dict(critic.state_dict())
        t0 = time.perf_counter()
        prev, _ = fit_partition(
            raw_features(data[0], data[1]),
            n_clusters=cfg.n_clusters,
            pca_dim=cfg.pca_dim,
            fit_subsample=cfg.fit_subsample,
            seed=args.seed,
        )
        initial = time.perf_counter() - t0
        times = [
            bu.time_refit(
                critic,
                target,
                *data,
                previous_labels=prev,
                cfg=cfg,
                seed=args.seed + 1 + i,
                scatter=args.scatter and i == 0,
                device=device,
            )
            for i in range(args.repeats)
        ]
        rec = {
            k: bu.median([t[k] for t in times if k in t])
            for k in ("features", "fit", "predict", "refit", "scatter")
            if any(k in t for t in times)
        }
        rec.update(
            n=n,
            source=source,
            initial_partition=initial,
            gmm_iters=times[0]["gmm_iters"],
            warm_started=times[0]["warm_started"],
            feature_dim=times[0]["feature_dim"],
        )
        n_interval = cfg.refit_interval_updates(bu.STEPS_PER_EPOCH, n, bu.BATCH_SIZE)
        between = n_interval / ups
        rec["interval_updates"] = n_interval
        rec["training_s_between_refits"] = between
        rec["refit_fraction_pct"] = 100 * rec["refit"] / between
        rec["refit_fraction_incl_scatter_pct"] = 100 * (rec["refit"] + rec.get("scatter", 0.0)) / between
        # smallest refit interval (updates) that keeps one refit under 5 % of training
        rec["min_updates_for_5pct"] = int(math.floor(20 * rec["refit"] * ups)) + 1
        records.append(rec)
        rows.append(
            [
                f"{n:,}",
                source.split(" (")[0],
                rec["features"],
                rec["fit"],
                rec["predict"],
                rec["refit"],
                rec.get("scatter"),
                rec["gmm_iters"],
                n_interval,
                between,
                rec["refit_fraction_pct"],
                rec["min_updates_for_5pct"],
            ]
        )
        print(f"# N={n:,} done: refit {rec['refit']:.2f} s ({time.perf_counter() - t_start:.0f} s elapsed)", flush=True)
        del data, critic, target, times

    print()
    print(
        bu.format_table(
            [
                "N",
                "data",
                "features s",
                "fit s (std+PCA+GMM)",
                "predict s",
                "refit s",
                "scatter s (TB)",
                "EM iters",
                "updates between refits",
                "training s between refits",
                "refit % of training",
                "min updates between refits for < 5 %",
            ],
            rows,
            title=f"## One C4 refit vs the training time between refits (default cadence at each N, {ups:.1f} "
            f"updates/s, {args.threads} thread(s))",
        )
    )
    print("goal: refit % of training < 5 at 1M transitions at the default cadence")
    print(f"# total wall time {time.perf_counter() - t_start:.0f} s")
    out = {
        "machine": info,
        "args": vars(args),
        "ups": ups,
        "ups_note": ups_note,
        "interval_updates": interval,
        "results": records,
    }
    if args.json:
        bu.write_json(args.json, out)
        print(f"# wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
