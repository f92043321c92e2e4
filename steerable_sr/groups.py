r"""The octahedral groups O_h and O, their exact action on voxel grids, and their subgroup lattice
(pure group math: no escnn).

**Elements and their order** (docs/conventions.md, "Group elements and their order"). An element
is a signed 3x3 permutation matrix ``R`` with ``R[i, perm[i]] = signs[i]``. :func:`group_matrices`
lists them in one fixed order, which is the index of every "function on G" in this library (relaxed
weights, stabilizers, reports):

* rotations first: ``perm`` runs over ``itertools.permutations(range(3))`` and, for each, ``signs``
  over ``itertools.product((1, -1), repeat=3)``; only ``det R = +1`` is kept (24 elements, the group
  O, identity first);
* then their negatives ``-R`` in the same order (the 24 improper elements of O_h).

**Public tensor convention** (docs/conventions.md, "Axes and vectors"). A velocity frame is a tensor
``(3, N, N, N)``: spatial axis ``a`` is the coordinate ``x_a`` (measured from the grid centre) and
channel ``a`` is the component ``u_a``. ``T`` frames are stacked as ``3 T`` channels. An element
acts by ``(R.u)(p) = R u(R^-1 p)``; on a scalar field by ``(R.f)(p) = f(R^-1 p)``. On the grid this
is an axis permutation plus flips: exact, no interpolation.

**Subgroups** are sets of element indices. :func:`named_subgroups` builds the well-known subgroups
of O_h (Schoenflies names with their axis or body diagonal, e.g. ``"D4h, axis x"``, ``"D3d,
diagonal (1,1,1)"``) from generators; :func:`subgroup_name` names a set of indices,
:func:`subgroup_elements` lists a named subgroup, :func:`largest_subgroup_in` finds the largest
subgroup inside a set that is not one.

The escnn side (gspaces, field types, representation matrices) is :mod:`steerable_sr.fields`.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

GROUPS = ("Oh", "O")
FIELDS = ("vector", "scalar")
#: Letters of the coordinate axes ``x_0, x_1, x_2`` in subgroup names.
AXES = "xyz"


def check_group(group: str) -> None:
    """``ValueError`` unless ``group`` is one of :data:`GROUPS`."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; allowed values: {', '.join(GROUPS)}")


@functools.lru_cache(maxsize=None)
def _matrices_np(group: str) -> np.ndarray:
    check_group(group)
    rotations = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            R = np.zeros((3, 3))
            R[np.arange(3), perm] = signs
            if round(np.linalg.det(R)) == 1:
                rotations.append(R)
    mats = rotations if group == "O" else rotations + [-R for R in rotations]
    out = np.stack(mats)
    out.setflags(write=False)
    return out


def group_matrices(group: str = "Oh") -> torch.Tensor:
    """The elements of ``group`` as float64 signed permutation matrices.

    Parameters
    ----------
    group : {"Oh", "O"}
        48 or 24 elements.

    Returns
    -------
    torch.Tensor
        ``(|G|, 3, 3)`` in the documented order (identity first, rotations before improper
        elements).
    """
    return torch.from_numpy(_matrices_np(group).copy())


def group_order(group: str = "Oh") -> int:
    """``|G|``: 48 for "Oh", 24 for "O"."""
    return len(_matrices_np(group))


@functools.lru_cache(maxsize=None)
def cayley_table(group: str = "Oh") -> np.ndarray:
    """``table[a, b]`` = index of ``g_a @ g_b`` (int64 array ``(|G|, |G|)``)."""
    mats = _matrices_np(group)
    keys = {m.astype(int).tobytes(): i for i, m in enumerate(mats)}
    prod = np.einsum("aij,bjk->abik", mats, mats).astype(int)
    table = np.array([[keys[prod[a, b].tobytes()] for b in range(len(mats))] for a in range(len(mats))])
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=None)
def inverses(group: str = "Oh") -> np.ndarray:
    """``inv[a]`` = index of ``g_a^-1``."""
    table = cayley_table(group)
    return np.argmax(table == 0, axis=1)


def element_index(R: torch.Tensor | np.ndarray, group: str = "Oh") -> int:
    """Index of matrix ``R`` in :func:`group_matrices`; ``ValueError`` if ``R`` is not in the group."""
    R = np.asarray(R.detach().cpu() if isinstance(R, torch.Tensor) else R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"a group element is a 3x3 matrix, got shape {R.shape}")
    hits = np.flatnonzero(np.all(np.abs(_matrices_np(group) - R) < 1e-6, axis=(1, 2)))
    if len(hits) == 0:
        raise ValueError(f"matrix {R.tolist()} is not an element of {group} (signed permutation matrices"
                         f"{' with det +1' if group == 'O' else ''})")
    return int(hits[0])


