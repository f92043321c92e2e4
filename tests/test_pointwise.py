"""Equivariant batch norm and Fourier ReLU: what they compute, their equivariance, their export."""
import pytest
import torch
from escnn import nn as enn

from steerable_sr import fields
from steerable_sr.nn import FieldBatchNorm, FourierReLU
from steerable_sr.testing import EQUIVARIANT_TOL, relative_error


def random_tensor(field_type, n=4, batch=3):
    return enn.GeometricTensor(3 * torch.randn(batch, field_type.size, n, n, n) + 1, field_type)


def test_batch_norm_on_regular_fields_is_escnn_inner_batch_norm():
    regular = fields.regular_type("Oh", 2)
    ours, theirs = FieldBatchNorm(regular), enn.InnerBatchNorm(regular)
    x = random_tensor(regular)
    assert relative_error(ours(x).tensor, theirs(x).tensor) < 1e-5  # train mode: batch statistics
    ours.eval(), theirs.eval()
    assert relative_error(ours(x).tensor, theirs(x).tensor) < 1e-5  # eval mode: running statistics


@pytest.mark.parametrize("make_type", [fields.regular_type, fields.irrep_type])
@pytest.mark.parametrize("module", [FieldBatchNorm, FourierReLU])
@pytest.mark.parametrize("training", [True, False])
def test_pointwise_modules_are_equivariant(make_type, module, training):
    field_type = make_type("Oh", 2)
    layer = module(field_type).train(training)
    if isinstance(layer, FieldBatchNorm):
        with torch.no_grad():
            layer.bias.normal_(), layer.weight.uniform_(0.5, 2)
    x = random_tensor(field_type)
    # Not testing.assert_equivariant: that runs in eval mode, and training mode is tested here too.
    with torch.no_grad():
        y = layer(x)
        for g in range(48):
            assert relative_error(layer(fields.transform(x, g)).tensor, fields.transform(y, g).tensor) < EQUIVARIANT_TOL


