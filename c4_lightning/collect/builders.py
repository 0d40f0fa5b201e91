"""The D4RL-style datasets of one behaviour run: one builder per kind, and :func:`record_datasets`, which
makes them all in order.

Kinds (ids ``<namespace>/<name>-v0``): ``random`` (uniform random actions), ``medium`` and ``expert``
(rollouts of two SAC checkpoints, stochastic actions), ``medium-replay`` (the SAC replay buffer up to
the medium checkpoint), ``medium-expert`` (the medium and expert datasets concatenated) and
``random-medium-expert-<N>`` (equal shares of whole random, medium and expert episodes, exactly ``N``
transitions). Each builder describes its dataset by a *plan* (its settings and checkpoints): a
dataset that already exists, reloads cleanly and was made with the same plan is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from c4_lightning.collect._progress import loud
from c4_lightning.collect.checkpoints import (
    best_checkpoint,
    load_checkpoint_table,
    load_train_config,
    select_checkpoints,
)
from c4_lightning.collect.episodes import (
    episode_stats,
    read_episodes,
    replay_buffer_episodes,
    rollout_episodes,
    take_whole_episodes,
    with_source,
)
from c4_lightning.collect.provenance import write_provenance_md
from c4_lightning.collect.sac import load_sac_policy, require_sb3
from c4_lightning.collect.writing import (
    MAX_DATASET_MB,
    STORAGE_LAYOUT,
    check_dataset,
    dataset_id,
    mixture_name,
    package_version,
    write_dataset,
)
from c4_lightning.data.errors import DatasetError
from c4_lightning.data.scores import env_family, normalized_score, reference_scores

# Defaults for the embedded datasets, chosen so that every file stays under MAX_DATASET_MB (see
# datasets/README.md for the measurements behind them).
DEFAULT_RANDOM_STEPS = 50_000
DEFAULT_MEDIUM_STEPS = 70_000
DEFAULT_EXPERT_STEPS = 70_000
DEFAULT_REPLAY_MAX_STEPS = 80_000
DEFAULT_MIX_SIZES = (10_000,)
# every dataset kind draws its random numbers from its own stream of the --seed
_SEED_STREAMS = {"random": 0, "medium": 1, "expert": 2, "medium-replay": 3, "mixture": 4}
_MIXTURE_KINDS = ("random", "medium", "expert")


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def _existing_dataset(final: Path, plan: dict, overwrite: bool, max_mb: float) -> dict | None:
    """Summary of a valid existing dataset made with the same plan (skip it); None when it must be made."""
    if not final.exists() or overwrite:
        return None
    try:
        summary = check_dataset(final / "data", max_mb=max_mb)
    except DatasetError as err:
        raise SystemExit(f"{final} exists but is not a valid dataset ({err}); pass --overwrite to remake it")
    if summary["provenance"].get("plan") != _jsonable(plan):
        raise SystemExit(
            f"{final} exists but was made with other settings or checkpoints:\n  existing: "
            f"{json.dumps(summary['provenance'].get('plan'))}\n  now:      {json.dumps(_jsonable(plan))}\n"
            "pass --overwrite to remake it"
        )
    return summary


@dataclass
class Recording:
    """What every dataset of one ``record`` run shares, and the summaries of those made so far."""

    env_id: str
    out: Path  # the behaviour run's folder, resolved
    datasets_dir: Path  # resolved
    namespace: str
    seed: int
    max_mb: float
    overwrite: bool
    progress: bool
    table: list[dict]  # the behaviour run's checkpoint table
    expert_checkpoint: dict  # its best checkpoint
    common_provenance: dict  # the provenance every dataset carries
    ref: tuple[float, float] | None  # D4RL's reference scores; None for envs without them
    random_ref_min: float | None = None  # env without reference scores: the random dataset's mean return
    summaries: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        env_id: str,
        out_dir: str | Path,
        datasets_dir: str | Path,
        namespace: str | None,
        seed: int,
        max_mb: float,
        overwrite: bool,
        progress: bool,
        command: str | None,
    ) -> Recording:
        out = Path(out_dir).resolve()
        table = load_checkpoint_table(out)
        expert = best_checkpoint(table)
        common = {
            "collector": "c4_lightning.collect",
            "collector_version": package_version("c4_lightning"),
            "command": command or "c4-collect record (called from Python)",
            "seed": seed,
            "env_id": env_id,
            "behaviour_run_dir": str(out_dir),
            "versions": {
                k: package_version(k) for k in ("minari", "gymnasium", "mujoco", "stable_baselines3", "torch")
            },
            "train_config": load_train_config(out),
            "storage": STORAGE_LAYOUT,
        }
        return cls(
            env_id=env_id,
            out=out,
            datasets_dir=Path(datasets_dir).resolve(),
            namespace=namespace or env_family(env_id),
            seed=seed,
            max_mb=max_mb,
            overwrite=overwrite,
            progress=progress,
            table=table,
            expert_checkpoint=expert,
            common_provenance=common,
            ref=reference_scores(env_id),
        )

    def dataset_id(self, name: str) -> str:
        return dataset_id(self.namespace, name)

    def ref_scores(self) -> tuple[float, float]:
        """``(ref_min, ref_max)``: D4RL's when known, otherwise the random dataset's mean return and the best
        checkpoint's return (so only known once the random dataset is made or read)."""
        if self.ref is not None:
            return self.ref
        return self.random_ref_min, self.expert_checkpoint["return_mean"]

    def random_plan(self, steps: int) -> dict:
        plan = {"kind": "random", "env_id": self.env_id, "seed": self.seed, "steps": steps, "storage": STORAGE_LAYOUT}
        if self.ref is None:  # its metadata carries the reference scores, which then depend on the best checkpoint
            plan["ref_max"] = self.expert_checkpoint["return_mean"]
        return plan

    def policy_plan(self, kind: str, checkpoint: dict, steps: int) -> dict:
        return {
            "kind": kind,
            "env_id": self.env_id,
            "seed": self.seed,
            "steps": steps,
            "checkpoint": checkpoint["path"],
            "checkpoint_steps": checkpoint["steps"],
            "deterministic": False,
            "storage": STORAGE_LAYOUT,
        }

    def make_dataset(
        self,
        name: str,
        plan: dict,
        build: Callable[[], tuple[list, list[bool], dict]],
        *,
        algorithm: str,
        describe: Callable[[dict], str],
        sources: list[str] | None = None,
        size_flag: str = "",
    ) -> dict:
        """Skip dataset ``name`` if it exists with the same ``plan``; otherwise ``build()`` its
        ``(episodes, was_cut, extra_provenance)``, write and check it. Returns its summary."""
        ds_id = self.dataset_id(name)
        existing = _existing_dataset(self.datasets_dir / ds_id, plan, self.overwrite, self.max_mb)
        if existing is not None:
            print(f"[c4-collect] {ds_id}: exists and matches, skipping ({existing['steps']} steps)", flush=True)
            self.summaries[ds_id] = existing
            return existing
        episodes, cut, extra = build()
        stats = episode_stats(episodes, cut)
        ref_min, ref_max = self.ref_scores()
        provenance = {
            **self.common_provenance,
            "dataset_id": ds_id,
            "kind": name,
            "plan": _jsonable(plan),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "num_steps": stats["steps"],
            "num_episodes": stats["episodes"],
            "episode_returns": stats,
            "normalized_episode_return_mean": float(normalized_score(stats["return_mean"], ref_min, ref_max)),
            **extra,
        }
        summary = write_dataset(
            self.datasets_dir,
            ds_id,
            episodes,
            env_id=self.env_id,
            ref_min=ref_min,
            ref_max=ref_max,
            algorithm_name=algorithm,
            description=describe(stats),
            provenance=provenance,
            source_names=sources or [ds_id],
            max_mb=self.max_mb,
            size_flag=size_flag,
            progress=self.progress,
        )
        print(
            f"[c4-collect] {ds_id}: {summary['steps']} steps, {summary['episodes']} episodes, "
            f"{summary['bytes'] / 1e6:.2f} MB, mean episode return {stats['return_mean']:.1f}",
            flush=True,
        )
        self.summaries[ds_id] = summary
        return summary


