r"""The receptive field of a super-resolution network, read from its convolutions.

A network of :mod:`steerable_sr.models` (escnn model, its :meth:`export` or a TorchScript load of the
export) is a chain of convolutions on voxel grids, pointwise layers (batch norm in eval mode,
nonlinearities, 1x1 convolutions, the frame adapters) and trilinear upsamplings: one in parallel to
every transposed convolution (``UpBlock``'s skip) and one of the middle input frame to the output
(``trilinear_skip``). :func:`grid_layers` lists the convolutions in forward order;
:func:`receptive_field` walks them backwards from the output block of one low-resolution voxel and
returns the halo, in low-resolution voxels, that a tile needs so that its interior is computed
exactly as in the whole-volume pass.

**Dependency intervals** (one axis; the stencils are cubes, so the three axes are alike). Output
voxel ``o`` of a layer reads input voxels

* convolution, kernel ``k``, stride 1, padding ``p``: ``o - p .. o - p + k - 1``;
* transposed convolution, kernel ``k``, stride ``s``, padding ``p`` (``o = s i - p + j``,
  ``0 <= j < k``): ``ceil((o + p - k + 1) / s) .. floor((o + p) / s)``;
* trilinear upsampling by ``s`` (``align_corners=False``: ``o`` sits at ``(o + 1/2) / s - 1/2``):
  ``floor((2 o + 1 - s) / 2 s) .. ceil((2 o + 1 - s) / 2 s)``;
* pointwise layers: ``o`` itself.

The maps are monotone, so an interval ``[lo, hi]`` of outputs reads the interval spanned by the
reads of ``lo`` and of ``hi``. A residual ``x + f(x)`` reads what ``f`` reads (every convolution
reads its centre, padding ``(k - 1) / 2``); ``UpBlock``'s trilinear skip bypasses the block's
transposed convolution *and* the convolution after it, so uniting its reads with those of the
transposed convolution alone (on the larger interval the convolution left) over-approximates them.

**Sufficiency.** A layer computes voxel ``o`` of a tile exactly as in the whole volume if it reads
only voxels that are exact in its input: the ones inside the tile's box, or beyond the volume's
boundary on a side where the box ends at the boundary (zero padding, or the trilinear clamp, alike in
both passes). By induction from the input, every voxel whose backward dependency interval lies in the
box is exact. The tile's output block, ``upscale`` high-resolution voxels per low-resolution voxel,
starts on a low-resolution voxel, and every map commutes with a shift by one low-resolution voxel
(``upscale / 2^j`` voxels of an intermediate grid at ``2^j``), so the halo of any tile is that of one
low-resolution voxel's block, computed here.

**The default topology** (lift, ``[UpBlock, ResBlock] x log2(s)``, head; convolutions k = 3, p = 1;
transposed convolutions k = 4, s = 2, p = 1). Call ``r`` the margin of an interval around a block:
``[-r, 2^j - 1 + r]`` at grid ``2^j`` for the block of low-resolution voxel 0. The head gives
``r = 1`` at the output grid. A stage, walked backwards, widens by 3 (ResBlock 2, the UpBlock's
convolution 1), and the transposed convolution maps ``[a, b]`` to ``[ceil(a / 2) - 1, ceil(b / 2)]``
(even ``o = 2 m`` reads ``m - 1, m``, odd ``o = 2 m + 1`` reads ``m, m + 1``; its trilinear skip reads
the same), so ``r -> floor((r + 3) / 2) + 1``: ``1 -> 3 -> 4 -> 4 ...``. The lift adds 1:
**halo = 4 for s = 2, 5 for s >= 4**. The trilinear skip of the input reads ``[-1, 1]``, inside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class GridLayer:
    """The geometry of one convolution on the voxel grid (cubic kernel, one axis of it).

    Attributes
    ----------
    kernel, stride, padding:
        ``k``, ``s``, ``p`` of the convolution.
    transposed:
        Transposed convolution (upsampling by ``stride``); else stride 1.
    """

    kernel: int
    stride: int
    padding: int
    transposed: bool

    def reads(self, lo: int, hi: int) -> tuple[int, int]:
        """The input voxels ``[lo', hi']`` that the output voxels ``[lo, hi]`` depend on; a transposed
        convolution's include those of the trilinear upsampling in parallel to it (module docstring)."""
        k, s, p = self.kernel, self.stride, self.padding
        if not self.transposed:
            return lo - p, hi - p + k - 1
        conv = (_ceil_div(lo + p - k + 1, s), (hi + p) // s)
        trilinear = trilinear_reads(lo, hi, s)
        return min(conv[0], trilinear[0]), max(conv[1], trilinear[1])


def trilinear_reads(lo: int, hi: int, scale: int) -> tuple[int, int]:
    """The coarse voxels that the fine voxels ``[lo, hi]`` of a trilinear upsampling by ``scale``
    (``align_corners=False``) read: fine ``o`` sits at coarse ``(2 o + 1 - scale) / (2 scale)``."""
    return (2 * lo + 1 - scale) // (2 * scale), _ceil_div(2 * hi + 1 - scale, 2 * scale)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid_layers(module: nn.Module) -> list[GridLayer]:
    """The convolutions of ``module`` in forward order (the order of registration, which is the order
    of the forward pass in :mod:`steerable_sr.models`).

    A convolution is any module with ``kernel_size``, ``stride``, ``padding`` and ``transposed``:
    ``Conv3d`` / ``ConvTranspose3d`` (also inside TorchScript) and the escnn-based
    :class:`~steerable_sr.nn.grid.GridConv` (``OctahedralConv``, ``SeparableGroupConv``); its
    submodules are not visited (a separable convolution's 1x1 part is inside its own geometry).
    Every other module is taken as pointwise.

    Raises
    ------
    ValueError
        A convolution this walk does not describe: non-cubic kernel, dilation, output padding, a
        padding mode other than zeros, or a strided convolution that is not transposed.
    """
    layers: list[GridLayer] = []

    def visit(m: nn.Module) -> None:
        if all(hasattr(m, name) for name in ("kernel_size", "stride", "padding", "transposed")):
            layers.append(_geometry(m))
            return
        for child in m.children():
            visit(child)

    visit(module)
    return layers


def _geometry(m: nn.Module) -> GridLayer:
    def scalar(name: str, default: int | None = None) -> int:
        value = getattr(m, name, default)
        values = set(value) if isinstance(value, (tuple, list)) else {value}
        if len(values) != 1 or not isinstance(next(iter(values)), int):
            raise ValueError(f"{_name(m)}: {name}={value!r} is not one integer for all three axes")
        return values.pop()

    layer = GridLayer(scalar("kernel_size"), scalar("stride"), scalar("padding"), bool(m.transposed))
    if scalar("dilation", 1) != 1 or scalar("output_padding", 0) != 0 or getattr(m, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"{_name(m)}: dilation, output padding or a padding mode other than zeros; the "
                         f"receptive field covers plain and transposed convolutions with zero padding only")
    if layer.stride != 1 and not layer.transposed:
        raise ValueError(f"{_name(m)}: a strided convolution (stride {layer.stride}); the receptive field covers "
                         f"stride-1 and transposed convolutions only")
    return layer


def _name(m: nn.Module) -> str:
    return getattr(m, "original_name", type(m).__name__)


@dataclass(frozen=True)
class TileGeometry:
    """The tiling facts of a network whose layers cannot be read (an ExportedProgram's graph, an ONNX
    session), measured on the network when it was exported and stored with it.

    A module declares them as its attribute ``tile_geometry``; :func:`upscale_of`,
    :func:`receptive_field`, :func:`tileable` and :func:`~.memory.tile_memory` read a declared
    geometry before the layers.

    Attributes
    ----------
    upscale : int
        The upsampling factor.
    halo : int
        :func:`receptive_field` of the network, low-resolution voxels.
    bytes_per_voxel : float
        :attr:`~.memory.TileMemory.bytes_per_voxel` of the network (measured on the CPU).
    """

    upscale: int
    halo: int
    bytes_per_voxel: float


def declared_geometry(module: object) -> TileGeometry | None:
    """The :class:`TileGeometry` that ``module`` declares (attribute ``tile_geometry``), or ``None``."""
    geometry = getattr(module, "tile_geometry", None)
    return geometry if isinstance(geometry, TileGeometry) else None


def tileable(module: object) -> bool:
    """Whether tiled prediction can run ``module``: a torch module that declares its
    :class:`TileGeometry`, or has a transposed convolution among its :func:`grid_layers` (the
    upsampling that the tiles' geometry is read from)."""
    if not isinstance(module, nn.Module):
        return False
    return declared_geometry(module) is not None or any(layer.transposed for layer in grid_layers(module))


def _upsampling_layers(module: nn.Module) -> list[GridLayer]:
    """:func:`grid_layers` of a network that upsamples; ``ValueError`` for one whose layers show no
    upsampling (not a network of this package, or one whose convolutions are not modules)."""
    layers = grid_layers(module)
    if not any(layer.transposed for layer in layers):
        raise ValueError(f"{_name(module)}: no transposed convolution among its modules; tiled prediction reads the "
                         f"upscale factor and the halo from Conv3d / ConvTranspose3d / GridConv modules")
    return layers


def upscale_of(module: nn.Module) -> int:
    """The network's upsampling factor: the product of its transposed convolutions' strides
    (``ValueError`` if it has none), or the declared :class:`TileGeometry`'s."""
    declared = declared_geometry(module)
    if declared is not None:
        return declared.upscale
    return math.prod(layer.stride for layer in _upsampling_layers(module) if layer.transposed)


def receptive_field(module: nn.Module) -> int:
    """The halo, in low-resolution voxels, that makes a tile's interior equal the whole-volume output.

    Walks :func:`grid_layers` backwards from the output block of one low-resolution voxel
    (``[0, upscale - 1]``) and unites the result with the trilinear skip of the input (module
    docstring: the derivation, and ``3 + log2(upscale)`` for the default topology).

    Parameters
    ----------
    module:
        A super-resolution network ``(B, C_in, n, n, n) -> (B, C_out, s n, s n, s n)``: a model of
        :mod:`steerable_sr.models`, its export, or a TorchScript load of the export.

    Returns
    -------
    int
        ``h >= 0``: a tile whose input box extends ``h`` low-resolution voxels beyond its interior on
        every side inside the volume gives the whole-volume output in its interior, to float round-off.

    Raises
    ------
    ValueError
        A module without a transposed convolution, or with a convolution :func:`grid_layers` does not
        describe.

    Notes
    -----
    A module that declares its :class:`TileGeometry` (an export whose layers cannot be read) gives
    the halo measured on the network when it was exported.
    """
    declared = declared_geometry(module)
    if declared is not None:
        return declared.halo
    upscale, halo = _walk(_upsampling_layers(module))
    skip_lo, skip_hi = trilinear_reads(0, upscale - 1, upscale)
    return max(halo, -skip_lo, skip_hi)


def stage_geometry(module: nn.Module) -> tuple[int, int]:
    """The upscale factor and the halo of one part of a network on its own grid (e.g. a block of the
    decoder): :func:`receptive_field` without the trilinear skip of the input, for modules with or
    without upsampling.

    Parameters
    ----------
    module:
        A chain of :func:`grid_layers` and pointwise layers, ``(B, C, m, m, m) -> (B, C', u m, u m, u m)``.

    Returns
    -------
    (int, int)
        ``u`` (1 without a transposed convolution) and the halo ``h >= 0`` in voxels of the module's
        input grid: a box extending ``h`` voxels beyond a tile on every side inside the volume gives the
        whole-volume output in the tile.
    """
    return _walk(grid_layers(module))


def _walk(layers: list[GridLayer]) -> tuple[int, int]:
    """``(upscale, halo)``: the reads of the output block of input voxel 0, walked back through ``layers``."""
    upscale = math.prod(layer.stride for layer in layers if layer.transposed)
    lo, hi = 0, upscale - 1
    for layer in reversed(layers):
        lo, hi = layer.reads(lo, hi)
    return upscale, max(-lo, hi, 0)