def element_label(k: int, group: str = "Oh") -> str:
    """An element in words: the image ``R (x, y, z)`` of the coordinates.

    Parameters
    ----------
    k : int
        Index into :func:`group_matrices`.
    group : {"Oh", "O"}

    Returns
    -------
    str
        E.g. ``"(x, y, z)"`` for the identity, ``"(x, z, y)"`` for the exchange of y and z,
        ``"(-x, -y, -z)"`` for the inversion.
    """
    R = _matrices_np(group)[k]
    return "(" + ", ".join(("-" if R[i].sum() < 0 else "") + AXES[int(np.argmax(np.abs(R[i])))]
                           for i in range(3)) + ")"


def _perm_signs(R: torch.Tensor | np.ndarray) -> tuple[list[int], list[int]]:
    R = np.asarray(R.detach().cpu() if isinstance(R, torch.Tensor) else R, dtype=np.float64)
    element_index(R, "Oh")
    perm = [int(np.argmax(np.abs(R[i]))) for i in range(3)]
    signs = [int(np.sign(R[i, perm[i]])) for i in range(3)]
    return perm, signs


def act(x: torch.Tensor, R: torch.Tensor | np.ndarray, field: str = "vector") -> torch.Tensor:
    r"""Apply the group element ``R`` to a batch of fields in the public convention, exactly.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., C, N, N, N)``; for ``field="vector"``, ``C = 3 T`` (``T`` stacked frames).
    R : torch.Tensor or numpy.ndarray
        A signed permutation matrix ``(3, 3)``.
    field : {"vector", "scalar"}
        ``"vector"``: ``(R.u)(p) = R u(R^-1 p)``; ``"scalar"``: ``f(R^-1 p)`` on every channel.

    Returns
    -------
    torch.Tensor
        The same shape as ``x``: voxels permuted and flipped, vector components permuted with
        signs. No arithmetic other than sign flips, so the result is exact and
        ``act(act(x, A), B) == act(x, B @ A)``.
    """
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r}; allowed values: {', '.join(FIELDS)}")
    if x.dim() < 4:
        raise ValueError(f"expected a tensor (..., C, N, N, N), got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[-3:])
    if len(set(spatial)) != 1:
        raise ValueError(f"the octahedral action needs a cubic volume, got spatial shape {spatial}")
    channels = x.shape[-4]
    if field == "vector" and channels % 3:
        raise ValueError(f"a stack of vector fields needs a channel count divisible by 3, got {channels}")
    perm, signs = _perm_signs(R)
    d = x.dim()
    # (R.f)(p) = f(R^-1 p): output axis i reads input axis perm[i], reversed where signs[i] = -1.
    order = list(range(d - 3)) + [d - 3 + perm[i] for i in range(3)]
    y = x.permute(order)
    flips = [d - 3 + i for i in range(3) if signs[i] < 0]
    if flips:
        y = y.flip(flips)
    if field == "vector":
        frames = y.reshape(*y.shape[:-4], channels // 3, 3, *spatial)
        sign = torch.tensor(signs, dtype=y.dtype, device=y.device).view(3, 1, 1, 1)
        y = (frames[..., perm, :, :, :] * sign).reshape(y.shape)
    return y.contiguous()


def grid_permutation(R: torch.Tensor | np.ndarray, size: int) -> np.ndarray:
    """``out[q] = p``: the flat voxel index of ``R^-1 q`` in a ``size^3`` grid (so ``f'(q) = f(p)``)."""
    idx = torch.arange(size ** 3, dtype=torch.float64).view(1, size, size, size)
    return act(idx, R, "scalar").reshape(-1).long().numpy()


def generated_subgroup(generators, group: str = "Oh") -> frozenset[int]:
    """The subgroup generated by some elements.

    Parameters
    ----------
    generators : sequence of array_like
        3x3 matrices, elements of ``group``.
    group : {"Oh", "O"}

    Returns
    -------
    frozenset of int
        Indices into :func:`group_matrices` of every product of the generators (``{0}`` for none).
    """
    table = cayley_table(group)
    gens = [element_index(g, group) for g in generators]
    members, frontier = {0}, [0]
    while frontier:
        frontier = [int(table[a, g]) for a in frontier for g in gens if table[a, g] not in members]
        members.update(frontier)
    return frozenset(members)


def is_subgroup(members: set[int], group: str = "Oh") -> bool:
    """Whether the element indices ``members`` form a subgroup of ``group`` (identity, closed)."""
    table = cayley_table(group)
    return 0 in members and all(int(table[a, b]) in members for a in members for b in members)


@functools.lru_cache(maxsize=None)
def named_subgroups(group: str = "Oh") -> tuple[tuple[str, frozenset[int]], ...]:
    """The well-known subgroups of ``group``, each built from generators, largest first.

    Parameters
    ----------
    group : {"Oh", "O"}

    Returns
    -------
    tuple of (str, frozenset of int)
        ``(name, element indices)``: Schoenflies names, with their axis (``"D4h, axis x"``), body
        diagonal (``"D3d, diagonal (1,-1,1)"``) or mirror normal (``"Cs, mirror normal z"``);
        ``"D2h"`` is the 8 sign flips of the axes, ``"Oh"`` and ``"O"`` the whole groups. Subgroups
        with improper elements are left out for ``"O"``; each set appears once, under its first name.
    """
    I = np.eye(3)
    inversion = -I
    cyclic = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])  # 3-fold turn about (1,1,1)
    swap = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])  # mirror containing (1,1,1) and z
    quarter_z = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    candidates = [("Oh", [cyclic, quarter_z, inversion]),
                  ("O", [cyclic, quarter_z]),
                  ("Th", [cyclic, np.diag([-1.0, -1, 1]), inversion]),
                  ("Td", [cyclic, -quarter_z]),
                  ("T", [cyclic, np.diag([-1.0, -1, 1])])]
    for a, axis in enumerate(AXES):
        b, c = [i for i in range(3) if i != a]
        quarter = I.copy()
        quarter[[b, b, c, c], [b, c, b, c]] = [0, -1, 1, 0]
        half_b = np.diag([1.0 if i == b else -1.0 for i in range(3)])  # pi turn about axis b
        mirror_a, mirror_b = I - 2 * np.outer(I[a], I[a]), I - 2 * np.outer(I[b], I[b])
        candidates += [(f"D4h, axis {axis}", [quarter, mirror_b, inversion]),
                       (f"D4, axis {axis}", [quarter, half_b]),
                       (f"C4v, axis {axis}", [quarter, mirror_b]),
                       (f"D2d, axis {axis}", [-quarter, half_b]),
                       (f"C4h, axis {axis}", [quarter, inversion]),
                       (f"C4, axis {axis}", [quarter]),
                       (f"S4, axis {axis}", [-quarter]),
                       (f"C2v, axis {axis}", [mirror_b, I - 2 * np.outer(I[c], I[c])]),
                       (f"C2h, axis {axis}", [-mirror_a, inversion]),
                       (f"C2, axis {axis}", [-mirror_a]),
                       (f"Cs, mirror normal {axis}", [mirror_a])]
    for signs in itertools.product((1.0, -1.0), repeat=2):
        D = np.diag([1.0, *signs])
        label = "(" + ",".join(f"{int(v)}" for v in np.diag(D)) + ")"
        turn, mirror = D @ cyclic @ D, D @ swap @ D
        candidates += [(f"D3d, diagonal {label}", [turn, -mirror, inversion]),
                       (f"D3, diagonal {label}", [turn, -mirror]),
                       (f"C3v, diagonal {label}", [turn, mirror]),
                       (f"S6, diagonal {label}", [-turn]),
                       (f"C3, diagonal {label}", [turn])]
    candidates += [("D2h", [np.diag([-1.0, 1, 1]), np.diag([1.0, -1, 1]), np.diag([1.0, 1, -1])]),
                   ("D2", [np.diag([-1.0, -1, 1]), np.diag([1.0, -1, -1])]),
                   ("Ci", [inversion]), ("C1", [])]
    named, seen = [], set()
    for name, generators in candidates:
        if group == "O" and any(round(np.linalg.det(g)) != 1 for g in generators):
            continue
        members = generated_subgroup(generators, group)
        if members not in seen:
            seen.add(members)
            named.append((name, members))
    return tuple(sorted(named, key=lambda item: -len(item[1])))


