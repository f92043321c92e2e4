r"""Activation checkpointing of a :class:`~.block.ConvBlock` that recomputes it in depth slabs.

The block up to its last nonlinearity (:mod:`.block`) is

    h   = first(x)                          convolution, or transposed convolution (upsampling)
    s   = second(act1(norm1(h)))            stride-1 convolution
    pre = norm2(s + skip(x))  or  skip(x) + norm2(s)

with :class:`~.conv.OctahedralConv` convolutions, :class:`~.pointwise.FieldBatchNorm` norms in
training mode (batch statistics) and a per-voxel nonlinearity ``act1``
(:class:`~.pointwise.FourierReLU`), each behind a :class:`~.tensor_op.TensorOp`
(:func:`~.checkpointing.recompute_of` says which blocks qualify). :func:`checkpoint_in_slabs` computes
``pre`` keeping only ``x`` for backward, like ``torch.utils.checkpoint``, but its backward holds,
besides ``x`` and the incoming gradient ``g``, at most two tensors of the block's output size at once
(``torch.utils.checkpoint`` replays autograd's backward: about five, plus the convolutions'
full-size temporaries):

* ``h``, recomputed; at the end, in place, the gradient of ``h``;
* one buffer that holds ``s`` (with the skip, if it joins before ``norm2``), then in place its
  gradient, then the gradient of ``norm1``'s output, each step reading and writing it a depth slab
  at a time (:mod:`.slabs`); freed before the input gradient is allocated.

A batch norm's backward needs only its input and two per-channel sums of the output gradient
(:func:`~.functional.backward_coefficients`); the convolutions, the nonlinearity, the trilinear skip
and the sums run in depth slabs, so no other full-size temporary exists (the CPU convolutions' own
reorders included). The expanded filters are rebuilt in backward rather than kept with the graph
of their expansion. The gradients are those of the block (the same operations, float round-off);
the running statistics are updated once, by the forward pass, which runs the norms themselves.
Compute: the forward pass once more, as ``torch.utils.checkpoint``, and the filter expansion.
(A skip that is the input itself and joins before ``norm2`` costs one more copy of the block's
size: its gradient is read before the buffer is overwritten.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .block import ConvBlock
from .functional import backward_coefficients, batch_moments, channel_affine, channel_sums, training_coefficients
from .slabs import (conv3d_filter_grad_slab, conv3d_input_grad_slab, conv3d_slab, depth_slices, halo, pad_depth,
                    upsample_trilinear_grad, upsample_trilinear_slab, with_halo)

if TYPE_CHECKING:
    from .conv import OctahedralConv


def checkpoint_in_slabs(x: torch.Tensor, block: ConvBlock, chunk_bytes: int) -> torch.Tensor:
    """The block's ``pre`` (module docstring), keeping only ``x`` for backward, which recomputes the
    block (the expanded filters included) in depth slabs. Training mode.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, n, n, n)``, the block's input.
    block : ConvBlock
        Of the layers the module docstring names (:func:`~.checkpointing.recompute_of` is
        :attr:`~.checkpointing.Recompute.SLABS`).
    chunk_bytes : int
        Bound on the float32 slab of one activation computed at once (:func:`~.slabs.depth_slices`).

    Returns
    -------
    torch.Tensor
        ``block.pre_activation(x)``, ``(B, C, N, N, N)`` (``N = 2n`` with an upsampling skip, else
        ``n``), to float round-off; the norms' running statistics are updated once.
    """
    first, norm1, _, second, norm2, _ = block
    parameters = [p for layer in (first, second, norm1, norm2) for p in layer.parameters()]
    return _SlabBlockFunction.apply(x, block, chunk_bytes, *parameters)


class _SlabBlockFunction(torch.autograd.Function):
    """:func:`checkpoint_in_slabs`. Backward runs under the forward's autocast state."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: ConvBlock, chunk_bytes: int, *parameters: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        ctx.block, ctx.chunk_bytes = block, chunk_bytes
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.save_for_backward(x, *parameters)  # the parameters: so that changing them in place is an error
        # The layers themselves (their running statistics are updated here, once).
        first, norm1, act1, second, norm2, _ = block
        (w1, b1), (w2, b2) = first.module.filter_and_bias(), second.module.filter_and_bias()
        r = act1(norm1(_first(first.module, x, w1, b1, chunk_bytes)))
        s = _conv_in_slabs(lambda depth, p: with_halo(r, depth, p), r.shape, w2, b2, chunk_bytes)
        del r
        if block.skip_before_norm:
            return norm2(_add_skip(s, x, block.upsample_skip, chunk_bytes))
        return _add_skip(norm2(s), x, block.upsample_skip, chunk_bytes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x = ctx.saved_tensors[0]
        block, chunk_bytes = ctx.block, ctx.chunk_bytes
        first, norm1, act1, second, norm2, _ = block
        conv1, conv2, n1, n2 = first.module, second.module, norm1.module, norm2.module
        enabled, dtype = ctx.autocast
        with torch.enable_grad():  # the filters, differentiable in the parameters (for the last step)
            filters1, filters2 = conv1.filter_and_bias(), conv2.filter_and_bias()
        (w1, b1), (w2, b2) = [[None if t is None else t.detach() for t in pair] for pair in (filters1, filters2)]
        with torch.no_grad(), torch.autocast(grad.device.type, dtype=dtype, enabled=enabled):
            # Recompute h and s (s in the buffer that then carries the gradients back to h).
            h = _first(conv1, x, w1, b1, chunk_bytes)
            moments1 = batch_moments(h, n1.running_var.dtype, n1.statistics_group)
            scale1, shift1 = training_coefficients(moments1.var, moments1.mean, n1.weight, n1.bias, n1.partition)

            def norm1_planes(depth: slice) -> torch.Tensor:
                """``norm1(h)`` on the planes ``depth``."""
                return channel_affine(h[:, :, depth], scale1, shift1)

            buffer = _conv_in_slabs(_rolling(lambda depth: act1(norm1_planes(depth)), h), h.shape, w2, b2,
                                    chunk_bytes)
            if block.skip_before_norm:
                _add_skip(buffer, x, block.upsample_skip, chunk_bytes)
            # norm2: buffer <- the gradient of norm2's input.
            grad_norm2 = backward_coefficients(batch_moments(buffer, n2.running_var.dtype, n2.statistics_group),
                                               n2.weight, n2.bias, n2.partition,
                                               *channel_sums(grad, buffer, chunk_bytes), n2.statistics_group)
            grad_norm2.input_grad(buffer, grad, out=buffer)
            grad_skip = _skip_grad(buffer if block.skip_before_norm else grad, x.shape, block.upsample_skip,
                                   overwritten=block.skip_before_norm)
            # second and act1: buffer <- the gradient of norm1's output.
            d_w2, d_b2 = _second_backward(buffer, norm1_planes, act1, w2, b2 is not None, chunk_bytes)
            # norm1: h <- the gradient of h.
            grad_norm1 = backward_coefficients(moments1, n1.weight, n1.bias, n1.partition,
                                               *channel_sums(buffer, h, chunk_bytes), n1.statistics_group)
            grad_norm1.input_grad(h, buffer, out=h)
            del buffer
            grad_x, d_w1, d_b1 = _first_backward(conv1, x, h, w1, b1 is not None, grad_skip, chunk_bytes)
        return (grad_x, None, None, *_parameter_grads(conv1, filters1, d_w1, d_b1),
                *_parameter_grads(conv2, filters2, d_w2, d_b2), grad_norm1.weight.to(n1.weight.dtype),
                grad_norm1.bias.to(n1.bias.dtype), grad_norm2.weight.to(n2.weight.dtype),
                grad_norm2.bias.to(n2.bias.dtype))


def _add_skip(t: torch.Tensor, x: torch.Tensor, upsample: bool, chunk_bytes: int) -> torch.Tensor:
    """``t += skip(x)`` in place, ``skip`` the trilinear upsampling by 2 (``upsample``) or the identity.

    The upsampling runs a depth slab of at most ``chunk_bytes`` at a time, at least 8 output planes per
    slab: each slab also interpolates 2-4 planes beyond it (:func:`~.slabs.upsample_trilinear_slab`).

    Returns
    -------
    torch.Tensor
        ``t``.
    """
    if not upsample:
        return t.add_(x)
    for depth in depth_slices(t.shape, t.shape[1], chunk_bytes, min_planes=8):
        t[:, :, depth] += upsample_trilinear_slab(x, depth)
    return t


def _skip_grad(grad: torch.Tensor, input_shape: torch.Size, upsample: bool, overwritten: bool) -> torch.Tensor:
    """The gradient of ``x`` through ``skip(x)``.

    Parameters
    ----------
    grad : torch.Tensor
        The gradient of ``skip(x)``.
    input_shape : torch.Size
        ``x``'s.
    upsample : bool
        ``skip`` is the trilinear upsampling by 2 (else the identity).
    overwritten : bool
        ``grad`` is overwritten later (a buffer): the identity's gradient is then a copy.

    Returns
    -------
    torch.Tensor
        Shaped like ``x``.
    """
    if upsample:
        return upsample_trilinear_grad(grad, input_shape)
    return grad.clone() if overwritten else grad


def _parameter_grads(conv: OctahedralConv, filters: tuple[torch.Tensor, torch.Tensor | None], d_weight: torch.Tensor,
                     d_bias: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The gradients of ``conv``'s parameters through the filter expansion.

    Parameters
    ----------
    conv : OctahedralConv
    filters : tuple of torch.Tensor
        ``conv.filter_and_bias()``, built with autograd on.
    d_weight, d_bias : torch.Tensor
        The gradients of the expanded filter and bias (``d_bias`` ``None`` without bias).

    Returns
    -------
    tuple of torch.Tensor
        One gradient per parameter of ``conv``, in order (``None`` for an unused one).
    """
    outputs = [(t, g) for t, g in zip(filters, (d_weight, d_bias)) if t is not None]
    return torch.autograd.grad([t for t, _ in outputs], list(conv.parameters()), [g.to(t.dtype) for t, g in outputs],
                               allow_unused=True)


def _rolling(compute: Callable[[slice], torch.Tensor], volume: torch.Tensor) -> Callable[[slice, int], torch.Tensor]:
    """``input_halo`` for :func:`_conv_in_slabs` from a per-voxel map, each plane computed once.

    Parameters
    ----------
    compute : callable
        ``compute(depth)``: the map's planes ``depth`` of a volume shaped like ``volume``.
    volume : torch.Tensor
        ``(B, C, D, H, W)``, the map's input (for its shape and depth).

    Returns
    -------
    callable
        ``planes(depth, p)``: the map's planes of ``depth`` with their halo of ``p`` (zeros outside
        the volume), for slabs that advance in order; only the planes the current slab's halo reads
        are kept.
    """
    kept, start = volume[:, :, :0], 0

    def planes(depth: slice, p: int) -> torch.Tensor:
        nonlocal kept, start
        inside, pads = halo(volume, depth, p)
        stop = start + kept.shape[2]
        new = [compute(slice(stop, inside.stop))] if stop < inside.stop else []
        kept, start = torch.cat([kept[:, :, inside.start - start:], *new], dim=2), inside.start
        return pad_depth(kept, pads)

    return planes


def _conv_in_slabs(input_halo: Callable[[slice, int], torch.Tensor], shape: torch.Size, weight: torch.Tensor,
                   bias: torch.Tensor | None, chunk_bytes: int) -> torch.Tensor:
    """A stride-1 convolution into a preallocated output, a depth slab at a time.

    Parameters
    ----------
    input_halo : callable
        ``input_halo(depth, p)``: the input planes of ``depth`` with their halo of ``p`` (zeros
        outside the volume).
    shape : torch.Size
        The input's, ``(B, C_in, N, N, N)``.
    weight : torch.Tensor
        ``(C_out, C_in, k, k, k)``.
    bias : torch.Tensor or None
        ``(C_out,)``.
    chunk_bytes : int
        Slab bound (:func:`~.slabs.depth_slices`).

    Returns
    -------
    torch.Tensor
        ``(B, C_out, N, N, N)``, in the convolution's (autocast) precision.
    """
    p, out = (weight.shape[-1] - 1) // 2, None
    for depth in depth_slices(shape, max(shape[1], weight.shape[0]), chunk_bytes):
        part = conv3d_slab(input_halo(depth, p), weight, bias)
        if out is None:  # in the convolution's (autocast) precision
            out = part.new_empty((shape[0], weight.shape[0]) + tuple(shape[2:]))
        out[:, :, depth] = part
    return out


def _first(conv: OctahedralConv, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           chunk_bytes: int) -> torch.Tensor:
    """``conv(x)`` with its expanded filter ``weight (C_out, C_in, k, k, k)`` and ``bias``: in depth slabs
    of at most ``chunk_bytes`` (stride 1) or whole (transposed)."""
    if conv.transposed:
        return F.conv_transpose3d(x, weight.transpose(0, 1), bias, stride=conv.stride, padding=conv.padding)
    return _conv_in_slabs(lambda depth, p: with_halo(x, depth, p), x.shape, weight, bias, chunk_bytes)


def _second_backward(buffer: torch.Tensor, act_input: Callable[[slice], torch.Tensor], act: nn.Module,
                     weight: torch.Tensor, bias: bool, chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backward through ``second(act(t))``, in place, a depth slab at a time.

    ``act(t)`` is computed once per plane, with autograd, one slab ahead. A slab's filter gradient
    reads ``act(t)`` on the slab and ``p`` planes on either side (the previous slab's last planes, the
    next slab's first); its input gradient reads ``p`` planes of output gradient on either side (the
    previous slab's last ones, saved before that slab was overwritten); then ``act``'s backward on
    the slab gives the slab of the gradient of ``t``.

    Parameters
    ----------
    buffer : torch.Tensor
        ``(B, C, N, N, N)``: the gradient of ``second``'s output; receives the gradient of ``t``.
    act_input : callable
        ``act_input(depth)``: the planes ``depth`` of ``t``.
    act : nn.Module
        The per-voxel nonlinearity, on plain tensors.
    weight : torch.Tensor
        ``second``'s expanded filter ``(C, C, k, k, k)``.
    bias : bool
        Whether ``second`` has a bias.
    chunk_bytes : int
        Slab bound (:func:`~.slabs.depth_slices`).

    Returns
    -------
    d_weight : torch.Tensor
        ``(C, C, k, k, k)``, float32.
    d_bias : torch.Tensor or None
        ``(C,)``, float32.
    """
    p = (weight.shape[-1] - 1) // 2
    d_weight = torch.zeros_like(weight, dtype=torch.float32)
    d_bias = weight.new_zeros(weight.shape[0], dtype=torch.float32) if bias else None
    slices = depth_slices(buffer.shape, buffer.shape[1], chunk_bytes, min_planes=p)

    def act_on(depth: slice) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            t = act_input(depth).requires_grad_()
            return t, act(t)

    act_before = grad_before = buffer[:, :, :0]  # the last p planes of act(t) and of the gradient before the slab
    following = act_on(slices[0])
    for i, depth in enumerate(slices):
        (t, r), following = following, act_on(slices[i + 1]) if i + 1 < len(slices) else None
        act_after = buffer[:, :, :0] if following is None else following[1][:, :, :p]
        grad_out = buffer[:, :, depth]
        inside, pads = halo(buffer, depth, p)
        r_halo = pad_depth(torch.cat([act_before, r, act_after], dim=2).detach().to(grad_out.dtype), pads)
        d_w, d_b = conv3d_filter_grad_slab(r_halo, grad_out, weight, bias)
        del r_halo
        d_weight += d_w
        if bias:
            d_bias += d_b
        grad_r = conv3d_input_grad_slab(
            pad_depth(torch.cat([grad_before, buffer[:, :, depth.start:inside.stop]], dim=2), pads), weight)
        act_before, grad_before = r[:, :, -p:].detach(), grad_out[:, :, -p:].clone()
        buffer[:, :, depth] = torch.autograd.grad(r, t, grad_r.to(r.dtype))[0]
        del t, r, grad_r
    return d_weight, d_bias


def _first_backward(conv: OctahedralConv, x: torch.Tensor, grad_h: torch.Tensor, weight: torch.Tensor, bias: bool,
                    grad_skip: torch.Tensor,
                    chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward through ``conv(x)``, plus the skip path's gradient of ``x``.

    Parameters
    ----------
    conv : OctahedralConv
        The first convolution (stride 1, in depth slabs; or transposed, whole).
    x : torch.Tensor
        ``(B, C, n, n, n)``, its input; cast to ``grad_h``'s precision (autocast) a slab at a time.
    grad_h : torch.Tensor
        ``(B, C, N, N, N)``, the gradient of its output.
    weight : torch.Tensor
        Its expanded filter ``(C_out, C_in, k, k, k)``.
    bias : bool
        Whether it has a bias.
    grad_skip : torch.Tensor
        ``(B, C, n, n, n)``, the gradient of ``x`` through the skip.
    chunk_bytes : int
        Slab bound (:func:`~.slabs.depth_slices`).

    Returns
    -------
    grad_x : torch.Tensor
        ``(B, C, n, n, n)``, in ``grad_h``'s precision.
    d_weight : torch.Tensor
        float32.
    d_bias : torch.Tensor or None
        float32.
    """
    if conv.transposed:
        grad_x, d_weight, d_bias = torch.ops.aten.convolution_backward(
            grad_h, x.to(grad_h.dtype), weight.transpose(0, 1).to(grad_h.dtype), [weight.shape[0]] if bias else None,
            [conv.stride] * 3, [conv.padding] * 3, [1, 1, 1], True, [0, 0, 0], 1, [True, True, bias])
        return grad_x.add_(grad_skip), d_weight.transpose(0, 1).float(), None if d_bias is None else d_bias.float()
    p = (weight.shape[-1] - 1) // 2
    d_weight = torch.zeros_like(weight, dtype=torch.float32)
    d_bias = weight.new_zeros(weight.shape[0], dtype=torch.float32) if bias else None
    grad_x = torch.empty_like(grad_skip, dtype=grad_h.dtype)
    for depth in depth_slices(x.shape, max(x.shape[1], weight.shape[0]), chunk_bytes):
        d_w, d_b = conv3d_filter_grad_slab(with_halo(x, depth, p).to(grad_h.dtype), grad_h[:, :, depth], weight, bias)
        d_weight += d_w
        if bias:
            d_bias += d_b
        torch.add(grad_skip[:, :, depth], conv3d_input_grad_slab(with_halo(grad_h, depth, p), weight),
                  out=grad_x[:, :, depth])
    return grad_x, d_weight, d_bias