@dataclass
class BehaviourPolicies:
    """The medium and expert checkpoints, and what every SAC-derived dataset records about them."""

    medium: dict  # checkpoint table rows
    expert: dict
    medium_info: dict  # steps, path, evaluated return and its normalised score
    expert_info: dict
    expert_min_score: float
    below_expert_level: bool  # the expert checkpoint's normalised score is under expert_min_score
    provenance: dict  # checkpoints, checkpoint curve, medium target, expert level

    def checkpoint(self, kind: str) -> dict:
        return {"medium": self.medium, "expert": self.expert}[kind]

    def info(self, kind: str) -> dict:
        return {"medium": self.medium_info, "expert": self.expert_info}[kind]


def _checkpoint_info(row: dict, ref_min: float, ref_max: float) -> dict:
    return {
        "steps": row["steps"],
        "path": row["path"],
        "return_mean": row["return_mean"],
        "return_std": row["return_std"],
        "normalized_score": float(normalized_score(row["return_mean"], ref_min, ref_max)),
    }


def choose_behaviour(rec: Recording, medium_fraction: float, expert_min_score: float) -> BehaviourPolicies:
    """The expert (best) and medium checkpoints (see :func:`select_checkpoints`), with loud notes when the expert
    is below expert level or both are the same checkpoint. Needs the reference scores (after the random dataset)."""
    ref_min, ref_max = rec.ref_scores()
    choice = select_checkpoints(rec.table, medium_fraction, ref_min, ref_max)
    expert, medium = rec.expert_checkpoint, choice["medium"]
    print(
        f"[c4-collect] expert checkpoint: {expert['steps']} env steps (return {expert['return_mean']:.1f}); "
        f"medium: {medium['steps']} env steps (return {medium['return_mean']:.1f}, target "
        f"{choice['medium_target_return']:.1f})",
        flush=True,
    )
    med_info, exp_info = _checkpoint_info(medium, ref_min, ref_max), _checkpoint_info(expert, ref_min, ref_max)
    curve = [[r["steps"], r["return_mean"], r["return_std"]] for r in rec.table]
    below = rec.ref is not None and exp_info["normalized_score"] < expert_min_score
    if below:
        loud(
            f"NOTE: the best SAC checkpoint ({expert['steps']} env steps) has evaluated return "
            f"{expert['return_mean']:.1f}, normalised score {exp_info['normalized_score']:.1f} < "
            f"--expert-min-score {expert_min_score:g}.\n{rec.dataset_id('expert')} keeps its id for config stability, "
            "but it is NOT D4RL-expert level: its description and provenance (expert_below_min_score) say so."
        )
    if medium["steps"] == expert["steps"]:
        loud(
            f"NOTE: the medium and expert checkpoints are the same ({expert['steps']} env steps): "
            "train longer for distinct behaviour policies."
        )
    provenance = {
        "checkpoints": {"medium": med_info, "expert": exp_info},
        "checkpoint_curve": curve,
        "medium_target_return": choice["medium_target_return"],
        "medium_fraction": medium_fraction,
        "expert_min_score": expert_min_score,
        "expert_below_min_score": bool(below),
    }
    return BehaviourPolicies(
        medium=medium,
        expert=expert,
        medium_info=med_info,
        expert_info=exp_info,
        expert_min_score=expert_min_score,
        below_expert_level=below,
        provenance=provenance,
    )


