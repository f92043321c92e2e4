r"""Separable regular group convolutions over O_h / O (Knigge et al., ICML 2022; the ``--separable``
option of Wang et al.'s octahedral super-resolution nets), exact, relaxed and transposed.

**Definition.** A regular field is a function ``f(x, i, h)`` of the voxel ``x``, the field channel
``i`` and the group element ``h`` (escnn channel ``c(h)`` of field ``i``; element ``k`` acts by
``(k.f)(x, i, h) = f(R_k^-1 x, i, k^-1 h)``). A group convolution with kernel ``Psi_{o,i}(t, h)``
(cross-correlation; docs/conventions.md, "Relaxed group convolution") is

    y(x, o, g) = sum_t sum_{i,h} Psi_{o,i}(R_g^-1 t, g^-1 h) f(x + t, i, h).

It is *separable* when ``Psi_{o,i}(t, h) = kappa_o(t) psi(o, i, h)``; then it factorises into

    z(x, o, g) = sum_{i,h} psi(o, i, g^-1 h) f(x, i, h)            1x1 group convolution
    y(x, o, g) = sum_t kappa_o(R_g^-1 t) z(x + t, o, g) + b_o       depthwise spatial part

i.e. a ``1x1`` ``Conv3d`` with weight ``W[(o,g),(i,h)] = psi(o, i, g^-1 h)`` (gathered through the
Cayley table) followed by a grouped ``Conv3d`` with ``groups = C_out |G|``.

**Equivariance conditions.** The 1x1 part commutes with the left-regular action iff
``W[(o,kg),(i,kh)] = W[(o,g),(i,h)]`` for all ``k``: ``W`` depends on ``g^-1 h`` only, which is ``psi``.
The depthwise part has ``K(t) = diag_(o,g) D_{o,g}(t)``; condition (*) of :mod:`.basis`,
``K(R_k t) = rho(k) K(t) rho(k)^T``, reads ``D_{o,g}(R_k t) = D_{o,k^-1 g}(t)`` for all ``k, g, t``
(``rho(k) diag(d) rho(k)^T = diag(d_{k^-1 .})`` for the left-regular ``rho``). Taking ``g = k``:

    D_{o,g}(t) = kappa_o(R_g^-1 t),       kappa_o = D_{o,e}

-- the kernel of group channel ``(o, g)`` is ``kappa_o`` moved by ``g`` (exact grid permutation,
``steerable_sr.groups.act``), and conversely every such ``D`` satisfies (*). The composite filter
``K[(o,g),(i,h)](t) = kappa_o(R_g^-1 t) psi(o, i, g^-1 h)`` is a full group-convolution kernel, so the
separable layer spans a subspace of :class:`~.conv.OctahedralConv`'s kernels. Parameters per layer:
``C_out C_in |G| + L C_out k^3 + C_out`` instead of ``C_out C_in |G| k^3`` (27x fewer for k = 3).

**Transposed (stride s).** ``conv_transpose3d`` with the same depthwise kernels (:mod:`.basis`: the
same condition makes a transposed convolution equivariant), stride ``s``, padding ``(k - s) / 2``;
the 1x1 part runs first, at the low resolution.

**Lifting** (input fields not regular, e.g. velocity): the 1x1 part is the exact equivariant 1x1 map
``in_type -> regular`` of :class:`~.conv.OctahedralConv` (``kernel_size=1``: for a polar vector
``u``, ``z(x, o, g) = sum_frames <R_g a_o, u(x)>``-type maps, 3 parameters per field and frame),
then the same depthwise part. The composite ``kappa_o(R_g^-1 t) A_o rho_in(g)^T`` satisfies (*).

**Relaxed** (``num_filter_banks = L``): the *spatial* part carries ``L`` banks, with relaxed
weights on the output element (reusing :class:`~.relaxed.RelaxedWeights`)::

    D_{o,g}(t) = sum_l w_l(g) kappa_{l,o}(R_g^-1 t)

The composite is Wang et al.'s relaxed group convolution with banks
``Psi_l(t, h) = kappa_{l,o}(t) psi(o, i, h)`` (1x1 part shared by the banks), so the layer is
equivariant exactly to the stabilizer of ``w`` and is an exact group convolution when every
``w_l`` is constant. Because ``w_l(g)`` scales group channel ``(o, g)`` only, it folds into the
depthwise filter: a relaxed layer runs at the cost of an exact one and adds ``(L - 1) C_out k^3``
parameters. (The authors put the banks on the 1x1 part instead; we relax the spatial stencils,
where the anisotropy of the data lives, and keep the run-time cost.)

Forward = one ``conv3d`` (1x1) + one grouped ``conv3d`` / ``conv_transpose3d``, filters combined
(no loop over banks or elements), cached in eval mode; :meth:`SeparableGroupConv.export` returns
the two as plain torch modules. Shapes as :class:`~.conv.OctahedralConv`: ``(B, in_type.size, N^3)
-> (B, out_type.size, M^3)``, ``M = N`` or ``s N``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from escnn import nn as enn

from ..fields import is_regular
from ..groups import cayley_table, grid_permutation, group_matrices, group_order, inverses
from .conv import OctahedralConv
from .fourier import fourier_embedding
from .grid import GridConv, eval_cached


class SeparableGroupConv(GridConv):
    r"""Separable group convolution into regular fields over O_h or O (module docstring).

    Shapes and equivariance as :class:`~.grid.GridConv`.

    Parameters
    ----------
    in_type : escnn.nn.FieldType
        Regular fields (group convolution) or any field type, e.g. velocity (lifting).
    out_type : escnn.nn.FieldType
        Regular fields (same gspace).
    kernel_size : int
        ``k`` of the depthwise spatial part.
    stride : int
        Of the spatial part (the upsampling factor of a transposed layer).
    transposed : bool
        The spatial part is a ``conv_transpose3d``.
    num_filter_banks : int, optional
        ``None`` for an exactly equivariant layer; ``L >= 1`` for ``L`` banks of the spatial part with
        relaxed weights on the output element.
    bias : bool
        One bias per output field (constant over the group), added after the spatial part.

    Attributes
    ----------
    group_kernel : torch.nn.Parameter or None
        ``psi``, ``(C_out, C_in, |G|)`` (regular input; elements in the order of ``group_matrices``).
    pointwise : OctahedralConv or None
        The exact 1x1 lifting part (non-regular input).
    spatial_kernel : torch.nn.Parameter
        ``kappa``, ``(L, C_out, k, k, k)`` (``L = 1`` for an exact layer).

    Raises
    ------
    ValueError
        If ``out_type`` is not regular.
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int, *, stride: int = 1,
                 transposed: bool = False, num_filter_banks: int | None = None, bias: bool = True):
        super().__init__(in_type, out_type, kernel_size, stride=stride, transposed=transposed,
                         num_filter_banks=num_filter_banks)
        if not is_regular(out_type):
            raise ValueError(f"a separable group convolution maps into regular fields only (its spatial part acts "
                             f"on each group channel), got output type {out_type}; use OctahedralConv for other "
                             f"field types")
        self.fields_out = len(out_type)
        # escnn channel c of a regular field <-> our element e[c] (Fourier embedding = relabelling).
        channel_of = fourier_embedding(out_type.representations[0]).argmax(axis=1)
        element = np.argsort(channel_of)
        self.register_buffer("element_of_channel", torch.from_numpy(element), persistent=False)
        # Depthwise kernel of channel c: kappa moved by g = e[c], D(q) = kappa(R_g^-1 q).
        mats = group_matrices(self.group)
        grid = np.stack([grid_permutation(mats[g], self.kernel_size) for g in element])
        self.register_buffer("grid_index", torch.from_numpy(grid), persistent=False)
        self.group_kernel, self.pointwise = None, None
        if is_regular(in_type):
            # W[(o, c), (i, c')] = psi(o, i, e[c]^-1 e[c']).
            table, inv = cayley_table(self.group), inverses(self.group)
            self.register_buffer("group_index", torch.from_numpy(table[inv[element]][:, element].copy()),
                                 persistent=False)
            self.group_kernel = torch.nn.Parameter(torch.empty(self.fields_out, len(in_type), group_order(self.group)))
        else:
            self.pointwise = OctahedralConv(in_type, out_type, 1, bias=False)
        k = self.kernel_size
        self.spatial_kernel = torch.nn.Parameter(torch.empty(self.filter_banks, self.fields_out, k, k, k))
        self.bias = torch.nn.Parameter(torch.zeros(self.fields_out)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He initialisation of the composite filter, split between the parts: ``psi`` has variance
        ``2 / (C_in |G|)`` (the lifting's 1x1 part: ``2 / C_in``), the spatial part preserves the
        variance (``1 / (L taps)``, ``taps = (k / s)^3`` kernel entries reach each output voxel)."""
        if self.group_kernel is not None:
            self.group_kernel.normal_(0.0, math.sqrt(2.0 / self.in_type.size))
        else:
            self.pointwise.reset_parameters()
        taps = (self.kernel_size / (self.stride if self.transposed else 1)) ** 3
        self.spatial_kernel.normal_(0.0, math.sqrt(1.0 / (taps * self.spatial_kernel.shape[0])))
        if self.bias is not None:
            self.bias.zero_()
        self._cache = None

    # ---- the filters --------------------------------------------------------------------------

    def pointwise_filter(self) -> torch.Tensor:
        """The 1x1 part.

        Returns
        -------
        torch.Tensor
            ``(C_out |G|, C_in_channels, 1, 1, 1)`` (conv3d layout, escnn channel order).
        """
        if self.pointwise is not None:
            return self.pointwise.filter()
        c_out, c_in, order = self.group_kernel.shape
        W = self.group_kernel[:, :, self.group_index]  # (C_out, C_in, |G| out channels, |G| in channels)
        return W.permute(0, 2, 1, 3).reshape(c_out * order, c_in * order, 1, 1, 1)

    def depthwise_filter(self) -> torch.Tensor:
        """The depthwise spatial part.

        Returns
        -------
        torch.Tensor
            ``(C_out |G|, 1, k, k, k)``: channel ``(o, c)`` holds
            ``sum_l w_l(e[c]) kappa_{l,o}(R_{e[c]}^-1 t)`` (``w = 1`` for an exact layer).
        """
        banks, fields, k = self.spatial_kernel.shape[:3]
        moved = self.spatial_kernel.reshape(banks, fields, k ** 3)[:, :, self.grid_index]  # (L, C, |G|, k^3)
        if self.relaxed is None:
            kernel = moved[0]
        else:
            weights = self.relaxed.on_group()[:, self.element_of_channel]  # (L, |G|) in channel order
            kernel = torch.einsum("lc,locq->ocq", weights, moved)
        return kernel.reshape(-1, 1, k, k, k)

    def expanded_bias(self) -> torch.Tensor | None:
        """The bias per channel, ``(C_out |G|,)``: ``b_o`` on every channel of field ``o``; ``None``
        without bias."""
        if self.bias is None:
            return None
        return self.bias.repeat_interleave(self.out_type.size // self.fields_out)

    def filter(self) -> torch.Tensor:
        """The composite filter ``K[(o,g), (i,h)](t) = D_{o,g}(t) W[(o,g), (i,h)]``, for inspection and
        tests (the forward pass never builds it).

        Returns
        -------
        torch.Tensor
            ``(C_out, C_in, k, k, k)`` (conv3d layout, as :meth:`OctahedralConv.filter`).
        """
        depthwise = self.depthwise_filter()
        return depthwise * self.pointwise_filter().view(depthwise.shape[0], -1, 1, 1, 1)

    def _filters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(pointwise_filter(), depthwise_filter(), expanded_bias())``, cached in eval mode."""
        return eval_cached(self, lambda: (self.pointwise_filter(), self.depthwise_filter(), self.expanded_bias()))

    # ---- forward / export ---------------------------------------------------------------------

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        pointwise, depthwise, bias = self._filters()
        z = F.conv3d(x, pointwise)
        if self.transposed:
            return F.conv_transpose3d(z, depthwise, bias, stride=self.stride, padding=self.padding, groups=z.shape[1])
        return F.conv3d(z, depthwise, bias, padding=self.padding, groups=z.shape[1])

    @torch.no_grad()
    def export(self) -> torch.nn.Sequential:
        """The layer as plain torch.

        Returns
        -------
        torch.nn.Sequential
            ``Conv3d`` 1x1, then ``Conv3d`` / ``ConvTranspose3d`` with ``groups = C_out |G|``; same output.
        """
        pointwise, depthwise, bias = self.pointwise_filter(), self.depthwise_filter(), self.expanded_bias()
        channels = depthwise.shape[0]
        first = torch.nn.Conv3d(self.in_type.size, channels, 1, bias=False)
        first.weight.copy_(pointwise)
        cls = torch.nn.ConvTranspose3d if self.transposed else torch.nn.Conv3d
        second = cls(channels, channels, self.kernel_size, stride=self.stride, padding=self.padding,
                     groups=channels, bias=bias is not None)
        second.weight.copy_(depthwise)  # (C, 1, k, k, k) in both layouts
        if bias is not None:
            second.bias.copy_(bias)
        return torch.nn.Sequential(first, second).to(depthwise.device)

    def extra_repr(self) -> str:
        part = "group 1x1" if self.pointwise is None else "lifting 1x1"
        return f"{super().extra_repr()}, {part} + depthwise"
