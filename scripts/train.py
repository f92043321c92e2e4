#!/usr/bin/env python
"""Thin wrapper: ``python scripts/train.py fit --config configs/default.yaml`` == ``steerable-sr fit ...``.

Every ``steerable-sr`` command works (fit, validate, test, predict, evaluate, export, generate, info, ...);
with no subcommand, ``fit`` is assumed.
"""
import sys

from steerable_sr.cli import COMMANDS, LIGHTNING_COMMANDS, main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or (argv[0] not in {**LIGHTNING_COMMANDS, **COMMANDS} and argv[0] not in ("-h", "--help")):
        argv = ["fit", *argv]
    sys.exit(main(argv))
