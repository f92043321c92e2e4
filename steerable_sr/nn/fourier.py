r"""Fourier analysis on the finite group, and fields seen as functions on G.

* :func:`peter_weyl_basis` -- the orthonormal basis ``phi_(psi,i,j)(g) = sqrt(d_psi/|G|) psi(g)_ij``
  of functions on G, grouped by irrep ``psi``: coefficients in this basis are the "Fourier blocks"
  ``w(psi)``; a function is G-invariant iff only the trivial block is non-zero.
* :func:`fourier_embedding` -- for a field representation ``rho`` (dimension ``d``), an isometric
  intertwiner ``F: R^d -> R^|G|``, ``(F v)(g) = <rho(g) a, v>``, which reads the field as a function
  on G. For a regular field ``F`` is the identity relabelling of channels by group elements
  (``a`` = the identity's channel); for a band of irreps each irrep sits in its own Fourier block.
  It exists when every irrep's multiplicity in ``rho`` is at most its dimension.

Both are in the order of ``steerable_sr.groups.group_matrices``.
"""
from __future__ import annotations

import functools

import numpy as np

from ..fields import escnn_element_indices, group_name, gspace, irrep_names, representation_matrices


@functools.lru_cache(maxsize=None)
def peter_weyl_basis(group: str) -> tuple[np.ndarray, tuple[tuple[str, slice], ...]]:
    """The Peter-Weyl basis of functions on ``group`` ("Oh" or "O").

    Returns
    -------
    phi : np.ndarray
        Orthogonal ``(|G|, |G|)`` float64, read-only: row ``k`` is the basis function ``phi_k``
        sampled on the elements.
    blocks : tuple of (str, slice)
        The rows of each irrep, by irrep name.
    """
    G = gspace(group).fibergroup
    rows, blocks, start = [], [], 0
    for name, irrep in zip(irrep_names(group), G.irreps()):
        mats = representation_matrices(irrep)
        d = irrep.size
        rows.append(np.sqrt(d / len(mats)) * mats.reshape(len(mats), d * d).T)
        blocks.append((name, slice(start, start + d * d)))
        start += d * d
    phi = np.concatenate(rows)
    if not np.allclose(phi @ phi.T, np.eye(len(phi)), atol=1e-10):
        raise RuntimeError(f"Peter-Weyl basis of {group} is not orthonormal: irreps are not orthogonal")
    phi.setflags(write=False)
    return phi, tuple(blocks)


def fourier_embedding(rep) -> np.ndarray:
    """The field read as a function on the group (module docstring).

    Parameters
    ----------
    rep : escnn.group.Representation
        A field representation ``rho`` (dimension ``d``) holding each irrep at most as often as its
        dimension.

    Returns
    -------
    np.ndarray
        ``F``, ``(|G|, d)`` float64, read-only: ``F rho(k) = lambda(k) F`` with
        ``(lambda(k) f)(g) = f(k^-1 g)``, and ``F^T F = I``.

    Raises
    ------
    ValueError
        If an irrep occurs more often than its dimension.
    """
    key = (group_name(rep.group), rep.name)
    if key not in _EMBEDDINGS:
        _EMBEDDINGS[key] = _fourier_embedding(rep, *key)
    return _EMBEDDINGS[key]


_EMBEDDINGS: dict[tuple[str, str], np.ndarray] = {}


def _fourier_embedding(rep, group: str, name: str) -> np.ndarray:
    G = gspace(group).fibergroup
    mats = representation_matrices(rep)
    order = len(mats)
    if name == "regular":
        # Channel of element g = image of the identity's channel under g.
        identity = escnn_element_indices(group)[0]
        cyclic = np.eye(order)[identity]
    else:
        parts, used = [], {}
        for irrep_id in rep.irreps:
            irrep = G.irrep(*irrep_id)
            row = used.get(irrep_id, 0)
            if row >= irrep.size:
                raise ValueError(
                    f"representation {name!r} holds irrep {irrep.name} more often than its dimension "
                    f"{irrep.size}: it cannot be read as one function on G")
            used[irrep_id] = row + 1
            parts.append(np.sqrt(irrep.size / order) * np.eye(irrep.size)[row])
        cyclic = rep.change_of_basis @ np.concatenate(parts)
    F = np.einsum("gij,j->gi", mats, cyclic)
    if not np.allclose(F.T @ F, np.eye(rep.size), atol=1e-10):
        raise RuntimeError(f"Fourier embedding of {name!r} is not an isometry")
    F.setflags(write=False)
    return F
