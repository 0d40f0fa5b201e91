"""d3rlpy on *our* transitions: the conversion to ``d3rlpy.dataset.MDPDataset`` and a timing worker.

Why our own conversion: d3rlpy's ``get_minari`` misaligns observations and actions after the first episode,
so we hand d3rlpy the exact transitions our datamodule trains on (same subsample, same normalised
observations) in its per-step format: ``observations, actions, rewards, terminals, timeouts``.

d3rlpy never samples the last step of an episode that ended without termination (it has no next observation
in that format). To keep the *same* transition set, an episode that does not end in a terminal gets one extra
row holding its final next observation (action = the repeated last action, reward 0) and the timeout flag
moves to that row; d3rlpy then pairs every one of our steps with our next observation. Terminal steps
bootstrap from nothing in both libraries (d3rlpy's next observation there is zeros, ours is ignored).

Run as a worker (``throughput.py`` does this in d3rlpy's own virtual environment)::

    /work/venv-bench/bin/python benchmarks/d3rlpy_bench.py --steps 200 --warmup 20 --threads 1

It prints one JSON line: updates/s through ``fit()`` (d3rlpy's own sampling + update + bookkeeping) and
through ``update()`` alone on pre-sampled batches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def transitions_to_mdp_arrays(obs, act, rew, next_obs, next_act, terminals, last_steps, episode_ids=None) -> dict:
    """Our per-transition arrays (``[N, ...]``, episodes stored contiguously in step order, ``last_steps`` = 1 at
    each episode's last stored step) -> d3rlpy's per-step arrays.

    Returns a dict of float32 numpy arrays ``observations [M, obs], actions [M, act], rewards [M], terminals [M],
    timeouts [M]`` and ``row_of`` (int64 [N]): the d3rlpy row holding our transition i. ``M = N + number of
    episodes that do not end in a terminal``.
    """
    obs, act, next_obs, next_act = (np.asarray(a, dtype=np.float32) for a in (obs, act, next_obs, next_act))
    rew, terminals, last_steps = (np.asarray(a, dtype=np.float32).reshape(-1) for a in (rew, terminals, last_steps))
    n = obs.shape[0]
    if n == 0:
        raise ValueError("no transitions to convert")
    if last_steps[-1] != 1:
        raise ValueError("the last transition must close an episode (last_steps[-1] == 1)")
    ends = np.flatnonzero(last_steps > 0.5)
    if episode_ids is not None:
        ep = np.asarray(episode_ids).reshape(-1)
        changes = np.flatnonzero(ep[1:] != ep[:-1])
        if not np.array_equal(changes, ends[:-1]):
            raise ValueError("episodes are not stored contiguously (episode_ids changes do not match last_steps)")
    bad = np.flatnonzero((terminals > 0.5) & (last_steps < 0.5))
    if bad.size:
        raise ValueError(f"terminal flag inside an episode at rows {bad[:5].tolist()}")
    starts = np.r_[0, ends[:-1] + 1]
    open_end = terminals[ends] < 0.5  # episodes that bootstrap at their last step: one extra row each
    m = n + int(open_end.sum())
    out = {
        "observations": np.empty((m, obs.shape[1]), np.float32),
        "actions": np.empty((m, act.shape[1]), np.float32),
        "rewards": np.zeros(m, np.float32),
        "terminals": np.zeros(m, np.float32),
        "timeouts": np.zeros(m, np.float32),
        "row_of": np.empty(n, np.int64),
    }
    r = 0
    for s, e, extra in zip(starts, ends, open_end):
        length = e - s + 1
        sl = slice(r, r + length)
        out["observations"][sl], out["actions"][sl], out["rewards"][sl] = obs[s : e + 1], act[s : e + 1], rew[s : e + 1]
        out["row_of"][s : e + 1] = np.arange(r, r + length)
        r += length
        if extra:
            out["observations"][r], out["actions"][r] = next_obs[e], next_act[e]
            out["timeouts"][r] = 1.0
            r += 1
        else:
            out["terminals"][r - 1] = 1.0
    assert r == m
    return out


def datamodule_arrays(dm) -> dict:
    """The datamodule's training data (normalised observations, scaled rewards) as conversion inputs."""
    p, lay = dm.packed.cpu().numpy(), dm.layout
    col = lambda name: p[:, lay[name].start]  # noqa: E731  (scalar fields as [N])
    return dict(
        obs=p[:, lay["observations"]],
        act=p[:, lay["actions"]],
        rew=col("rewards"),
        next_obs=p[:, lay["next_observations"]],
        next_act=p[:, lay["next_actions"]],
        terminals=col("terminals"),
        last_steps=col("last_steps"),
        episode_ids=dm.transitions.episode_ids.cpu().numpy(),
    )


def to_mdp_dataset(arrays: dict):
    """``transitions_to_mdp_arrays`` output -> ``d3rlpy.dataset.MDPDataset`` (continuous actions)."""
    import d3rlpy

    return d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminals=arrays["terminals"],
        timeouts=arrays["timeouts"],
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
        action_size=arrays["actions"].shape[1],
    )