# --------------------------------------------------------------------------- one builder per kind
def record_random(rec: Recording, steps: int) -> dict:
    """``random``: ``steps`` transitions of uniform random actions. For an env without reference scores its
    mean return (whole episodes) becomes ``ref_min`` of every dataset."""
    ds_id = rec.dataset_id("random")

    def build():
        episodes, cut = rollout_episodes(
            rec.env_id, steps, seed=[rec.seed, _SEED_STREAMS["random"]], desc=f"{ds_id} rollouts", progress=rec.progress
        )
        if rec.ref is None:
            stats = episode_stats(episodes, cut)
            rec.random_ref_min = stats.get("uncut_return_mean", stats["return_mean"])
        return episodes, cut, {"behaviour": {"policy": "uniform random actions"}}

    final = rec.datasets_dir / ds_id
    if rec.ref is None and final.exists() and not rec.overwrite:
        rec.random_ref_min = json.loads((final / "data" / "metadata.json").read_text())["ref_min_score"]
    return rec.make_dataset(
        "random",
        rec.random_plan(steps),
        build,
        algorithm="uniform random policy (action_space.sample())",
        describe=lambda st: (
            f"{rec.env_id} uniform random actions: {st['steps']} transitions, "
            f"{st['episodes']} episodes (mean episode return {st['return_mean']:.1f}). "
            "Made by c4-collect."
        ),
        size_flag="--random-steps",
    )


