"""steerable_sr.nn.basis spans the full space of equivariant kernels on the voxel grid: its elements
are orthonormal equivariant kernels, their number is the dimension given by the characters, escnn's
own R3Conv filters lie in their span, and OctahedralConv's filters span all of it.

A kernel ``K`` on the ``k^3`` grid maps a field of type ``rho_in`` to one of type ``rho_out``
equivariantly iff ``K(R_g t) = rho_out(g) K(t) rho_in(g)^T``: it is a G-invariant vector of
``P (x) rho_out (x) rho_in``, ``P`` the permutation representation of G on the grid points. All the
representations are real orthogonal, so that space has dimension

    (1/|G|) sum_g chi_P(g) chi_out(g) chi_in(g),      chi_P(g) = number of grid points fixed by R_g.
"""
import itertools

import numpy as np
import pytest
import torch
from escnn import nn as enn
from scipy.linalg import block_diag

from steerable_sr import fields, groups
from steerable_sr.nn import OctahedralConv
from steerable_sr.nn.basis import equivariant_kernel_basis

pytestmark = pytest.mark.usefixtures("single_thread")

# Float64 projections onto an orthonormal basis: a kernel in the span leaves a residual of the order
# of the rounding of its entries. escnn expands its filters in float32, and OctahedralConv stores its
# basis and change of basis in float32 (relative rounding ~6e-8 per entry, a few dozen terms per
# entry), so their residual is ~1e-7 relative; 1e-5 leaves two orders of margin. A generic kernel keeps almost all its norm: here at least 60% of the kernel space lies
# outside the equivariant subspace, so its residual is > 0.7 with overwhelming probability.
IN_SPAN_TOL = 1e-5
GENERIC_MIN_RESIDUAL = 0.5


def irreps(group: str) -> list[np.ndarray]:
    """The representation matrices ``(|G|, d, d)`` of every irrep of ``group``, in our element order."""
    return [fields.representation_matrices(irrep) for irrep in fields.gspace(group).fibergroup.irreps()]


def field_matrices(field_type) -> np.ndarray:
    """``(|G|, C, C)``: the block-diagonal representation of a whole field type, in our element order."""
    blocks = [fields.representation_matrices(rep) for rep in field_type.representations]
    return np.stack([block_diag(*[b[g] for b in blocks]) for g in range(len(blocks[0]))])


def fixed_grid_points(group: str, size: int) -> np.ndarray:
    """``chi_P(g)``: how many points of the centred ``size^3`` grid ``R_g`` fixes (coordinates, not indices)."""
    axis = np.arange(size) - (size - 1) / 2
    points = np.array(list(itertools.product(axis, axis, axis)))
    return np.array([np.all(points @ R.T == points, axis=1).sum() for R in groups.group_matrices(group).numpy()])


def residual(basis: np.ndarray, kernel: np.ndarray) -> float:
    """``||K - proj(K)|| / ||K||`` for the orthogonal projection onto the span of orthonormal ``basis`` rows."""
    rows, v = basis.reshape(len(basis), -1), kernel.reshape(-1)
    return float(np.linalg.norm(v - rows.T @ (rows @ v)) / np.linalg.norm(v))


def escnn_filter(in_type, out_type) -> np.ndarray:
    """A random escnn ``R3Conv`` (k = 3) filter ``(C_out, C_in, 27)`` between two field types of our gspace."""
    conv = enn.R3Conv(in_type, out_type, 3, padding=1)
    torch.nn.init.normal_(conv.weights)
    weight, _ = conv.expand_parameters()
    return weight.detach().double().numpy().reshape(out_type.size, in_type.size, -1)


@pytest.mark.parametrize("group", ["Oh", "O"])
@pytest.mark.parametrize("size", [3, 4])
def test_basis_elements_are_orthonormal_equivariant_kernels(group, size):
    # Equivariance to generators suffices (the elements fixing a kernel form a subgroup): quarter turns
    # about x and y generate O; with the inversion, O_h.
    generators = [np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])]
    generators += [-np.eye(3)] if group == "Oh" else []
    elements = [groups.element_index(R, group) for R in generators]
    for rho_out, rho_in in itertools.product(irreps(group), repeat=2):
        basis = equivariant_kernel_basis(rho_out, rho_in, group, size)
        rows = basis.reshape(len(basis), rho_out.shape[1] * rho_in.shape[1] * size ** 3)
        assert np.allclose(rows @ rows.T, np.eye(len(basis)), atol=1e-12)
        kernels = torch.from_numpy(basis).reshape(-1, size, size, size)
        for g, R in zip(elements, generators):
            # K(t) = rho_out(g) K(R_g^-1 t) rho_in(g)^T, and (act(K, R))(t) = K(R^-1 t).
            moved = groups.act(kernels, R, "scalar").reshape(basis.shape).numpy()
            assert np.allclose(np.einsum("ab,nbcx,dc->nadx", rho_out[g], moved, rho_in[g]), basis, atol=1e-12)


@pytest.mark.parametrize("group", ["Oh", "O"])
@pytest.mark.parametrize("size", [3, 4])
def test_basis_dimension_is_the_character_count(group, size):
    chi_grid = fixed_grid_points(group, size)
    for rho_out, rho_in in itertools.product(irreps(group), repeat=2):
        count = np.mean(chi_grid * np.trace(rho_out, axis1=1, axis2=2) * np.trace(rho_in, axis1=1, axis2=2))
        assert abs(count - round(count)) < 1e-9  # characters of integer-valued reps: an exact integer
        assert len(equivariant_kernel_basis(rho_out, rho_in, group, size)) == round(count)


@pytest.mark.parametrize("group, in_type, out_type", [
    ("Oh", "velocity", "irreps"), ("Oh", "regular", "velocity"), ("O", "irreps", "velocity"),
])
def test_escnn_r3conv_filters_lie_in_the_span(group, in_type, out_type):
    make = {"velocity": fields.velocity_type, "regular": fields.regular_type, "irreps": fields.irrep_type}
    t_in, t_out = make[in_type](group, 1), make[out_type](group, 1)
    basis = equivariant_kernel_basis(field_matrices(t_out), field_matrices(t_in), group, 3)
    kernel = escnn_filter(t_in, t_out)
    assert residual(basis, kernel) < IN_SPAN_TOL
    # The same projection removes most of a generic kernel: the test has teeth.
    assert residual(basis, np.random.default_rng(0).standard_normal(kernel.shape)) > GENERIC_MIN_RESIDUAL


def test_octahedral_conv_filters_span_the_whole_basis():
    """The layer assembles its filter from irrep-pair bases and escnn's change of basis ``Q``: its
    filters, as its weights run over unit vectors, span exactly the basis of the field types."""
    velocity, regular = fields.velocity_type("Oh", 1), fields.regular_type("Oh", 1)
    layer = OctahedralConv(velocity, regular, 3).double()
    with torch.no_grad():
        filters = []
        for unit in torch.eye(layer.num_basis, dtype=torch.float64):
            layer.weights.copy_(unit[None])
            filters.append(layer.filter().reshape(-1).numpy())
    filters = np.stack(filters)
    basis = equivariant_kernel_basis(field_matrices(regular), field_matrices(velocity), "Oh", 3)
    assert max(residual(basis, f) for f in filters) < IN_SPAN_TOL
    singular = np.linalg.svd(filters, compute_uv=False)  # rounding moves them by ~1e-7 relative
    assert len(basis) == layer.num_basis and singular.min() > 1e-3 * singular.max()
    assert residual(np.linalg.qr(filters.T)[0].T, escnn_filter(velocity, regular)) < IN_SPAN_TOL
