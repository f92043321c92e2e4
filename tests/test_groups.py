"""steerable_sr.groups: the group in the public convention, its exact action on voxel grids and its
subgroup lattice."""
import subprocess
import sys

import numpy as np
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


# Orders of the named subgroups of O_h (Schoenflies): each name with its expected order, and how
# many conjugates (axes or diagonals) the lattice lists under that name.
SUBGROUP_ORDERS = {"Oh": 48, "O": 24, "Th": 24, "Td": 24, "T": 12, "D4h": 16, "D4": 8, "C4v": 8, "D2d": 8,
                   "C4h": 8, "C4": 4, "S4": 4, "C2v": 4, "C2h": 4, "C2": 2, "Cs": 2, "D3d": 12, "D3": 6,
                   "C3v": 6, "S6": 6, "C3": 3, "D2h": 8, "D2": 4, "Ci": 2, "C1": 1}


def test_named_subgroups_are_subgroups_of_their_schoenflies_order():
    named = groups.named_subgroups("Oh")
    assert [len(members) for _, members in named] == sorted((len(m) for _, m in named), reverse=True)
    assert len({members for _, members in named}) == len(named)  # each set under one name
    for name, members in named:
        assert groups.is_subgroup(set(members), "Oh"), name
        assert len(members) == SUBGROUP_ORDERS[name.split(",")[0]], name
    assert groups.subgroup_elements("D2h") == [k for k, R in enumerate(groups.group_matrices("Oh"))
                                               if torch.equal(R.abs(), torch.eye(3, dtype=R.dtype))]


def test_a_named_subgroup_about_an_axis_fixes_that_axis():
    mats = groups.group_matrices("Oh")
    for a, axis in enumerate(groups.AXES):
        for k in groups.subgroup_elements(f"D4h, axis {axis}"):
            assert abs(float(mats[k][a, a])) == 1.0  # R e_a = +-e_a


def test_the_subgroups_of_O_are_its_rotation_subgroups():
    named = dict(groups.named_subgroups("O"))
    assert named["O"] == frozenset(range(24)) and "Oh" not in named and "D2h" not in named
    assert all(max(members) < 24 for members in named.values())
    assert groups.subgroup_elements("D4, axis z", "O") == groups.subgroup_elements("D4, axis z", "Oh")


def test_subgroup_names_and_elements_are_inverse():
    for name, members in groups.named_subgroups("Oh"):
        assert groups.subgroup_name(groups.subgroup_elements(name)) == name
    assert groups.subgroup_name([0, 1, 2]) == "order 3"  # not a subgroup
    with pytest.raises(ValueError, match="unknown subgroup 'D5h' of Oh; allowed values: Oh, O"):
        groups.subgroup_elements("D5h")


def test_an_element_label_is_the_image_of_the_coordinates():
    mats = groups.group_matrices("Oh")
    labels = [groups.element_label(k) for k in range(48)]
    assert len(set(labels)) == 48 and labels[0] == "(x, y, z)"
    assert groups.element_label(groups.element_index(-np.eye(3))) == "(-x, -y, -z)"
    for k in range(0, 48, 7):  # the label read back as a matrix is the element
        R = np.zeros((3, 3))
        for i, entry in enumerate(labels[k].strip("()").split(", ")):
            R[i, "xyz".index(entry[-1])] = -1.0 if entry.startswith("-") else 1.0
        assert np.array_equal(R, mats[k].numpy())


def test_generated_subgroup_is_the_closure_of_its_generators():
    quarter_x = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert groups.generated_subgroup([]) == frozenset({0})
    assert groups.subgroup_name(groups.generated_subgroup([quarter_x])) == "C4, axis x"
    assert len(groups.generated_subgroup([quarter_x, -np.eye(3)])) == 8


@pytest.mark.parametrize("seed", range(3))
def test_largest_subgroup_in_a_set_lies_inside_it(seed):
    rng = np.random.default_rng(seed)
    d4h_x, d4h_y = (set(groups.subgroup_elements(f"D4h, axis {a}")) for a in "xy")
    assert groups.largest_subgroup_in(d4h_x) == sorted(d4h_x)  # a subgroup is its own largest
    union = d4h_x | d4h_y  # no group (24 elements, not closed): a D4h inside it
    inside = groups.largest_subgroup_in(union)
    assert len(inside) == 16 and set(inside) <= union
    members = {0} | set(rng.choice(48, size=20, replace=False).tolist())
    inside = set(groups.largest_subgroup_in(members))
    assert inside <= members and groups.is_subgroup(inside, "Oh")
    assert groups.largest_subgroup_in({1, 2}) == [0]  # no identity: only {e} is left


def test_the_group_module_does_not_need_escnn():
    script = ("import sys; sys.modules['escnn'] = None\n"
              "from steerable_sr import groups\n"
              "assert groups.group_order('Oh') == 48 and groups.cayley_table('O').shape == (24, 24)\n"
              "assert groups.subgroup_name(groups.subgroup_elements('D2h')) == 'D2h'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
