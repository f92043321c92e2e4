#!/usr/bin/env python
"""Generate a turbulence dataset: ``python scripts/generate.py OUT.h5 [options]`` == ``steerable-sr generate``
(see ``--help``)."""
import sys

from steerable_sr.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
