r"""The topology of the super-resolution networks (Wang et al. 2024, Sec. 5.5), common to every kind.

Public convention in and out: ``(B, 3 T, n, n, n)`` (``T`` velocity frames) ->
``(B, 3, s n, s n, s n)`` (one velocity frame, ``s`` = ``upscale``, a power of two)::

    input_map -> lift -> [UpBlock(x2), ResBlock] x log2(s) -> head -> output_map

* ``lift``: conv k=3 (velocity frames -> hidden) + norm + nonlinearity;
* :class:`UpBlock`: ``act(norm(conv(act(norm(up(x)))) + trilinear(x)))``, ``up`` a transposed conv
  (k=4, s=2, p=1: exact on the grid), ``trilinear`` the upsampling by 2 (align_corners=False: exact);
* :class:`ResBlock`: ``act(x + norm(conv(act(norm(conv(x))))))``;
* ``head``: conv k=3, hidden -> one velocity field;
* ``trilinear_skip`` (default on): the trilinear upsampling of the middle input frame is added to
  the output, so the network learns the correction to the trilinear baseline (exact on the grid).

The blocks are :class:`~steerable_sr.nn.block.ConvBlock` declarations; what each kind puts at the
leaves comes from :mod:`.layers` (docs/conventions.md, "Network topology"). ``input_map`` /
``output_map`` convert between the public convention and escnn's (:mod:`steerable_sr.fields`).
Every equivariant kind is exactly equivariant to the whole group in eval mode (relaxed kinds: while
their relaxed weights are trivial), and :meth:`SuperResolutionNet.export` returns the same network
as plain torch layers.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.block import ConvBlock
from ..nn.slabs import SLAB_BYTES
from .export import export_plain
from .layers import EquivariantLayers, PlainLayers
from .table import layer_table

if TYPE_CHECKING:
    from .registry import ModelConfig

HEAD_INIT_SCALE = 0.01  # with the trilinear skip, the head's initial filters are scaled by this


class UpBlock(ConvBlock):
    """``x (B, C, n, n, n) -> act(norm(conv(act(norm(up(x)))) + trilinear(x))) (B, C, 2n, 2n, 2n)``:
    the trilinear skip joins before the last norm.

    Parameters
    ----------
    layers : PlainLayers or EquivariantLayers
        The kind's layer factory.
    t : int or escnn.nn.FieldType
        The hidden channels or field type.
    """

    def __init__(self, layers: PlainLayers | EquivariantLayers, t):
        super().__init__(layers.up(t), layers.norm(t), layers.act(t), layers.conv(t, t), layers.norm(t), layers.act(t),
                         upsample_skip=True, skip_before_norm=True, names=("up", "conv"))


class ResBlock(ConvBlock):
    """``x (B, C, n, n, n) -> act(x + norm(conv(act(norm(conv(x))))))``, same shape: the skip joins
    after the last norm.

    Parameters
    ----------
    layers : PlainLayers or EquivariantLayers
        The kind's layer factory.
    t : int or escnn.nn.FieldType
        The hidden channels or field type.
    """

    def __init__(self, layers: PlainLayers | EquivariantLayers, t):
        super().__init__(layers.conv(t, t), layers.norm(t), layers.act(t), layers.conv(t, t), layers.norm(t),
                         layers.act(t), upsample_skip=False, skip_before_norm=False, names=("conv1", "conv2"))


class SuperResolutionNet(nn.Module):
    """``(B, 3 T, n, n, n) -> (B, 3, s n, s n, s n)`` in the public convention (module docstring).

    Equivariance (equivariant kinds, eval mode): ``net(g . x) == g . net(x)`` for every element ``g``
    of the group, ``g`` acting on voxels and vectors (:func:`steerable_sr.groups.act`); relaxed kinds
    while their relaxed weights are trivial, to the stabilizer of the weights otherwise.

    Parameters
    ----------
    config : ModelConfig

    Attributes
    ----------
    lift : nn.Sequential
        Convolution, norm, nonlinearity.
    stages : nn.Sequential
        ``[UpBlock, ResBlock] x log2(s)``.
    head : nn.Module
        Convolution to one velocity field.
    skip_frame : int or None
        First channel of the middle input frame (``None``: no trilinear skip).
    """

    #: With ``checkpoint_blocks``: the largest float32 depth slab of one activation that a block's
    #: backward computes at once (:func:`~steerable_sr.nn.checkpointing.checkpoint_chain`).
    slab_bytes = SLAB_BYTES

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layers = PlainLayers(config) if config.spec.field_family == "plain" else EquivariantLayers(config)
        self.in_channels, self.out_channels = 3 * config.frames, 3
        self.upscale = config.upscale
        self.checkpoint_blocks = config.checkpoint_blocks
        t = layers.hidden
        self.input_map = layers.input_map()
        self.lift = nn.Sequential(layers.conv(layers.input, t), layers.norm(t), layers.act(t))
        stages = []
        for _ in range(int(math.log2(config.upscale))):
            stages += [UpBlock(layers, t), ResBlock(layers, t)]
        self.stages = nn.Sequential(*stages)
        self.head = layers.conv(t, layers.output)
        self.output_map = layers.output_map()
        # Channels of the middle input frame, upsampled and added to the output (None: no skip).
        self.skip_frame = 3 * (config.frames // 2) if config.trilinear_skip else None
        if config.trilinear_skip:
            # Start close to the trilinear baseline: a small correction (relaxed weights stay at 1).
            with torch.no_grad():
                for name, p in self.head.named_parameters():
                    if "relaxed" not in name:
                        p.mul_(HEAD_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve ``x (B, 3 T, n, n, n)`` to ``(B, 3, s n, s n, s n)``.

        With ``checkpoint_blocks``, in training mode with autograd on, the lift and every block keep
        only their input for backward (:func:`~steerable_sr.nn.checkpointing.checkpoint_chain`): same
        output, gradients and running statistics.

        Raises
        ------
        ValueError
            For an input that is not ``(B, 3 T, n, n, n)`` with ``n >= 2``.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, n, n, n), got {list(x.shape)}")
        if x.shape[2] != x.shape[3] or x.shape[2] != x.shape[4] or x.shape[2] < 2:
            raise ValueError(f"expected a cubic input volume (B, {self.in_channels}, n, n, n) with n >= 2, "
                             f"got {list(x.shape)}")
        h = self.input_map(x)
        if self.checkpoint_blocks and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            h = self._checkpointed_blocks(h)
        else:
            h = self.stages(self.lift(h))
        y = self.output_map(self.head(h))
        if self.skip_frame is not None:
            middle = x[:, self.skip_frame:self.skip_frame + 3]
            y = y + F.interpolate(middle, scale_factor=float(self.upscale), mode="trilinear", align_corners=False)
        return y

    @torch.jit.unused
    def _checkpointed_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """``stages(lift(h))`` with the lift and every block checkpointed
        (:func:`~steerable_sr.nn.checkpointing.checkpoint_chain`)."""
        from ..nn.checkpointing import checkpoint_chain

        return checkpoint_chain((self.lift, *self.stages), h, self.slab_bytes)

    # ---- relaxed layers -----------------------------------------------------------------------

    def relaxed_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """Every relaxed convolution, in forward order.

        Yields
        ------
        tuple of (str, nn.Module)
            ``(name, layer)``.
        """
        from ..nn.relaxed import relaxed_layers

        yield from relaxed_layers(self)

    def equivariance_penalty(self) -> torch.Tensor:
        """Sum over relaxed layers of the non-trivial irrep norms of their relaxed weights.

        Returns
        -------
        torch.Tensor
            A scalar, zero iff every relaxed layer's weights are invariant (and for exact kinds).
        """
        penalties = [layer.equivariance_penalty() for _, layer in self.relaxed_layers()]
        return torch.stack(penalties).sum() if penalties else next(self.parameters()).new_zeros(())

    # ---- summaries and export ------------------------------------------------------------------

    def num_parameters(self) -> int:
        """The number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def layer_table(self, input_size: int | None = None) -> str:
        """The layer table in Markdown (:func:`~.table.layer_table`): every leaf layer, its parameter
        count and, with ``input_size`` ``n``, its output shape on a ``(1, 3 T, n, n, n)`` input."""
        return layer_table(self, input_size)

    def export(self) -> nn.Module:
        """The same network with plain torch leaves.

        Returns
        -------
        nn.Module
            In eval mode, with ``Conv3d``, ``ConvTranspose3d``, ``BatchNorm3d``, ``ReLU`` and 1x1
            ``Conv3d`` leaves: no escnn object inside; ``torch.jit.script`` accepts it. Same output
            as this network in eval mode.
        """
        return export_plain(self).eval()
