"""The checks every velocity input passes where it enters the package (generated datasets, JHTDB
cutouts, tensors given to ``predict``): the file opens as HDF5, and the values are finite.

Both raise ``ValueError`` naming the file (and dataset or frame), so the command line reports them
as one ``steerable-sr: error: ...`` line.
"""
from __future__ import annotations

import os

import h5py
import numpy as np
import torch

__all__ = ["check_finite", "open_hdf5"]


def check_finite(values: np.ndarray | torch.Tensor, what: str) -> None:
    """Refuse NaN or Inf in ``values``; ``what`` names them in the message (``file:dataset``, ...).

    Call it on each frame as it is read, so a large file is not traversed a second time.
    """
    finite = torch.isfinite(values) if isinstance(values, torch.Tensor) else np.isfinite(values)
    if bool(finite.all()):
        return
    bad = ~finite
    count = int(bad.sum())
    first = tuple(int(i) for i in (torch.nonzero(bad)[0] if isinstance(bad, torch.Tensor) else np.argwhere(bad)[0]))
    raise ValueError(f"{what}: {count} NaN or Inf value(s) (the first at index {first}); velocities must be finite")


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """``h5py.File(path, "r")``, with a ``ValueError`` naming ``path`` for a file that is not HDF5 or is
    truncated or corrupt."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc
