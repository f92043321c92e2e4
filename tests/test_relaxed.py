"""Relaxed octahedral convolutions (docs/conventions.md, "Relaxed group convolution"): Wang et al.'s
formula, equivariance to the stabilizer of the weights, penalty, export, state dicts and bad input."""

import pytest
import torch
import torch.nn.functional as F
from escnn import nn as enn

from steerable_sr import fields, groups
from steerable_sr.nn import OctahedralConv, SeparableGroupConv
from steerable_sr.groups import named_subgroups
from steerable_sr.symmetry import stabilizer
from steerable_sr.testing import (EQUIVARIANT_TOL, assert_equivariant, assert_not_equivariant,
                                  assert_symmetry, random_field, random_invariant_weights, relative_error)

CONV = {"kernel_size": 3}
TRANSPOSED = {"kernel_size": 4, "stride": 2, "transposed": True}


def wang_reference(layer, x: torch.Tensor) -> torch.Tensor:
    r"""Wang et al.'s relaxed group convolution on regular fields, the slow, obvious way:
    ``K(g, h)(t) = sum_l w_l(g) Psi_l(R_g^-1 t, g^-1 h)`` built by an explicit loop over the elements,
    the bank filters ``Psi_l = K_l(e, .)`` moved by exact grid permutations (``act``) and the group
    axis permuted by the Cayley table; then one plain convolution."""
    group, L = layer.group, layer.relaxed.num_filter_banks
    mats, table, inv = groups.group_matrices(group), groups.cayley_table(group), groups.inverses(group)
    channel = fields.escnn_element_indices(group).tolist()  # a regular field has one channel per escnn element
    order, k = len(mats), layer.kernel_size
    c_out, c_in = len(layer.out_type), len(layer.in_type)
    w = layer.relaxed_weights_on_group().detach()
    # Psi_l: the bank filters read on the identity's output channel (bank l alone, weight 1).
    saved = w.clone()
    psi = []
    for l in range(L):
        layer.set_relaxed_weights_on_group(torch.eye(L)[l][:, None].expand(L, order))
        K = layer.filter().detach().view(c_out, order, c_in, order, k, k, k)
        psi.append(K[:, channel[0]][:, :, channel])  # (c_out, c_in, |G| in our order, k, k, k)
    layer.set_relaxed_weights_on_group(saved)
    kernel = torch.zeros(c_out, order, c_in, order, k, k, k)
    for g in range(order):
        for l in range(L):
            moved = torch.stack([groups.act(psi[l][:, :, h], mats[g], "scalar") for h in range(order)], dim=2)
            for h in range(order):
                kernel[:, channel[g], :, channel[h]] += w[l, g] * moved[:, :, table[inv[g], h]]
    kernel = kernel.reshape(c_out * order, c_in * order, k, k, k)
    bias = layer.expanded_bias()
    if layer.transposed:
        return F.conv_transpose3d(x, kernel.transpose(0, 1), bias, stride=layer.stride, padding=layer.padding)
    return F.conv3d(x, kernel, bias, padding=layer.padding)


def test_matches_wang_reference_on_regular_fields(spatial):
    regular = fields.regular_type("Oh", 2)
    layer = OctahedralConv(regular, regular, num_filter_banks=2, **spatial)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, regular.size, 4, 4, 4)
    with torch.no_grad():
        assert relative_error(layer(enn.GeometricTensor(x, regular)).tensor, wang_reference(layer, x)) < EQUIVARIANT_TOL


@pytest.mark.parametrize("hidden", [fields.regular_type, fields.irrep_type])
def test_trivial_weights_are_equivariant_to_the_whole_group(spatial, hidden):
    layer = OctahedralConv(hidden("Oh", 2), hidden("Oh", 2), num_filter_banks=3, **spatial)
    assert layer.equivariance_penalty() == 0
    assert_equivariant(layer, random_field(layer.in_type, 5))


@pytest.mark.parametrize("group", ["Oh", "O"])
def test_stack_between_velocity_fields_with_trivial_weights_is_equivariant(group):
    velocity, regular, band = fields.velocity_type(group, 3), fields.regular_type(group, 2), fields.irrep_type(group, 1)
    stack = enn.SequentialModule(OctahedralConv(velocity, regular, num_filter_banks=2, **CONV), enn.ReLU(regular),
                                 OctahedralConv(regular, band, num_filter_banks=2, **TRANSPOSED),
                                 OctahedralConv(band, fields.velocity_type(group), num_filter_banks=2, **CONV))
    assert_equivariant(stack, random_field(velocity))


