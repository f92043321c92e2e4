#!/usr/bin/env python
"""Compare the model kinds (``steerable-sr compare``), or with ``discover`` as the first argument,
symmetry discovery with relaxed kinds (``steerable-sr discover``). See docs/results.md.

    python scripts/compare.py --data data/iso_n32.h5 --out runs/compare
    python scripts/compare.py discover data/aniso_n32.h5 data/iso_n32_long.h5 --control --out runs/discover
"""
import sys

from steerable_sr.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if argv[:1] == ["discover"] else ["compare", *argv]))
