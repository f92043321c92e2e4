"""Equivariant layers over O_h / O on escnn field types, and the blocks built from them.

* layers: exact and relaxed convolutions (:class:`OctahedralConv` between any field types,
  :class:`SeparableGroupConv` into regular fields), normalisation (:class:`FieldBatchNorm`) and
  nonlinearity (:class:`FourierReLU`); each exports to plain torch modules;
* :mod:`.block`: :class:`~.block.ConvBlock`, a block of two convolutions declared once;
* :mod:`.checkpointing`: activation checkpointing of such blocks (:mod:`.recompute`: in depth slabs).

The layer classes are imported from their modules on first use, so that the torch-only modules
(:mod:`.block`, :mod:`.slabs`, :mod:`.functional`, :mod:`.tensor_op`) load without escnn.
"""
import importlib

_LAYERS = {"OctahedralConv": ".conv", "SeparableGroupConv": ".separable", "FieldBatchNorm": ".pointwise",
           "FourierReLU": ".pointwise"}

__all__ = list(_LAYERS)


def __getattr__(name: str):
    if name in _LAYERS:
        return getattr(importlib.import_module(_LAYERS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
