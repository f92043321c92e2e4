r"""Volume operations a slab of the depth axis at a time, so that no temporary larger than a slab exists.

A stride-1 convolution with an odd kernel ``k`` and zero padding ``p = (k - 1) / 2`` is local along depth:
output planes ``[a, b)`` read input planes ``[a - p, b + p)`` (zeros outside the volume), and its input
gradient on planes ``[a, b)`` reads output-gradient planes ``[a - p, b + p)``. The functions here compute
such a slab with plain ``conv3d`` calls (no depth padding inside the call: the halo is cut out of the
volume and zero-padded only where it leaves the volume), so the result equals the whole-volume operation
to float round-off, and backward's full-size temporaries (the oneDNN reorders of input and output, one
activation each on CPU) shrink to slab size.

Shapes: volumes ``(B, C, D, H, W)``; a slab is a ``slice`` of ``D``; filters ``(C_out, C_in, k, k, k)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: The largest float32 depth slab of one activation that a checkpointed block's backward computes at
#: once (:func:`~.recompute.checkpoint_in_slabs`; ``SuperResolutionNet.slab_bytes``).
SLAB_BYTES = 4 * 2 ** 20


def depth_slices(shape: torch.Size, channels: int, chunk_bytes: int, min_planes: int = 1) -> list[slice]:
    """Cut the depth axis into slabs of bounded size.

    Parameters
    ----------
    shape : torch.Size
        ``(B, C, D, H, W)`` of the volume.
    channels : int
        Channels of the widest tensor computed per slab.
    chunk_bytes : int
        Bound on a float32 slab ``(B, channels, d, H, W)``.
    min_planes : int
        Fewest planes per slab (but the last), whatever ``chunk_bytes``.

    Returns
    -------
    list of slice
        Consecutive slices covering ``[0, D)`` once; one slice, the whole depth, if it all fits.
    """
    batch, _, depth, height, width = shape
    step = max(min_planes, chunk_bytes // (batch * channels * height * width * 4))
    return [slice(start, min(start + step, depth)) for start in range(0, depth, step)]


def halo(t: torch.Tensor, depth: slice, p: int) -> tuple[slice, tuple[int, int]]:
    """Where the halo of a slab lies.

    Parameters
    ----------
    t : torch.Tensor
        ``(B, C, D, H, W)``.
    depth : slice
        The slab.
    p : int
        The halo's width.

    Returns
    -------
    inside : slice
        The planes of ``[depth.start - p, depth.stop + p)`` inside the volume.
    before_after : tuple of int
        The numbers of zero planes that precede and follow them.
    """
    size = t.shape[2]
    start, stop = depth.start - p, depth.stop + p
    return slice(max(start, 0), min(stop, size)), (max(-start, 0), max(stop - size, 0))


def pad_depth(t: torch.Tensor, before_after: tuple[int, int]) -> torch.Tensor:
    """``t (B, C, d, H, W)`` with ``before_after`` zero planes added before and after along depth
    (``t`` itself if none)."""
    return t if before_after == (0, 0) else F.pad(t, (0, 0, 0, 0, *before_after))


def with_halo(t: torch.Tensor, depth: slice, p: int) -> torch.Tensor:
    """Planes ``[depth.start - p, depth.stop + p)`` of ``t (B, C, D, H, W)``, zeros outside the volume:
    ``(B, C, d + 2p, H, W)``."""
    inside, before_after = halo(t, depth, p)
    return pad_depth(t[:, :, inside], before_after)


def conv3d_slab(x_halo: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Output planes of a stride-1 ``conv3d`` with padding ``p = (k - 1) / 2``.

    Parameters
    ----------
    x_halo : torch.Tensor
        ``(B, C_in, d + 2p, H, W)``: the input planes with their halo (``with_halo(x, depth, p)``).
    weight : torch.Tensor
        ``(C_out, C_in, k, k, k)``.
    bias : torch.Tensor or None
        ``(C_out,)``.

    Returns
    -------
    torch.Tensor
        ``(B, C_out, d, H, W)``, in ``x_halo``'s precision.
    """
    p = (weight.shape[-1] - 1) // 2
    return F.conv3d(x_halo, weight.to(x_halo.dtype), None if bias is None else bias.to(x_halo.dtype), padding=(0, p, p))


