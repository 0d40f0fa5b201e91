import sys

from c4_lightning.experiments.cli import main

sys.exit(main())
