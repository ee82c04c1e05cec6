"""python -m helpers.train: the training loop from a terminal (--help lists every setting)."""
import sys

from .loop import main

sys.exit(main())