def _record_checkpoint_rollouts(rec: Recording, beh: BehaviourPolicies, kind: str, steps: int) -> dict:
    """``medium`` or ``expert``: ``steps`` transitions of that SAC checkpoint with stochastic actions."""
    row, info = beh.checkpoint(kind), beh.info(kind)

    def build():
        rng = np.random.default_rng([rec.seed, _SEED_STREAMS[kind]])
        policy = load_sac_policy(rec.out / row["path"], seed=int(rng.integers(2**31 - 1)))
        episodes, cut = rollout_episodes(
            rec.env_id,
            steps,
            seed=int(rng.integers(2**31 - 1)),
            policy=policy,
            desc=f"{rec.dataset_id(kind)} rollouts",
            progress=rec.progress,
        )
        return (
            episodes,
            cut,
            {
                "behaviour": {"policy": f"SB3-SAC checkpoint {row['path']}", "deterministic": False, **info},
                **beh.provenance,
            },
        )

    def describe(st):
        note = ""
        if kind == "expert" and beh.below_expert_level:
            note = (
                f" NOTE: below expert level (normalised {info['normalized_score']:.1f} "
                f"< {beh.expert_min_score:g}); the id is kept for config stability."
            )
        return (
            f"{rec.env_id} {kind}: {st['steps']} transitions ({st['episodes']} episodes) of the SB3-SAC checkpoint "
            f"at {info['steps']} env steps with stochastic actions; that checkpoint's evaluated return "
            f"{info['return_mean']:.1f} +- {info['return_std']:.1f} (deterministic, normalised "
            f"{info['normalized_score']:.1f}); mean episode return in the data {st['return_mean']:.1f}.{note} "
            "Made by c4-collect."
        )

    return rec.make_dataset(
        kind,
        rec.policy_plan(kind, row, steps),
        build,
        algorithm=f"SB3-SAC (checkpoint at {row['steps']} env steps, stochastic actions)",
        describe=describe,
        size_flag=f"--{kind}-steps",
    )


def record_medium(rec: Recording, beh: BehaviourPolicies, steps: int) -> dict:
    """``medium``: ``steps`` transitions of the medium checkpoint, stochastic actions."""
    return _record_checkpoint_rollouts(rec, beh, "medium", steps)


def record_expert(rec: Recording, beh: BehaviourPolicies, steps: int) -> dict:
    """``expert``: ``steps`` transitions of the best checkpoint, stochastic actions."""
    return _record_checkpoint_rollouts(rec, beh, "expert", steps)


