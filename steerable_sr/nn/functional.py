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

**Across processes** (data-parallel training, a :class:`StatisticsGroup`): the batch is the union of
the processes' batches. :func:`batch_moments` all-reduces every channel's count, sum and sum of
squares, so every process normalises with the statistics of the whole batch; in backward
:func:`backward_coefficients` all-reduces the chain-rule coefficients of the variance and mean
(linear in the sums ``sum g``, ``sum g t``), so that the input gradient is that of the loss summed
over processes, while the parameters' gradients stay those of the process's own loss (data-parallel
training sums or averages them, as any parameter's). Same result as one process with the whole
batch, to float round-off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed

from .slabs import depth_slices


class FieldPartition(NamedTuple):
    """The fields of a field type, as a field batch norm needs them.

    Attributes
    ----------
    projector : torch.Tensor
        ``(C, C)``, block-diagonal projector onto the invariant subspace of every field.
    field_of : torch.Tensor
        ``(C,)`` int64, the field of every channel.
    field_size : torch.Tensor
        ``(F,)`` float, the number of channels of every field.
    eps : float
        Added to the per-field variance.
    """

    projector: torch.Tensor
    field_of: torch.Tensor
    field_size: torch.Tensor
    eps: float


@dataclass(frozen=True)
class StatisticsGroup:
    """The processes whose batches a batch norm normalises together (module docstring).

    Attributes
    ----------
    process_group : torch.distributed.ProcessGroup or None
        ``None``: the default group. Statistics are shared only while ``torch.distributed`` is
        initialised and the group has more than one process.
    """

    process_group: torch.distributed.ProcessGroup | None = None

    def active(self) -> bool:
        """Whether there are other processes to share statistics with."""
        return (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size(self.process_group) > 1)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes, in place (every process calls it, in the same order)."""
        torch.distributed.all_reduce(t, torch.distributed.ReduceOp.SUM, group=self.process_group)
        return t


class BatchMoments(NamedTuple):
    """Per-channel moments of a batch (:func:`batch_moments`).

    Attributes
    ----------
    var, mean : torch.Tensor
        ``(C,)`` each, over batch and voxels; the variance biased.
    count : int
        Values per channel (batch x voxels, over every process of the group).
    """

    var: torch.Tensor
    mean: torch.Tensor
    count: int


def batch_moments(t: torch.Tensor, dtype: torch.dtype, group: StatisticsGroup | None = None) -> BatchMoments:
    """Per-channel moments of a batch.

    Parameters
    ----------
    t : torch.Tensor
        ``(B, C, N, N, N)``.
    dtype : torch.dtype
        Of the statistics (the running statistics' precision; autocast off).
    group : StatisticsGroup, optional
        The moments are those of the union of the group's batches (``t`` is this process's part):
        counts, sums and sums of squares all-reduced, in float64.

    Returns
    -------
    BatchMoments
    """
    with torch.autocast(t.device.type, enabled=False):
        var, mean = torch.var_mean(t.to(dtype), dim=(0, 2, 3, 4), unbiased=False)
    count = t.numel() // t.shape[1]
    if group is None or not group.active():
        return BatchMoments(var, mean, count)
    mean64 = mean.double()
    total = torch.cat([count * mean64, count * (var.double() + mean64.square()), mean64.new_full((1,), count)])
    channels = len(mean)
    group.sum(total)
    count_all = total[-1]
    mean_all = total[:channels] / count_all
    var_all = total[channels:2 * channels] / count_all - mean_all.square()
    return BatchMoments(var_all.to(dtype), mean_all.to(dtype), int(count_all.item()))


def field_moments(var: torch.Tensor, mean: torch.Tensor,
                  fields: FieldPartition) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-field statistics from the per-channel ones.

    Parameters
    ----------
    var, mean : torch.Tensor
        ``(C,)`` each, a batch's per-channel variance (biased) and mean (:func:`batch_moments`).
    fields : FieldPartition

    Returns
    -------
    field_mean : torch.Tensor
        ``(C,)``, the invariant mean ``P mean``.
    field_var : torch.Tensor
        ``(F,)``, the per-field variance ``E||v - P mean||^2 / d``: the field's average of
        ``var + (mean - P mean)^2``.
    """
    field_mean = fields.projector @ mean
    per_channel = var + (mean - field_mean).square()
    field_var = per_channel.new_zeros(len(fields.field_size)).index_add(0, fields.field_of, per_channel)
    return field_mean, field_var / fields.field_size


def normalisation(field_mean: torch.Tensor, field_var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  fields: FieldPartition) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map ``t -> t scale + shift`` that normalises the fields.

    Parameters
    ----------
    field_mean : torch.Tensor
        ``(C,)``, the fields' invariant mean (the batch's in training, the running one in eval mode).
    field_var : torch.Tensor
        ``(F,)``, the fields' variance.
    weight : torch.Tensor
        ``(F,)``, the scale of every field.
    bias : torch.Tensor
        ``(C,)``, of which the invariant part ``P bias`` is the shift.
    fields : FieldPartition

    Returns
    -------
    scale, shift : torch.Tensor
        ``(C,)`` each.
    """
    scale = (weight / torch.sqrt(field_var + fields.eps))[fields.field_of]
    return scale, fields.projector @ bias - field_mean * scale


def training_coefficients(var: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          fields: FieldPartition) -> tuple[torch.Tensor, torch.Tensor]:
    """The training-mode map of a batch: :func:`normalisation` of its field statistics.

    Parameters
    ----------
    var, mean : torch.Tensor
        ``(C,)`` each, the batch's per-channel moments (:func:`batch_moments`).
    weight, bias : torch.Tensor
        The layer's parameters, ``(F,)`` and ``(C,)``.
    fields : FieldPartition

    Returns
    -------
    scale, shift : torch.Tensor
        ``(C,)`` each, in ``var``'s precision (autocast off).
    """
    with torch.autocast(var.device.type, enabled=False):
        return normalisation(*field_moments(var, mean, fields), weight.to(var.dtype), bias.to(var.dtype), fields)


class NormGradient(NamedTuple):
    """The training-mode backward of a field batch norm (:func:`backward_coefficients`).

    Attributes
    ----------
    scale, a, b : torch.Tensor
        ``(C,)`` each: the input gradient is ``g scale + b t + a``.
    weight, bias : torch.Tensor
        The parameters' gradients, ``(F,)`` and ``(C,)``.
    """

    scale: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def input_grad(self, t: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The input gradient ``g scale + b t + a``, in two element-wise passes.

        Parameters
        ----------
        t : torch.Tensor
            ``(B, C, N, N, N)``, the layer's input.
        g : torch.Tensor
            ``(B, C, N, N, N)``, the gradient of its output.
        out : torch.Tensor, optional
            Written into (``t`` itself is allowed: every element is read before it is written).

        Returns
        -------
        torch.Tensor
            ``(B, C, N, N, N)``, in ``t``'s precision.
        """
        def channel(c: torch.Tensor) -> torch.Tensor:
            return c.to(t.dtype).view(1, -1, 1, 1, 1)

        return torch.addcmul(channel(self.a), t, channel(self.b), out=out).addcmul_(g, channel(self.scale))


