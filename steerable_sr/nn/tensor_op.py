"""An escnn module as a torch module on plain tensors."""
from __future__ import annotations

import torch
from torch import nn


class TensorOp(nn.Module):
    """Runs an escnn ``EquivariantModule`` on plain tensors ``(B, in_type.size, ...)``: wraps the input in
    a ``GeometricTensor`` of the module's input type and unwraps the result.

    Parameters
    ----------
    module : escnn.nn.EquivariantModule
        The wrapped layer (``self.module``); its :meth:`export` is the plain torch export.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``module`` on ``x (B, in_type.size, ...)``, as a plain tensor."""
        from escnn.nn import GeometricTensor

        return self.module(GeometricTensor(x, self.module.in_type)).tensor

    def export(self) -> nn.Module:
        """The wrapped layer's plain torch export."""
        return self.module.export()
