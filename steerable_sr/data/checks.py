"""The checks every velocity input passes where it enters the package (generated datasets, JHTDB
cutouts, tensors given to ``predict``): the file opens as HDF5, the values are floating point and
finite.

All raise ``ValueError`` naming the file (and dataset or frame), so the command line reports them
as one ``steerable-sr: error: ...`` line.
"""
from __future__ import annotations

import os
from typing import Sequence

import h5py
import numpy as np
import torch

__all__ = ["check_finite", "open_hdf5", "velocity_dtype"]


def check_finite(values: np.ndarray | torch.Tensor, what: str, origin: Sequence[int] | None = None) -> None:
    """Refuse NaN or Inf in ``values``; ``what`` names them in the message (``file:dataset``, ...).

    Call it on each frame, crop or slab as it is read, so a large file is not traversed a second time.

    Parameters
    ----------
    values : np.ndarray or torch.Tensor
        Any shape.
    what : str
        Where the values come from, the start of the message.
    origin : sequence of int, optional
        Index of ``values[0, ..., 0]`` in the array that ``what`` names (a slab of a frame): the
        message gives the first bad value's index in that array. Default: indices into ``values``.
    """
    finite = torch.isfinite(values) if isinstance(values, torch.Tensor) else np.isfinite(values)
    if bool(finite.all()):
        return
    bad = ~finite
    count = int(bad.sum())
    first = [int(i) for i in (torch.nonzero(bad)[0] if isinstance(bad, torch.Tensor) else np.argwhere(bad)[0])]
    if origin is not None:
        first = [i + int(o) for i, o in zip(first, origin)]
    raise ValueError(f"{what}: {count} NaN or Inf value(s) (the first at index {tuple(first)}); "
                     f"velocities must be finite")


def velocity_dtype(stored: np.dtype | type | str, what: str) -> np.dtype:
    """The dtype in which velocities stored as ``stored`` are read: float32 and float64 as they are,
    float16 as float32.

    Parameters
    ----------
    stored : numpy dtype
        The dtype of the file's dataset (or of a tensor).
    what : str
        Where the values are stored (``file:dataset``), the start of the message.

    Raises
    ------
    ValueError
        Any other dtype, integers above all: a velocity scaled to integers (``int(100 u)``) would be
        read as ``100 u`` and give predictions 100 times too large.
    """
    stored = np.dtype(stored)
    if stored in (np.float32, np.float64):
        return stored
    if stored == np.float16:
        return np.dtype(np.float32)
    raise ValueError(f"{what}: velocity stored as {stored}; velocities must be floating point (float32 or float64; "
                     f"float16 is read as float32)")


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """``h5py.File(path, "r")``, with a ``ValueError`` naming ``path`` for a file that is not HDF5 or is
    truncated or corrupt."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc
