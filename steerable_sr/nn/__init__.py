"""Equivariant layers over O_h / O on escnn field types: exact and relaxed convolutions
(:class:`OctahedralConv` between any field types, :class:`SeparableGroupConv` into regular fields),
normalisation (:class:`FieldBatchNorm`) and nonlinearity (:class:`FourierReLU`). Each exports to
plain torch modules."""
from .conv import OctahedralConv
from .pointwise import FieldBatchNorm, FourierReLU
from .separable import SeparableGroupConv

__all__ = ["OctahedralConv", "SeparableGroupConv", "FieldBatchNorm", "FourierReLU"]