def backward_coefficients(moments: BatchMoments, weight: torch.Tensor, bias: torch.Tensor, fields: FieldPartition,
                          sum_g: torch.Tensor, sum_gt: torch.Tensor,
                          group: StatisticsGroup | None = None) -> NormGradient:
    """The training-mode backward of a field batch norm, as per-channel coefficients (module docstring).

    Parameters
    ----------
    moments : BatchMoments
        The batch ``t``'s (:func:`batch_moments`, with the same ``group``).
    weight, bias : torch.Tensor
        The layer's parameters, ``(F,)`` and ``(C,)``.
    fields : FieldPartition
    sum_g, sum_gt : torch.Tensor
        ``(C,)`` each, the per-channel sums of this process's output gradient ``g`` and of ``g t``
        (:func:`channel_sums`).
    group : StatisticsGroup, optional
        The processes that shared the statistics: the input gradient's coefficients are summed over
        them; the parameters' gradients are this process's.

    Returns
    -------
    NormGradient
        In the statistics' precision.
    """
    var, mean, count = moments
    dtype = var.dtype
    with torch.enable_grad(), torch.autocast(var.device.type, enabled=False):
        leaves = var_, mean_, weight_, bias_ = [x.detach().to(dtype).requires_grad_()
                                                for x in (var, mean, weight, bias)]
        scale, shift = normalisation(*field_moments(var_, mean_, fields), weight_, bias_, fields)
        d_var, d_mean, d_weight, d_bias = torch.autograd.grad((scale, shift), leaves, (sum_gt, sum_g))
    if group is not None and group.active():
        d_var, d_mean = group.sum(torch.stack([d_var, d_mean]))
    b = 2 * d_var / count
    return NormGradient(scale.detach(), d_mean / count - b * mean, b, d_weight, d_bias)


def channel_affine(t: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``t * scale + shift`` per channel of ``t (B, C, N, N, N)`` (``scale, shift``: ``(C,)``), in ``t``'s
    precision: one element-wise pass."""
    return torch.addcmul(shift.to(t.dtype).view(1, -1, 1, 1, 1), t, scale.to(t.dtype).view(1, -1, 1, 1, 1))


def channel_sums(g: torch.Tensor, t: torch.Tensor,
                 chunk_bytes: int = 32 * 2 ** 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel sums a batch norm's backward needs, a depth slab at a time (no full-size temporary).

    Parameters
    ----------
    g, t : torch.Tensor
        ``(B, C, N, N, N)`` each: the output gradient and the input.
    chunk_bytes : int
        Bound on a slab (:func:`~.slabs.depth_slices`).

    Returns
    -------
    sum_g, sum_gt : torch.Tensor
        ``(C,)`` each, float32: ``sum g`` and ``sum g t`` over batch and voxels.
    """
    sum_g, sum_gt = g.new_zeros(t.shape[1], dtype=torch.float32), g.new_zeros(t.shape[1], dtype=torch.float32)
    for depth in depth_slices(t.shape, t.shape[1], chunk_bytes):
        g_d = g[:, :, depth]
        sum_g += g_d.sum(dim=(0, 2, 3, 4), dtype=torch.float32)
        sum_gt += (g_d * t[:, :, depth]).sum(dim=(0, 2, 3, 4), dtype=torch.float32)
    return sum_g, sum_gt
