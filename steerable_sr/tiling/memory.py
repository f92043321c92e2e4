r"""Memory of tiled prediction: memory sizes (``"2GB"``), the peak memory of one tile, and the tile
edge that fits a budget.

**Estimate.** Every tensor of a tile's forward pass is ``C x (2^j E)^3`` for an input box of edge ``E``
(the networks keep the box's shape at every grid), so the peak memory of a tile is ``b E^3`` plus
what does not grow with the box (filters, caches: made once, before the first tile). :func:`tile_memory`
measures ``b`` on one forward pass of a small box: :class:`TensorMemory` follows every tensor storage
the pass allocates (on any device, through TorchScript too) and records the peak of the live bytes.
Measuring, rather than counting channels of the widest layer, takes in what a count would have to
model per kind: how many activations are alive at once (four of the finest grid's in an UpBlock), the
Fourier nonlinearity's sign mask and slices, TorchScript freeing earlier than eager code.

**Safety factor.** The tracker sees tensors, not the memory beyond them: the allocator's rounding
and fragmentation, and the workspaces that a convolution allocates inside its kernel (oneDNN's
blocked copies of narrow activations on CPU). Measured on 2 CPU cores against the growth of peak
RSS: 1.24x the tracked peak for rgcnn and 1.42x for cnn during tiled predictions (docs/benchmarks.md,
"Tiled prediction"), 0.97x for rgcnn and 1.17x for cnn on one 20^3 / 30^3 box, and for their
TorchScript exports (the form ``steerable-sr export`` writes) 1.26x and 1.93x. :data:`SAFETY` = 2
covers them all, for a tile edge ``2^(1/3) = 1.26`` times smaller than the tracked peak alone allows.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .predict import axis_tiles, placement
from .receptive import declared_geometry, receptive_field, upscale_of

#: Bytes per unit of a memory size (case-insensitive): decimal and binary prefixes.
MEMORY_UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
                "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
#: The estimated peak of a tile is the tracked peak times this (module docstring).
SAFETY = 2.0
#: Edge (low-resolution voxels) of the box that :func:`tile_memory` measures.
CALIBRATION_EDGE = 8
#: The share of what a device can give (:func:`available_memory`) that one tile may use by default
#: (:func:`default_max_memory`): the rest covers the process's own footprint and other processes.
DEFAULT_SHARE = 0.5


def parse_memory(text: str) -> int:
    """Bytes of a memory size: a positive number with an optional unit, e.g. ``"2GB"`` (``2 * 10^9``),
    ``"512MiB"`` (``512 * 2^20``), ``"1.5 gib"``, ``"4096"`` (bytes). Units: B, kB, MB, GB, TB (powers
    of 1000) and KiB, MiB, GiB, TiB (powers of 1024), in any case.

    Raises
    ------
    ValueError
        Text that is not such a size, or a size below one byte.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([a-z]*)\s*", str(text), re.IGNORECASE)
    unit = match.group(3).lower() if match else None
    if match is None or (unit and unit not in MEMORY_UNITS):
        raise ValueError(f"memory size {text!r}: expected a number and a unit (B, kB, MB, GB, TB, KiB, MiB, GiB, "
                         f"TiB), e.g. 2GB or 512MiB")
    value = float(match.group(1)) * 10 ** int(match.group(2) or 0) * MEMORY_UNITS[unit or "b"]
    if value < 1:
        raise ValueError(f"memory size {text!r}: must be at least one byte")
    return int(value)


def format_memory(size: float) -> str:
    """``size`` bytes as text with a decimal unit: ``"2.15 GB"``, ``"512 MB"``."""
    for unit in ("TB", "GB", "MB", "kB"):
        if size >= MEMORY_UNITS[unit.lower()]:
            return f"{size / MEMORY_UNITS[unit.lower()]:.3g} {unit}"
    return f"{size:.0f} B"


def available_memory(device: str | torch.device) -> int:
    """Bytes that ``device`` can give now: free memory of a CUDA device, ``MemAvailable`` of the host
    for the CPU (free pages where ``/proc/meminfo`` does not exist)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_max_memory(device: str | torch.device) -> int:
    """The default budget of one tile on ``device``: :data:`DEFAULT_SHARE` of :func:`available_memory`."""
    return int(DEFAULT_SHARE * available_memory(device))


class TensorMemory(TorchDispatchMode):
    """Within ``with TensorMemory() as memory:``, ``memory.peak`` is the largest number of bytes held at
    once by tensor storages allocated inside the block (views and in-place results of existing
    tensors are not allocations; tensors made before the block are not counted).

    Every operator call passes through :meth:`__torch_dispatch__`, TorchScript's included; a storage is
    alive as long as a weak reference to it has not expired. Memory that is not a tensor storage (the
    allocator's slack, kernels' internal workspaces) is not seen.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._live = {key: entry for key, entry in self._live.items() if not entry[0].expired()}
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in inputs and storage._cdata not in self._live:
                    self._live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self._live.values()))
        return out


