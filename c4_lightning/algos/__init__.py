from c4_lightning.algos.cql import CQL
from c4_lightning.algos.td3bc import TD3BC

__all__ = ["TD3BC", "CQL"]
