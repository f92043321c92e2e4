r"""The octahedral groups O_h and O and their exact action on voxel grids (pure group math: no escnn).

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

The escnn side (gspaces, field types, representation matrices) is :mod:`steerable_sr.fields`.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

GROUPS = ("Oh", "O")
FIELDS = ("vector", "scalar")


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
    """The elements of ``group`` ("Oh": 48, "O": 24) as float64 signed permutation matrices.

    Returns a tensor ``(|G|, 3, 3)`` in the documented order (identity first, rotations before
    improper elements).
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


def _perm_signs(R: torch.Tensor | np.ndarray) -> tuple[list[int], list[int]]:
    R = np.asarray(R.detach().cpu() if isinstance(R, torch.Tensor) else R, dtype=np.float64)
    element_index(R, "Oh")
    perm = [int(np.argmax(np.abs(R[i]))) for i in range(3)]
    signs = [int(np.sign(R[i, perm[i]])) for i in range(3)]
    return perm, signs


def act(x: torch.Tensor, R: torch.Tensor | np.ndarray, field: str = "vector") -> torch.Tensor:
    r"""Apply the group element ``R`` to a batch of fields in the public convention, exactly.

    Args:
        x: ``(..., C, N, N, N)``; for ``field="vector"``, ``C = 3 T`` (``T`` stacked frames).
        R: a signed permutation matrix (3, 3).
        field: ``"vector"`` (``(R.u)(p) = R u(R^-1 p)``) or ``"scalar"`` (``f(R^-1 p)``, any ``C``).

    Returns:
        A tensor of the same shape: voxels permuted and flipped, vector components permuted with
        signs. No arithmetic other than sign flips, so the result is exact.
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
