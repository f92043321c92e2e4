r"""Field batch normalisation as functions of per-channel statistics: its training-mode map and backward.

A field batch norm (:class:`~.pointwise.FieldBatchNorm`) of a batch ``t (B, C, N, N, N)`` is, per field
``v`` (``d`` channels), ``(v - P mu) weight / sqrt(E||v - P mu||^2 / d + eps) + P bias``, with ``mu``
the batch mean of the field's channels and ``P`` the projector onto its invariant subspace. It is a
per-channel affine map ``t scale + shift`` whose coefficients are functions of the batch's per-channel
variance and mean (``var_c``, ``mean_c``, over batch and voxels) and of the parameters
(:func:`training_coefficients`). Its backward is therefore per-channel too: for the output gradient
``g`` the input gradient is ``g scale + b t + a``, with ``a, b`` from the chain rule through the
variance and mean (``d var_c / d t = 2 (t - mean_c) / n``, ``d mean_c / d t = 1 / n``, ``n`` values
per channel), and it needs only the per-channel sums ``sum g`` and ``sum g t`` (:func:`channel_sums`,
:func:`backward_coefficients`). The fused backward of the layer and the slab recomputation of a block
(:mod:`.recompute`) both use these functions.

Statistics, coefficients and sums are computed in the statistics' precision (float32 under bf16/fp16
autocast); the element-wise passes (:func:`channel_affine`, :meth:`NormGradient.input_grad`) in the
batch's precision.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .slabs import depth_slices


class FieldPartition(NamedTuple):
    """The fields of a field type, as a field batch norm needs them.

    Attributes:
        projector: ``(C, C)`` block-diagonal projector onto the invariant subspace of every field.
        field_of: ``(C,)`` int64, the field of every channel.
        field_size: ``(F,)``, the number of channels of every field (float).
        eps: added to the per-field variance.
    """

    projector: torch.Tensor
    field_of: torch.Tensor
    field_size: torch.Tensor
    eps: float


def batch_moments(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(var, mean)`` of ``t (B, C, N, N, N)`` per channel over batch and voxels (biased), in ``dtype``
    (autocast off)."""
    with torch.autocast(t.device.type, enabled=False):
        return torch.var_mean(t.to(dtype), dim=(0, 2, 3, 4), unbiased=False)


def field_moments(var: torch.Tensor, mean: torch.Tensor,
                  fields: FieldPartition) -> tuple[torch.Tensor, torch.Tensor]:
    """``(field_mean, field_var)`` from the per-channel variance and mean of a batch (``(C,)`` each): the
    invariant mean ``P mean`` (per channel) and the per-field variance ``E||v - P mean||^2 / d``, the
    field's average of ``var + (mean - P mean)^2`` (``(F,)``)."""
    field_mean = fields.projector @ mean
    per_channel = var + (mean - field_mean).square()
    field_var = per_channel.new_zeros(len(fields.field_size)).index_add(0, fields.field_of, per_channel)
    return field_mean, field_var / fields.field_size


def normalisation(field_mean: torch.Tensor, field_var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  fields: FieldPartition) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of the map ``t -> t scale + shift`` that normalises fields of mean
    ``field_mean (C,)`` and variance ``field_var (F,)`` (batch statistics in training, running ones in
    eval mode), with the per-field ``weight (F,)`` and the invariant part of ``bias (C,)``."""
    scale = (weight / torch.sqrt(field_var + fields.eps))[fields.field_of]
    return scale, fields.projector @ bias - field_mean * scale


def training_coefficients(var: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          fields: FieldPartition) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of the training-mode map of a batch with per-channel ``var, mean``
    (:func:`batch_moments`), in their precision (autocast off)."""
    with torch.autocast(var.device.type, enabled=False):
        return normalisation(*field_moments(var, mean, fields), weight.to(var.dtype), bias.to(var.dtype), fields)


class NormGradient(NamedTuple):
    """The training-mode backward of a field batch norm (:func:`backward_coefficients`): the input
    gradient ``g scale + b t + a`` (per-channel ``(C,)`` each) and the parameters' gradients."""

    scale: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def input_grad(self, t: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``g scale + b t + a`` for the layer's input ``t`` and output gradient ``g`` (``(B, C, N, N, N)``),
        in ``t``'s precision, in two element-wise passes; written into ``out`` if given (``t`` itself is
        allowed: every element is read before it is written)."""
        def channel(c: torch.Tensor) -> torch.Tensor:
            return c.to(t.dtype).view(1, -1, 1, 1, 1)

        return torch.addcmul(channel(self.a), t, channel(self.b), out=out).addcmul_(g, channel(self.scale))


def backward_coefficients(var: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          fields: FieldPartition, sum_g: torch.Tensor, sum_gt: torch.Tensor,
                          samples: int) -> NormGradient:
    """The training-mode backward for the batch ``t`` with per-channel ``var, mean`` (:func:`batch_moments`,
    ``samples`` values per channel) and the output gradient ``g`` with per-channel sums ``sum_g = sum g``
    and ``sum_gt = sum g t`` (:func:`channel_sums`), in the statistics' precision (module docstring)."""
    dtype = var.dtype
    with torch.enable_grad(), torch.autocast(var.device.type, enabled=False):
        leaves = var_, mean_, weight_, bias_ = [x.detach().to(dtype).requires_grad_()
                                                for x in (var, mean, weight, bias)]
        scale, shift = normalisation(*field_moments(var_, mean_, fields), weight_, bias_, fields)
        d_var, d_mean, d_weight, d_bias = torch.autograd.grad((scale, shift), leaves, (sum_gt, sum_g))
    b = 2 * d_var / samples
    return NormGradient(scale.detach(), d_mean / samples - b * mean, b, d_weight, d_bias)


def channel_affine(t: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``t * scale + shift`` per channel of ``t (B, C, N, N, N)``, in ``t``'s precision: one elementwise pass."""
    return torch.addcmul(shift.to(t.dtype).view(1, -1, 1, 1, 1), t, scale.to(t.dtype).view(1, -1, 1, 1, 1))


def channel_sums(g: torch.Tensor, t: torch.Tensor,
                 chunk_bytes: int = 32 * 2 ** 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum g, sum g t)`` per channel of ``g, t (B, C, N, N, N)`` over batch and voxels, in float32,
    a depth slab of at most ``chunk_bytes`` at a time (no full-size temporary)."""
    sum_g, sum_gt = g.new_zeros(t.shape[1], dtype=torch.float32), g.new_zeros(t.shape[1], dtype=torch.float32)
    for depth in depth_slices(t.shape, t.shape[1], chunk_bytes):
        g_d = g[:, :, depth]
        sum_g += g_d.sum(dim=(0, 2, 3, 4), dtype=torch.float32)
        sum_gt += (g_d * t[:, :, depth]).sum(dim=(0, 2, 3, 4), dtype=torch.float32)
    return sum_g, sum_gt
