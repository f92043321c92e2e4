"""Read and write velocity cutouts in the JHTDB HDF5 layout.

The Johns Hopkins Turbulence Databases cutout services (pyJHTDB ``getbigCutout``, the giverny /
web cutout service) write one HDF5 dataset per time step, named ``Velocity_0001``,
``Velocity_0002``, ... (the number is the database time index), each of shape ``(nz, ny, nx, 3)``
with components ``(u_x, u_y, u_z)``, next to 1D coordinate datasets ``xcoor``, ``ycoor``,
``zcoor``. This module converts to and from the library's public convention ``(T, 3, nx, ny, nz)``
(spatial axis ``a`` = coordinate ``x_a``, channel ``a`` = component ``u_a``): eagerly
(:func:`read_jhtdb`), or lazily, a box at a time (:class:`JHTDBFrames`, what training uses).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
import torch

from ..io import atomic_output
from .checks import open_hdf5, velocity_dtype
from .frames import OpenFiles, VelocityFrames

__all__ = ["JHTDBCutout", "JHTDBFrames", "load_jhtdb", "read_jhtdb", "resolve_paths", "save_jhtdb"]

_VELOCITY = re.compile(r"^velocity_(\d+)$", re.IGNORECASE)
_COORDS = ("xcoor", "ycoor", "zcoor")
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")

PathLike = str | os.PathLike


@dataclass
class JHTDBCutout:
    """Velocity frames read from JHTDB cutout files.

    Attributes
    ----------
    velocity : torch.Tensor
        ``(T, 3, nx, ny, nz)`` float32, public convention, frames sorted by time index.
    times : list[int]
        ``(T,)`` database time indices (the number in ``Velocity_0001``).
    coords : tuple of np.ndarray or None
        ``(xcoor (nx,), ycoor (ny,), zcoor (nz,))`` when the files carry them.
    sources : list[str]
        ``(T,)`` ``"file:dataset"`` of each frame.
    """

    velocity: torch.Tensor
    times: list[int]
    coords: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    sources: list[str]


def resolve_paths(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """Expand a file, a directory (its ``*.h5`` / ``*.hdf5`` files), a glob pattern, or a list of those.

    Raises
    ------
    FileNotFoundError
        A named file or directory does not exist, or nothing matches.
    """
    items: Iterable[PathLike] = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else path_or_paths
    files: list[Path] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _H5_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: directory contains no HDF5 files ({', '.join(_H5_SUFFIXES)})")
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{text}: no file matches this pattern")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    if not files:
        raise FileNotFoundError("no input files given")
    return files


def _index_file(path: Path) -> tuple[list[tuple[int, str, str, tuple[int, ...]]], tuple[np.ndarray, ...] | None]:
    """``(time, file, dataset, shape)`` of each velocity dataset of one cutout file, and its coordinates."""
    with open_hdf5(path) as handle:
        entries = []
        for name in handle.keys():
            match = _VELOCITY.match(name)
            if match is None:
                continue
            node = handle[name]
            where = f"{path}:{name}"
            if not isinstance(node, h5py.Dataset):
                raise ValueError(f"{where}: expected a dataset, found a group")
            if node.ndim != 4 or node.shape[-1] != 3:
                raise ValueError(f"{where}: expected shape (nz, ny, nx, 3), got {node.shape}")
            velocity_dtype(node.dtype, where)
            entries.append((int(match.group(1)), str(path), name, tuple(node.shape)))
        if not entries:
            raise ValueError(f"{path}: no velocity datasets (names like Velocity_0001) among {sorted(handle.keys())}")
        coords = None
        if all(name in handle for name in _COORDS):
            coords = tuple(np.asarray(handle[name][()], dtype=np.float64).reshape(-1) for name in _COORDS)
    return entries, coords


class JHTDBFrames(VelocityFrames):
    """The velocity frames of JHTDB cutout files, opened, not loaded (see :mod:`~steerable_sr.data.frames`).

    The files are indexed (names, shapes, coordinates) when the object is made; the data of a box is
    read when asked for, ``(nz, ny, nx, 3)`` storage mapped to the public ``(3, nx, ny, nz)``.

    Parameters
    ----------
    path_or_paths
        A file, a directory, a glob pattern, or a list of those (see :func:`resolve_paths`). Times
        may be spread over files; they are sorted by their time index.

    Attributes
    ----------
    shape : tuple of int
        ``(T, 3, nx, ny, nz)``; frames are read as float32 (stored as float16, float32 or float64;
        integer velocities are refused).
    times : list[int]
        ``(T,)`` database time indices (the number in ``Velocity_0001``).
    coords : tuple of np.ndarray or None
        ``(xcoor (nx,), ycoor (ny,), zcoor (nz,))`` when the files carry them.
    sources : list[str]
        ``(T,)`` ``"file:dataset"`` of each frame.

    Raises
    ------
    FileNotFoundError
        Missing file or directory.
    ValueError
        Not an HDF5 file; no velocity datasets; a dataset not of shape ``(nz, ny, nx, 3)`` or not
        floating point; shapes, coordinates or time indices inconsistent across datasets.
    """

    #: ``z``, the slowest storage axis of ``(nz, ny, nx, 3)``.
    slab_axis = 2

    def __init__(self, path_or_paths: PathLike | Sequence[PathLike]) -> None:
        entries: list[tuple[int, str, str, tuple[int, ...]]] = []
        coords: tuple[np.ndarray, ...] | None = None
        coords_from = ""
        for path in resolve_paths(path_or_paths):
            file_entries, file_coords = _index_file(path)
            entries.extend(file_entries)
            if file_coords is None:
                continue
            if coords is None:
                coords, coords_from = file_coords, str(path)
            elif any(a.shape != b.shape or not np.allclose(a, b) for a, b in zip(coords, file_coords)):
                raise ValueError(f"{path}: coordinates differ from those of {coords_from}; files must cover the "
                                 f"same region")
        entries.sort(key=lambda entry: entry[0])
        sources = [f"{path}:{name}" for _, path, name, _ in entries]
        for (t0, _, _, _), (t1, _, _, _), where0, where1 in zip(entries, entries[1:], sources, sources[1:]):
            if t0 == t1:
                raise ValueError(f"time index {t0} appears twice: {where0} and {where1}")
        shape0 = entries[0][3]
        for (_, _, _, shape), where in zip(entries[1:], sources[1:]):
            if shape != shape0:
                raise ValueError(f"{where}: shape {shape} differs from {shape0} of {sources[0]}")
        nz, ny, nx, _ = shape0
        if coords is not None and tuple(len(c) for c in coords) != (nx, ny, nz):
            raise ValueError(f"{coords_from}: coordinate lengths {tuple(len(c) for c in coords)} "
                             f"do not match the velocity grid (nx, ny, nz) = {(nx, ny, nz)}")
        self.shape = (len(entries), 3, nx, ny, nz)
        self.dtype = np.dtype(np.float32)
        self.times = [t for t, _, _, _ in entries]
        self.coords = None if coords is None else (coords[0], coords[1], coords[2])
        self.sources = sources
        self._datasets = [(path, name) for _, path, name, _ in entries]
        self._files = OpenFiles()

    def where(self, t: int) -> str:
        return self.sources[t]

    def _read(self, t: int, box: tuple[slice, slice, slice]) -> np.ndarray:
        path, name = self._datasets[t]
        bx, by, bz = box
        # (z, y, x, component) -> (component, x, y, z)
        return self._files(path)[name][bz, by, bx, :].transpose(3, 2, 1, 0)

    def close(self) -> None:
        self._files.close()


def read_jhtdb(path_or_paths: PathLike | Sequence[PathLike]) -> JHTDBCutout:
    """Read every ``Velocity_NNNN`` dataset of one or more JHTDB cutout files.

    Parameters
    ----------
    path_or_paths
        A file, a directory, a glob pattern, or a list of those (see :func:`resolve_paths`). Times
        may be spread over files; they are sorted by their time index.

    Returns
    -------
    JHTDBCutout
        ``velocity`` ``(T, 3, nx, ny, nz)`` float32 in the public convention, plus metadata.

    Raises
    ------
    FileNotFoundError
        Missing file or directory.
    ValueError
        As :class:`JHTDBFrames`; and NaN or Inf in a frame (each frame is checked as it is read), or
        data that cannot be read.
    """
    frames = JHTDBFrames(path_or_paths)
    velocity = torch.empty(frames.shape, dtype=torch.float32)
    try:
        for t in range(len(frames)):
            velocity[t] = torch.from_numpy(frames.frame(t))
    finally:
        frames.close()
    return JHTDBCutout(velocity=velocity, times=frames.times, coords=frames.coords, sources=frames.sources)


def load_jhtdb(path_or_paths: PathLike | Sequence[PathLike]) -> torch.Tensor:
    """Velocity ``(T, 3, nx, ny, nz)`` (float32, public convention) of JHTDB cutout files.

    See :func:`read_jhtdb` for the accepted inputs and the errors.
    """
    return read_jhtdb(path_or_paths).velocity


def save_jhtdb(
    path: PathLike,
    velocity: torch.Tensor,
    coords: Sequence[np.ndarray | torch.Tensor] | None = None,
    start: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write velocity frames as a JHTDB-layout cutout file (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.h5`` file.
    velocity : torch.Tensor
        ``(T, 3, nx, ny, nz)`` frames in the public convention (a single frame ``(3, nx, ny, nz)``
        is accepted as ``T = 1``).
    coords : sequence of three 1D arrays, optional
        ``(xcoor, ycoor, zcoor)`` of lengths ``(nx, ny, nz)``; default ``2 pi i / n_a`` (a periodic
        box of side ``2 pi``).
    start : int
        Time index of the first frame: datasets ``Velocity_{start:04d}``, ``Velocity_{start+1:04d}``...
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The written file; on any error nothing is left at ``path``.
    """
    velocity = torch.as_tensor(velocity).detach()
    if velocity.dim() == 4:
        velocity = velocity.unsqueeze(0)
    if velocity.dim() != 5 or velocity.shape[1] != 3:
        raise ValueError(f"expected velocity of shape (T, 3, nx, ny, nz), got {tuple(velocity.shape)}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    nx, ny, nz = velocity.shape[2:]
    if coords is None:
        coords = [2.0 * np.pi * np.arange(m) / m for m in (nx, ny, nz)]
    coords = [np.asarray(torch.as_tensor(c).cpu(), dtype=np.float32).reshape(-1) for c in coords]
    if len(coords) != 3 or tuple(len(c) for c in coords) != (nx, ny, nz):
        raise ValueError(f"coords must be three 1D arrays of lengths (nx, ny, nz) = {(nx, ny, nz)}, "
                         f"got lengths {tuple(len(c) for c in coords)}")
    frames = velocity.to("cpu", torch.float32).numpy()
    with atomic_output(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as handle:
            for name, c in zip(_COORDS, coords):
                handle.create_dataset(name, data=c)
            for i, frame in enumerate(frames):
                # (component, x, y, z) -> (z, y, x, component)
                handle.create_dataset(f"Velocity_{start + i:04d}", data=np.ascontiguousarray(frame.transpose(3, 2, 1, 0)))
    return Path(path)
