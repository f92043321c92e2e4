r"""Velocity time series opened, not loaded: frames ``(T, 3, X, Y, Z)`` read a box at a time.

A :class:`VelocityFrames` serves any box of any frame of a velocity time series in the public
convention (spatial axis ``a`` = coordinate ``x_a``, channel ``a`` = component ``u_a``) and reads
only that box from where the frames are stored:

* :class:`TensorFrames`: a tensor in memory;
* :class:`GeneratedFrames`: the ``velocity`` dataset ``(T, 3, n, n, n)`` of a file written by
  :func:`~steerable_sr.data.generate.generate_dataset`, with its splits and attributes;
* :class:`~steerable_sr.data.jhtdb.JHTDBFrames`: JHTDB cutout files, one dataset per time.

A crop of a periodic volume that crosses the boundary wraps around (:meth:`VelocityFrames.crop`):
it is read as up to 8 boxes, at most two intervals per axis. Memory therefore scales with the crop,
not with the file: the whole-frame passes (the velocity scale, ``steerable-sr check``) go slab by
slab (:meth:`VelocityFrames.slabs`).

HDF5 files are opened on first use in each process (:class:`OpenFiles`) and never pickled open, so
a frames object can be handed to DataLoader workers (forked or spawned) and DDP processes: each
opens its own handles. Every value read by :meth:`~VelocityFrames.frame`,
:meth:`~VelocityFrames.crop` and :meth:`~VelocityFrames.slabs` is checked for NaN / Inf
(:func:`~steerable_sr.data.checks.check_finite`); the error names the file, the frame and the crop
origin or the position.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch

from .checks import check_finite, open_hdf5, velocity_dtype

__all__ = ["GeneratedFrames", "OpenFiles", "SLAB_BYTES", "TensorFrames", "VelocityFrames"]

#: Upper bound of one slab of :meth:`VelocityFrames.slabs` (unless a single plane is larger).
SLAB_BYTES = 64 * 2 ** 20

Box = tuple[slice, slice, slice]


class OpenFiles:
    """HDF5 files opened read-only on first use, one handle per file and process.

    A copy made by ``fork`` (a DataLoader worker) drops the handles it inherited and a pickled copy
    (``spawn`` workers, DDP processes) starts with none: each process opens its own, since HDF5
    handles must not be shared between processes.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._files: dict[str, h5py.File] = {}

    def __call__(self, path: str | os.PathLike) -> h5py.File:
        """The handle of ``path`` in this process (``ValueError`` naming a file that is not HDF5)."""
        if self._pid != os.getpid():
            self._pid, self._files = os.getpid(), {}
        key = os.fspath(path)
        handle = self._files.get(key)
        if handle is None:
            handle = self._files[key] = open_hdf5(key)
        return handle

    def close(self) -> None:
        """Close this process's handles (later reads open them again)."""
        if self._pid == os.getpid():
            for handle in self._files.values():
                handle.close()
        self._files = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _intervals(origin: int, size: int, length: int) -> list[tuple[slice, slice]]:
    """``(source, destination)`` slices covering ``size`` points from ``origin`` on a periodic axis of
    ``length`` points: one interval, or two when the range wraps past the end."""
    origin %= length
    if origin + size <= length:
        return [(slice(origin, origin + size), slice(0, size))]
    head = length - origin
    return [(slice(origin, length), slice(0, head)), (slice(0, size - head), slice(head, size))]


