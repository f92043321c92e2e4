#!/usr/bin/env python
"""Generate a turbulence dataset: ``python scripts/generate.py OUT.h5 [options]`` (see ``--help``)."""
from steerable_sr.data.generate import main

if __name__ == "__main__":
    main()
