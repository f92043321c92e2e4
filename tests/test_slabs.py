"""Depth slabs: a stride-1 convolution, its input gradient and its filter gradient, and the trilinear
upsampling, computed a slab of depth planes at a time, equal the whole-volume operations."""
import pytest
import torch
import torch.nn.functional as F

from steerable_sr.nn.slabs import (conv3d_filter_grad_slab, conv3d_input_grad_slab, conv3d_slab, depth_slices,
                                   upsample_trilinear, upsample_trilinear_grad, upsample_trilinear_slab, with_halo)

# float32 sums of C_in k^3 = 108 (forward) or C_out k^3 (gradients) unit-scale products, reduced in another
# order than the whole-volume kernel: round-off ~1e-6 of the result's scale; the filter gradient sums
# over B N^3 voxels as well (a few slabs' partial sums added).
TOL = 1e-5


@pytest.mark.parametrize("chunk_planes", [1, 2, 5])
def test_depth_slices_cover_the_depth_once_within_the_budget(chunk_planes):
    shape = (2, 3, 7, 4, 5)
    plane_bytes = 2 * 4 * 4 * 5 * 4  # float32 plane of 4 channels
    slices = depth_slices(shape, 4, chunk_planes * plane_bytes)
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(7))
    assert all(s.stop - s.start <= chunk_planes for s in slices)


def _problem():
    x = torch.randn(2, 4, 5, 6, 7)
    weight = torch.randn(3, 4, 3, 3, 3) / (4 * 27) ** 0.5
    bias = torch.randn(3)
    return x, weight, bias


@pytest.mark.parametrize("planes", [1, 2, 3])
def test_convolution_in_slabs_equals_the_whole_volume(planes):
    x, weight, bias = _problem()
    whole = F.conv3d(x, weight, bias, padding=1)
    slabs = [conv3d_slab(with_halo(x, depth, 1), weight, bias)
             for depth in depth_slices(x.shape, 1, planes * 2 * 6 * 7 * 4)]
    assert torch.allclose(torch.cat(slabs, dim=2), whole, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("planes", [1, 2, 3])
def test_gradients_in_slabs_equal_autograd_of_the_whole_volume(planes):
    x, weight, bias = _problem()
    x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()
    grad = torch.randn(2, 3, 5, 6, 7)
    F.conv3d(x, weight, bias, padding=1).backward(grad)
    grad_x, d_weight, d_bias = [], torch.zeros_like(weight), torch.zeros_like(bias)
    for depth in depth_slices(x.shape, 1, planes * 2 * 6 * 7 * 4):
        grad_x.append(conv3d_input_grad_slab(with_halo(grad, depth, 1), weight.detach()))
        d_w, d_b = conv3d_filter_grad_slab(with_halo(x.detach(), depth, 1), grad[:, :, depth], weight.detach(), True)
        d_weight += d_w
        d_bias += d_b
    assert torch.allclose(torch.cat(grad_x, dim=2), x.grad, rtol=TOL, atol=TOL)
    assert torch.allclose(d_weight, weight.grad, rtol=TOL, atol=TOL)
    assert torch.allclose(d_bias, bias.grad, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("planes", [1, 2, 3])
def test_upsampling_in_slabs_equals_the_whole_volume(planes):
    x = torch.randn(2, 3, 5, 4, 3)
    whole = upsample_trilinear(x)
    slabs = [upsample_trilinear_slab(x, depth) for depth in depth_slices(whole.shape, 1, planes * 2 * 8 * 6 * 4)]
    assert torch.equal(torch.cat(slabs, dim=2), whole)  # the same interpolation weights and operands


def test_upsampling_gradient_equals_autograd():
    x = torch.randn(2, 3, 5, 4, 3, requires_grad=True)
    grad = torch.randn(2, 3, 10, 8, 6)
    upsample_trilinear(x).backward(grad)
    assert torch.allclose(upsample_trilinear_grad(grad, x.shape), x.grad, rtol=TOL, atol=TOL)
