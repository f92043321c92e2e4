"""steerable_sr.groups: the group in the public convention and its exact action on voxel grids."""
import subprocess
import sys

import pytest
import torch

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



def test_the_group_module_does_not_need_escnn():
    script = ("import sys; sys.modules['escnn'] = None\n"
              "from steerable_sr import groups\n"
              "assert groups.group_order('Oh') == 48 and groups.cayley_table('O').shape == (24, 24)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
