"""steerable_sr.fields: gspaces, field types and the map between the public convention and escnn's."""
import numpy as np
import pytest
import torch
from escnn import nn as enn

from steerable_sr import fields, groups
from steerable_sr.testing import assert_equivariant


def test_escnn_transform_equals_act_for_every_element():
    x = torch.randn(2, 9, 6, 6, 6)
    field_type = fields.velocity_type("Oh", frames=3)
    to_escnn, to_public = fields.FrameAdapter("to_escnn"), fields.FrameAdapter("to_public")
    for R, g in zip(groups.group_matrices("Oh"), fields.escnn_elements("Oh")):
        moved = enn.GeometricTensor(to_escnn(x), field_type).transform(g).tensor
        assert (to_public(moved) - groups.act(x, R)).abs().max() <= 1e-6


@pytest.mark.parametrize("make_type", [fields.regular_type, fields.irrep_type, fields.velocity_type])
def test_fast_transform_equals_escnn_transform(make_type):
    field_type = make_type("Oh", 2)
    x = enn.GeometricTensor(torch.randn(1, field_type.size, 4, 4, 4), field_type)
    for index in range(0, 48, 5):
        expected = x.transform(fields.escnn_elements("Oh")[index]).tensor
        assert (fields.transform(x, index).tensor - expected).abs().max() <= 1e-5


def test_adapter_round_trip_is_exact():
    x = torch.randn(3, 9, 4, 4, 4)
    assert torch.equal(fields.FrameAdapter("to_public")(fields.FrameAdapter("to_escnn")(x)), x)


def test_irrep_names_match_characters():
    # A 90-degree turn has character +1 on T1, -1 on T2 and A2, 0 on E; inversion splits g from u.
    G = fields.gspace("Oh").fibergroup
    quarter = groups.element_index(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    inversion = groups.element_index(-np.eye(3))
    expected = {"A1g": (1, 1), "A2g": (-1, 1), "Eg": (0, 2), "T1g": (1, 3), "T2g": (-1, 3),
                "A1u": (1, -1), "A2u": (-1, -1), "Eu": (0, -2), "T1u": (1, -3), "T2u": (-1, -3)}
    for name, irrep in zip(fields.irrep_names("Oh"), G.irreps()):
        mats = fields.representation_matrices(irrep)
        assert (round(np.trace(mats[quarter])), round(np.trace(mats[inversion]))) == expected[name], name


def test_escnn_r3conv_stack_is_equivariant_through_the_adapter():
    vector, regular = fields.velocity_type("Oh", 1), fields.regular_type("Oh", 1)
    net = enn.SequentialModule(enn.R3Conv(vector, regular, 3, padding=1), enn.ReLU(regular),
                               enn.R3Conv(regular, vector, 3, padding=1)).eval()
    to_escnn, to_public = fields.FrameAdapter("to_escnn"), fields.FrameAdapter("to_public")

    def model(u):
        return to_public(net(enn.GeometricTensor(to_escnn(u), vector)).tensor)

    assert_equivariant(model, torch.randn(2, 3, 7, 7, 7))
