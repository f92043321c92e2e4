"""Separable (relaxed) group convolutions: the definition, equivariance (layer and model, O_h and O),
the stabilizer of relaxed weights, export, the kernel space as a subspace of the full layer's, the
models and presets, and bad input."""
import pytest
import torch
import torch.nn.functional as F
from escnn import nn as enn

from steerable_sr import fields, groups
from steerable_sr.models import build_model
from steerable_sr.nn import OctahedralConv, SeparableGroupConv
from steerable_sr.groups import named_subgroups
from steerable_sr.symmetry import stabilizer, symmetry_report
from steerable_sr.testing import (BROKEN_TOL, EQUIVARIANT_TOL, assert_equivariant, assert_not_equivariant,
                                  assert_symmetry, random_field, random_invariant_weights, relative_error)

INPUTS = [pytest.param(lambda group: fields.regular_type(group, 2), id="regular"),
          pytest.param(lambda group: fields.velocity_type(group, 3), id="velocity")]


def separable_reference(layer: SeparableGroupConv, x: torch.Tensor) -> torch.Tensor:
    r"""The definition, the slow way: ``K[(o,g),(i,h)](t) = sum_l w_l(g) kappa_{l,o}(R_g^-1 t) psi(o,i,g^-1 h)``,
    by explicit loops over the elements (``g^-1 h`` by matrix algebra, ``kappa`` moved by ``act``), then
    one plain convolution. A lifting layer's 1x1 part is the exact 1x1 map of its ``pointwise`` layer."""
    group = layer.group
    mats = groups.group_matrices(group)
    channel = fields.escnn_element_indices(group).tolist()  # a regular field has one channel per escnn element
    order, k = len(mats), layer.kernel_size
    c_out = len(layer.out_type)
    kappa = layer.spatial_kernel.detach()
    banks = kappa.shape[0]
    w = torch.ones(1, order) if layer.relaxed is None else layer.relaxed_weights_on_group().detach()
    if layer.group_kernel is not None:
        psi = layer.group_kernel.detach()
        W = torch.zeros(c_out, order, psi.shape[1], order)
        for g in range(order):
            for h in range(order):
                W[:, channel[g], :, channel[h]] = psi[:, :, groups.element_index(mats[g].T @ mats[h], group)]
        W = W.reshape(c_out * order, -1)
    else:
        W = layer.pointwise.filter().detach().reshape(c_out * order, -1)
    D = torch.zeros(c_out, order, k, k, k)
    for g in range(order):
        for l in range(banks):
            D[:, channel[g]] += w[l, g] * groups.act(kappa[l], mats[g], "scalar")
    kernel = D.reshape(-1, 1, k, k, k) * W[:, :, None, None, None]
    bias = layer.bias.detach().repeat_interleave(order)
    if layer.transposed:
        return F.conv_transpose3d(x, kernel.transpose(0, 1), bias, stride=layer.stride, padding=layer.padding)
    return F.conv3d(x, kernel, bias, padding=layer.padding)


def randomised(layer: SeparableGroupConv) -> SeparableGroupConv:
    """Random relaxed weights (relaxed layers) and bias, so that every part of the layer is exercised."""
    if layer.relaxed is not None:
        layer.set_relaxed_weights_on_group(torch.randn(layer.relaxed.num_filter_banks, groups.group_order(layer.group)))
    with torch.no_grad():
        layer.bias.normal_()
    return layer


# ---- the layer -------------------------------------------------------------------------------


@pytest.mark.parametrize("make_input", INPUTS)
@pytest.mark.parametrize("banks", [None, 3], ids=["exact", "relaxed"])
def test_matches_the_definition(spatial, make_input, banks):
    in_type, regular = make_input("Oh"), fields.regular_type("Oh", 2)
    layer = randomised(SeparableGroupConv(in_type, regular, num_filter_banks=banks, **spatial))
    x = torch.randn(1, in_type.size, 3, 3, 3)
    with torch.no_grad():
        assert relative_error(layer(enn.GeometricTensor(x, in_type)).tensor, separable_reference(layer, x)) < EQUIVARIANT_TOL


@pytest.mark.parametrize("group", ["Oh", "O"])
@pytest.mark.parametrize("make_input", INPUTS)
def test_trivial_weights_are_equivariant_to_the_whole_group(group, spatial, make_input):
    layer = SeparableGroupConv(make_input(group), fields.regular_type(group, 2), num_filter_banks=2, **spatial)
    with torch.no_grad():
        layer.bias.normal_()
    assert layer.equivariance_penalty() == 0
    assert_equivariant(layer, random_field(layer.in_type))