def record_medium_replay(rec: Recording, beh: BehaviourPolicies, max_steps: int) -> dict:
    """``medium-replay``: the SAC replay buffer's entries up to the medium checkpoint, whole episodes drawn at
    random down to ``max_steps`` transitions when it holds more."""
    import gymnasium as gym
    from stable_baselines3.common.save_util import load_from_pkl

    medium = beh.medium
    buffer_path = rec.out / "replay_buffer.pkl"
    if not buffer_path.exists():
        raise SystemExit(f"{buffer_path} not found: medium-replay needs the behaviour run's replay buffer")
    print(f"[c4-collect] loading {buffer_path}", flush=True)
    buffer = load_from_pkl(buffer_path)
    entries = min(medium["steps"], buffer.buffer_size if buffer.full else buffer.pos)
    if entries < medium["steps"]:
        loud(
            f"NOTE: the replay buffer holds {entries} entries, fewer than the medium checkpoint's "
            f"{medium['steps']} env steps (a buffer saved by an older c4-collect misses its newest step): "
            f"medium-replay uses entries [0, {entries})."
        )
    plan = {
        "kind": "medium-replay",
        "env_id": rec.env_id,
        "seed": rec.seed,
        "upto_steps": medium["steps"],
        "entries": entries,
        "max_steps": max_steps,
        "storage": STORAGE_LAYOUT,
    }

    def build():
        space = gym.make(rec.env_id).action_space
        draw_seed = int(np.random.default_rng([rec.seed, _SEED_STREAMS["medium-replay"]]).integers(2**31 - 1))
        episodes, cut, info = replay_buffer_episodes(
            buffer, medium["steps"], action_space=space, max_steps=max_steps, seed=draw_seed, progress=rec.progress
        )
        info.pop("episodes_kept", None)
        return (
            episodes,
            cut,
            {
                "behaviour": {
                    "policy": "SB3-SAC replay buffer (training data up to the medium checkpoint)",
                    "replay": info,
                    **beh.medium_info,
                },
                **beh.provenance,
            },
        )

    return rec.make_dataset(
        "medium-replay",
        plan,
        build,
        algorithm=f"SB3-SAC replay buffer, env steps [0, {entries})",
        describe=lambda st: (
            f"{rec.env_id} medium-replay: {st['steps']} transitions ({st['episodes']} episodes) "
            f"from the SAC replay buffer up to the medium checkpoint at {medium['steps']} env steps"
            + (
                f" (whole episodes drawn at random down to --replay-max-steps {max_steps})"
                if entries > max_steps
                else ""
            )
            + ". Made by c4-collect."
        ),
        size_flag="--replay-max-steps",
    )


def record_medium_expert(rec: Recording, beh: BehaviourPolicies, medium_steps: int, expert_steps: int) -> dict:
    """``medium-expert``: all of the medium dataset followed by all of the expert one (D4RL style), every step
    labelled with its source. Reads the two datasets, so they must be made first."""
    sources = [rec.dataset_id("medium"), rec.dataset_id("expert")]

    def build():
        episodes, cut = [], []
        for src, name in enumerate(sources):
            for ep in read_episodes(rec.datasets_dir / name / "data"):
                episodes.append(with_source(ep, src))
                cut.append(False)
        return episodes, cut, {"behaviour": {"policy": "medium + expert datasets concatenated"}, **beh.provenance}

    plan = {
        "kind": "medium-expert",
        "sources": [
            rec.policy_plan("medium", beh.medium, medium_steps),
            rec.policy_plan("expert", beh.expert, expert_steps),
        ],
    }
    return rec.make_dataset(
        "medium-expert",
        plan,
        build,
        algorithm="SB3-SAC (medium + expert checkpoints, stochastic actions)",
        describe=lambda st: (
            f"{rec.env_id} medium-expert: all of {sources[0]} followed by all of {sources[1]} "
            f"({st['steps']} transitions); per-step infos['source'] labels index source_names. "
            "Made by c4-collect."
        ),
        sources=sources,
        size_flag="--medium-steps/--expert-steps",
    )