def make_algo(name: str, device: str = "cpu"):
    """d3rlpy algorithms with our hyperparameters (batch 256, same lrs and network sizes, no scalers: the
    observations are already normalised as ours are)."""
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory

    dev = "cuda:0" if device.startswith("cuda") else False
    if name == "td3bc":
        enc = VectorEncoderFactory(hidden_units=[256, 256])
        cfg = d3rlpy.algos.TD3PlusBCConfig(
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            batch_size=256,
            gamma=0.99,
            tau=0.005,
            n_critics=2,
            target_smoothing_sigma=0.2,
            target_smoothing_clip=0.5,
            alpha=2.5,
            update_actor_interval=2,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
        )
    elif name == "cql":
        enc = VectorEncoderFactory(hidden_units=[256, 256, 256])
        # alpha_learning_rate=0: no Lagrange on the CQL weight (our default); temperature tuned with the policy lr
        cfg = d3rlpy.algos.CQLConfig(
            actor_learning_rate=3e-5,
            critic_learning_rate=3e-4,
            temp_learning_rate=3e-5,
            alpha_learning_rate=0.0,
            batch_size=256,
            gamma=0.99,
            tau=5e-3,
            n_critics=2,
            initial_temperature=1.0,
            initial_alpha=1.0,
            conservative_weight=10.0,
            n_action_samples=10,
            soft_q_backup=False,
            max_q_backup=False,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
        )
    else:
        raise ValueError(f"unknown algorithm {name!r}")
    return cfg.create(device=dev)


def time_d3rlpy(name: str, dataset, warmup: int, steps: int, device: str = "cpu", seed: int = 0) -> dict:
    import d3rlpy
    import torch
    from d3rlpy.logging import NoopAdapterFactory

    from bench_utils import now

    d3rlpy.seed(seed)
    algo = make_algo(name, device)
    stamps: list[float] = []

    def callback(_algo, _epoch, _step):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(now())

    total = warmup + steps
    algo.fit(
        dataset,
        n_steps=total,
        n_steps_per_epoch=total,
        show_progress=False,
        save_interval=10**9,
        logger_adapter=NoopAdapterFactory(),
        with_timestamp=False,
        callback=callback,
    )
    fit_ups = steps / (stamps[total - 1] - stamps[warmup - 1]) if warmup > 0 else float("nan")
    # update() alone: batches sampled beforehand (d3rlpy samples transition by transition in Python)
    pool = [dataset.sample_transition_batch(256) for _ in range(min(steps, 64))]
    for i in range(warmup):
        algo.update(pool[i % len(pool)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = now()
    for i in range(steps):
        algo.update(pool[i % len(pool)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    update_ups = steps / (now() - t0)
    return {"fit_ups": fit_ups, "update_ups": update_ups, "steps": steps, "warmup": warmup}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="hopper/random-medium-expert-10k")
    ap.add_argument("--max-transitions", type=int, default=None)
    ap.add_argument("--algos", default="td3bc,cql")
    ap.add_argument("--steps", type=int, default=200, help="timed updates (td3bc)")
    ap.add_argument("--cql-steps", type=int, default=None, help="timed updates for cql (default --steps)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--cql-warmup", type=int, default=None, help="untimed cql updates (default --warmup)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = ap.parse_args(argv)

    import logging
    import warnings

    import torch

    from bench_utils import make_datamodule, set_clock, set_threads

    warnings.filterwarnings("ignore")
    set_threads(args.threads)
    set_clock(args.clock)
    try:
        import d3rlpy
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    except ImportError as err:
        print(json.dumps({"error": f"d3rlpy not importable: {err}"}))
        return
    dm = make_datamodule(args.dataset, args.max_transitions)
    dataset = to_mdp_dataset(transitions_to_mdp_arrays(**datamodule_arrays(dm)))
    result = {
        "d3rlpy": d3rlpy.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "transitions": int(dataset.transition_count),
    }
    for name in [a for a in args.algos.split(",") if a]:
        steps = args.cql_steps if (name == "cql" and args.cql_steps) else args.steps
        warmup = args.cql_warmup if (name == "cql" and args.cql_warmup is not None) else args.warmup
        result[name] = time_d3rlpy(name, dataset, warmup, steps, args.device, args.seed)
    print("D3RLPY_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
