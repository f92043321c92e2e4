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
