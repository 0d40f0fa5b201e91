"""c4_lightning: offline RL (TD3+BC, CQL) in PyTorch Lightning with C4, Clustered Cross-Covariance Control."""

from c4_lightning.policy import Policy, load_policy

__version__ = "0.1.0"
__all__ = ["load_policy", "Policy", "__version__"]
