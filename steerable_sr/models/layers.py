"""Layer factories: what each model kind puts at the leaves of the common topology.

:class:`PlainLayers` builds the ``cnn`` kind's torch layers, :class:`EquivariantLayers` the escnn
layers of the equivariant kinds, each wrapped in a :class:`~steerable_sr.nn.tensor_op.TensorOp`
so that the topology runs on plain tensors. escnn is imported when an equivariant model is built,
not with this module.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .. import fields
from ..nn.tensor_op import TensorOp

if TYPE_CHECKING:
    from .registry import ModelConfig


class PlainLayers:
    """Leaves of the ``cnn`` kind: ``hidden`` channels, Conv3d / ConvTranspose3d / BatchNorm3d / ReLU.

    Parameters
    ----------
    config : ModelConfig

    Attributes
    ----------
    input, hidden, output : int
        Channels in (``3 T``), of the hidden layers and out (3).
    """

    def __init__(self, config: ModelConfig):
        self.input, self.hidden, self.output = 3 * config.frames, config.hidden, 3

    def conv(self, c_in: int, c_out: int) -> nn.Module:
        """Convolution ``k = 3``, size unchanged."""
        return nn.Conv3d(c_in, c_out, 3, padding=1)

    def up(self, c: int) -> nn.Module:
        """Transposed convolution ``k = 4, s = 2, p = 1``: doubles the size."""
        return nn.ConvTranspose3d(c, c, 4, stride=2, padding=1)

    def norm(self, c: int) -> nn.Module:
        """Batch norm."""
        return nn.BatchNorm3d(c)

    def act(self, c: int) -> nn.Module:
        """Nonlinearity."""
        return nn.ReLU()

    def input_map(self) -> nn.Module:
        """The map from the public convention (and back, :attr:`output_map`): the identity."""
        return nn.Identity()

    output_map = input_map


#: The escnn field type of each equivariant hidden field family of :class:`~.registry.KindSpec`.
HIDDEN_TYPES = {"regular": fields.regular_type, "irreps": fields.irrep_type}


class EquivariantLayers:
    """Leaves of the equivariant kinds over escnn field types: velocity in and out, regular
    (``gcnn``/``rgcnn``) or irrep-band (``steer``/``rsteer``) hidden fields. Every layer is exactly
    equivariant (relaxed ones while their relaxed weights are trivial).

    Parameters
    ----------
    config : ModelConfig

    Attributes
    ----------
    input, hidden, output : escnn.nn.FieldType
        ``T`` velocity fields, the hidden fields, one velocity field.
    banks : int or None
        Filter banks of the relaxed convolutions (``None``: exact convolutions).
    """

    def __init__(self, config: ModelConfig):
        from ..nn import FieldBatchNorm, FourierReLU, OctahedralConv, SeparableGroupConv

        self._conv, self._norm, self._act = OctahedralConv, FieldBatchNorm, FourierReLU
        self._separable = SeparableGroupConv if config.separable else None
        self.banks = config.num_filter_banks if config.relaxed else None
        self.input = fields.velocity_type(config.group, config.frames)
        self.output = fields.velocity_type(config.group, 1)
        self.hidden = HIDDEN_TYPES[config.spec.field_family](config.group, config.hidden)

    def conv(self, t_in, t_out) -> nn.Module:
        """Convolution ``k = 3`` from field type ``t_in`` to ``t_out``, size unchanged."""
        return TensorOp(self._conv_into(t_out)(t_in, t_out, 3, num_filter_banks=self.banks))

    def up(self, t) -> nn.Module:
        """Transposed convolution ``k = 4, s = 2, p = 1`` on field type ``t``: doubles the size."""
        return TensorOp(self._conv_into(t)(t, t, 4, stride=2, transposed=True, num_filter_banks=self.banks))

    def _conv_into(self, t_out):
        """The convolution class into ``t_out``: separable into the (regular) hidden type of a separable model."""
        return self._separable if self._separable is not None and t_out == self.hidden else self._conv

    def norm(self, t) -> nn.Module:
        """Field batch norm on field type ``t``."""
        return TensorOp(self._norm(t))

    def act(self, t) -> nn.Module:
        """Fourier ReLU on field type ``t`` (a ReLU on regular fields)."""
        return TensorOp(self._act(t))

    def input_map(self) -> nn.Module:
        """The public convention to escnn's."""
        return fields.FrameAdapter("to_escnn")

    def output_map(self) -> nn.Module:
        """escnn's convention to the public one."""
        return fields.FrameAdapter("to_public")