def subgroup_elements(name: str, group: str = "Oh") -> list[int]:
    """The element indices of a named subgroup.

    Parameters
    ----------
    name : str
        A name of :func:`named_subgroups`, e.g. ``"D2h"``, ``"D4h, axis x"``, or ``group`` itself.
    group : {"Oh", "O"}

    Returns
    -------
    list of int
        Sorted indices into :func:`group_matrices`; ``ValueError`` for an unknown name.
    """
    named = dict(named_subgroups(group))
    if name not in named:
        raise ValueError(f"unknown subgroup {name!r} of {group}; allowed values: {', '.join(named)}")
    return sorted(named[name])


def subgroup_name(indices, group: str = "Oh") -> str:
    """The name of the subgroup with these element indices (:func:`named_subgroups`), or
    ``"order n"`` for a set that has none."""
    members = frozenset(int(i) for i in indices)
    for name, subgroup in named_subgroups(group):
        if members == subgroup:
            return name
    return f"order {len(members)}"


def largest_subgroup_in(members: set[int], group: str = "Oh") -> list[int]:
    """The largest subgroup inside a set of element indices.

    Parameters
    ----------
    members : set of int
        Element indices; need not form a group.
    group : {"Oh", "O"}

    Returns
    -------
    list of int
        ``members`` itself if it is a subgroup, else the largest named subgroup
        (:func:`named_subgroups`) contained in it, at least ``[0]`` (the identity).
    """
    if is_subgroup(members, group):
        return sorted(members)
    for _, subgroup in named_subgroups(group):  # largest first
        if subgroup <= members:
            return sorted(subgroup)
    return [0]
