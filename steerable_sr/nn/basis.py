r"""Equivariant kernel bases on the voxel grid, computed directly for the finite group.

A convolution filter ``K(t)``, ``t`` an offset in the ``k^3`` grid (centred), maps a field of type
``rho_in`` to one of type ``rho_out`` equivariantly iff

    K(R_g t) = rho_out(g) K(t) rho_in(g)^T      for every g in G                      (*)

(cross-correlation ``y(p) = sum_t K(t) x(p + t)``; the same condition makes a transposed
convolution with weight ``K^T`` equivariant). The grid is permuted exactly by ``R_g``, so (*) splits
over the orbits of G on the grid: on the orbit of a point ``t0`` with stabilizer ``S``, ``K`` is fixed
by its value ``M = K(t0)``, which must satisfy ``M = rho_out(s) M rho_in(s)^T`` for ``s`` in ``S``. The
basis is therefore: for every orbit, an orthonormal basis of that small fixed space, transported
to the orbit by (*). This is exact (float64 eigendecomposition of projectors of size at most
``d_out d_in``, done for irreps, so at most 9 x 9), and unlike escnn's band-limited harmonic
bases it spans the *full* space of equivariant grid kernels.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import cache
from ..fields import gspace, representation_matrices
from ..groups import grid_permutation, group_matrices


@functools.lru_cache(maxsize=None)
def grid_orbits(group: str, size: int) -> tuple[np.ndarray, tuple[tuple[int, np.ndarray, np.ndarray], ...]]:
    """Orbits of ``group`` on the ``size^3`` grid.

    Parameters
    ----------
    group : {"Oh", "O"}
    size : int
        The grid's edge ``k``.

    Returns
    -------
    image : np.ndarray
        ``(|G|, k^3)`` int: ``image[g, p]`` is the flat index of ``R_g p``.
    orbits : tuple
        One ``(representative, stabilizer indices, points)`` per orbit.
    """
    mats = group_matrices(group)
    # grid_permutation(R)[q] = index of R^-1 q, so image[g] is its inverse permutation.
    image = np.stack([np.argsort(grid_permutation(R, size)) for R in mats])
    seen = np.zeros(size ** 3, dtype=bool)
    orbits = []
    for p in range(size ** 3):
        if seen[p]:
            continue
        points = np.unique(image[:, p])
        seen[points] = True
        orbits.append((p, np.flatnonzero(image[:, p] == p), points))
    return image, tuple(orbits)


def equivariant_kernel_basis(rho_out: np.ndarray, rho_in: np.ndarray, group: str, size: int) -> np.ndarray:
    """Orthonormal basis of the equivariant kernels (*) between two orthogonal representations.

    Parameters
    ----------
    rho_out : np.ndarray
        ``(|G|, d_out, d_out)`` matrices, in the order of ``group_matrices(group)``.
    rho_in : np.ndarray
        ``(|G|, d_in, d_in)``.
    group : {"Oh", "O"}
        Fixes the grid action ``R_g``.
    size : int
        Kernel size ``k``.

    Returns
    -------
    np.ndarray
        float64 ``(n_basis, d_out, d_in, k^3)``; rows are orthonormal in the Frobenius inner product,
        and every kernel in their span satisfies (*).
    """
    d_out, d_in = rho_out.shape[1], rho_in.shape[1]
    image, orbits = grid_orbits(group, size)
    basis = []
    for rep, stab, _ in orbits:
        # Projector onto the stabilizer-fixed M: vec(rho_o M rho_i^T) = kron(rho_o, rho_i) vec(M).
        proj = np.mean([np.kron(rho_out[s], rho_in[s]) for s in stab], axis=0)
        vals, vecs = np.linalg.eigh((proj + proj.T) / 2)
        fixed = vecs[:, vals > 0.5].T.reshape(-1, d_out, d_in)
        for M in fixed:
            element = np.zeros((d_out, d_in, size ** 3))
            # Transport along the orbit: K(R_g t0) = rho_o(g) M rho_i(g)^T (consistent by construction).
            element[:, :, image[:, rep]] = np.einsum("gab,bc,gdc->adg", rho_out, M, rho_in)
            basis.append(element / np.linalg.norm(element))
    if not basis:
        return np.zeros((0, d_out, d_in, size ** 3))
    return np.stack(basis)


def irrep_pair_basis(group: str, out_irrep: str, in_irrep: str, size: int) -> np.ndarray:
    """:func:`equivariant_kernel_basis` between two irreps of ``group``.

    Parameters
    ----------
    group : {"Oh", "O"}
    out_irrep, in_irrep : str
        escnn irrep names.
    size : int
        Kernel size ``k``.

    Returns
    -------
    np.ndarray
        ``(n_basis, d_out, d_in, k^3)``, read-only (cached in memory and on disk with the group's data).
    """
    G = gspace(group).fibergroup
    return cache.get_or_compute(f"group-{group}", f"basis:{out_irrep}:{in_irrep}:{size}",
                                lambda: equivariant_kernel_basis(
                                    representation_matrices(G.irreps()[_irrep_index(G, out_irrep)]),
                                    representation_matrices(G.irreps()[_irrep_index(G, in_irrep)]),
                                    group, size))


def _irrep_index(G, name: str) -> int:
    return [irrep.name for irrep in G.irreps()].index(name)


def invariant_subspace(rho: np.ndarray) -> np.ndarray:
    """The vectors fixed by a representation (where a bias may live).

    Parameters
    ----------
    rho : np.ndarray
        ``(|G|, d, d)`` orthogonal matrices.

    Returns
    -------
    np.ndarray
        ``(n, d)``, an orthonormal basis of ``{v : rho(g) v = v for every g}``.
    """
    proj = rho.mean(axis=0)
    vals, vecs = np.linalg.eigh((proj + proj.T) / 2)
    return vecs[:, vals > 0.5].T
