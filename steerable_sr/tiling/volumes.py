r"""The volumes of velocity files, read and written box by box (:func:`~.predict.predict_tiled`), and a
network in physical units: what ``steerable-sr predict`` tiles.

* :class:`FrameWindow`: ``count`` consecutive frames of a
  :class:`~steerable_sr.data.frames.VelocityFrames` (a JHTDB cutout, a generated file, a tensor) as one
  network input ``(3 count, n, n, n)``, channel ``3 i + a`` = component ``a`` of frame ``i``, read a box
  at a time, block-averaged on the way when the file holds a higher resolution;
* :class:`JHTDBTarget`: one ``Velocity_NNNN`` dataset ``(nz, ny, nx, 3)`` of an HDF5 file as the volume
  ``(3, nx, ny, nz)`` of the public convention, written a box at a time; :func:`create_jhtdb_frames`
  makes a file's datasets in the layout of :func:`~steerable_sr.data.jhtdb.save_jhtdb` (same names,
  shapes, dtypes and coordinates), chunked;
* :class:`PhysicalUnits`: a network on velocities in physical units: the input divided by the training
  data's velocity scale, the output multiplied by it, the arithmetic of
  :class:`~steerable_sr.export.InferenceModel`.
"""
from __future__ import annotations

from typing import Sequence

import h5py
import numpy as np
import torch
from torch import nn

from ..data.checks import check_finite
from ..data.dataset import downsample
from ..data.frames import VelocityFrames

#: Chunk edge (voxels) of :func:`create_jhtdb_frames`: ``(64, 64, 64, 3)`` float32 chunks are 3 MiB.
CHUNK_EDGE = 64


def _box(index: tuple, size: int, scale: int = 1) -> tuple[slice, slice, slice]:
    """The spatial slices of ``index`` ``(channels, x, y, z)`` on an axis of ``size`` voxels, times
    ``scale``; the channel index must select every channel."""
    channels, *box = index
    if channels != slice(None) or len(box) != 3 or any(not isinstance(s, slice) or s.step not in (None, 1)
                                                        for s in box):
        raise IndexError(f"a volume is indexed by (:, x, y, z) with slices of step 1, got {index!r}")
    return tuple(slice(scale * start, scale * stop) for start, stop, _ in (s.indices(size) for s in box))


class FrameWindow:
    """Frames ``start .. start + count - 1`` of ``frames`` as a network input volume, read a box at a time.

    Parameters
    ----------
    frames : VelocityFrames
        ``(T, 3, N, N, N)``, opened (nothing is read until a box is asked for).
    start, count : int
        The window's first frame and its number of frames.
    factor : int
        Block-average the frames by ``factor`` (a high-resolution file, ``N = factor n``): a box is read
        at ``factor`` times its size and averaged, :func:`~steerable_sr.data.dataset.downsample`.

    Attributes
    ----------
    shape : tuple of int
        ``(3 count, n, n, n)``, ``n = N / factor``.

    Indexing ``window[:, x, y, z]`` with slices returns the box ``(3 count, bx, by, bz)`` as float32
    (the whole-volume ``windows`` of the same frames, sliced); NaN or Inf raises ``ValueError`` naming
    the frame's file and dataset and the index in the frame.
    """

    def __init__(self, frames: VelocityFrames, start: int, count: int, factor: int = 1) -> None:
        edges = set(frames.spatial)
        if len(edges) != 1 or next(iter(edges)) % factor:
            raise ValueError(f"frames of grid {frames.spatial}: a window needs a cubic grid whose edge is a multiple "
                             f"of {factor}")
        self.frames, self.start, self.count, self.factor = frames, start, count, factor
        n = frames.spatial[0] // factor
        self.shape = (3 * count, n, n, n)

    def __getitem__(self, index: tuple) -> torch.Tensor:
        box = _box(index, self.shape[-1], self.factor)
        parts = []
        for t in range(self.start, self.start + self.count):
            values = self.frames.read(t, box)
            check_finite(values, self.frames.where(t), origin=(0, *(s.start for s in box)))
            parts.append(torch.from_numpy(values).float())
        window = torch.cat(parts)
        return downsample(window, self.factor) if self.factor > 1 else window


class JHTDBTarget:
    """A dataset ``(nz, ny, nx, 3)`` of the JHTDB layout written as the volume ``(3, nx, ny, nz)``.

    Parameters
    ----------
    dataset : h5py.Dataset
        ``Velocity_NNNN`` of a file opened for writing.

    Attributes
    ----------
    shape : tuple of int
        ``(3, nx, ny, nz)``.

    ``target[:, x, y, z] = box`` writes a box ``(3, bx, by, bz)`` (array or tensor) in its place;
    ``target[:, x, y, z]`` reads one back.
    """

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        nz, ny, nx, _ = dataset.shape
        self.shape = (3, nx, ny, nz)

    def __getitem__(self, index: tuple) -> np.ndarray:
        bx, by, bz = _box(index, self.shape[-1])
        return self.dataset[bz, by, bx, :].transpose(3, 2, 1, 0)

    def __setitem__(self, index: tuple, value: np.ndarray | torch.Tensor) -> None:
        bx, by, bz = _box(index, self.shape[-1])
        # (component, x, y, z) -> (z, y, x, component)
        self.dataset[bz, by, bx, :] = np.asarray(value, dtype=np.float32).transpose(3, 2, 1, 0)


def create_jhtdb_frames(handle: h5py.File, size: int, times: Sequence[int],
                        coords: Sequence[np.ndarray] | None) -> list[JHTDBTarget]:
    """Make the datasets of a JHTDB-layout file for ``len(times)`` frames ``(3, size, size, size)``, to
    be written box by box: ``xcoor``, ``ycoor``, ``zcoor`` (float32; default ``2 pi i / size``, as
    :func:`~steerable_sr.data.jhtdb.save_jhtdb`) and ``Velocity_{t:04d}`` for ``t`` in ``times``,
    float32 ``(size, size, size, 3)`` in chunks of :data:`CHUNK_EDGE` voxels per axis (``size`` if
    smaller). A chunk that several tiles share is written in parts (HDF5 reads it back in between).

    Returns
    -------
    list of JHTDBTarget
        The velocity datasets, in the order of ``times``.
    """
    if coords is None:
        coords = [2.0 * np.pi * np.arange(size) / size] * 3
    for name, c in zip(("xcoor", "ycoor", "zcoor"), coords):
        handle.create_dataset(name, data=np.asarray(c, dtype=np.float32).reshape(-1))
    chunk = min(CHUNK_EDGE, size)
    return [JHTDBTarget(handle.create_dataset(f"Velocity_{t:04d}", shape=(size, size, size, 3), dtype=np.float32,
                                              chunks=(chunk, chunk, chunk, 3)))
            for t in times]


class PhysicalUnits(nn.Module):
    """``net`` on velocities in physical units: ``x -> net(x / scale) * scale``.

    Parameters
    ----------
    net : nn.Module
        A super-resolution network ``(B, 3 frames, n, n, n) -> (B, 3, s n, s n, s n)`` in its training
        units (velocity divided by ``scale``); O_h-equivariant networks stay so (a scalar factor
        commutes with every rotation and reflection).
    scale : float
        The training data's velocity scale.
    """

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    @property
    def tile_geometry(self):
        """``net``'s declared :class:`~.receptive.TileGeometry` (``None`` if its layers are read)."""
        return getattr(self.net, "tile_geometry", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / self.scale) * self.scale
