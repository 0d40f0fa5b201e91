"""Train TD3+BC / CQL with or without C4: ``python train.py fit --config configs/td3bc_c4.yaml``."""

from c4_lightning.cli import main

if __name__ == "__main__":
    main()
