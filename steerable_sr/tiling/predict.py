r"""Tiled prediction: a super-resolution network applied box by box, so that neither the input nor the
output volume has to be in memory.

The output ``(C_out, s n, s n, s n)`` is cut into tiles of ``t`` low-resolution voxels per axis
(``tile = s t`` high-resolution voxels). Each tile's input is a cubic box of ``E`` low-resolution
voxels around it, read from the source, run through the network and cropped to the tile, which is
written to the target:

* non-periodic: ``E = min(n, t + 2 h)``, the box inside the volume (``[0, n)``): a side at the
  volume's boundary reads nothing beyond it, so the network's own zero padding (and the trilinear
  clamp) act there as in the whole-volume pass, and every side inside the volume carries at least the
  halo ``h``. A tile at the boundary needs no halo on its outer side, so the first tile of an axis
  is ``t + h`` wide, the tiles after it ``t``, and the last one takes the rest (at most ``t + h``,
  its box ending at ``n``): every box computes ``E`` voxels, the fewest boxes for that edge. A volume
  with ``n <= t + 2 h`` is one box. The boxes are cubes because the networks take cubic volumes only.
* periodic: tiles of ``t`` (the last one shorter when ``t`` does not divide ``n``), each in a box of
  ``E = t + 2 h`` with indices taken modulo ``n``: the result is the whole-volume prediction of the
  input circularly padded by ``h``, cropped to ``s n``.

With ``h >= receptive_field(model)`` (:mod:`.receptive`) every tile equals the whole-volume output
to float round-off. The model must be in eval mode: batch norm then applies its running statistics, a
per-voxel map (in training mode it would normalise each box by that box's statistics).

The source and target are *volumes*: anything with ``shape`` and numpy-style indexing by a tuple of
slices (numpy arrays, torch tensors, ``h5py`` datasets, memory maps), of shape ``(C, N, N, N)`` or
``(1, C, N, N, N)``; reads return arrays or tensors, writes receive a tensor for a torch target and a
numpy array otherwise. A source or target in another layout (several frames, channel-last, a velocity
scale) is a small class with that ``shape`` and ``__getitem__`` / ``__setitem__``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .receptive import receptive_field, upscale_of


class Volume(Protocol):
    """An array-like volume ``(C, N, N, N)`` or ``(1, C, N, N, N)`` read or written by boxes."""

    shape: tuple[int, ...]

    def __getitem__(self, index: tuple) -> Any: ...

    def __setitem__(self, index: tuple, value: Any) -> None: ...


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis, in low-resolution voxels.

    Attributes
    ----------
    start, stop:
        The tile's interior ``[start, stop)``: the output voxels ``[s start, s stop)`` it writes.
    box_start, box_edge:
        Its input box ``[box_start, box_start + box_edge)`` (indices modulo ``n`` when periodic).
    """

    start: int
    stop: int
    box_start: int
    box_edge: int

    def crop(self, upscale: int) -> slice:
        """The tile's interior in the box's output (high-resolution voxels)."""
        offset = self.start - self.box_start
        return slice(upscale * offset, upscale * (offset + self.stop - self.start))

    def output(self, upscale: int) -> slice:
        """The tile's interior in the output volume (high-resolution voxels)."""
        return slice(upscale * self.start, upscale * self.stop)

    def pieces(self, size: int) -> list[tuple[slice, slice]]:
        """``(volume slice, box slice)`` pairs that fill the box from a volume axis of ``size`` voxels:
        one pair inside the volume, several where a periodic box wraps around."""
        pairs, position, end = [], self.box_start, self.box_start + self.box_edge
        while position < end:
            source = position % size
            length = min(size - source, end - position)
            box = position - self.box_start
            pairs.append((slice(source, source + length), slice(box, box + length)))
            position += length
        return pairs


def axis_tiles(size: int, tile: int, halo: int, periodic: bool) -> list[AxisTile]:
    """The tiles of one axis of ``size`` low-resolution voxels (module docstring).

    Parameters
    ----------
    size:
        ``n``, the volume's edge in low-resolution voxels.
    tile:
        ``t >= 1``, the edge of the tiles inside the volume, in low-resolution voxels (non-periodic:
        ``t + h`` for the first tile, the rest for the last; periodic: the last tile keeps the rest).
    halo:
        ``h >= 0``, low-resolution voxels of context on every side inside the volume.
    periodic:
        Wrap the boxes around the axis instead of keeping them inside it.
    """
    if periodic:
        edge = tile + 2 * halo
        return [AxisTile(start, min(start + tile, size), start - halo, edge) for start in range(0, size, tile)]
    edge = min(size, tile + 2 * halo)
    tiles, start = [], 0
    while max(start - halo, 0) + edge < size:  # a box from this tile's halo on does not reach the end
        stop = start + (edge - halo if start == 0 else tile)
        tiles.append(AxisTile(start, stop, max(start - halo, 0), edge))
        start = stop
    tiles.append(AxisTile(start, size, size - edge, edge))
    return tiles


def work_ratio(size: int, tile: int, halo: int, periodic: bool) -> float:
    """The voxels the network computes over all boxes, over those of the whole volume: ``(sum of the box
    edges along an axis / n)^3`` (tile and halo in low-resolution voxels, as :func:`axis_tiles`)."""
    return (sum(t.box_edge for t in axis_tiles(size, tile, halo, periodic)) / size) ** 3


