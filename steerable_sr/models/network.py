r"""Super-resolution networks (Wang et al. 2024, Sec. 5.5): one topology, five model kinds.

Public convention in and out: ``(B, 3 T, n, n, n)`` (``T`` velocity frames) ->
``(B, 3, s n, s n, s n)`` (one velocity frame, ``s`` = ``upscale``, a power of two)::

    input_map -> lift -> [UpBlock(x2), ResBlock] x log2(s) -> head -> output_map

* ``lift``: conv k=3 (velocity frames -> hidden) + norm + nonlinearity;
* ``UpBlock``: transposed conv (k=4, s=2, p=1: exact on the grid) + norm + nonlinearity + conv,
  added to the trilinear upsampling of its input (align_corners=False: exact), then norm + nonlinearity;
* ``ResBlock``: two convs with a residual;
* ``head``: conv k=3, hidden -> one velocity field;
* ``trilinear_skip`` (default on): the trilinear upsampling of the middle input frame is added to
  the output, so the network learns the correction to the trilinear baseline (exact on the grid).

Kinds (``KIND_SPECS``; docs/conventions.md, "Network topology"): ``cnn`` (plain Conv3d), ``gcnn``
(regular fields, :class:`~steerable_sr.nn.OctahedralConv`), ``rgcnn`` (regular fields, relaxed),
``steer`` (bands of irreps with a Fourier ReLU), ``rsteer`` (steer, relaxed). ``separable=True``
(``gcnn``/``rgcnn`` only) swaps every convolution into the regular hidden fields (lift, blocks) for
a :class:`~steerable_sr.nn.SeparableGroupConv`; the head stays a full convolution. ``input_map`` /
``output_map`` convert between the public convention and escnn's (:mod:`steerable_sr.fields`).
Every equivariant kind is exactly equivariant to the whole group in
eval mode (relaxed kinds: while their relaxed weights are trivial), and :meth:`export` returns the
same network as plain torch layers.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .export import export_plain
from .layers import EquivariantLayers, PlainLayers
from .table import layer_table

if TYPE_CHECKING:
    from ..nn.recompute import SlabBlock
    from .registry import ModelConfig

HEAD_INIT_SCALE = 0.01  # with the trilinear skip, the head's initial filters are scaled by this


class UpBlock(nn.Module):
    """``x (B, C, n^3) -> act(norm(conv(act(norm(up(x))))) + trilinear(x)) (B, C, (2n)^3)``."""

    def __init__(self, layers, t):
        super().__init__()
        self.up, self.norm1, self.act1 = layers.up(t), layers.norm(t), layers.act(t)
        self.conv, self.norm2, self.act2 = layers.conv(t, t), layers.norm(t), layers.act(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.pre_activation(x))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its last nonlinearity ``act2``."""
        h = self.conv(self.act1(self.norm1(self.up(x))))
        skip = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        return self.norm2(h + skip)

    def slab_block(self) -> "SlabBlock | None":
        """``pre_activation`` for :func:`~steerable_sr.nn.recompute.checkpoint_in_slabs` (None: not supported)."""
        return _slab_block(self.up, self.norm1, self.act1, self.conv, self.norm2, upsample=True)


