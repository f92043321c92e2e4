"""The layer table of a model: every leaf layer, its parameters and output shape, as Markdown."""
from __future__ import annotations

import torch
from torch import nn

from .. import fields
from ..nn.tensor_op import TensorOp


def layer_table(model: nn.Module, input_size: int | None = None) -> str:
    """The layer table of a model.

    Parameters
    ----------
    model : SuperResolutionNet
    input_size : int, optional
        ``n``: also list every layer's output shape ``C x N x N x N`` on a ``(1, 3 T, n, n, n)`` input
        (one eval-mode forward pass; the training mode is restored).

    Returns
    -------
    str
        Markdown: every leaf layer, its shape summary and parameter count, and the total.
    """
    leaves = []
    for name, module in model.named_modules():
        inside_op = ".module" in name
        is_leaf = isinstance(module, TensorOp) or (not list(module.children()) and not inside_op)
        if is_leaf and not isinstance(module, (fields.FrameAdapter, nn.Identity)):
            leaves.append((name, module))
    shapes: dict[str, str] = {}
    if input_size is not None:
        hooks = [module.register_forward_hook(
            lambda _, __, out, name=name: shapes.__setitem__(name, "x".join(map(str, out.shape[1:]))))
            for name, module in leaves]
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, model.in_channels, input_size, input_size, input_size))
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
    output = f" output (input {input_size}^3) |" if shapes else ""
    rows = [f"| layer | module | parameters |{output}", "| --- | --- | ---: |" + (" --- |" if shapes else "")]
    for name, module in leaves:
        leaf = module.module if isinstance(module, TensorOp) else module
        count = sum(p.numel() for p in module.parameters())
        shape = f" {shapes[name]} |" if shapes else ""
        rows.append(f"| {name} | {type(leaf).__name__}({leaf.extra_repr()}) | {count:,} |{shape}")
    total = f"| **total** | {model.config.kind}, {model.config.group} | **{model.num_parameters():,}** |"
    return "\n".join(rows + [total + (" |" if shapes else "")])