@pytest.mark.parametrize("subgroup_name", ["D4h, axis x", "D3d, diagonal (1,1,1)"])
def test_weights_invariant_under_a_subgroup_give_exactly_that_symmetry(spatial, subgroup_name):
    H = dict(named_subgroups("Oh"))[subgroup_name]
    regular = fields.regular_type("Oh", 1)
    layer = SeparableGroupConv(regular, regular, num_filter_banks=2, **spatial)
    layer.set_relaxed_weights_on_group(random_invariant_weights(H))
    assert_symmetry(layer, random_field(regular), H)
    assert stabilizer(layer) == sorted(H)


def test_random_weights_break_equivariance_and_the_relaxed_api_reports_it():
    regular = fields.regular_type("Oh", 1)
    layer = SeparableGroupConv(regular, regular, 3, num_filter_banks=2)
    assert torch.allclose(layer.relaxed_weights_on_group(), torch.ones(2, 48), atol=1e-6)
    w = torch.randn(2, 48)
    layer.set_relaxed_weights_on_group(w)
    assert torch.allclose(layer.relaxed_weights_on_group(), w, atol=1e-5)
    assert layer.equivariance_penalty() > 0.1
    assert list(layer.irrep_energies())[0] == "A1g"
    assert_not_equivariant(layer, random_field(regular))
    assert stabilizer(layer) == [0]


def test_forward_is_one_pointwise_and_one_grouped_convolution(spatial):
    regular = fields.regular_type("Oh", 2)
    layer = randomised(SeparableGroupConv(regular, regular, num_filter_banks=4, **spatial))
    x = random_field(regular, 3)
    z = F.conv3d(x.tensor, layer.pointwise_filter())
    conv = F.conv_transpose3d if layer.transposed else F.conv3d
    kwargs = {"stride": layer.stride} if layer.transposed else {}
    expected = conv(z, layer.depthwise_filter(), layer.expanded_bias(), padding=layer.padding, groups=96, **kwargs)
    assert layer.pointwise_filter().shape == (96, 96, 1, 1, 1) and layer.depthwise_filter().shape[:2] == (96, 1)
    assert torch.equal(layer(x).tensor, expected)


@pytest.mark.parametrize("make_input", INPUTS)
def test_export_is_plain_torch_with_the_same_output(spatial, make_input):
    in_type = make_input("Oh")
    layer = randomised(SeparableGroupConv(in_type, fields.regular_type("Oh", 2), num_filter_banks=2, **spatial))
    exported = layer.export()
    plain = torch.nn.ConvTranspose3d if layer.transposed else torch.nn.Conv3d
    assert [type(m) for m in exported] == [torch.nn.Conv3d, plain] and exported[1].groups == 96
    x = random_field(in_type)
    with torch.no_grad():
        assert relative_error(exported(x.tensor), layer(x).tensor) <= 1e-6


def least_squares_residual(full: OctahedralConv, target: torch.Tensor, iterations: int = 200) -> float:
    """``min_w ||full.filter()(w) - target|| / ||target||`` over the full layer's weights: conjugate gradients
    on the normal equations (the filter is linear in the weights; ``A^T r`` by autograd), float64."""
    def apply(w):
        with torch.no_grad():
            full.weights.copy_(w)
            return full.filter().reshape(-1)

    def adjoint(r):
        full.weights.grad = None
        (full.filter().reshape(-1) @ r.detach()).backward()
        return full.weights.grad.clone()

    b = target.reshape(-1)
    w = torch.zeros_like(full.weights)
    r = b.clone()
    s = adjoint(r)
    p, gamma = s.clone(), s.square().sum()
    for _ in range(iterations):
        q = apply(p)
        alpha = gamma / q.square().sum()
        w, r = w + alpha * p, r - alpha * q
        s = adjoint(r)
        gamma, previous = s.square().sum(), gamma
        if gamma.sqrt() < 1e-13 * b.norm():
            break
        p = s + gamma / previous * p
    return ((apply(w) - b).norm() / b.norm()).item()


@pytest.mark.parametrize("make_input", INPUTS)
def test_kernel_space_is_a_subspace_of_the_full_layers(spatial, make_input):
    in_type, regular = make_input("Oh"), fields.regular_type("Oh", 1)
    separable = SeparableGroupConv(in_type, regular, **spatial).double()
    full = OctahedralConv(in_type, regular, **spatial).double()
    with torch.no_grad():
        target = separable.filter()
    assert least_squares_residual(full, target) < EQUIVARIANT_TOL
    # The same solve cannot fit a generic (non-equivariant) filter: the test has teeth.
    assert least_squares_residual(full, target + 0.1 * target.std() * torch.randn_like(target)) > BROKEN_TOL


