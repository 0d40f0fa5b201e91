"""Cheaper C4 penalty estimators against the exact batch penalty: the sub-batch (``model.c4.penalty_rows``), the
Rademacher sketch (``model.c4.penalty_sketch``) and the backup's own next action (``model.c4.penalty_next_action``);
bias, spread and gradient agreement, and the cost per call, on a trained critic.

    python benchmarks/penalty_estimator.py \\
        --ckpt runs/sweeps/c4_evidence/baseline__mix10k__s0/logs/checkpoints/last.ckpt

For ``--batches`` single batches of 256 rows drawn uniformly from the dataset the checkpoint trained on, each
penalty is computed exactly (all 256 rows, dataset next actions, no sketch) and with each estimator: on the first m
rows (m in ``--rows``), with a k-direction sketch (k in ``--sketch``), and for each next action in ``--next-action``
(``policy``: the target features of the backup's own rows at ``(s', a~')``, a~' = target actor + clipped noise as in
TD3+BC, drawn once per batch; combined with every sketch size). Reported per penalty and estimator: the mean value,
mean value / exact mean value (bias; for ``policy`` the reference stays the dataset-next-action penalty, so this is
the ratio of two different quantities, not a bias), the coefficient of variation of the value over batches (spread,
sketch draws included; the exact one's for reference), the mean cosine between the gradient of the estimate and of
the exact penalty w.r.t. the critic's parameters, and the marginal CPU milliseconds C4 adds to an update: the
target-feature pass for the penalty's rows (none with ``policy``: the backup's pass supplies them), the penalty and its
backward to the features (the critic's own forward and backward are shared with the TD loss and not counted). The
sketch draws come from torch's global generator, seeded once (``--seed``). Nothing is trained.
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
    ap.add_argument("--rows", default="32,64,128", help="sub-batch sizes to compare with the exact 256 ('' = none)")
    ap.add_argument("--sketch", default="8,16,32", help="sketch sizes k (penalty_sketch; '' = none)")
    ap.add_argument("--next-action", default="data,policy", help="penalty_next_action values, each with every sketch")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="seeds the batches, the backup noise and the sketch draws")
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
    g = torch.Generator().manual_seed(args.seed)
    g_noise = torch.Generator().manual_seed(args.seed + 1)  # its own stream: the batches do not depend on it
    hp = module.hparams
    batches = []
    for _ in range(args.batches):
        idx = torch.randint(obs.shape[0], (256,), generator=g)
        with torch.no_grad():  # the backup's a~': TD3+BC's target actor + clipped noise (CQL: a policy sample)
            if hasattr(module, "actor_target"):
                noise = torch.randn(256, act.shape[-1], generator=g_noise) * hp.get("policy_noise", 0.2)
                noise = noise.clamp(-hp.get("noise_clip", 0.5), hp.get("noise_clip", 0.5))
                backup = (module.actor_target(next_obs[idx]) + noise).clamp(-hp.max_action, hp.max_action)
            else:
                backup = module.actor(next_obs[idx])[0]
        batches.append(
            {
                "observations": obs[idx],
                "actions": act[idx],
                "next_observations": next_obs[idx],
                "next_actions": next_act[idx],
                "backup_actions": backup,
            }
        )
    params = list(module.critic.parameters())
    one = torch.ones(())
    split = [x for x in args.rows.split(",") if x]
    sketches = [None] + [int(k) for k in args.sketch.split(",") if k]
    exact = (256, None, "data")
    variants = [(int(m), None, "data") for m in split] + [exact]
    variants += [(256, k, na) for na in args.next_action.split(",") if na for k in sketches if (256, k, na) != exact]
    off = C4(C4Config(enabled=False))
    results = []
    for name in args.penalties.split(","):
        per_variant = {}
        for m, k, na in variants:
            config = C4Config(
                enabled=True, penalty=name, penalty_weight=1.0, penalty_rows=m, penalty_sketch=k, penalty_next_action=na
            )
            c4 = C4(config)
            torch.manual_seed(args.seed)  # the sketch draws
            values, grads, times = [], [], []
            for b in batches:
                _, feats = module.critic(b["observations"], b["actions"], return_features=True)
                feats = feats.detach().requires_grad_(True)  # the critic's own pass is shared with the TD loss
                t0 = time.thread_time()
                _, next_feats = c4.target_q(
                    module.critic_target, b["next_observations"], b["backup_actions"], b["next_actions"]
                )
                value = c4.penalty(module, b, feats, next_feats, one, {})
                torch.autograd.grad(value, feats, allow_unused=True)
                t1 = time.thread_time()
                off.target_q(module.critic_target, b["next_observations"], b["backup_actions"], b["next_actions"])
                times.append((t1 - t0) - (time.thread_time() - t1))  # minus the backup's own target pass
                _, feats = module.critic(b["observations"], b["actions"], return_features=True)
                value = c4.penalty(module, b, feats, next_feats, one, {})
                grad = torch.autograd.grad(value, params, allow_unused=True)
                values.append(float(value.detach()))
                grads.append(torch.cat([x.flatten() for x in grad if x is not None]))
            per_variant[(m, k, na)] = (values, grads, times)
        exact_values, exact_grads, exact_times = per_variant[exact]
        exact_mean = statistics.fmean(exact_values)
        for m, k, na in variants:
            values, grads, times = per_variant[(m, k, na)]
            cos = [float(torch.nn.functional.cosine_similarity(a, e, dim=0)) for a, e in zip(grads, exact_grads)]
            results.append(
                {
                    "penalty": name,
                    "rows": m,
                    "sketch": k,
                    "next_action": na,
                    "mean": statistics.fmean(values),
                    "mean_over_exact": statistics.fmean(values) / exact_mean,
                    "cv": statistics.pstdev(values) / statistics.fmean(values),
                    "grad_cosine": statistics.fmean(cos),
                    "ms": 1e3 * statistics.median(times),
                    "ms_over_exact": statistics.median(times) / statistics.median(exact_times),
                }
            )
    print(f"# {args.ckpt}: {args.batches} batches of 256 (uniform), critic {type(module).__name__}")
    print(
        "| penalty | rows | sketch k | next action | mean | mean / exact mean | CV over batches | grad cosine to exact "
        "| marginal ms per update | cost / exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rows = f"{r['rows']}" + (" (exact)" if (r["rows"], r["sketch"], r["next_action"]) == exact else "")
        print(
            f"| {r['penalty']} | {rows} | {r['sketch'] or '-'} | {r['next_action']} | {r['mean']:.4g} | "
            f"{r['mean_over_exact']:.3f} | {r['cv']:.3f} | {r['grad_cosine']:.3f} | {r['ms']:.2f} | "
            f"{r['ms_over_exact']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"ckpt": args.ckpt, "batches": args.batches, "seed": args.seed, "results": results}, indent=1)
        )
    return {"results": results}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