def record_mixture(
    rec: Recording, beh: BehaviourPolicies, n: int, random_steps: int, medium_steps: int, expert_steps: int
) -> dict:
    """``random-medium-expert-<n>``: exactly ``n`` transitions, a third each (the remainder to the first shares) of
    whole episodes drawn at random from the random, medium and expert datasets, the last of each share cut to
    hit the count; every step labelled with its source. Reads the three datasets, so they must be made first."""
    sources = [rec.dataset_id(kind) for kind in _MIXTURE_KINDS]
    plans = [
        rec.random_plan(random_steps),
        rec.policy_plan("medium", beh.medium, medium_steps),
        rec.policy_plan("expert", beh.expert, expert_steps),
    ]
    shares = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    name = mixture_name(n)

    def build():
        rng = np.random.default_rng([rec.seed, _SEED_STREAMS["mixture"], n])
        episodes, cut, drawn_ids = [], [], {}
        for src, (kind, source, share) in enumerate(zip(_MIXTURE_KINDS, sources, shares)):
            pool = read_episodes(rec.datasets_dir / source / "data")
            held = sum(len(e.rewards) for e in pool)
            if held < share:
                raise SystemExit(
                    f"{rec.dataset_id(name)} needs {share} transitions of {source}, "
                    f"which holds {held}: lower --sizes or raise --{kind}-steps"
                )
            drawn = take_whole_episodes(pool, share, rng)
            drawn_ids[source] = [i for i, _, _ in drawn]
            for _, ep, was_cut in drawn:
                episodes.append(with_source(ep, src))
                cut.append(was_cut)
        return (
            episodes,
            cut,
            {
                "behaviour": {
                    "policy": "equal shares of whole episodes of random, medium, expert",
                    "shares": dict(zip(sources, shares)),
                    "episodes": drawn_ids,
                },
                **beh.provenance,
            },
        )

    return rec.make_dataset(
        name,
        {"kind": "mixture", "total": n, "seed": rec.seed, "sources": plans},
        build,
        algorithm="uniform random + SB3-SAC (medium and expert checkpoints, stochastic actions)",
        describe=lambda st: (
            f"{rec.env_id} random-medium-expert mixture of exactly {n} transitions: "
            f"{shares[0]}/{shares[1]}/{shares[2]} transitions of whole episodes (the last of each share cut, marked "
            f"truncated) from {', '.join(sources)}; "
            "per-step infos['source'] labels index source_names. Made by c4-collect."
        ),
        sources=sources,
        size_flag="--sizes",
    )


# --------------------------------------------------------------------------- all of them
def record_datasets(
    env_id: str,
    out_dir: str | Path,
    datasets_dir: str | Path,
    namespace: str | None = None,
    seed: int = 0,
    random_steps: int = DEFAULT_RANDOM_STEPS,
    medium_steps: int = DEFAULT_MEDIUM_STEPS,
    expert_steps: int = DEFAULT_EXPERT_STEPS,
    replay_max_steps: int = DEFAULT_REPLAY_MAX_STEPS,
    mix_sizes: tuple[int, ...] = DEFAULT_MIX_SIZES,
    medium_fraction: float = 1 / 3,
    expert_min_score: float = 80.0,
    max_mb: float = MAX_DATASET_MB,
    overwrite: bool = False,
    threads: int = 1,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, dict]:
    """Write the D4RL-style datasets of ``env_id`` from the behaviour run in ``out_dir``.

    Datasets (ids ``<namespace>/<name>-v0``): ``random``, ``medium``, ``expert``, ``medium-replay``,
    ``medium-expert`` and one ``random-medium-expert-<N>`` mixture per entry of ``mix_sizes``. A
    dataset that already exists, reloads cleanly and was made with the same plan (settings and
    checkpoints) is skipped; one made differently is an error unless ``overwrite``. Also writes
    ``<datasets_dir>/<namespace>/PROVENANCE.md``. Returns a summary per dataset id.
    """
    require_sb3()
    import torch

    torch.set_num_threads(threads)
    rec = Recording.start(env_id, out_dir, datasets_dir, namespace, seed, max_mb, overwrite, progress, command)
    record_random(rec, random_steps)  # first: for envs without reference scores it sets ref_min
    beh = choose_behaviour(rec, medium_fraction, expert_min_score)
    record_medium(rec, beh, medium_steps)
    record_expert(rec, beh, expert_steps)
    record_medium_replay(rec, beh, replay_max_steps)
    record_medium_expert(rec, beh, medium_steps, expert_steps)
    for n in mix_sizes:
        record_mixture(rec, beh, n, random_steps, medium_steps, expert_steps)
    md = write_provenance_md(rec.datasets_dir / rec.namespace)
    print(f"[c4-collect] wrote {md}", flush=True)
    return rec.summaries