def test_bad_input_is_rejected_with_clear_errors():
    oh, o = fields.regular_type("Oh"), fields.regular_type("O")
    with pytest.raises(ValueError, match="different gspaces"):
        SeparableGroupConv(oh, o, 3)
    with pytest.raises(ValueError, match="regular fields only"):
        SeparableGroupConv(oh, fields.irrep_type("Oh"), 3)
    with pytest.raises(ValueError, match="regular fields only"):
        SeparableGroupConv(oh, fields.velocity_type("Oh"), 3)
    with pytest.raises(ValueError, match="kernel - stride is even"):
        SeparableGroupConv(oh, oh, 3, stride=2, transposed=True)
    with pytest.raises(ValueError, match="odd kernel"):
        SeparableGroupConv(oh, oh, 4)
    with pytest.raises(ValueError, match="num_filter_banks must be an integer >= 1"):
        SeparableGroupConv(oh, oh, 3, num_filter_banks=0)
    with pytest.raises(AttributeError, match="exactly equivariant"):
        SeparableGroupConv(oh, oh, 3).relaxed_weights_on_group()
    layer = SeparableGroupConv(oh, oh, 3, num_filter_banks=2)
    with pytest.raises(ValueError, match=r"shape \(L, \|G\|\) = \(2, 48\)"):
        layer.set_relaxed_weights_on_group(torch.ones(2, 24))
    with pytest.raises(ValueError, match="expected a GeometricTensor of type"):
        layer(random_field(fields.irrep_type("Oh")))
    with pytest.raises(ValueError, match="expected a GeometricTensor of type"):
        layer(torch.randn(1, 48, 3, 3, 3))


# ---- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["Oh", "O"])
@pytest.mark.parametrize("kind", ["gcnn", "rgcnn"])
def test_separable_models_are_exactly_equivariant_to_the_whole_group(kind, group, model_with_statistics):
    model = model_with_statistics(kind, group=group, separable=True, hidden=2)
    assert any(isinstance(m, SeparableGroupConv) for m in model.modules())
    assert_equivariant(model, torch.randn(1, 9, 4, 4, 4), group)


def test_separable_rgcnn_keeps_exactly_the_stabilizer_of_invariant_weights(model_with_statistics):
    H = dict(named_subgroups("Oh"))["D4h, axis z"]
    model = model_with_statistics("rgcnn", separable=True, hidden=2)
    for _, layer in model.relaxed_layers():
        layer.set_relaxed_weights_on_group(random_invariant_weights(H, banks=layer.relaxed.num_filter_banks))
    assert_symmetry(model, torch.randn(1, 9, 4, 4, 4), H)
    assert stabilizer(model) == sorted(H)
    assert symmetry_report(model).stabilizer_name == "D4h, axis z"


def test_separable_model_topology_and_relaxed_layers():
    model = build_model("rgcnn", separable=True, hidden=2)
    full = build_model("rgcnn", hidden=2)
    assert [name for name, _ in model.named_children()] == [name for name, _ in full.named_children()]
    layers = dict(model.relaxed_layers())
    assert list(layers) == list(dict(full.relaxed_layers()))
    kinds = {name: type(layer).__name__ for name, layer in layers.items()}
    assert kinds.pop("head") == "OctahedralConv"
    assert set(kinds.values()) == {"SeparableGroupConv"} and len(kinds) == 9
    assert model.config.separable and model.equivariance_penalty() == 0


def test_separable_model_export_is_plain_torch_with_the_same_output(model_with_statistics):
    model = model_with_statistics("rgcnn", separable=True, hidden=2)
    model.lift[0].module.set_relaxed_weights_on_group(torch.randn(2, 48))
    exported = model.export()
    assert not any("escnn" in type(m).__module__ for m in exported.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose3d) and m.groups == 96 for m in exported.modules())
    x = torch.randn(2, 9, 4, 4, 4)
    with torch.no_grad():
        assert relative_error(exported(x), model(x)) <= 1e-5
        assert relative_error(torch.jit.script(exported)(x), model(x)) <= 1e-5


def test_gradients_reach_every_parameter_of_a_separable_model():
    model = build_model("rgcnn", separable=True, hidden=2)
    for _, layer in model.relaxed_layers():
        layer.set_relaxed_weights_on_group(torch.randn(layer.relaxed.num_filter_banks, 48))
    loss = model(torch.randn(2, 9, 4, 4, 4)).square().mean() + model.equivariance_penalty()
    loss.backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_separable_presets_match_the_full_budgets():
    for kind in ("gcnn", "rgcnn"):
        full, separable = build_model(kind).num_parameters(), build_model(kind, separable=True).num_parameters()
        assert 100_000 <= separable <= 160_000 and abs(separable / full - 1) < 0.1, (kind, full, separable)
    model = build_model("gcnn", separable=True)
    assert model.config.hidden > build_model("gcnn").config.hidden
    assert build_model("gcnn", separable=True, hidden=2).config.hidden == 2


@pytest.mark.parametrize("kind", ["cnn", "steer", "rsteer"])
def test_separable_is_rejected_for_kinds_without_regular_fields(kind):
    with pytest.raises(ValueError, match="supported by kinds gcnn, rgcnn"):
        build_model(kind, separable=True)


def test_separable_flag_must_be_a_boolean():
    with pytest.raises(ValueError, match="separable must be true or false"):
        build_model("gcnn", separable="yes")