@pytest.mark.parametrize("subgroup_name", ["D4h, axis x", "D3d, diagonal (1,1,1)"])
def test_weights_invariant_under_a_subgroup_give_exactly_that_symmetry(spatial, subgroup_name):
    H = dict(named_subgroups("Oh"))[subgroup_name]
    regular = fields.regular_type("Oh", 1)
    layer = OctahedralConv(regular, regular, num_filter_banks=2, **spatial)
    layer.set_relaxed_weights_on_group(random_invariant_weights(H))
    assert_symmetry(layer, random_field(regular), H)
    assert stabilizer(layer) == sorted(H)


def test_random_weights_break_equivariance_and_penalty_detects_it(spatial):
    band = fields.irrep_type("Oh", 2)
    layer = OctahedralConv(band, band, num_filter_banks=2, **spatial)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    assert layer.equivariance_penalty() > 0.1
    assert_not_equivariant(layer, random_field(band))
    assert stabilizer(layer) == [0]


def test_penalty_is_zero_exactly_for_group_invariant_weights():
    regular = fields.regular_type("Oh", 1)
    layer = OctahedralConv(regular, regular, num_filter_banks=2, **CONV)
    layer.set_relaxed_weights_on_group(torch.randn(2, 1).expand(2, 48))
    assert layer.equivariance_penalty().item() < 1e-6
    assert_equivariant(layer, random_field(regular))
    energies = layer.irrep_energies()
    assert list(energies)[0] == "A1g" and all(e.max() < 1e-6 for name, e in list(energies.items())[1:])


def test_weights_on_group_round_trip():
    layer = OctahedralConv(fields.velocity_type("Oh"), fields.regular_type("Oh"), num_filter_banks=3, **CONV)
    assert torch.allclose(layer.relaxed_weights_on_group(), torch.ones(3, 48), atol=1e-6)
    w = torch.randn(3, 48)
    layer.set_relaxed_weights_on_group(w)
    assert torch.allclose(layer.relaxed_weights_on_group(), w, atol=1e-5)


def test_an_adam_step_commutes_with_moving_the_weights_by_an_element():
    """The weights are learned by their values on the elements, which an element ``k`` permutes
    (``w -> w(k^-1 .)``): one Adam step on the moved problem (moved weights, moved target) gives the
    moved step, penalty included, for every element. Adam on the Fourier coefficients would not: ``k``
    rotates a block, and per-coordinate steps do not commute with a rotation."""
    from steerable_sr.nn.relaxed import RelaxedWeights

    table, inv = groups.cayley_table("Oh"), groups.inverses("Oh")
    torch.manual_seed(0)
    w, target, scale = torch.randn(2, 48), torch.randn(2, 48), torch.rand(2, 48)
    stepped = {}
    for k in range(48):
        move = torch.as_tensor(table[inv[k]])  # (k . w)(g) = w(k^-1 g)
        relaxed = RelaxedWeights("Oh", 2)
        relaxed.set_on_group(w[:, move])
        optimiser = torch.optim.Adam(relaxed.parameters(), lr=0.1)
        loss = (scale[:, move] * (relaxed.on_group() - target[:, move]) ** 2).sum() + relaxed.penalty()
        loss.backward()
        optimiser.step()
        stepped[k] = relaxed.on_group().detach()
        # float32: the penalty's block norms differ from the unmoved ones by round-off (1e-7 relative)
        assert torch.allclose(stepped[k], stepped[0][:, move], atol=1e-6), k


def test_a_held_layer_stays_exactly_equivariant_through_training_steps(spatial):
    """Held at the invariants, a layer whose weights start broken is set back to constant weights,
    and Adam steps (weight decay included) on a loss that is not invariant, whose gradient on free
    weights would break the symmetry, move only the banks' means: the layer stays equivariant to
    round-off."""
    from steerable_sr.nn.relaxed import hold_at_invariants

    regular = fields.regular_type("Oh", 1)
    layer = OctahedralConv(regular, regular, num_filter_banks=2, **spatial)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    assert hold_at_invariants(layer) == 1
    optimiser = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    x, target = random_field(regular), torch.randn(1)
    for _ in range(3):
        optimiser.zero_grad()
        loss = (layer(x).tensor[..., 0, 0, 0].sum() - target) ** 2
        loss.backward()
        optimiser.step()
    assert torch.count_nonzero(layer.relaxed.deviation) == 0
    assert layer.equivariance_penalty() == 0
    assert_equivariant(layer, random_field(regular))


