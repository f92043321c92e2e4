r"""Equivariant batch normalisation and nonlinearity for any field type with a Fourier embedding.

Both act field by field through the isometric intertwiner ``F`` of :mod:`.fourier` and export to
plain torch modules (``BatchNorm3d``; ``ReLU`` or ``1x1 Conv3d -> ReLU -> 1x1 Conv3d``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from escnn import nn as enn

from ..fields import check_type, is_regular, representation_matrices
from .basis import invariant_subspace
from .fourier import fourier_embedding
from .functional import (BatchMoments, FieldPartition, StatisticsGroup, backward_coefficients, batch_moments,
                         channel_affine, channel_sums, field_moments, normalisation)
from .slabs import depth_slices


class FieldBatchNorm(enn.EquivariantModule):
    r"""Batch normalisation that commutes with the group.

    Per field ``v`` (``d`` channels): the mean is taken in the field's invariant subspace only
    (``P_inv E[v]``), the variance is one scalar per field (``E||v - mu||^2 / d``), the scale is one
    scalar per field and the shift lives in the invariant subspace (formulas: :mod:`.functional`).
    On regular fields this is escnn's ``InnerBatchNorm``. In eval mode it is a per-channel affine map,
    exported as ``BatchNorm3d``. Shapes: ``(B, C, N, N, N) -> (B, C, N, N, N)``. Equivariance:
    ``norm(x.transform(g)) == norm(x).transform(g)`` for every ``g``, in training and eval mode.

    Parameters
    ----------
    field_type : escnn.nn.FieldType
        ``C`` channels in ``F`` fields.
    eps : float
        Added to the per-field variance.
    momentum : float
        Of the running statistics' update.

    Attributes
    ----------
    weight : torch.nn.Parameter
        ``(F,)``, the scale of every field.
    bias : torch.nn.Parameter
        ``(C,)``, of which the invariant part ``P bias`` is the shift.
    running_mean : torch.Tensor
        ``(C,)``, the running invariant mean (buffer).
    running_var : torch.Tensor
        ``(F,)``, the running per-field variance (buffer, unbiased).
    statistics_group : StatisticsGroup or None
        In training mode, normalise with the statistics of the union of this group's batches
        (data-parallel training; set by :meth:`convert_sync`); ``None``: this process's batch.
    """

    def __init__(self, field_type: enn.FieldType, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.in_type = self.out_type = field_type
        self.eps, self.momentum = eps, momentum
        # Projector onto the invariant subspace of every field, block-diagonal, and field membership.
        proj = np.zeros((field_type.size, field_type.size))
        field_of = np.zeros(field_type.size, dtype=np.int64)
        start = 0
        for f, rep in enumerate(field_type.representations):
            V = invariant_subspace(representation_matrices(rep))
            proj[start:start + rep.size, start:start + rep.size] = V.T @ V
            field_of[start:start + rep.size] = f
            start += rep.size
        self.register_buffer("invariant_projector", torch.tensor(proj, dtype=torch.float32), persistent=False)
        self.register_buffer("field_of", torch.from_numpy(field_of), persistent=False)
        self.register_buffer("field_size", torch.bincount(self.field_of).to(torch.float32), persistent=False)
        n_fields = len(field_type)
        self.regular = is_regular(field_type)
        self.weight = torch.nn.Parameter(torch.ones(n_fields))
        self.bias = torch.nn.Parameter(torch.zeros(field_type.size))
        self.register_buffer("running_mean", torch.zeros(field_type.size))
        self.register_buffer("running_var", torch.ones(n_fields))
        self.statistics_group: StatisticsGroup | None = None

    @classmethod
    def convert_sync(cls, module: torch.nn.Module, process_group=None) -> torch.nn.Module:
        """Share the batch statistics of every field batch norm in ``module`` across processes.

        The counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (which converts torch's
        batch norms only), for data-parallel training with synchronised batch norm (Lightning's
        ``sync_batchnorm``). In training mode the layers then normalise with the statistics of the
        whole batch over the processes, in forward, in backward and in the recomputation of
        activation checkpointing (:mod:`.functional`).

        Parameters
        ----------
        module : torch.nn.Module
            Changed in place.
        process_group : torch.distributed.ProcessGroup, optional
            ``None``: the default group.

        Returns
        -------
        torch.nn.Module
            ``module``.
        """
        for layer in module.modules():
            if isinstance(layer, cls):
                layer.statistics_group = StatisticsGroup(process_group)
        return module

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        """Normalise ``x (B, C, N, N, N)`` with the batch's statistics (training mode; updates the
        running ones) or with the running statistics (eval mode)."""
        check_type(x, self.in_type)
        t = x.tensor
        if self.regular and not (self.training and self.statistics_group is not None
                                 and self.statistics_group.active()):
            return enn.GeometricTensor(self._regular_norm(t), self.out_type)
        if self.training:
            out = _FieldNormFunction.apply(t, self.weight, self.bias, self)
        else:
            # Statistics and coefficients in the buffers' precision (float32 under bf16/fp16 autocast).
            with torch.autocast(t.device.type, enabled=False):
                scale, shift = normalisation(self.running_mean, self.running_var, self.weight, self.bias,
                                             self.partition)
            out = channel_affine(t, scale, shift)
        return enn.GeometricTensor(out, self.out_type)

    def _regular_norm(self, t: torch.Tensor) -> torch.Tensor:
        """Regular fields: the invariant subspace of a field is the constants over its ``|G|`` channels,
        so its statistics are those of the field's channels and voxels pooled: native batch norm of
        ``t`` viewed as ``(B, fields, |G| N^3)`` (one fused kernel forward and backward). The running
        statistics are kept per channel (``running_mean``) as on any field type, so they are read per
        field and written back (same unbiasing, ``B |G| N^3`` samples, and momentum)."""
        fields, order = len(self.running_var), self.in_type.size // len(self.running_var)
        running_mean = self.running_mean.view(fields, order).mean(dim=1)
        out = F.batch_norm(t.reshape(t.shape[0], fields, -1), running_mean, self.running_var, self.weight,
                           self.bias.view(fields, order).mean(dim=1), self.training, self.momentum, self.eps)
        if self.training:
            with torch.no_grad():
                self.running_mean.view(fields, order).copy_(running_mean.unsqueeze(1))
        return out.view_as(t)

    @property
    def partition(self) -> FieldPartition:
        """The fields of the layer's type, as the batch-norm formulas read them (:mod:`.functional`)."""
        return FieldPartition(self.invariant_projector, self.field_of, self.field_size, self.eps)

    @torch.no_grad()
    def update_running_statistics(self, field_mean: torch.Tensor, field_var: torch.Tensor, samples: int) -> None:
        """Momentum update of the running statistics from a batch's.

        Parameters
        ----------
        field_mean : torch.Tensor
            ``(C,)``, the batch's invariant mean (:func:`~.functional.field_moments`).
        field_var : torch.Tensor
            ``(F,)``, the batch's biased per-field variance.
        samples : int
            Values per channel (batch x voxels): ``d samples`` per field for the unbiased variance.
        """
        count = self.field_size * samples
        self.running_mean.lerp_(field_mean, self.momentum)
        self.running_var.lerp_(field_var * count / (count - 1).clamp(min=1), self.momentum)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    @torch.no_grad()
    def export(self) -> torch.nn.BatchNorm3d:
        """The eval-mode map as plain torch.

        Returns
        -------
        torch.nn.BatchNorm3d
            In eval mode, the same per-channel affine map.
        """
        bn = torch.nn.BatchNorm3d(self.in_type.size, eps=self.eps, momentum=self.momentum)
        bn.running_mean.copy_(self.running_mean)
        bn.running_var.copy_(self.running_var[self.field_of])
        bn.weight.copy_(self.weight[self.field_of])
        bn.bias.copy_(self.invariant_projector @ self.bias)
        return bn.eval().to(self.bias.device)


