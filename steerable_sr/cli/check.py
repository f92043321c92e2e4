"""``steerable-sr check DATA``: read every value of a generated dataset or of JHTDB cutout files and
report the first NaN / Inf or unreadable frame.

Training reads crops and checks each one as it is read; a value that no crop reaches is found here.
The frames are read one slab at a time (:meth:`~steerable_sr.data.frames.VelocityFrames.slabs`, at
most 64 MiB), so the memory used does not grow with the file.

Exit status 0 with a one-line summary on stdout; 1 with one line on stderr naming the file, the
frame and the position (``FILE:velocity[t]: N NaN or Inf value(s) (the first at index (c, i, j, k))``,
the index in the frame ``(3, X, Y, Z)``), or what else is wrong with the data (not HDF5, truncated,
not a velocity layout, integer velocities).
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from tqdm.auto import tqdm

from ..data.dataset import open_frames
from ..data.frames import VelocityFrames

HELP = "read every value of a dataset (generated file or JHTDB cutouts) and report NaN / Inf or unreadable data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``DATA`` and ``--no-progress``."""
    parser.add_argument("data", help="a dataset from `steerable-sr generate`, or JHTDB cutout file(s): a file, a "
                                     "directory or a glob pattern")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _sums(frames: VelocityFrames, progress: bool, label: str) -> tuple[float, float]:
    """``(sum of u_a^2, max |u_a|)`` over every value of every frame, read slab by slab."""
    squares, largest = 0.0, 0.0
    for t in tqdm(range(len(frames)), desc=f"check {label}", unit="frame", disable=not progress):
        for _, slab in frames.slabs(t):
            flat = slab.astype(np.float64, copy=False).ravel()
            squares += float(flat @ flat)
            largest = max(largest, float(np.abs(flat).max()))
    return squares, largest


def run(args: argparse.Namespace) -> int:
    """Stream over every frame of ``args.data``; the exit status (0: every value finite and readable).

    Raises
    ------
    FileNotFoundError
        ``args.data`` names nothing.
    """
    try:
        frames = open_frames(args.data)
        try:
            squares, largest = _sums(frames, not args.no_progress, args.data)
        finally:
            frames.close()
    except ValueError as exc:
        print(f"steerable-sr: error: {exc}", file=sys.stderr)
        return 1
    shape = "x".join(str(s) for s in frames.spatial)
    rms = math.sqrt(squares / (len(frames) * 3 * math.prod(frames.spatial)))
    print(f"{args.data}: {len(frames)} frames of {shape} ({frames.dtype}), every value finite; "
          f"rms velocity component {rms:.4g}, max |u_a| {largest:.4g}")
    return 0