def test_holding_a_module_without_relaxed_layers_holds_nothing():
    from steerable_sr.nn.relaxed import hold_at_invariants

    exact = OctahedralConv(fields.regular_type("Oh", 1), fields.regular_type("Oh", 1), num_filter_banks=None, **CONV)
    assert hold_at_invariants(exact) == 0


def test_a_state_dict_with_fourier_coefficients_loads_as_the_same_weights():
    """Checkpoints written when the parameter was the Fourier coefficients load unchanged."""
    from steerable_sr.nn.relaxed import RelaxedWeights

    torch.manual_seed(0)
    w = torch.randn(3, 48)
    relaxed = RelaxedWeights("Oh", 3)
    relaxed.load_state_dict({"coefficients": w @ relaxed.phi.T})
    assert torch.allclose(relaxed.on_group(), w, atol=1e-5)


def test_forward_is_one_convolution_with_the_combined_filter():
    band, regular = fields.irrep_type("Oh", 1), fields.regular_type("Oh", 1)
    layer = OctahedralConv(band, regular, num_filter_banks=4, **CONV)
    layer.set_relaxed_weights_on_group(torch.randn(4, 48))
    x = random_field(band, 5)
    expected = F.conv3d(x.tensor, layer.filter(), layer.expanded_bias(), padding=1)
    assert torch.equal(layer(x).tensor, expected)


def test_export_is_a_plain_convolution_with_the_same_output(spatial):
    regular, band = fields.regular_type("Oh", 1), fields.irrep_type("Oh", 1)
    layer = OctahedralConv(regular, band, num_filter_banks=2, **spatial)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    with torch.no_grad():
        layer.bias.normal_()
    exported = layer.export()
    assert type(exported) is (torch.nn.ConvTranspose3d if layer.transposed else torch.nn.Conv3d)
    assert all(type(m).__module__.startswith("torch.") for m in exported.modules())
    x = random_field(regular)
    with torch.no_grad():
        assert relative_error(exported(x.tensor), layer(x).tensor) <= 1e-6


@pytest.mark.parametrize("cls", [OctahedralConv, SeparableGroupConv])
@pytest.mark.parametrize("save_mode, load_mode", [("train", "eval"), ("eval", "train"), ("eval", "eval")])
def test_state_dict_round_trip_invalidates_the_eval_cache(cls, save_mode, load_mode):
    """A target loads a source's state dict, each in the given mode, and then computes the same output;
    an eval-mode target has cached its filter beforehand, so loading must invalidate the cache."""
    regular = fields.regular_type("Oh", 1)
    source = cls(regular, regular, num_filter_banks=2, **TRANSPOSED)
    source.set_relaxed_weights_on_group(torch.randn(2, 48))
    with torch.no_grad():
        source.bias.normal_()
    target = cls(regular, regular, num_filter_banks=2, **TRANSPOSED)
    getattr(source, save_mode)()
    getattr(target, load_mode)()
    x = random_field(regular, 3)
    target(x)
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.equal(target(x).tensor, source(x).tensor)


def test_bad_input_is_rejected_with_clear_errors():
    oh, o = fields.regular_type("Oh"), fields.regular_type("O")
    with pytest.raises(ValueError, match="different gspaces"):
        OctahedralConv(oh, o, 3, num_filter_banks=2)
    with pytest.raises(ValueError, match="num_filter_banks must be an integer >= 1"):
        OctahedralConv(oh, oh, 3, num_filter_banks=0)
    layer = OctahedralConv(oh, oh, 3, num_filter_banks=2)
    with pytest.raises(ValueError, match=r"shape \(L, \|G\|\) = \(2, 48\)"):
        layer.set_relaxed_weights_on_group(torch.ones(3, 48))
    with pytest.raises(ValueError, match="NaN"):
        layer.set_relaxed_weights_on_group(torch.full((2, 48), float("nan")))
    with pytest.raises(ValueError, match="expected a GeometricTensor of type"):
        layer(random_field(fields.irrep_type("Oh")))
    with pytest.raises(ValueError, match="kernel - stride is even"):
        OctahedralConv(oh, oh, 3, stride=2, transposed=True, num_filter_banks=2)
