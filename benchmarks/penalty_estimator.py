"""The C4 penalty on a sub-batch (``model.c4.penalty_rows``) against the exact batch penalty: bias, spread and
gradient agreement, and the cost per call, on a trained critic.

    python benchmarks/penalty_estimator.py \\
        --ckpt runs/sweeps/c4_evidence/baseline__mix10k__s0/logs/checkpoints/last.ckpt

For ``--batches`` single batches of 256 rows drawn uniformly from the dataset the checkpoint trained on, each
penalty is computed on all 256 rows (exact) and on the first m rows (m in ``--rows``). Reported per penalty and m:
mean value / exact mean value (bias), the coefficient of variation of the value over batches (spread; the exact
one's for reference), the mean cosine between the gradient of the m-row estimate and of the exact penalty w.r.t. the
critic's parameters, and the marginal CPU milliseconds C4 adds to an update: the target-feature pass for the penalty's
rows, the penalty and its backward to the features (the critic's own forward and backward are shared with the TD
loss and not counted). Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="a TD3BC checkpoint (its critic and dataset are used)")
    ap.add_argument("--penalties", default="cross_cov,weighted_cross_cov")
    ap.add_argument("--rows", default="32,64,128", help="sub-batch sizes to compare with the exact 256")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from c4_lightning.c4.config import C4Config
    from c4_lightning.c4.plugin import C4
    from c4_lightning.data.datamodule import OfflineRLDataModule
    from c4_lightning.policy import load_policy
    from c4_lightning.training import load_checkpoint

    module = load_policy(args.ckpt).module.train()
    data = load_checkpoint(args.ckpt)["datamodule_hyper_parameters"]
    dm = OfflineRLDataModule(dataset_id=data["dataset_id"], max_transitions=data.get("max_transitions"))
    dm.setup("fit")
    obs, act, next_obs, next_act = dm.features_input()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        idx = torch.randint(obs.shape[0], (256,), generator=g)
        batches.append(
            {
                "observations": obs[idx],
                "actions": act[idx],
                "next_observations": next_obs[idx],
                "next_actions": next_act[idx],
            }
        )
    params = list(module.critic.parameters())
    one = torch.ones(())
    rows = [int(r) for r in args.rows.split(",")] + [256]
    results = []
    for name in args.penalties.split(","):
        per_rows = {}
        for m in rows:
            c4 = C4(C4Config(enabled=True, penalty=name, penalty_weight=1.0, penalty_rows=m))
            values, grads, times = [], [], []
            off = C4(C4Config(enabled=False))
            for b in batches:
                _, feats = module.critic(b["observations"], b["actions"], return_features=True)
                feats = feats.detach().requires_grad_(True)  # the critic's own pass is shared with the TD loss
                t0 = time.thread_time()
                _, next_feats = c4.target_q(
                    module.critic_target, b["next_observations"], b["next_actions"], b["next_actions"]
                )
                value = c4.penalty(module, b, feats, next_feats, one, {})
                torch.autograd.grad(value, feats, allow_unused=True)
                t1 = time.thread_time()
                off.target_q(module.critic_target, b["next_observations"], b["next_actions"], b["next_actions"])
                times.append((t1 - t0) - (time.thread_time() - t1))  # minus the backup's own target pass
                _, feats = module.critic(b["observations"], b["actions"], return_features=True)
                value = c4.penalty(module, b, feats, next_feats, one, {})
                grad = torch.autograd.grad(value, params, allow_unused=True)
                values.append(float(value.detach()))
                grads.append(torch.cat([x.flatten() for x in grad if x is not None]))
            per_rows[m] = (values, grads, times)
        exact_values, exact_grads, exact_times = per_rows[256]
        exact_mean = statistics.fmean(exact_values)
        for m in rows:
            values, grads, times = per_rows[m]
            cos = [float(torch.nn.functional.cosine_similarity(a, e, dim=0)) for a, e in zip(grads, exact_grads)]
            results.append(
                {
                    "penalty": name,
                    "rows": m,
                    "mean_over_exact": statistics.fmean(values) / exact_mean,
                    "cv": statistics.pstdev(values) / statistics.fmean(values),
                    "grad_cosine": statistics.fmean(cos),
                    "ms": 1e3 * statistics.median(times),
                    "ms_over_exact": statistics.median(times) / statistics.median(exact_times),
                }
            )
    print(f"# {args.ckpt}: {args.batches} batches of 256 (uniform), critic {type(module).__name__}")
    print(
        "| penalty | rows | mean / exact mean | CV over batches | grad cosine to exact | marginal ms per update "
        "| cost / exact |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['penalty']} | {r['rows']} | {r['mean_over_exact']:.3f} | {r['cv']:.3f} | {r['grad_cosine']:.3f} | "
            f"{r['ms']:.2f} | {r['ms_over_exact']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"ckpt": args.ckpt, "batches": args.batches, "results": results}, indent=1)
        )
    return {"results": results}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
