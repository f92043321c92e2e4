r"""Stage-wise tiled prediction: the network run one stage at a time over the whole volume, each stage
in tiles with its own halo, the fields between stages in scratch HDF5 files.

Box tiling (:func:`~.predict.predict_tiled` on the whole network) recomputes every box's halo through
every layer: the halo is the network's receptive field, 5 low-resolution voxels at upscale 4, and a
box that fits a few GB is about 20 low-resolution voxels wide, so the boxes compute about 3x the
voxels of the volume. Run stage by stage instead (the lift, each block of the decoder, the head),
a tile needs only its stage's halo, 1 to 3 voxels of that stage's grid, and the box that a budget
allows is measured on that stage alone; the work falls to about 1.1x the whole-volume pass. The price
is disk: every stage's output, ``C`` channels on its grid, is written once and read once, and at
most two of them exist at a time (:func:`scratch_bytes`).

**The stages** (:func:`network_stages`) of a network of :mod:`steerable_sr.models` (the escnn model,
its export, a TorchScript load of the export, each optionally in :class:`~.volumes.PhysicalUnits`):
``input_map`` and ``lift``; every block of ``stages``; ``head`` and ``output_map``. The trilinear skip
of the middle input frame is one more, added to the output tile by tile at the end. The velocity
scale of :class:`~.volumes.PhysicalUnits` divides the first stage's input and multiplies the head's
output and the skip.

**Exactness.** Each stage is tiled like a network (:func:`~.predict.predict_tiled`) with the halo of
its own layers (:func:`~.receptive.stage_geometry`), so its tiles equal its whole-volume output to
float round-off, the volume's boundary included (a box that ends at the boundary zero-pads there,
like the whole pass); by induction so does the last stage. Periodic: every stage wraps its halo, and
the stages' periodic outputs compose to the network's periodic output, the whole-volume prediction of
the circularly padded input (:mod:`steerable_sr.tiling.predict`).
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .memory import auto_tile, tile_memory
from .predict import Volume, _cubic_edge, placement, predict_tiled
from .receptive import TileGeometry, stage_geometry, trilinear_reads

#: Chunk edge (voxels) of the scratch fields: ``(C, 8, 8, 8)`` float32 chunks are 200 kB at C = 100.
SCRATCH_CHUNK = 8
#: HDF5 chunk cache (bytes) of a scratch file: the chunks a box row touches are read once.
SCRATCH_CACHE = 64 * 2 ** 20


class Stage(nn.Module):
    """A part of a network as a tileable map ``(B, C, m, m, m) -> (B, C', u m, u m, u m)``:
    ``modules`` in order, the input divided by ``scale_in`` and the output multiplied by ``scale_out``.

    :meth:`measure` declares its :class:`~.receptive.TileGeometry`, which :func:`~.predict.predict_tiled`
    and :func:`~.memory.auto_tile` read.
    """

    def __init__(self, modules: Sequence[nn.Module], scale_in: float = 1.0, scale_out: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(*modules)
        self.scale_in, self.scale_out = scale_in, scale_out
        self.tile_geometry: TileGeometry | None = None
        self.training = False  # a view of a network in eval mode (its own modules keep their mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_in != 1.0:
            x = x / self.scale_in
        y = self.body(x)
        return y * self.scale_out if self.scale_out != 1.0 else y

    def geometry(self) -> tuple[int, int]:
        """``(upscale, halo)`` of its layers (:func:`~.receptive.stage_geometry`)."""
        return stage_geometry(self.body)

    def measure(self, in_channels: int) -> "Stage":
        """Declare its :meth:`geometry` and its memory per input voxel (measured on a small box)."""
        self.tile_geometry = None
        memory = tile_memory(self, in_channels)
        self.tile_geometry = TileGeometry(*self.geometry(), memory.bytes_per_voxel)
        return self


class TrilinearSkip(Stage):
    """The trilinear skip of a network: ``x (B, C_in, n, n, n) -> scale * trilinear(x[:, f:f+3])``
    upsampled by ``upscale`` (``align_corners=False``, as in the network's forward)."""

    def __init__(self, frame: int, upscale: int, scale: float, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__([])
        self.frame, self.upscale, self.scale = frame, upscale, scale
        # An empty buffer on the network's device and dtype, for placement().
        self.register_buffer("anchor", torch.empty(0, device=device, dtype=dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        middle = x[:, self.frame:self.frame + 3] / self.scale
        y = F.interpolate(middle, scale_factor=float(self.upscale), mode="trilinear", align_corners=False)
        return y * self.scale

    def geometry(self) -> tuple[int, int]:
        lo, hi = trilinear_reads(0, self.upscale - 1, self.upscale)
        return self.upscale, max(-lo, hi, 0)


@dataclass(frozen=True)
class NetworkStages:
    """The stages of a network (:func:`network_stages`).

    Attributes
    ----------
    stages:
        The chain ``input -> ... -> output`` without the skip.
    channels:
        ``C`` of each stage's input, and of the last one's output: ``len(stages) + 1`` numbers.
    upscales:
        ``u`` of each stage.
    skip:
        The trilinear skip, added to the last stage's output; ``None`` for a network without one.
    """

    stages: tuple[Stage, ...]
    channels: tuple[int, ...]
    upscales: tuple[int, ...]
    skip: TrilinearSkip | None


def network_stages(model: nn.Module) -> NetworkStages | None:
    """The stages of a network of :mod:`steerable_sr.models` (module docstring), measured; ``None`` for
    a module that does not show them (an ExportedProgram, an ONNX session, another network).

    Parameters
    ----------
    model:
        The network in eval mode, or :class:`~.volumes.PhysicalUnits` of it, on the prediction's device.
    """
    if model.training:
        raise ValueError("stage-wise prediction needs the model in eval mode (model.eval()): batch norm must apply "
                         "its running statistics")
    net, scale = model, 1.0
    if hasattr(model, "net") and hasattr(model, "scale"):  # PhysicalUnits
        net, scale = model.net, float(model.scale)
    names = ("input_map", "lift", "stages", "head", "output_map")
    if not all(isinstance(getattr(net, name, None), nn.Module) for name in names):
        return None
    in_channels = getattr(net, "in_channels", None)
    if not isinstance(in_channels, int):
        return None
    blocks = list(net.stages.children())
    stages = [Stage([net.input_map, net.lift], scale_in=scale)] + [Stage([block]) for block in blocks] \
        + [Stage([net.head, net.output_map], scale_out=scale)]
    device, dtype = placement(net)
    channels, h = [in_channels], torch.zeros(1, in_channels, 2, 2, 2, device=device, dtype=dtype)
    with torch.no_grad():
        for stage in stages:
            h = stage(h)
            channels.append(int(h.shape[1]))
    for stage, c in zip(stages, channels):
        stage.measure(c)
    skip_frame = getattr(net, "skip_frame", None)
    upscales = tuple(stage.tile_geometry.upscale for stage in stages)
    skip = None
    if skip_frame is not None:
        skip = TrilinearSkip(int(skip_frame), math.prod(upscales), scale, device, dtype).measure(in_channels)
    return NetworkStages(tuple(stages), tuple(channels), upscales, skip)


def scratch_bytes(stages: NetworkStages, size: int, dtype: torch.dtype = torch.float32) -> int:
    """The most disk that :func:`predict_staged` holds at once for an input of edge ``size``: the input
    and the output field of the stage whose pair is largest (the last stage writes into the target)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    edges = [size]
    for u in stages.upscales:
        edges.append(edges[-1] * u)
    fields = [c * e ** 3 * itemsize for c, e in zip(stages.channels, edges)]
    inner = fields[1:-1]  # the fields between stages, written to scratch
    pairs = [inner[0]] + [a + b for a, b in zip(inner, inner[1:])] if inner else [0]
    return max(pairs)


def predict_staged(model: nn.Module, source: Volume, target: Volume, *, max_memory: int,
                   scratch: str | os.PathLike, periodic: bool = False,
                   stages: NetworkStages | None = None) -> list[int]:
    """Write ``model(source)`` into ``target`` stage by stage (module docstring).

    Parameters
    ----------
    model:
        A network of :mod:`steerable_sr.models` in eval mode (or :class:`~.volumes.PhysicalUnits` of it).
    source, target:
        As for :func:`~.predict.predict_tiled`; ``target`` is also read back where the skip is added,
        so it must support reading a box (numpy, torch, ``h5py``, :class:`~.volumes.JHTDBTarget`).
    max_memory:
        Bytes that one tile of a stage may use at its peak (:func:`~.memory.auto_tile`).
    scratch:
        An existing directory for the fields between stages (temporary files, removed at the end, also
        on an error): it needs :func:`scratch_bytes` of free space.
    periodic:
        The volume is periodic: every stage wraps its halo.
    stages:
        :func:`network_stages` of the model, if already measured.

    Returns
    -------
    list of int
        The tile edge of each stage (voxels of its output grid), then of the skip.

    Raises
    ------
    ValueError
        A model in training mode or without visible stages, source or target shapes that do not fit,
        NaN or Inf in a box (:func:`~.predict.predict_tiled`).
    """
    stages = network_stages(model) if stages is None else stages
    if stages is None:
        raise ValueError(f"{type(model).__name__}: stage-wise prediction needs a network of steerable_sr.models "
                         f"(input_map, lift, stages, head, output_map); tile it as a whole with predict_tiled")
    size = _cubic_edge(source, "source")
    upscale = math.prod(stages.upscales)
    if _cubic_edge(target, "target") != upscale * size:
        raise ValueError(f"target of shape {tuple(target.shape)} does not fit the source {tuple(source.shape)}: its "
                         f"edge must be {upscale} x {size} = {upscale * size} (upscale x input edge)")
    _, dtype = placement(model)
    tiles, current, edge, live = [], source, size, []
    try:
        for j, stage in enumerate(stages.stages):
            out_edge = edge * stages.upscales[j]
            if j == len(stages.stages) - 1:
                out = target
            else:
                handle, path = _scratch_file(Path(scratch))
                live.append((handle, path))
                channels = stages.channels[j + 1]
                out = handle.create_dataset("field", shape=(channels, out_edge, out_edge, out_edge),
                                            dtype=torch.empty(0, dtype=dtype).numpy().dtype,
                                            chunks=(channels, *(min(SCRATCH_CHUNK, out_edge),) * 3))
            tile = auto_tile(stage, stages.channels[j], edge, max_memory, periodic=periodic)
            predict_tiled(stage, current, out, tile=tile, periodic=periodic)
            tiles.append(tile)
            while len(live) > (out is not target):  # the stage's input field is consumed
                _remove(*live.pop(0))
            current, edge = out, out_edge
        if stages.skip is not None:
            tile = auto_tile(stages.skip, stages.channels[0], size, max_memory, periodic=periodic)
            predict_tiled(stages.skip, source, _Sum(target), tile=tile, periodic=periodic)
            tiles.append(tile)
    finally:
        for handle, path in live:
            _remove(handle, path)
    return tiles


def _scratch_file(directory: Path) -> tuple[h5py.File, Path]:
    """A new HDF5 file in ``directory`` for one field between stages."""
    fd, name = tempfile.mkstemp(prefix=".steerable-sr-stage-", suffix=".h5", dir=directory)
    os.close(fd)
    return h5py.File(name, "w", rdcc_nbytes=SCRATCH_CACHE), Path(name)


def _remove(handle: h5py.File, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


class _Sum:
    """A target volume that adds what is written into it to what it holds."""

    def __init__(self, volume: Volume) -> None:
        self.volume, self.shape = volume, tuple(volume.shape)

    def __setitem__(self, index: tuple, value) -> None:
        current = torch.as_tensor(np.asarray(self.volume[index])) if not isinstance(self.volume, torch.Tensor) \
            else self.volume[index]
        total = current + torch.as_tensor(value).to(current.device, current.dtype)
        self.volume[index] = total if isinstance(self.volume, torch.Tensor) else total.numpy()