def predict_tiled(model: nn.Module, source: Volume, target: Volume, *, tile: int, halo: int | None = None,
                  periodic: bool = False) -> None:
    """Write ``model(source)`` into ``target``, one tile at a time (module docstring).

    Parameters
    ----------
    model:
        A super-resolution network in eval mode, ``(1, C_in, E, E, E) -> (1, C_out, s E, s E, s E)``:
        a model of :mod:`steerable_sr.models`, its export, or a TorchScript load of the export. Boxes
        go to its parameters' device and dtype.
    source:
        The input volume ``(C_in, n, n, n)`` or ``(1, C_in, n, n, n)`` (e.g. an ``h5py`` dataset),
        read one box per tile.
    target:
        The output volume ``(C_out, s n, s n, s n)`` or ``(1, C_out, s n, s n, s n)`` (e.g. an
        ``h5py`` dataset created with chunks), written one tile at a time; ``s`` is the model's
        upscale factor (:func:`~.receptive.upscale_of`).
    tile:
        The tile's edge in high-resolution voxels: a positive multiple of ``s``; a tile larger than
        the volume is the whole volume.
    halo:
        Low-resolution voxels of context around each tile; default :func:`~.receptive.receptive_field`
        of the model, the smallest that gives the whole-volume output (a smaller one gives wrong values
        near the tiles' sides).
    periodic:
        The volume is periodic: halos wrap around (the whole-volume prediction of the input circularly
        padded by the halo, cropped).

    Raises
    ------
    ValueError
        A model in training mode, a tile edge that is not a positive multiple of ``s``, a negative
        halo, source or target shapes that do not fit (checked before the first tile), a model output
        whose channels differ from the target's, or a box of the source holding NaN or Inf (the
        message names the box).
    """
    if model.training:
        raise ValueError("predict_tiled needs the model in eval mode (model.eval()): batch norm must apply its "
                         "running statistics")
    upscale = upscale_of(model)
    if not isinstance(tile, int) or tile < upscale or tile % upscale:
        raise ValueError(f"tile edge {tile!r} must be a positive multiple of the upscale factor {upscale} "
                         f"(in high-resolution voxels)")
    halo = receptive_field(model) if halo is None else halo
    if not isinstance(halo, int) or halo < 0:
        raise ValueError(f"halo must be an integer >= 0, got {halo!r}")
    size = _cubic_edge(source, "source")
    out_size = _cubic_edge(target, "target")
    if out_size != upscale * size:
        raise ValueError(f"target of shape {tuple(target.shape)} does not fit the source {tuple(source.shape)}: its "
                         f"edge must be {upscale} x {size} = {upscale * size} (upscale x input edge)")
    device, dtype = placement(model)
    axes = axis_tiles(size, min(tile // upscale, size), halo, periodic)
    with torch.no_grad():
        for tiles in itertools.product(axes, repeat=3):
            box = read_box(source, tiles, size).to(device, dtype)
            if not torch.isfinite(box).all():
                where = ", ".join(f"{t.box_start}:{t.box_start + t.box_edge}" for t in tiles)
                raise ValueError(f"the source holds NaN or Inf in the box [{where}] (low-resolution voxels)")
            output = model(box[None])[0]
            if output.shape[0] != target.shape[-4]:
                raise ValueError(f"the model writes {output.shape[0]} channels, the target of shape "
                                 f"{tuple(target.shape)} holds {target.shape[-4]}")
            interior = output[(slice(None), *(t.crop(upscale) for t in tiles))]
            write_box(target, tiles, upscale, interior)


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of the model's first parameter, else of its first buffer (a network run by
    another runtime keeps an empty one for that), else the CPU in float32."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return (tensor.device, tensor.dtype) if tensor is not None else (torch.device("cpu"), torch.float32)


def _cubic_edge(volume: Volume, name: str) -> int:
    """``N`` of a volume ``(C, N, N, N)`` or ``(1, C, N, N, N)``."""
    shape = tuple(volume.shape)
    if len(shape) not in (4, 5) or (len(shape) == 5 and shape[0] != 1) or len(set(shape[-3:])) != 1:
        raise ValueError(f"the {name} must be a cubic volume (C, N, N, N) or (1, C, N, N, N), got shape {shape}")
    return shape[-1]


def _channels(volume: Volume) -> tuple:
    """The index prefix that selects all channels of a volume: ``(:)`` or ``(0, :)``."""
    return (0,) * (len(volume.shape) - 4) + (slice(None),)


def read_box(source: Volume, tiles: tuple[AxisTile, AxisTile, AxisTile], size: int) -> torch.Tensor:
    """The input box ``(C_in, E, E, E)`` of a tile, in the source's dtype (read piece by piece where a
    periodic box wraps around)."""
    prefix, box = _channels(source), None
    for pieces in itertools.product(*(t.pieces(size) for t in tiles)):
        part = torch.as_tensor(source[prefix + tuple(volume for volume, _ in pieces)])
        if box is None:
            box = part.new_empty((part.shape[0], *(t.box_edge for t in tiles)))
        box[(slice(None), *(inside for _, inside in pieces))] = part
    return box


def write_box(target: Volume, tiles: tuple[AxisTile, AxisTile, AxisTile], upscale: int,
              interior: torch.Tensor) -> None:
    """Write a tile's interior ``(C_out, ...)`` into its place in the target."""
    index = _channels(target) + tuple(t.output(upscale) for t in tiles)
    target[index] = interior.to(target.device) if isinstance(target, torch.Tensor) else interior.cpu().numpy()

