r"""Exact and relaxed octahedral convolutions between any escnn field types: :class:`OctahedralConv`.

The filter of bank ``l`` is ``K_l``, a linear combination of the exact voxel-grid basis of
:mod:`.basis`, built per pair of irreps and moved to the field types' bases with escnn's change of
basis ``Q``: ``K = Q_out [irrep blocks] Q_in^-1``. An exact layer uses ``K`` (one bank); a relaxed
one (Wang et al., output-indexed relaxed weights; docs/conventions.md, "Relaxed group convolution")
uses ``sum_l M_out(w_l) K_l``, the relaxed mixing ``M_out(w_l)`` (:mod:`.relaxed`) acting on the
output fields and folded into the filter. A forward pass is therefore *one* ``conv3d`` /
``conv_transpose3d`` with a combined filter, exported as a plain ``torch.nn.Conv3d`` /
``ConvTranspose3d``. The bias lives in the invariant subspace of each output field and is added
after the mixing.

Shapes and padding: as :mod:`.grid`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from escnn import nn as enn

from ..fields import representation_matrices
from .basis import invariant_subspace, irrep_pair_basis
from .grid import GridConv, eval_cached


class FieldLayout:
    """Where the fields of an escnn ``FieldType`` sit: channel indices per distinct representation and,
    in the irrep basis, the channel offset of every irrep copy.

    Parameters
    ----------
    field_type : escnn.nn.FieldType
    """

    def __init__(self, field_type: enn.FieldType):
        self.reps: "OrderedDict[str, object]" = OrderedDict()
        channels: dict[str, list[np.ndarray]] = {}
        self.irrep_offsets: "OrderedDict[str, list[int]]" = OrderedDict()
        self.irrep_dims: dict[str, int] = {}
        G = field_type.gspace.fibergroup
        start = 0
        for rep in field_type.representations:
            self.reps.setdefault(rep.name, rep)
            channels.setdefault(rep.name, []).append(np.arange(start, start + rep.size))
            offset = start
            for irrep_id in rep.irreps:
                irrep = G.irrep(*irrep_id)
                self.irrep_offsets.setdefault(irrep.name, []).append(offset)
                self.irrep_dims[irrep.name] = irrep.size
                offset += irrep.size
            start += rep.size
        self.channels = {name: np.stack(idx) for name, idx in channels.items()}
        self.size = start
        # "Irrep-sorted" order: all copies of the first irrep, then the next... (copy-major).
        sorted_channels = np.concatenate([self.irrep_channels(irrep) for irrep in self.irrep_offsets])
        self.sorted_position = np.argsort(sorted_channels)

    def irrep_channels(self, irrep: str) -> np.ndarray:
        """Channels (in the irrep basis) of every copy of ``irrep`` (a name), flattened copy-major."""
        offsets = np.array(self.irrep_offsets[irrep])
        return (offsets[:, None] + np.arange(self.irrep_dims[irrep])).reshape(-1)

    def gather_index(self, name: str) -> np.ndarray:
        """``(fields, d)``: irrep-sorted positions of the irrep-basis channels of representation ``name``."""
        return self.sorted_position[self.channels[name]]

    def scatter_index(self) -> np.ndarray | None:
        """Permutation from "representation groups one after another" to the field order (None if identity)."""
        grouped = np.concatenate([self.channels[name].reshape(-1) for name in self.reps])
        return None if np.array_equal(grouped, np.arange(self.size)) else np.argsort(grouped)

    def change_of_basis(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(Q, Q^-1)`` of representation ``name``, or ``None`` if it is the identity."""
        rep = self.reps[name]
        Q, Q_inv = rep.change_of_basis, rep.change_of_basis_inv
        if np.allclose(Q, np.eye(rep.size)):
            return None
        return Q, Q_inv