def test_batch_norm_normalises_each_field():
    band = fields.irrep_type("Oh", 3)
    y = FieldBatchNorm(band)(random_tensor(band, batch=8)).tensor
    per_field = y.view(8, 3, band.size // 3, -1).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_field.square().mean(dim=1), torch.ones(3), atol=1e-4)


def test_fourier_relu_on_regular_fields_is_relu():
    regular = fields.regular_type("Oh", 1)
    x = random_tensor(regular)
    assert torch.equal(FourierReLU(regular)(x).tensor, torch.relu(x.tensor))


@pytest.mark.parametrize("module", [FieldBatchNorm, FourierReLU])
def test_exports_compute_the_same_eval_map(module):
    band = fields.irrep_type("Oh", 2)
    layer = module(band)
    x = random_tensor(band)
    layer(x)  # update running statistics
    layer.eval()
    exported = layer.export().eval()
    assert all(type(m).__module__.startswith("torch.") for m in exported.modules())
    with torch.no_grad():
        assert relative_error(exported(x.tensor), layer(x).tensor) < 1e-6


def _norm_step(layer, x):
    """Output of a training-mode pass, the gradients of a random linear loss, and the running statistics."""
    layer.zero_grad(set_to_none=True)
    t = x.tensor.clone().requires_grad_()
    y = layer(enn.GeometricTensor(t, layer.in_type)).tensor
    (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
    return [y, t.grad, layer.weight.grad, layer.bias.grad, layer.running_mean.clone(), layer.running_var.clone()]


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_of_regular_fields_fused_equals_the_general_path(training):
    # The regular path is one native batch norm of the fields' pooled channels; the general path
    # (projector, per-field variance) is the definition. Same output, gradients and running
    # statistics to float32 round-off (reductions over 3 x 48 x 64 values in another order: 1e-5).
    regular = fields.regular_type("Oh", 3)
    fused = FieldBatchNorm(regular)
    with torch.no_grad():
        fused.weight.uniform_(0.5, 2), fused.bias.normal_()
    general = FieldBatchNorm(regular)
    general.load_state_dict(fused.state_dict())
    general.regular = False
    x, other = random_tensor(regular), random_tensor(regular)
    for layer in (fused, general):
        layer(x), layer(other)  # two updates of the running statistics
        layer.train(training)
    for ours, reference in zip(_norm_step(fused, x), _norm_step(general, x)):
        assert relative_error(ours, reference) < 1e-5


def _batch_norm_by_definition(layer, t):
    """Training-mode field batch norm written out, autograd through every step: per field ``v``,
    ``(v - P E[v]) * weight / sqrt(E||v - P E[v]||^2 / d + eps) + P bias``."""
    P, field_of = layer.invariant_projector, layer.field_of
    mean = P @ t.mean(dim=(0, 2, 3, 4))
    centred = t - mean.view(1, -1, 1, 1, 1)
    d = torch.bincount(field_of).to(t.dtype)
    var = torch.zeros(len(d)).index_add(0, field_of, centred.square().mean(dim=(0, 2, 3, 4))) / d
    scale = (layer.weight / torch.sqrt(var + layer.eps))[field_of]
    return centred * scale.view(1, -1, 1, 1, 1) + (P @ layer.bias).view(1, -1, 1, 1, 1)


def test_batch_norm_of_irrep_bands_output_and_gradients_equal_the_definition():
    # The fused backward (per-channel sums, one pass) against autograd through the definition:
    # reductions over 3 x 64 voxels in another order, float32 round-off (1e-5 relative).
    band = fields.irrep_type("Oh", 3)
    layer = FieldBatchNorm(band)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2), layer.bias.normal_()
    x = random_tensor(band)
    ours = _norm_step(layer, x)
    layer.zero_grad(set_to_none=True)
    t = x.tensor.clone().requires_grad_()
    y = _batch_norm_by_definition(layer, t)
    (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
    for mine, reference in zip(ours[:4], [y, t.grad, layer.weight.grad, layer.bias.grad]):
        assert relative_error(mine, reference) < 1e-5


def _fourier_relu_reference(x, embedding):
    """``F^T relu(F x)`` through autograd's own conv3d -> relu -> conv3d."""
    order, size = embedding.shape
    on_group = torch.relu(torch.nn.functional.conv3d(x, embedding.view(order, size, 1, 1, 1)))
    return torch.nn.functional.conv3d(on_group, embedding.T.reshape(size, order, 1, 1, 1))


def test_fourier_relu_output_and_gradient_equal_autograd_through_its_grid():
    band = fields.irrep_type("Oh", 2)
    layer = FourierReLU(band)
    x = random_tensor(band).tensor
    x[:, :, 0] = 0  # grid values exactly 0: relu's subgradient there is 0 in both
    grad = torch.randn_like(x)
    outputs, grads = [], []
    for fn in (lambda t: layer(enn.GeometricTensor(t, band)).tensor, lambda t: _fourier_relu_reference(t, layer.embedding)):
        t = x.clone().requires_grad_()
        y = fn(t)
        y.backward(grad)
        outputs.append(y), grads.append(t.grad)
    assert relative_error(outputs[0], outputs[1]) < 1e-6  # same convolutions: float32 round-off
    assert relative_error(grads[0], grads[1]) < 1e-6
    assert torch.equal(grads[0][:, :, 0], torch.zeros_like(grads[0][:, :, 0]))


def _saved_bytes(fn, x):
    """Bytes of the tensors autograd keeps for the backward of ``fn(x)``."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        fn(x.clone().requires_grad_())
    return sum(saved)


def test_fourier_relu_keeps_only_a_sign_mask_for_backward():
    band = fields.irrep_type("Oh", 2)
    layer = FourierReLU(band)
    x = random_tensor(band).tensor
    grid_values = x.shape[0] * layer.embedding.shape[0] * x[0, 0].numel()
    ours = _saved_bytes(lambda t: layer(enn.GeometricTensor(t, band)).tensor, x) - layer.embedding.numel() * 4
    assert ours == grid_values  # one byte per grid value (bool), nothing else but the embedding
    assert _saved_bytes(lambda t: _fourier_relu_reference(t, layer.embedding), x) > 4 * ours


@pytest.mark.parametrize("module", [FieldBatchNorm, FourierReLU])
@pytest.mark.parametrize("make_type", [fields.regular_type, fields.irrep_type])
def test_bf16_autocast_matches_float32(module, make_type):
    # bfloat16 keeps 8 bits of mantissa: relative error ~ 2^-8 per rounding, a few roundings deep.
    field_type = make_type("Oh", 2)
    layer = module(field_type)
    x = random_tensor(field_type)
    reference = layer(x).tensor
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(enn.GeometricTensor(x.tensor.bfloat16(), field_type)).tensor
    assert low.dtype == torch.bfloat16
    assert relative_error(low.float(), reference) < 3e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fourier_relu_in_depth_slices_equals_the_whole_volume(dtype):
    band = fields.irrep_type("Oh", 2)
    whole, sliced = FourierReLU(band), FourierReLU(band)
    sliced.chunk_bytes = 1  # one depth plane per slice
    x = random_tensor(band, n=5).tensor.to(dtype)
    grad = torch.randn_like(x)
    outputs, grads = [], []
    for layer in (whole, sliced):
        t = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = layer(enn.GeometricTensor(t, band)).tensor
        y.backward(grad)
        outputs.append(y), grads.append(t.grad)
    assert outputs[1].dtype == outputs[0].dtype == dtype and grads[1].dtype == dtype
    assert relative_error(outputs[1].float(), outputs[0].float()) < 1e-6
    assert relative_error(grads[1].float(), grads[0].float()) < 1e-6


@pytest.mark.parametrize("make_type", [fields.regular_type, fields.irrep_type])
def test_batch_norm_input_gradient_coefficients_equal_autograd(make_type):
    # The backward as per-channel coefficients (what a recomputed block uses): from the batch
    # statistics and the sums of g and g t alone, the input, weight and bias gradients of the layer's
    # own training-mode backward; float32 reductions in another order (1e-5 relative).
    from steerable_sr.nn.functional import backward_coefficients, batch_moments, channel_sums, training_coefficients

    field_type = make_type("Oh", 2)
    layer = FieldBatchNorm(field_type)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2), layer.bias.normal_()
    t = random_tensor(field_type).tensor
    g = torch.linspace(-1, 2, t.numel()).view_as(t)
    y, grad_t, grad_weight, grad_bias = _norm_step(layer, enn.GeometricTensor(t, field_type))[:4]
    moments = batch_moments(t, torch.float32)
    gradient = backward_coefficients(moments, layer.weight, layer.bias, layer.partition,
                                     *channel_sums(g, t, chunk_bytes=1))
    assert relative_error(gradient.input_grad(t, g), grad_t) < 1e-5
    assert relative_error(gradient.weight, grad_weight) < 1e-5
    assert relative_error(gradient.bias, grad_bias) < 1e-5
    scale, shift = training_coefficients(moments.var, moments.mean, layer.weight, layer.bias, layer.partition)
    assert relative_error(t * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1), y) < 1e-5