class VelocityFrames:
    """Frames ``(T, 3, X, Y, Z)`` read a box at a time (the base of the readers of this package).

    Subclasses set :attr:`shape`, :attr:`dtype` and :attr:`slab_axis` and implement :meth:`where`
    and :meth:`_read`.

    Attributes
    ----------
    shape : tuple of int
        ``(T, 3, X, Y, Z)``.
    dtype : np.dtype
        Dtype of the arrays returned.
    slab_axis : int
        Spatial axis (0, 1, 2 for ``x, y, z``) along which :meth:`slabs` cuts a frame: the one along
        which the storage is contiguous.
    """

    shape: tuple[int, int, int, int, int]
    dtype: np.dtype
    slab_axis: int = 0

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def spatial(self) -> tuple[int, int, int]:
        """``(X, Y, Z)``."""
        return tuple(self.shape[2:])

    def where(self, t: int) -> str:
        """Where frame ``t`` is stored (``file:dataset[t]``), the start of every error about it."""
        raise NotImplementedError

    def _read(self, t: int, box: Box) -> np.ndarray:
        """Box of frame ``t`` as stored: ``(3, len(box[0]), len(box[1]), len(box[2]))``, any float dtype."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the files opened by this process (the next read opens them again)."""

    def read(self, t: int, box: Box) -> np.ndarray:
        """Box ``(3, bx, by, bz)`` of frame ``t``, C-contiguous, of :attr:`dtype`; not checked for NaN.

        Raises
        ------
        ValueError
            The data cannot be read (a truncated or corrupt file), naming the frame.
        """
        try:
            values = self._read(t, box)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.where(t)}: cannot read the data ({exc})") from exc
        return np.ascontiguousarray(values, dtype=self.dtype)

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` ``(3, X, Y, Z)``, checked for NaN / Inf (``ValueError`` naming the frame)."""
        values = self.read(t, (slice(None),) * 3)
        check_finite(values, self.where(t))
        return values

    def crop(self, t: int, origin: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """The box ``(3, *size)`` of frame ``t`` starting at ``origin``, wrapping around periodically.

        Equal to ``torch.roll(frame, [-o for o in origin], dims=(1, 2, 3))[:, :sx, :sy, :sz]``, read
        as up to 8 boxes (two intervals per axis where the crop wraps).

        Parameters
        ----------
        t : int
            Frame.
        origin : sequence of three int
            First voxel of the crop, ``0 <= origin[a] < spatial[a]``.
        size : sequence of three int
            Edges, ``size[a] <= spatial[a]``.

        Raises
        ------
        ValueError
            A value is NaN or Inf: ``FILE:velocity[t], crop at (ox, oy, oz): N NaN or Inf value(s)
            (the first at index (c, i, j, k))`` with the index into the crop; or the data cannot be read.
        """
        origin, size = tuple(int(o) for o in origin), tuple(int(s) for s in size)
        out = np.empty((3, *size), dtype=self.dtype)
        pieces = [_intervals(o, s, n) for o, s, n in zip(origin, size, self.spatial)]
        for (sx, dx), (sy, dy), (sz, dz) in itertools.product(*pieces):
            out[:, dx, dy, dz] = self.read(t, (sx, sy, sz))
        check_finite(out, f"{self.where(t)}, crop at {origin}")
        return out

    def slabs(self, t: int, max_bytes: int | None = None) -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
        """Frame ``t`` in consecutive slabs along :attr:`slab_axis` of at most ``max_bytes`` (default
        :data:`SLAB_BYTES`), each checked for NaN / Inf.

        Yields
        ------
        origin : tuple of three int
            Position of the slab's first voxel in the frame.
        slab : np.ndarray
            ``(3, ...)``: the whole frame along the two other axes; along :attr:`slab_axis` as many
            planes as ``max_bytes`` holds (at least one).

        Raises
        ------
        ValueError
            NaN or Inf, with the position in the frame: ``FILE:velocity[t]: N NaN or Inf value(s) (the
            first at index (c, i, j, k))`` (``N`` counted in that slab).
        """
        axis = self.slab_axis
        spatial = self.spatial
        plane = 3 * math.prod(spatial) // spatial[axis] * self.dtype.itemsize
        step = max(1, (SLAB_BYTES if max_bytes is None else max_bytes) // plane)
        for start in range(0, spatial[axis], step):
            box = [slice(None)] * 3
            box[axis] = slice(start, min(start + step, spatial[axis]))
            origin = [0, 0, 0]
            origin[axis] = start
            values = self.read(t, tuple(box))
            check_finite(values, self.where(t), origin=(0, *origin))
            yield tuple(origin), values


class TensorFrames(VelocityFrames):
    """Frames of a tensor ``(T, 3, X, Y, Z)`` in memory (read without a copy; crops are copies).

    Parameters
    ----------
    velocity : torch.Tensor
        ``(T, 3, X, Y, Z)`` on the CPU, floating point (float16 and bfloat16 are read as float32).
    """

    def __init__(self, velocity: torch.Tensor) -> None:
        if velocity.dim() != 5 or velocity.shape[1] != 3:
            raise ValueError(f"expected velocity of shape (T, 3, X, Y, Z), got {tuple(velocity.shape)}")
        if velocity.dtype == torch.bfloat16:  # no numpy counterpart
            velocity = velocity.float()
        self._array = velocity.detach().cpu().numpy()
        self.shape, self.dtype = tuple(self._array.shape), velocity_dtype(self._array.dtype, "tensor")

    def where(self, t: int) -> str:
        return f"velocity[{t}]"

    def _read(self, t: int, box: Box) -> np.ndarray:
        return self._array[(t, slice(None), *box)]


class GeneratedFrames(VelocityFrames):
    """The ``velocity`` dataset ``(T, 3, n, n, n)`` of a file from ``generate_dataset``, opened lazily.

    Read as stored (float32 or float64), float16 as float32; integer velocities are refused.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Attributes
    ----------
    path : pathlib.Path
    splits : dict
        ``{"train": idx, "val": idx, "test": idx}``: int64 frame indices (the group ``splits``; empty
        without one).
    attrs : dict
        The file's attributes (generation parameters, ``periodic``, ``velocity_scale``, ...).

    Raises
    ------
    ValueError
        Not a readable HDF5 file, no dataset ``velocity`` of shape ``(T, 3, X, Y, Z)``, or not floating
        point (:func:`~steerable_sr.data.checks.velocity_dtype`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open_hdf5(self.path) as handle:
            node = handle.get("velocity")
            if not isinstance(node, h5py.Dataset) or node.ndim != 5 or node.shape[1] != 3:
                found = f"shape {node.shape}" if isinstance(node, h5py.Dataset) else "none"
                raise ValueError(f"{self.path}: expected a dataset 'velocity' of shape (T, 3, X, Y, Z), found {found}")
            self.shape, self.dtype = tuple(node.shape), velocity_dtype(node.dtype, f"{self.path}:velocity")
            splits = handle["splits"].items() if "splits" in handle else ()
            self.splits = {name: np.asarray(split[()], dtype=np.int64) for name, split in splits}
            self.attrs = dict(handle.attrs)
        self._files = OpenFiles()

    def where(self, t: int) -> str:
        return f"{self.path}:velocity[{t}]"

    def _read(self, t: int, box: Box) -> np.ndarray:
        return self._files(self.path)["velocity"][(t, slice(None), *box)]

    def close(self) -> None:
        self._files.close()