@dataclass(frozen=True)
class TileMemory:
    """The estimated peak memory of one tile of :func:`~.predict.predict_tiled` against its box edge.

    Attributes
    ----------
    bytes_per_voxel:
        Bytes per low-resolution voxel of the input box: the tracked peak of the forward pass, the
        input box (read, and converted to the model's device and dtype) and the tile's output copy,
        divided by ``E^3``, times :data:`SAFETY`.
    """

    bytes_per_voxel: float

    def peak(self, box_edge: int) -> float:
        """Estimated peak bytes of a tile whose input box has edge ``box_edge`` (low-resolution voxels)."""
        return self.bytes_per_voxel * box_edge ** 3


def tile_memory(model: nn.Module, in_channels: int, edge: int = CALIBRATION_EDGE) -> TileMemory:
    """Measure :class:`TileMemory` on one forward pass of a random box of ``edge`` low-resolution voxels
    (after a pass on a ``2^3`` box that makes the eval-mode caches: they are not per tile).

    Parameters
    ----------
    model:
        The network in eval mode, on the device and in the dtype of the prediction.
    in_channels:
        ``C_in`` of its input ``(1, C_in, E, E, E)``.
    edge:
        The measured box's edge ``E``.
    """
    declared = declared_geometry(model)
    if declared is not None:
        return TileMemory(declared.bytes_per_voxel)
    device, dtype = placement(model)
    with torch.no_grad():
        model(torch.zeros(1, in_channels, 2, 2, 2, device=device, dtype=dtype))
        box = torch.randn(1, in_channels, edge, edge, edge, device=device, dtype=dtype)
        with TensorMemory() as memory:
            output = model(box)
    tile_bytes = memory.peak + 2 * box.nbytes + output.nbytes
    return TileMemory(SAFETY * tile_bytes / edge ** 3)


def auto_tile(model: nn.Module, in_channels: int, size: int, max_memory: int, *, periodic: bool = False,
              memory: TileMemory | None = None) -> int:
    """The tile edge for :func:`~.predict.predict_tiled` whose estimated peak fits ``max_memory``.

    The largest tile whose box (tile plus halo, :func:`~.predict.axis_tiles`) fits gives the fewest
    tiles per axis, ``k``; the tile is then the smallest with ``k`` tiles (same count, smaller boxes:
    the least halo work). A whole non-periodic volume that fits is one tile.

    Parameters
    ----------
    model:
        The network in eval mode, on the prediction's device.
    in_channels:
        ``C_in`` of its input.
    size:
        ``n``: the input volume's edge in low-resolution voxels.
    max_memory:
        Bytes that one tile may use at its peak (the process's own footprint, the model and the
        libraries, comes on top).
    periodic:
        As for :func:`~.predict.predict_tiled` (a periodic tile's box always carries the halo).
    memory:
        :func:`tile_memory` of the model, measured here if not given.

    Returns
    -------
    int
        The tile edge in high-resolution voxels, a multiple of the upscale factor.

    Raises
    ------
    ValueError
        ``max_memory`` too small for a tile of one low-resolution voxel with its halo.
    """
    upscale, halo = upscale_of(model), receptive_field(model)
    memory = tile_memory(model, in_channels) if memory is None else memory
    if not periodic and memory.peak(size) <= max_memory:
        return upscale * size
    edge = math.floor((max_memory / memory.bytes_per_voxel) ** (1 / 3))
    edge += memory.peak(edge + 1) <= max_memory  # the cube root in floating point may miss by one
    edge -= memory.peak(edge) > max_memory
    largest = edge - 2 * halo
    if largest < 1:
        smallest = 1 + 2 * halo
        raise ValueError(f"max memory {format_memory(max_memory)} is too small: the smallest tile (a box of "
                         f"{smallest}^3 low-resolution voxels, halo {halo}) needs about "
                         f"{format_memory(memory.peak(smallest))}")
    count = len(axis_tiles(size, largest, halo, periodic))
    return upscale * next(t for t in range(1, largest + 1) if len(axis_tiles(size, t, halo, periodic)) == count)
