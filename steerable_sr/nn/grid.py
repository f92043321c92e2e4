r"""What every convolution on the voxel grid shares: the exact padding, the eval-mode filter cache and
:class:`GridConv`, the base of :class:`~.conv.OctahedralConv` and :class:`~.separable.SeparableGroupConv`.

Shapes: input ``GeometricTensor`` ``(B, in_type.size, N, N, N)``; output ``(B, out_type.size, M, M, M)``
with ``M = N`` (convolution, stride 1, ``padding = (k - 1) / 2``) or ``M = s N`` (transposed, stride
``s``, ``padding = (k - s) / 2``). These are the only exact choices on a voxel grid
(docs/conventions.md, "Exact padding on the voxel grid").
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Callable, TypeVar

import torch
from escnn import nn as enn

from ..fields import check_type, group_of
from .relaxed import RelaxedLayerMixin, RelaxedWeights

T = TypeVar("T")


def exact_padding(kernel_size: int, stride: int, transposed: bool) -> int:
    """The padding of the only exact choices on the voxel grid (docs/conventions.md, "Exact padding on
    the voxel grid").

    Parameters
    ----------
    kernel_size : int
        ``k``.
    stride : int
        ``s``: 1 for a convolution, the upsampling factor for a transposed one.
    transposed : bool
        ``conv_transpose3d`` instead of ``conv3d``.

    Returns
    -------
    int
        ``(k - 1) / 2`` for a stride-1 convolution with an odd kernel, ``(k - s) / 2`` for a
        transposed one with ``k - s`` even and non-negative.

    Raises
    ------
    ValueError
        For any other geometry (it would break equivariance on the grid).
    """
    k, s = kernel_size, stride
    if k < 1 or s < 1:
        raise ValueError(f"kernel_size and stride must be >= 1, got {k} and {s}")
    if not transposed:
        if s != 1 or k % 2 == 0:
            raise ValueError(f"an exactly equivariant convolution needs stride 1 and an odd kernel "
                             f"(got kernel {k}, stride {s}); upsample with the transposed layer")
        return (k - 1) // 2
    if (k - s) % 2 or k < s:
        raise ValueError(f"a transposed convolution is equivariant on the grid only if kernel - stride is even "
                         f"and >= 0 (got kernel {k}, stride {s}); e.g. kernel 4, stride 2")
    return (k - s) // 2


def eval_cached(module: torch.nn.Module, compute: Callable[[], T]) -> T:
    """A module's filters, cached in eval mode.

    Parameters
    ----------
    module : torch.nn.Module
        Owner of the cache (``module._cache``) and of the parameters it depends on.
    compute : callable
        Computes the filters from the parameters.

    Returns
    -------
    object
        ``compute()`` in training mode (differentiable); in eval mode its result, cached until a
        parameter of ``module`` changes (in place, replaced or moved). Always computed in the
        parameters' precision (autocast off): under mixed precision the convolution casts the filter.
    """
    device = next(module.parameters()).device.type
    if module.training:
        module._cache = None
        with torch.autocast(device, enabled=False):
            return compute()
    key = tuple((p.data_ptr(), p._version) for p in module.parameters())
    if module._cache is None or module._cache[0] != key:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            module._cache = (key, compute())
    return module._cache[1]


class GridConv(RelaxedLayerMixin, enn.EquivariantModule):
    r"""A convolution between escnn field types over O_h or O on the voxel grid, exact or relaxed.

    Subclasses build their filters and implement :meth:`_conv` on plain tensors; :meth:`forward`
    checks the input type and wraps the result. Shapes: module docstring. Equivariance:
    ``layer(x.transform(g)) == layer(x).transform(g)`` for every ``g`` in G (exact layer) or every
    ``g`` in the stabilizer of the relaxed weights (relaxed layer), to float round-off.

    Parameters
    ----------
    in_type, out_type : escnn.nn.FieldType
        Field types on the same gspace (``steerable_sr.fields.gspace``).
    kernel_size : int
        ``k``.
    stride : int
        1 for a convolution; the upsampling factor ``s`` for a transposed one.
    transposed : bool
        ``conv_transpose3d`` instead of ``conv3d``.
    num_filter_banks : int, optional
        ``None`` for an exactly equivariant layer; ``L >= 1`` for a relaxed layer with ``L`` filter
        banks and relaxed weights on the output element (``self.relaxed``).

    Raises
    ------
    ValueError
        For types on different gspaces or a geometry that is not exact (:func:`exact_padding`).
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int, *, stride: int = 1,
                 transposed: bool = False, num_filter_banks: int | None = None):
        super().__init__()
        if in_type.gspace is not out_type.gspace:
            raise ValueError(f"in_type and out_type live on different gspaces: {in_type.gspace} vs {out_type.gspace}")
        self.group = group_of(in_type)
        self.in_type, self.out_type = in_type, out_type
        self.kernel_size, self.stride, self.transposed = int(kernel_size), int(stride), bool(transposed)
        self.padding = exact_padding(self.kernel_size, self.stride, self.transposed)
        self.relaxed = None if num_filter_banks is None else RelaxedWeights(self.group, num_filter_banks)
        self._cache: tuple[tuple, object] | None = None

    @property
    def filter_banks(self) -> int:
        """``L``: the number of filter banks (1 for an exactly equivariant layer)."""
        return 1 if self.relaxed is None else self.relaxed.num_filter_banks

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        """The convolution of ``x (B, in_type.size, N, N, N)``: ``(B, out_type.size, M, M, M)``."""
        check_type(x, self.in_type)
        if x.tensor.dim() != 5:
            raise ValueError(f"expected a tensor (B, {self.in_type.size}, N, N, N), got shape {tuple(x.tensor.shape)}")
        return enn.GeometricTensor(self._conv(x.tensor), self.out_type)

    @abstractmethod
    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on plain tensors: ``(B, in_type.size, N, N, N) -> (B, out_type.size, M, M, M)``."""

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        b, c, *spatial = input_shape
        if c != self.in_type.size:
            raise ValueError(f"expected {self.in_type.size} input channels, got {c}")
        scale = self.stride if self.transposed else 1
        return (b, self.out_type.size, *[n * scale for n in spatial])

    def extra_repr(self) -> str:
        banks = "" if self.relaxed is None else f", num_filter_banks={self.relaxed.num_filter_banks}"
        return (f"{self.in_type.size} -> {self.out_type.size} channels, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, transposed={self.transposed}{banks}")
