"""The conversion of a model to plain torch modules (no escnn object inside; TorchScript accepts it)."""
from __future__ import annotations

import copy

from torch import nn

from ..nn.tensor_op import TensorOp


def export_plain(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with plain torch leaves.

    Parameters
    ----------
    module : nn.Module
        E.g. a :class:`~.network.SuperResolutionNet`.

    Returns
    -------
    nn.Module
        Its escnn layers (:class:`~steerable_sr.nn.tensor_op.TensorOp`) replaced by their plain torch
        export (``Conv3d``, ``ConvTranspose3d``, ``BatchNorm3d``, ``ReLU``, 1x1 ``Conv3d``), every other
        module copied with its parameters and buffers. Same output in eval mode.
    """
    if isinstance(module, TensorOp):
        return module.export()
    if not list(module.children()):
        return copy.deepcopy(module)
    clone = copy.copy(module)
    clone._modules = {name: export_plain(child) for name, child in module.named_children()}
    clone._parameters = {name: copy.deepcopy(p) for name, p in module._parameters.items()}
    clone._buffers = {name: copy.deepcopy(b) for name, b in module._buffers.items()}
    return clone
