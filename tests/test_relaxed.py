"""Relaxed octahedral convolutions (DESIGN.md 3): Wang et al.'s formula, equivariance to the
stabilizer of the weights, penalty, export, state dicts and bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from escnn import nn as enn

from steerable_sr.testing import BROKEN_TOL, EQUIVARIANT_TOL, relative_error
from steerable_sr import groups
from steerable_sr.nn import RelaxedR3Conv, RelaxedR3ConvTransposed
from steerable_sr.nn.fourier import fourier_embedding
from steerable_sr.symmetry import named_subgroups, stabilizer

LAYERS = [(RelaxedR3Conv, {}), (RelaxedR3ConvTransposed, {"stride": 2})]


def element_channels(group: str) -> np.ndarray:
    """``c[g]``: the escnn channel of element ``g`` (our order) in a regular field."""
    return fourier_embedding(groups.regular_type(group, 1).representations[0]).argmax(axis=1)


def wang_reference(layer, x: torch.Tensor) -> torch.Tensor:
    r"""Wang et al.'s relaxed group convolution on regular fields, the slow, obvious way:
    ``K(g, h)(t) = sum_l w_l(g) Psi_l(R_g^-1 t, g^-1 h)`` built by an explicit loop over the elements,
    the bank filters ``Psi_l = K_l(e, .)`` moved by exact grid permutations (``act``) and the group
    axis permuted by the Cayley table; then one plain convolution."""
    group, L = layer.group, layer.relaxed.num_filter_banks
    mats, table, inv = groups.group_matrices(group), groups.cayley_table(group), groups.inverses(group)
    channel = element_channels(group)
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


def equivariance_errors(layer, x: enn.GeometricTensor) -> np.ndarray:
    """Relative error of ``layer(g.x)`` vs ``g.layer(x)`` for every element, in our order."""
    layer.eval()
    with torch.no_grad():
        y = layer(x)
        return np.array([relative_error(layer(groups.transform(x, g)).tensor, groups.transform(y, g).tensor)
                         for g in range(groups.group_order(layer.group))])


def random_input(field_type, n: int = 5) -> enn.GeometricTensor:
    return enn.GeometricTensor(torch.randn(2, field_type.size, n, n, n), field_type)


def assert_symmetry_is_exactly(layer, H) -> None:
    """``layer`` is equivariant to the elements of ``H`` (to round-off), clearly not to the others,
    and the stabilizer read-out returns ``H``."""
    errors = equivariance_errors(layer, random_input(layer.in_type, 4))
    inside = np.isin(np.arange(len(errors)), sorted(H))
    assert errors[inside].max() < EQUIVARIANT_TOL
    assert errors[~inside].min() > BROKEN_TOL
    assert stabilizer(layer) == sorted(H)


def invariant_weights(subgroup, group: str = "Oh", banks: int = 2) -> torch.Tensor:
    """Random ``w_l`` with ``w_l(k^-1 g) = w_l(g)`` for ``k`` in ``subgroup``: constant on right cosets ``H g``."""
    table = groups.cayley_table(group)
    order = table.shape[0]
    coset = [min(table[k, g] for k in subgroup) for g in range(order)]  # representative of H g
    values = torch.randn(banks, order)
    return values[:, coset]


@pytest.mark.parametrize("cls, kwargs", LAYERS)
def test_matches_wang_reference_on_regular_fields(cls, kwargs):
    regular = groups.regular_type("Oh", 2)
    layer = cls(regular, regular, num_filter_banks=2, **kwargs)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, regular.size, 4, 4, 4)
    with torch.no_grad():
        assert relative_error(layer(enn.GeometricTensor(x, regular)).tensor, wang_reference(layer, x)) < EQUIVARIANT_TOL


@pytest.mark.parametrize("cls, kwargs", LAYERS)
@pytest.mark.parametrize("hidden", [groups.regular_type, groups.irrep_type])
def test_trivial_weights_are_equivariant_to_the_whole_group(cls, kwargs, hidden):
    layer = cls(hidden("Oh", 2), hidden("Oh", 2), num_filter_banks=3, **kwargs)
    assert layer.equivariance_penalty() == 0
    assert equivariance_errors(layer, random_input(layer.in_type)).max() < EQUIVARIANT_TOL


@pytest.mark.parametrize("group", ["Oh", "O"])
def test_stack_between_velocity_fields_with_trivial_weights_is_equivariant(group):
    velocity, regular, band = groups.velocity_type(group, 3), groups.regular_type(group, 2), groups.irrep_type(group, 1)
    stack = enn.SequentialModule(RelaxedR3Conv(velocity, regular), enn.ReLU(regular),
                                 RelaxedR3ConvTransposed(regular, band), RelaxedR3Conv(band, groups.velocity_type(group)))
    stack.eval()
    x = random_input(velocity, 4)
    with torch.no_grad():
        y = stack(x)
        errors = [relative_error(stack(groups.transform(x, g)).tensor, groups.transform(y, g).tensor)
                  for g in range(groups.group_order(group))]
    assert max(errors) < EQUIVARIANT_TOL


@pytest.mark.parametrize("cls, kwargs", LAYERS)
@pytest.mark.parametrize("subgroup_name", ["D4h, axis x", "D3d, diagonal (1,1,1)"])
def test_weights_invariant_under_a_subgroup_give_exactly_that_symmetry(cls, kwargs, subgroup_name):
    H = dict(named_subgroups("Oh"))[subgroup_name]
    regular = groups.regular_type("Oh", 1)
    layer = cls(regular, regular, num_filter_banks=2, **kwargs)
    layer.set_relaxed_weights_on_group(invariant_weights(H))
    assert_symmetry_is_exactly(layer, H)


@pytest.mark.parametrize("cls, kwargs", LAYERS)
def test_random_weights_break_equivariance_and_penalty_detects_it(cls, kwargs):
    band = groups.irrep_type("Oh", 2)
    layer = cls(band, band, num_filter_banks=2, **kwargs)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    assert layer.equivariance_penalty() > 0.1
    assert equivariance_errors(layer, random_input(band, 4))[1:].min() > BROKEN_TOL
    assert stabilizer(layer) == [0]


def test_penalty_is_zero_exactly_for_group_invariant_weights():
    regular = groups.regular_type("Oh", 1)
    layer = RelaxedR3Conv(regular, regular, num_filter_banks=2)
    layer.set_relaxed_weights_on_group(torch.randn(2, 1).expand(2, 48))
    assert layer.equivariance_penalty().item() < 1e-6
    assert equivariance_errors(layer, random_input(regular, 4)).max() < EQUIVARIANT_TOL
    energies = layer.irrep_energies()
    assert list(energies)[0] == "A1g" and all(e.max() < 1e-6 for name, e in list(energies.items())[1:])


def test_weights_on_group_round_trip():
    layer = RelaxedR3Conv(groups.velocity_type("Oh"), groups.regular_type("Oh"), num_filter_banks=3)
    assert torch.allclose(layer.relaxed_weights_on_group(), torch.ones(3, 48), atol=1e-6)
    w = torch.randn(3, 48)
    layer.set_relaxed_weights_on_group(w)
    assert torch.allclose(layer.relaxed_weights_on_group(), w, atol=1e-5)


def test_forward_is_one_convolution_with_the_combined_filter():
    band, regular = groups.irrep_type("Oh", 1), groups.regular_type("Oh", 1)
    layer = RelaxedR3Conv(band, regular, num_filter_banks=4)
    layer.set_relaxed_weights_on_group(torch.randn(4, 48))
    x = random_input(band)
    expected = F.conv3d(x.tensor, layer.filter(), layer.expanded_bias(), padding=1)
    assert torch.equal(layer(x).tensor, expected)


@pytest.mark.parametrize("cls, kwargs, plain", [(RelaxedR3Conv, {}, torch.nn.Conv3d),
                                                (RelaxedR3ConvTransposed, {"stride": 2}, torch.nn.ConvTranspose3d)])
def test_export_is_a_plain_convolution_with_the_same_output(cls, kwargs, plain):
    regular, band = groups.regular_type("Oh", 1), groups.irrep_type("Oh", 1)
    layer = cls(regular, band, num_filter_banks=2, **kwargs)
    layer.set_relaxed_weights_on_group(torch.randn(2, 48))
    with torch.no_grad():
        layer.bias.normal_()
    exported = layer.export()
    assert type(exported) is plain
    assert all(type(m).__module__.startswith("torch.") for m in exported.modules())
    x = random_input(regular, 4)
    with torch.no_grad():
        assert relative_error(exported(x.tensor), layer(x).tensor) <= 1e-6


@pytest.mark.parametrize("save_mode, load_mode", [("train", "eval"), ("eval", "train"), ("eval", "eval")])
def test_state_dict_round_trip_in_train_and_eval_mode(save_mode, load_mode):
    regular = groups.regular_type("Oh", 1)
    source = RelaxedR3ConvTransposed(regular, regular, num_filter_banks=2)
    source.set_relaxed_weights_on_group(torch.randn(2, 48))
    target = RelaxedR3ConvTransposed(regular, regular, num_filter_banks=2)
    assert_state_dict_round_trip(source, target, save_mode, load_mode)


def assert_state_dict_round_trip(source, target, save_mode: str, load_mode: str) -> None:
    """``target`` loads ``source``'s state dict, each in the given mode, and then computes the same output;
    an eval-mode target has cached its filter beforehand, so loading must invalidate the cache."""
    getattr(source, save_mode)()
    getattr(target, load_mode)()
    x = random_input(source.in_type, 3)
    target(x)
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.equal(target(x).tensor, source(x).tensor)


def test_bad_input_is_rejected_with_clear_errors():
    oh, o = groups.regular_type("Oh"), groups.regular_type("O")
    with pytest.raises(ValueError, match="different gspaces"):
        RelaxedR3Conv(oh, o)
    with pytest.raises(ValueError, match="num_filter_banks must be an integer >= 1"):
        RelaxedR3Conv(oh, oh, num_filter_banks=0)
    layer = RelaxedR3Conv(oh, oh, num_filter_banks=2)
    with pytest.raises(ValueError, match=r"shape \(L, \|G\|\) = \(2, 48\)"):
        layer.set_relaxed_weights_on_group(torch.ones(3, 48))
    with pytest.raises(ValueError, match="NaN"):
        layer.set_relaxed_weights_on_group(torch.full((2, 48), float("nan")))
    with pytest.raises(ValueError, match="expected a GeometricTensor of type"):
        layer(random_input(groups.irrep_type("Oh")))
    with pytest.raises(ValueError, match="kernel - stride is even"):
        RelaxedR3ConvTransposed(oh, oh, kernel_size=3, stride=2)
