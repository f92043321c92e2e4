"""``python -m steerable_sr.cli``: the same as the ``steerable-sr`` console script."""
import sys

from . import main

sys.exit(main())
