#!/usr/bin/env python
"""Compare the model kinds (``steerable-sr compare``), or with ``discover`` as the first argument,
symmetry discovery with relaxed kinds (``steerable-sr discover``). See docs/results.md.

    python scripts/compare.py --data data/iso_n32.h5 --out runs/compare
    python scripts/compare.py discover data/aniso_n32.h5 data/iso_n32_long.h5 --control --out runs/discover
"""
import sys

from steerable_sr.cli.study import main_compare, main_discover

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "discover":
        sys.exit(main_discover(argv[1:], prog="compare.py discover"))
    sys.exit(main_compare(argv, prog="compare.py"))