class ResBlock(nn.Module):
    """``x -> act(x + norm(conv(act(norm(conv(x))))))``, shapes unchanged."""

    def __init__(self, layers, t):
        super().__init__()
        self.conv1, self.norm1, self.act1 = layers.conv(t, t), layers.norm(t), layers.act(t)
        self.conv2, self.norm2, self.act2 = layers.conv(t, t), layers.norm(t), layers.act(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.pre_activation(x))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its last nonlinearity ``act2``."""
        return x + self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))

    def slab_block(self) -> "SlabBlock | None":
        """``pre_activation`` for :func:`~steerable_sr.nn.recompute.checkpoint_in_slabs` (None: not supported)."""
        return _slab_block(self.conv1, self.norm1, self.act1, self.conv2, self.norm2, upsample=False)


def _slab_block(first, norm1, act, second, norm2, upsample: bool) -> "SlabBlock | None":
    """The block's layers as a :class:`~steerable_sr.nn.recompute.SlabBlock` if they are escnn layers with
    one dense filter per convolution (``OctahedralConv``: the kinds gcnn, rgcnn, steer, rsteer without
    ``separable``), else None."""
    from ..nn import FieldBatchNorm, OctahedralConv
    from ..nn.recompute import SlabBlock

    layers = [getattr(layer, "module", None) for layer in (first, norm1, act, second, norm2)]
    convs, norms = (layers[0], layers[3]), (layers[1], layers[4])
    if not all(isinstance(c, OctahedralConv) for c in convs) or not all(isinstance(n, FieldBatchNorm) for n in norms):
        return None
    return SlabBlock(*layers, upsample=upsample)


class SuperResolutionNet(nn.Module):
    """``(B, 3 T, n, n, n) -> (B, 3, s n, s n, s n)`` in the public convention (see module docstring)."""

    #: With ``checkpoint_blocks``: the largest float32 depth slab of one activation that a block's
    #: backward computes at once (:func:`~steerable_sr.nn.recompute.checkpoint_in_slabs`).
    slab_bytes = 4 * 2 ** 20

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
        """``stages(lift(h))`` with every block checkpointed up to its last nonlinearity, which runs
        outside: the nonlinearity keeps its output for backward, and that output is the next block's
        input (kept anyway), so the recomputation in backward makes no second copy of it.

        Up/ResBlocks of OctahedralConv layers (gcnn, rgcnn, steer, rsteer) are recomputed in depth
        slabs (:func:`~steerable_sr.nn.recompute.checkpoint_in_slabs`: at most two activations of the
        block's size besides its input and gradient); the lift, and the blocks of cnn and separable
        models, with :func:`_checkpointed` (``torch.utils.checkpoint``, autograd's own backward)."""
        from ..nn.recompute import checkpoint_in_slabs

        for block in (self.lift, *self.stages):
            pre_activation, activation = _split_activation(block)
            slabs = block.slab_block() if hasattr(block, "slab_block") else None
            if slabs is not None:
                h = activation(checkpoint_in_slabs(h, slabs, self.slab_bytes))
            else:
                h = activation(_checkpointed(pre_activation, block, h))
        return h

    # ---- relaxed layers -----------------------------------------------------------------------

    def relaxed_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, layer)`` for every relaxed convolution, in forward order."""
        from ..symmetry import relaxed_layers

        yield from relaxed_layers(self)

    def equivariance_penalty(self) -> torch.Tensor:
        """Sum over relaxed layers of the non-trivial irrep norms of their relaxed weights."""
        penalties = [layer.equivariance_penalty() for _, layer in self.relaxed_layers()]
        return torch.stack(penalties).sum() if penalties else next(self.parameters()).new_zeros(())

    # ---- summaries and export ------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def layer_table(self, input_size: int | None = None) -> str:
        """A Markdown table: every leaf layer, its shape summary and parameter count; with
        ``input_size`` n also its output shape (:func:`~.table.layer_table`)."""
        return layer_table(self, input_size)

    def export(self) -> nn.Module:
        """The same network with plain torch leaves (Conv3d, ConvTranspose3d, BatchNorm3d, ReLU,
        1x1 Conv3d): no escnn object inside; ``torch.jit.script`` accepts it. Same output in eval mode."""
        return export_plain(self).eval()


#: Buffers that a forward pass in training mode updates (batch-norm running statistics).
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _split_activation(block: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """``(pre_activation, activation)`` with ``block(x) == activation(pre_activation(x))``: the lift
    (``conv, norm, act``) or an Up/ResBlock."""
    if isinstance(block, nn.Sequential):
        return block[:-1], block[-1]
    return block.pre_activation, block.act2


def _checkpointed(function: Callable[[torch.Tensor], torch.Tensor], block: nn.Module,
                  x: torch.Tensor) -> torch.Tensor:
    """``function(x)``, a part of ``block``, keeping only ``x`` for backward (``torch.utils.checkpoint``,
    non-reentrant): backward runs ``function`` again. That second run computes the same tensors (in
    training mode the norms use batch statistics, not running ones) but would update the running
    statistics a second time, so it runs with ``block``'s restored to their values before it: the
    result is exactly the step without checkpointing."""
    first = True

    def run(x: torch.Tensor) -> torch.Tensor:
        nonlocal first
        if first:
            first = False
            return function(x)
        running = [b for name, b in block.named_buffers() if name.rsplit(".", 1)[-1] in RUNNING_STATISTICS]
        saved = [b.clone() for b in running]
        try:
            return function(x)
        finally:
            for b, value in zip(running, saved):
                b.copy_(value)

    return torch.utils.checkpoint.checkpoint(run, x, use_reentrant=False)
