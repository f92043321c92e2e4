r"""Activation checkpointing of a chain of blocks: each keeps only its input for backward.

:func:`checkpoint_chain` runs blocks one after another, each checkpointed up to its last
nonlinearity, which runs outside: the nonlinearity keeps its output for backward, and that output
is the next block's input (kept anyway), so the recomputation in backward makes no second copy of
it. Which recomputation a block gets is decided by :func:`recompute_of` from its declaration:

* :attr:`Recompute.SLABS` (:func:`~.recompute.checkpoint_in_slabs`): a :class:`~.block.ConvBlock`
  whose convolutions are :class:`~.conv.OctahedralConv`, norms :class:`~.pointwise.FieldBatchNorm`
  and nonlinearities :class:`~.pointwise.FourierReLU` (escnn layers behind a
  :class:`~.tensor_op.TensorOp`): the blocks of the kinds gcnn, rgcnn, steer and rsteer;
* :attr:`Recompute.AUTOGRAD` (:func:`checkpoint_with_autograd`, ``torch.utils.checkpoint``): a
  :class:`~.block.ConvBlock` of plain torch layers (``Conv3d``, ``ConvTranspose3d``,
  ``BatchNorm3d``, ``ReLU``) or with :class:`~.separable.SeparableGroupConv` convolutions (the kind
  cnn and the separable models), and a chain ``nn.Sequential(conv, norm, act)`` (the lift);
* any other block or layer is an error (``TypeError``): a new layer type states its recomputation
  here.

Both give the loss, gradients and running statistics of the step without checkpointing (float
round-off).
"""
from __future__ import annotations

import enum
from typing import Callable, Iterable

import torch
import torch.utils.checkpoint
from torch import nn

from .block import ConvBlock
from .conv import OctahedralConv
from .pointwise import FieldBatchNorm, FourierReLU
from .recompute import checkpoint_in_slabs
from .separable import SeparableGroupConv
from .tensor_op import TensorOp

#: Buffers that a forward pass in training mode updates (batch-norm running statistics).
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")

#: The layers of a :class:`~.block.ConvBlock` that :func:`~.recompute.checkpoint_in_slabs` runs, by
#: position (first, norm1, act1, second, norm2, act2); escnn layers, behind a ``TensorOp``.
SLAB_LAYERS = (OctahedralConv, FieldBatchNorm, FourierReLU, OctahedralConv, FieldBatchNorm, FourierReLU)
#: The other layers a checkpointed block may hold (recomputed by autograd).
AUTOGRAD_LAYERS = (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.ReLU, SeparableGroupConv, FieldBatchNorm,
                   FourierReLU, OctahedralConv)


class Recompute(enum.Enum):
    """How a checkpointed block is computed again in backward."""

    SLABS = "slabs"
    AUTOGRAD = "autograd"


def recompute_of(block: nn.Module) -> Recompute:
    """How ``block`` is recomputed when checkpointed (module docstring).

    Parameters
    ----------
    block : nn.Module
        A :class:`~.block.ConvBlock` or an ``nn.Sequential`` chain.

    Returns
    -------
    Recompute

    Raises
    ------
    TypeError
        For another block, or a layer in neither :data:`SLAB_LAYERS` nor :data:`AUTOGRAD_LAYERS`.
    """
    if not isinstance(block, nn.Sequential):  # a ConvBlock is one
        raise TypeError(f"no activation checkpointing for {type(block).__name__}: a ConvBlock or an "
                        f"nn.Sequential(conv, norm, act) is checkpointed")
    layers = [layer.module if isinstance(layer, TensorOp) else layer for layer in block]
    if isinstance(block, ConvBlock) and all(isinstance(layer, kind) for layer, kind in zip(layers, SLAB_LAYERS)):
        return Recompute.SLABS
    unknown = [type(layer).__name__ for layer in layers if not isinstance(layer, AUTOGRAD_LAYERS)]
    if unknown:
        raise TypeError(f"no activation checkpointing for layers {', '.join(unknown)}: list them in "
                        f"steerable_sr.nn.checkpointing (SLAB_LAYERS or AUTOGRAD_LAYERS)")
    return Recompute.AUTOGRAD


def checkpoint_chain(blocks: Iterable[nn.Module], h: torch.Tensor, slab_bytes: int) -> torch.Tensor:
    """Run ``blocks`` in order, each checkpointed up to its last nonlinearity (module docstring).
    Training mode.

    Parameters
    ----------
    blocks : iterable of nn.Module
        Each a :class:`~.block.ConvBlock` or an ``nn.Sequential`` chain ending in its nonlinearity.
    h : torch.Tensor
        ``(B, C, N, N, N)``, the first block's input.
    slab_bytes : int
        Bound on the float32 depth slab of one activation that a slab recomputation computes at once.

    Returns
    -------
    torch.Tensor
        The last block's output, equal to running the blocks unchecked (float round-off).
    """
    for block in blocks:
        pre_activation, activation = _split_activation(block)
        if recompute_of(block) is Recompute.SLABS:
            h = activation(checkpoint_in_slabs(h, block, slab_bytes))
        else:
            h = activation(checkpoint_with_autograd(pre_activation, block, h))
    return h


def _split_activation(block: nn.Sequential) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """``(pre_activation, activation)`` with ``block(x) == activation(pre_activation(x))``, for a
    :class:`~.block.ConvBlock` or a chain ending in its nonlinearity."""
    if isinstance(block, ConvBlock):
        return block.pre_activation, block[-1]
    return block[:-1], block[-1]


def checkpoint_with_autograd(function: Callable[[torch.Tensor], torch.Tensor], block: nn.Module,
                             x: torch.Tensor) -> torch.Tensor:
    """``function(x)`` keeping only ``x`` for backward (``torch.utils.checkpoint``, non-reentrant).

    Backward runs ``function`` again. That second run computes the same tensors (in training mode the
    norms use batch statistics, not running ones) but would update the running statistics a second
    time, so it runs with ``block``'s restored to their values before it: the result is exactly the
    step without checkpointing.

    Parameters
    ----------
    function : callable
        A part of ``block``, ``(B, C, N, N, N) -> (B, C', N', N', N')``.
    block : nn.Module
        Holds the running statistics (:data:`RUNNING_STATISTICS`) that ``function`` updates.
    x : torch.Tensor
        The input.

    Returns
    -------
    torch.Tensor
        ``function(x)``.
    """
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
