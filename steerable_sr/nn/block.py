r"""A block of two convolutions whose input rejoins the branch: its layer sequence, declared once.

A :class:`ConvBlock` holds six layers, in this order (its children, ``block[0] .. block[5]``), and
two flags that say how its input ``x`` rejoins::

    s   = second(act1(norm1(first(x))))
    pre = norm2(s + skip(x))            skip_before_norm
    pre = skip(x) + norm2(s)            otherwise
    y   = act2(pre)

with ``skip(x)`` the trilinear upsampling by 2 of ``x`` (``upsample_skip``, ``align_corners=False``:
exact on the grid; ``first`` then upsamples by 2 as well) or ``x`` itself. The forward pass
(:meth:`ConvBlock.forward`) and the recomputation of activation checkpointing
(:mod:`.checkpointing`, :mod:`.recompute`) both read this declaration, so a new block is a new
declaration, with no backward of its own.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .slabs import upsample_trilinear


class ConvBlock(nn.Sequential):
    """``x -> act2(pre(x))``, ``pre`` as declared (module docstring).

    Parameters
    ----------
    first, norm1, act1, second, norm2, act2 : nn.Module
        The layers, on plain tensors ``(B, C, N, N, N)``: ``first`` a convolution (stride 1) or a
        transposed convolution (stride 2, with ``upsample_skip``), ``second`` a stride-1 convolution,
        ``norm1``, ``norm2`` batch norms, ``act1``, ``act2`` per-voxel nonlinearities.
    upsample_skip : bool
        The skip is the trilinear upsampling by 2 of the input (else the input itself).
    skip_before_norm : bool
        The skip joins before ``norm2`` (else after it).
    names : tuple of str
        The names of ``first`` and ``second`` among the children (state-dict keys, layer names in
        reports); the others are ``norm1, act1, norm2, act2``.
    """

    def __init__(self, first: nn.Module, norm1: nn.Module, act1: nn.Module, second: nn.Module, norm2: nn.Module,
                 act2: nn.Module, *, upsample_skip: bool, skip_before_norm: bool,
                 names: tuple[str, str] = ("first", "second")):
        super().__init__(OrderedDict([(names[0], first), ("norm1", norm1), ("act1", act1), (names[1], second),
                                      ("norm2", norm2), ("act2", act2)]))
        self.upsample_skip = upsample_skip
        self.skip_before_norm = skip_before_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``act2(pre(x))``: ``(B, C, n, n, n) -> (B, C, N, N, N)``, ``N = 2n`` with ``upsample_skip``."""
        return self[5](self.pre_activation(x))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its last nonlinearity ``act2``: ``pre(x)``."""
        # Children by position (TorchScript indexes a Sequential by literal only):
        # 0 first, 1 norm1, 2 act1, 3 second, 4 norm2.
        s = self[3](self[2](self[1](self[0](x))))
        skip = upsample_trilinear(x) if self.upsample_skip else x
        if self.skip_before_norm:
            return self[4](s + skip)
        return skip + self[4](s)