class _FieldNormFunction(torch.autograd.Function):
    r"""Training-mode :class:`FieldBatchNorm` (irrep bands; any fields with shared statistics),
    ``t (B, C, N, N, N) -> t * scale + shift``
    (:func:`~.functional.training_coefficients`), with a fused backward: it keeps only ``t`` (shared
    with the layer before) and reads it twice, once for the per-channel sums ``sum g`` and ``sum g t``
    and once to write the input gradient (:func:`~.functional.backward_coefficients`), instead of
    autograd's separate element-wise kernels and temporaries. Updates the running statistics (once
    per forward)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                layer: "FieldBatchNorm") -> torch.Tensor:
        partition, group = layer.partition, layer.statistics_group
        var, mean, count = batch_moments(t, layer.running_var.dtype, group)
        with torch.autocast(t.device.type, enabled=False):
            field_mean, field_var = field_moments(var, mean, partition)
            scale, shift = normalisation(field_mean, field_var, weight.to(var.dtype), bias.to(var.dtype), partition)
        layer.update_running_statistics(field_mean, field_var, count)
        ctx.save_for_backward(t, var, mean, weight, bias)
        ctx.partition, ctx.group, ctx.count = partition, group, count
        return channel_affine(t, scale, shift)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        t, var, mean, weight, bias = ctx.saved_tensors
        gradient = backward_coefficients(BatchMoments(var, mean, ctx.count), weight, bias, ctx.partition,
                                         *channel_sums(grad, t), ctx.group)
        return gradient.input_grad(t, grad), gradient.weight.to(weight.dtype), gradient.bias.to(bias.dtype), None


class FourierReLU(enn.EquivariantModule):
    r"""``v -> F^T relu(F v)`` per field: the field read as a function on the ``|G|`` elements, rectified
    pointwise, projected back. Exactly equivariant because ``F`` intertwines the field's
    representation with the regular one and ``relu`` commutes with permutations of the elements.
    On regular fields ``F`` is a channel relabelling and this is a plain ReLU.
    Shapes: ``(B, C, N, N, N) -> (B, C, N, N, N)``.

    Memory: the grid ``F v`` (``|G|`` channels per field: 2.4 times the input on bands of every
    irrep, 48 / 20 for O_h, 24 / 10 for O) is computed in slices of the volume along depth, each at
    most ``chunk_bytes`` of float32 grid values, in forward and in backward; the full-size grid never
    exists, only its 1-byte sign mask (kept for backward). Output and gradients are those of the
    unsliced computation (same operations per voxel).

    Parameters
    ----------
    field_type : escnn.nn.FieldType
        Fields with a Fourier embedding (:func:`~.fourier.fourier_embedding`).
    """

    chunk_bytes = 64 * 2 ** 20  # largest float32 grid slice computed at once

    def __init__(self, field_type: enn.FieldType):
        super().__init__()
        self.in_type = self.out_type = field_type
        embeddings = [fourier_embedding(rep) for rep in field_type.representations]
        self.pointwise = is_regular(field_type)
        if not self.pointwise:
            # Block-diagonal F over the fields: (fields * |G|, C).
            order = embeddings[0].shape[0]
            F_full = np.zeros((order * len(embeddings), field_type.size))
            start = 0
            for f, emb in enumerate(embeddings):
                F_full[f * order:(f + 1) * order, start:start + emb.shape[1]] = emb
                start += emb.shape[1]
            self.register_buffer("embedding", torch.tensor(F_full, dtype=torch.float32), persistent=False)

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        """The nonlinearity on every voxel of ``x (B, C, N, N, N)``."""
        check_type(x, self.in_type)
        if self.pointwise:
            return enn.GeometricTensor(F.relu(x.tensor), self.out_type)
        out = _FourierReLUFunction.apply(x.tensor, self.embedding, self.chunk_bytes)
        return enn.GeometricTensor(out, self.out_type)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    @torch.no_grad()
    def export(self) -> torch.nn.Module:
        """The layer as plain torch.

        Returns
        -------
        torch.nn.Module
            ``ReLU`` on regular fields, else ``Sequential(Conv3d(1x1, F), ReLU, Conv3d(1x1, F^T))``.
        """
        if self.pointwise:
            return torch.nn.ReLU()
        size, order = self.in_type.size, self.embedding.shape[0]
        up = torch.nn.Conv3d(size, order, 1, bias=False)
        down = torch.nn.Conv3d(order, size, 1, bias=False)
        up.weight.copy_(self.embedding.view(order, size, 1, 1, 1))
        down.weight.copy_(self.embedding.T.reshape(size, order, 1, 1, 1))
        return torch.nn.Sequential(up, torch.nn.ReLU(), down).to(self.embedding.device)


class _FourierReLUFunction(torch.autograd.Function):
    r"""``x -> F^T relu(F x)`` per voxel, ``x (B, C, N, N, N)``, ``F (|G| fields, C)``, keeping for
    backward only the sign mask ``F x > 0`` (one byte per grid value) instead of the grid ``F x`` and
    ``relu(F x)`` (four bytes each in float32): the backward ``F^T (mask * (F g))`` is the one autograd
    computes through ``conv3d -> relu -> conv3d`` (``relu``'s subgradient at 0 is 0 in both).
    Forward and backward run per depth slice (:func:`.slabs.depth_slices`), writing into a preallocated
    output, mask and input gradient, so no grid larger than ``chunk_bytes`` exists at once.
    Under autocast the 1x1 convolutions run in the autocast precision, in backward as in forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, embedding: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
        order, size = embedding.shape
        up, down = embedding.view(order, size, 1, 1, 1), embedding.T.reshape(size, order, 1, 1, 1)
        slices = depth_slices(x.shape, order, chunk_bytes)
        mask = x.new_empty((x.shape[0], order) + x.shape[2:], dtype=torch.bool)
        out = None
        for depth in slices:
            on_group = F.conv3d(x[:, :, depth], up)
            torch.gt(on_group, 0, out=mask[:, :, depth])
            part = F.conv3d(on_group.relu_(), down)
            if out is None:  # in the convolutions' (autocast) precision
                out = x.new_empty(x.shape, dtype=part.dtype)
            out[:, :, depth] = part
        ctx.save_for_backward(mask, embedding)
        ctx.input_dtype, ctx.chunk_bytes = x.dtype, chunk_bytes
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        mask, embedding = ctx.saved_tensors
        order, size = embedding.shape
        embedding = embedding.to(grad.dtype)
        up, down = embedding.view(order, size, 1, 1, 1), embedding.T.reshape(size, order, 1, 1, 1)
        grad_in = grad.new_empty(grad.shape, dtype=ctx.input_dtype)
        for depth in depth_slices(grad.shape, order, ctx.chunk_bytes):
            grad_in[:, :, depth] = F.conv3d(F.conv3d(grad[:, :, depth], up).mul_(mask[:, :, depth]), down)
        return grad_in, None, None
