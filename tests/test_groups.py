"""steerable_sr.groups: the group in the public convention, its exact action, and the escnn bridge."""
import numpy as np
import pytest
import torch

from steerable_sr.testing import EQUIVARIANT_TOL, relative_error
from steerable_sr import groups


@pytest.mark.parametrize("group, order", [("Oh", 48), ("O", 24)])
def test_group_matrices_form_a_group(group, order):
    mats = groups.group_matrices(group)
    assert mats.dtype == torch.float64 and mats.shape == (order, 3, 3)
    keys = {tuple(m.flatten().tolist()) for m in mats}
    assert len(keys) == order
    products = torch.einsum("aij,bjk->abik", mats, mats).reshape(-1, 3, 3)
    assert {tuple(p.flatten().tolist()) for p in products} == keys  # closed
    assert all(tuple(m.T.flatten().tolist()) in keys for m in mats)  # inverses (orthogonal)
    assert torch.equal(mats[0], torch.eye(3, dtype=torch.float64))


def test_determinant_signs_rotations_first():
    det = torch.linalg.det(groups.group_matrices("Oh")).round()
    assert torch.equal(det[:24], torch.ones(24, dtype=det.dtype))
    assert torch.equal(det[24:], -torch.ones(24, dtype=det.dtype))
    assert torch.equal(groups.group_matrices("O"), groups.group_matrices("Oh")[:24])


@pytest.mark.parametrize("field, channels", [("vector", 6), ("scalar", 2)])
def test_act_is_a_group_action(field, channels):
    x = torch.randn(2, channels, 5, 5, 5)
    mats = groups.group_matrices("Oh")
    for a in range(0, 48, 5):
        for b in range(0, 48, 7):
            lhs = groups.act(groups.act(x, mats[a], field), mats[b], field)
            assert torch.equal(lhs, groups.act(x, mats[b] @ mats[a], field))


def test_act_moves_a_point_vector_to_the_rotated_point():
    # A single voxel carrying u at position p goes to R p carrying R u.
    n = 5
    x = torch.zeros(1, 3, n, n, n)
    p = torch.tensor([2.0, -1.0, 1.0])
    u = torch.tensor([0.3, -0.5, 0.7])
    x[0, :, int(p[0]) + 2, int(p[1]) + 2, int(p[2]) + 2] = u
    for R in groups.group_matrices("Oh").float():
        y = groups.act(x, R)
        q = (R @ p).long() + 2
        assert torch.equal(y[0, :, q[0], q[1], q[2]], R @ u)
        assert y.abs().sum() == u.abs().sum()


def test_escnn_transform_equals_act_for_every_element():
    from escnn import nn as enn

    x = torch.randn(2, 9, 6, 6, 6)
    field_type = groups.velocity_type("Oh", frames=3)
    to_escnn, to_public = groups.FrameAdapter("to_escnn"), groups.FrameAdapter("to_public")
    for R, g in zip(groups.group_matrices("Oh"), groups.escnn_elements("Oh")):
        moved = enn.GeometricTensor(to_escnn(x), field_type).transform(g).tensor
        assert (to_public(moved) - groups.act(x, R)).abs().max() <= 1e-6


@pytest.mark.parametrize("make_type", [groups.regular_type, groups.irrep_type, groups.velocity_type])
def test_fast_transform_equals_escnn_transform(make_type):
    from escnn import nn as enn

    field_type = make_type("Oh", 2)
    x = enn.GeometricTensor(torch.randn(1, field_type.size, 4, 4, 4), field_type)
    for index in range(0, 48, 5):
        expected = x.transform(groups.escnn_elements("Oh")[index]).tensor
        assert (groups.transform(x, index).tensor - expected).abs().max() <= 1e-5


def test_adapter_round_trip_is_exact():
    x = torch.randn(3, 9, 4, 4, 4)
    assert torch.equal(groups.FrameAdapter("to_public")(groups.FrameAdapter("to_escnn")(x)), x)


def test_irrep_names_match_characters():
    # A 90-degree turn has character +1 on T1, -1 on T2 and A2, 0 on E; inversion splits g from u.
    G = groups.gspace("Oh").fibergroup
    quarter = groups.element_index(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    inversion = groups.element_index(-np.eye(3))
    expected = {"A1g": (1, 1), "A2g": (-1, 1), "Eg": (0, 2), "T1g": (1, 3), "T2g": (-1, 3),
                "A1u": (1, -1), "A2u": (-1, -1), "Eu": (0, -2), "T1u": (1, -3), "T2u": (-1, -3)}
    for name, irrep in zip(groups.irrep_names("Oh"), G.irreps()):
        mats = groups.representation_matrices(irrep)
        assert (round(np.trace(mats[quarter])), round(np.trace(mats[inversion]))) == expected[name], name


def test_escnn_r3conv_stack_is_equivariant_through_the_adapter():
    from escnn import nn as enn

    vector, regular = groups.velocity_type("Oh", 1), groups.regular_type("Oh", 1)
    net = enn.SequentialModule(enn.R3Conv(vector, regular, 3, padding=1), enn.ReLU(regular),
                               enn.R3Conv(regular, vector, 3, padding=1)).eval()
    to_escnn, to_public = groups.FrameAdapter("to_escnn"), groups.FrameAdapter("to_public")

    def model(u):
        return to_public(net(enn.GeometricTensor(to_escnn(u), vector)).tensor)

    x = torch.randn(2, 3, 7, 7, 7)
    with torch.no_grad():
        y = model(x)
        for R in groups.group_matrices("Oh"):
            assert relative_error(model(groups.act(x, R)), groups.act(y, R)) < EQUIVARIANT_TOL


@pytest.mark.parametrize("x, R, field, match", [
    (torch.zeros(1, 3, 4, 4, 5), torch.eye(3), "vector", "cubic"),
    (torch.zeros(1, 3, 4, 4, 4), torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 0.5]]), "vector", "not an element"),
    (torch.zeros(1, 4, 4, 4, 4), torch.eye(3), "vector", "divisible by 3"),
    (torch.zeros(1, 3, 4, 4, 4), torch.eye(3), "tensor", "unknown field"),
])
def test_act_rejects_bad_input(x, R, field, match):
    with pytest.raises(ValueError, match=match):
        groups.act(x, R, field)


def test_unknown_group_is_rejected():
    with pytest.raises(ValueError, match="allowed values: Oh, O"):
        groups.group_matrices("Td")
