#!/usr/bin/env python
"""Anisotropy and sample symmetry of generated datasets, for the whole frames and each part.

The resolved part is what the low-resolution input shows (the trilinear upsampling of the block
average, ``steerable_sr.data.statistics.resolved_part``); the unresolved part is the rest, what a
super-resolution network adds to the trilinear baseline. Prints one Markdown row per file and part.

    python scripts/statistics_by_part.py data/iso_n32.h5 data/aniso_n32.h5 --split train
"""
import argparse
import sys
from pathlib import Path

from steerable_sr.data.statistics import PARTS, dataset_statistics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="files written by steerable-sr generate")
    parser.add_argument("--split", choices=("train", "val", "test"), default="train")
    args = parser.parse_args(argv)
    missing = [path for path in args.data if not Path(path).is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = []
    for path in args.data:
        try:
            rows += [(path, dataset_statistics(path, args.split, part)) for part in PARTS]
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print("| data | part | energy fractions x, y, z | anisotropy | sample keeps |")
    print("| --- | --- | --- | ---: | --- |")
    for path, stats in rows:
        fractions = ", ".join(f"{f:.3f}" for f in stats["energy_fractions"])
        print(f"| {path} | {stats['part']} | {fractions} | {stats['anisotropy']:.3f} | {stats['sample_keeps']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