def conv3d_input_grad_slab(grad_halo: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input-gradient planes of :func:`conv3d_slab`'s convolution: the correlation with the filter flipped
    in space and transposed in channels.

    Parameters
    ----------
    grad_halo : torch.Tensor
        ``(B, C_out, d + 2p, H, W)``: the output-gradient planes with their halo of ``p``.
    weight : torch.Tensor
        ``(C_out, C_in, k, k, k)``.

    Returns
    -------
    torch.Tensor
        ``(B, C_in, d, H, W)``.
    """
    return conv3d_slab(grad_halo, weight.transpose(0, 1).flip(2, 3, 4), None)


def conv3d_filter_grad_slab(x_halo: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                            bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The contribution of a slab of output planes to the filter and bias gradients of
    :func:`conv3d_slab`'s convolution.

    Parameters
    ----------
    x_halo : torch.Tensor
        ``(B, C_in, d + 2p, H, W)``: the input planes with their halo.
    grad : torch.Tensor
        ``(B, C_out, d, H, W)``: the output gradient on the slab.
    weight : torch.Tensor
        ``(C_out, C_in, k, k, k)``.
    bias : bool
        Whether the bias gradient is wanted.

    Returns
    -------
    d_weight : torch.Tensor
        ``(C_out, C_in, k, k, k)``, in ``grad``'s precision.
    d_bias : torch.Tensor or None
        ``(C_out,)``, or ``None`` if ``bias`` is false.
    """
    p = (weight.shape[-1] - 1) // 2
    _, d_weight, d_bias = torch.ops.aten.convolution_backward(
        grad, x_halo, weight.to(grad.dtype), [weight.shape[0]] if bias else None, [1, 1, 1], [0, p, p], [1, 1, 1],
        False, [0, 0, 0], 1, [False, True, bias])
    return d_weight, d_bias


def upsample_trilinear(x: torch.Tensor) -> torch.Tensor:
    """Trilinear upsampling by 2, ``align_corners=False`` (exact on the grid):
    ``(B, C, n, n, n) -> (B, C, 2n, 2n, 2n)``."""
    return F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)


def upsample_trilinear_slab(x: torch.Tensor, depth: slice) -> torch.Tensor:
    """Output planes ``depth`` of :func:`upsample_trilinear`, from the input planes they read.

    Output plane ``o`` interpolates input planes ``floor(o / 2 - 1/4)`` and the next (clamped to the
    volume), so the input planes ``[start / 2 - 1, (stop - 1) / 2 + 2)`` upsampled and cut give the
    same planes, bit for bit.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, n, n, n)``.
    depth : slice
        Output planes, within ``[0, 2n)``.

    Returns
    -------
    torch.Tensor
        ``(B, C, len(depth), 2n, 2n)``.
    """
    start = max(depth.start // 2 - 1, 0)
    stop = min((depth.stop - 1) // 2 + 2, x.shape[2])
    return upsample_trilinear(x[:, :, start:stop])[:, :, depth.start - 2 * start:depth.stop - 2 * start]


def upsample_trilinear_grad(grad: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """The input gradient of :func:`upsample_trilinear`: the adjoint interpolation, with no output-sized
    temporary (autograd would run the forward first).

    Parameters
    ----------
    grad : torch.Tensor
        ``(B, C, 2n, 2n, 2n)``, the output gradient.
    input_shape : torch.Size
        ``(B, C, n, n, n)``.

    Returns
    -------
    torch.Tensor
        ``(B, C, n, n, n)``.
    """
    return torch.ops.aten.upsample_trilinear3d_backward(grad, list(grad.shape[2:]), list(input_shape), False,
                                                        2.0, 2.0, 2.0)