class OctahedralConv(GridConv):
    r"""Convolution between any field types over O_h or O with the exact voxel-grid kernel basis.

    Shapes and equivariance as :class:`~.grid.GridConv`.

    Parameters
    ----------
    in_type, out_type, kernel_size, stride, transposed, num_filter_banks
        As :class:`~.grid.GridConv`.
    bias : bool
        Learn a bias in the invariant subspace of every output field.

    Attributes
    ----------
    weights : torch.nn.Parameter
        ``(L, num_basis)``, the coefficients of every bank in the kernel basis.
    bias : torch.nn.Parameter or None
        The coefficients of the bias in the invariant subspaces of the output fields.
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int, *, stride: int = 1,
                 transposed: bool = False, num_filter_banks: int | None = None, bias: bool = True):
        super().__init__(in_type, out_type, kernel_size, stride=stride, transposed=transposed,
                         num_filter_banks=num_filter_banks)
        self._in_layout, self._out_layout = FieldLayout(in_type), FieldLayout(out_type)
        self._build_pairs()
        self.weights = torch.nn.Parameter(torch.empty(self.filter_banks, self.num_basis))
        self._build_output_transforms()
        self._build_bias(bias)
        self.reset_parameters()

    # ---- construction -------------------------------------------------------------------------

    def _build_pairs(self) -> None:
        """One basis per (out irrep, in irrep): buffer ``basis_j_i`` ``(n_b, d_out d_in k^3)``; the filter
        is assembled block by block in the irrep-sorted orders of both types."""
        self._pairs: list[list[tuple[str, slice, int, int, int, int, int]]] = []
        start = 0
        for j, out_irrep in enumerate(self._out_layout.irrep_offsets):
            row = []
            for i, in_irrep in enumerate(self._in_layout.irrep_offsets):
                basis = irrep_pair_basis(self.group, out_irrep, in_irrep, self.kernel_size)
                m_out, m_in = len(self._out_layout.irrep_offsets[out_irrep]), len(self._in_layout.irrep_offsets[in_irrep])
                d_out, d_in = self._out_layout.irrep_dims[out_irrep], self._in_layout.irrep_dims[in_irrep]
                count = m_out * m_in * len(basis)
                if len(basis):
                    self.register_buffer(f"basis_{j}_{i}", torch.tensor(basis.reshape(len(basis), -1),
                                                                        dtype=torch.float32), persistent=False)
                row.append((f"{j}_{i}", slice(start, start + count), m_out, m_in, d_out, d_in, len(basis)))
                start += count
            self._pairs.append(row)
        self.num_basis = start

    def _build_output_transforms(self) -> None:
        """Per representation group of each type: gather index from the irrep-sorted order and the change
        of basis (``Q_out``, with the relaxed mixing basis; ``Q_in^-1``)."""
        self._out_groups, self._in_groups = [], []
        for side, layout, groups in (("out", self._out_layout, self._out_groups), ("in", self._in_layout, self._in_groups)):
            for n, name in enumerate(layout.reps):
                self.register_buffer(f"{side}_gather_{n}", torch.from_numpy(layout.gather_index(name)), persistent=False)
                self.register_buffer(f"{side}_fields_{n}", torch.from_numpy(layout.channels[name]), persistent=False)
                cob = layout.change_of_basis(name)
                if cob is not None:
                    matrix = cob[0] if side == "out" else cob[1]
                    self.register_buffer(f"{side}_cob_{n}", torch.tensor(matrix, dtype=torch.float32), persistent=False)
                if side == "out" and self.relaxed is not None:
                    basis = self.relaxed.mixing_basis(layout.reps[name])
                    self.register_buffer(f"mix_{n}", torch.tensor(basis, dtype=torch.float32), persistent=False)
                groups.append((n, cob is not None))
            scatter = layout.scatter_index()
            self.register_buffer(f"{side}_scatter", None if scatter is None else torch.from_numpy(scatter),
                                 persistent=False)

    def _build_bias(self, bias: bool) -> None:
        """The bias parameter (``None`` without bias or invariant subspace) and, per output
        representation group, the basis of its invariant subspace."""
        self.bias = None
        if not bias:
            return
        parts, count = [], 0
        for n, name in enumerate(self._out_layout.reps):
            V = invariant_subspace(representation_matrices(self._out_layout.reps[name]))
            if len(V) == 0:
                continue
            self.register_buffer(f"bias_basis_{n}", torch.from_numpy(V).float(), persistent=False)
            fields = len(self._out_layout.channels[name])
            parts.append((n, slice(count, count + fields * len(V)), fields))
            count += fields * len(V)
        self._bias_parts = parts
        if count:
            self.bias = torch.nn.Parameter(torch.zeros(count))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He initialisation of the expanded filter: each entry has variance ``2 / (C_in k^3)``
        (``/ L`` for ``L`` banks, whose relaxed weights start at 1); zero bias."""
        banks = self.weights.shape[0]
        fan_in = self.in_type.size * self.kernel_size ** 3
        k3 = self.kernel_size ** 3
        for key, span, m_out, m_in, d_out, d_in, n_b in (pair for row in self._pairs for pair in row):
            if n_b:
                # Orthonormal basis: entry variance = sigma^2 n_b / (d_out d_in k^3).
                std = math.sqrt(2.0 / fan_in * d_out * d_in * k3 / n_b / banks)
                self.weights[:, span].normal_(0.0, std)
        if self.bias is not None:
            self.bias.zero_()
        self._cache = None

    # ---- the filter ---------------------------------------------------------------------------

    def _expand_banks(self) -> torch.Tensor:
        """Every bank's filter in the irrep bases (one matrix product per irrep pair, blocks concatenated).

        Returns
        -------
        torch.Tensor
            ``(L, C_out, C_in, k^3)``, rows and columns in the irrep-sorted orders.
        """
        banks, k3 = self.weights.shape[0], self.kernel_size ** 3
        rows = []
        for row in self._pairs:
            blocks = []
            for key, span, m_out, m_in, d_out, d_in, n_b in row:
                if n_b == 0:
                    blocks.append(self.weights.new_zeros(banks, m_out * d_out, m_in * d_in, k3))
                    continue
                block = self.weights[:, span].reshape(-1, n_b) @ getattr(self, f"basis_{key}")
                block = block.view(banks, m_out, m_in, d_out, d_in, k3).permute(0, 1, 3, 2, 4, 5)
                blocks.append(block.reshape(banks, m_out * d_out, m_in * d_in, k3))
            rows.append(torch.cat(blocks, dim=2))
        return torch.cat(rows, dim=1)

    def _output_maps(self, n: int) -> torch.Tensor | None:
        """``M_out(w_l) Q_out`` for the output representation group ``n``: ``(L, d, d)``, or ``None`` for
        the identity."""
        Q = getattr(self, f"out_cob_{n}", None)
        if self.relaxed is None:
            return None if Q is None else Q.unsqueeze(0)
        mixing = torch.einsum("lk,kij->lij", self.relaxed.coefficients, getattr(self, f"mix_{n}"))
        return mixing if Q is None else mixing @ Q

    def filter(self) -> torch.Tensor:
        """The combined filter ``sum_l M_out(w_l) Q_out K_l Q_in^-1`` in the field types' bases.

        Returns
        -------
        torch.Tensor
            ``(C_out, C_in, k, k, k)`` (conv3d layout), differentiable in the parameters.
        """
        banks = self._expand_banks()
        L, _, c_in, k3 = banks.shape
        pieces = []
        for n, _ in self._out_groups:
            gather = getattr(self, f"out_gather_{n}")  # (fields, d)
            fields, d = gather.shape
            rows = banks.index_select(1, gather.reshape(-1)).view(L, fields, d, c_in * k3)
            maps = self._output_maps(n)
            if maps is None:
                pieces.append(rows[0].reshape(fields * d, c_in, k3))
                continue
            # sum_{l, e} maps[l, d, e] rows[l, f, e, x]: one matrix product over (l, e).
            mixed = maps.permute(1, 0, 2).reshape(d, L * d) @ rows.permute(0, 2, 1, 3).reshape(L * d, fields * c_in * k3)
            pieces.append(mixed.view(d, fields, c_in, k3).transpose(0, 1).reshape(fields * d, c_in, k3))
        kernel = self._scatter(torch.cat(pieces), self.out_scatter, 0)
        pieces = []
        for n, has_cob in self._in_groups:
            gather = getattr(self, f"in_gather_{n}")
            fields, d = gather.shape
            cols = kernel.index_select(1, gather.reshape(-1))
            if has_cob:
                cols = (cols.view(-1, fields, d, k3).transpose(2, 3) @ getattr(self, f"in_cob_{n}")).transpose(2, 3)
            pieces.append(cols.reshape(kernel.shape[0], fields * d, k3))
        kernel = self._scatter(torch.cat(pieces, dim=1), self.in_scatter, 1)
        k = self.kernel_size
        return kernel.reshape(kernel.shape[0], kernel.shape[1], k, k, k)

    @staticmethod
    def _scatter(x: torch.Tensor, permutation: torch.Tensor | None, dim: int) -> torch.Tensor:
        return x if permutation is None else x.index_select(dim, permutation)

    def expanded_bias(self) -> torch.Tensor | None:
        """The bias per channel, ``(C_out,)``, non-zero only on invariant components of the output
        fields; ``None`` without bias."""
        if self.bias is None:
            return None
        out = self.bias.new_zeros(self._out_layout.size)
        for n, span, fields in self._bias_parts:
            V = getattr(self, f"bias_basis_{n}")
            idx = getattr(self, f"out_fields_{n}")
            out = out.index_copy(0, idx.reshape(-1), (self.bias[span].view(fields, -1) @ V).reshape(-1))
        return out

    def filter_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the forward pass convolves with.

        Returns
        -------
        tuple of torch.Tensor
            ``(filter(), expanded_bias())``: expanded in every training step (differentiable in the
            parameters), cached in eval mode until a parameter changes (:func:`~.grid.eval_cached`).
        """
        return eval_cached(self, lambda: (self.filter(), self.expanded_bias()))

    # ---- forward / export ---------------------------------------------------------------------

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.filter_and_bias()
        if self.transposed:
            return F.conv_transpose3d(x, weight.transpose(0, 1), bias, stride=self.stride, padding=self.padding)
        return F.conv3d(x, weight, bias, padding=self.padding)

    @torch.no_grad()
    def export(self) -> torch.nn.Module:
        """The layer as plain torch.

        Returns
        -------
        torch.nn.Conv3d or torch.nn.ConvTranspose3d
            Computes the same output.
        """
        weight, bias = self.filter(), self.expanded_bias()
        cls = torch.nn.ConvTranspose3d if self.transposed else torch.nn.Conv3d
        conv = cls(self.in_type.size, self.out_type.size, self.kernel_size, stride=self.stride,
                   padding=self.padding, bias=bias is not None)
        conv.weight.copy_(weight.transpose(0, 1) if self.transposed else weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv.to(weight.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, basis={self.num_basis}"
