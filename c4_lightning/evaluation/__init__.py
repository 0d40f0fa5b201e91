from c4_lightning.evaluation.callback import EvalCallback
from c4_lightning.evaluation.rollout import evaluate_episodes, evaluate_policy

__all__ = ["EvalCallback", "evaluate_episodes", "evaluate_policy"]
