"""``python -m c4_lightning.collect``: the same as ``c4-collect``."""

import sys

from c4_lightning.collect.cli import main

if __name__ == "__main__":
    sys.exit(main())
