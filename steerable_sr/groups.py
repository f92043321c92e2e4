r"""The octahedral groups O_h and O, their exact action on voxel grids, and the bridge to escnn.

**Elements and their order.** An element is a signed 3x3 permutation matrix ``R`` with
``R[i, perm[i]] = signs[i]``. :func:`group_matrices` lists them in one fixed order, which is the
index of every "function on G" in this library (relaxed weights, stabilizers, reports):

* rotations first: ``perm`` runs over ``itertools.permutations(range(3))`` and, for each, ``signs``
  over ``itertools.product((1, -1), repeat=3)``; only ``det R = +1`` is kept (24 elements, the group
  O, identity first);
* then their negatives ``-R`` in the same order (the 24 improper elements of O_h).

**Public tensor convention.** A velocity frame is a tensor ``(3, N, N, N)``: spatial axis ``a`` is the
coordinate ``x_a`` (measured from the grid centre) and channel ``a`` is the component ``u_a``. ``T``
frames are stacked as ``3 T`` channels. An element acts by ``(R.u)(p) = R u(R^-1 p)``; on a
scalar field by ``(R.f)(p) = f(R^-1 p)``. On the grid this is an axis permutation plus flips:
exact, no interpolation.

**escnn.** escnn reads voxel axes as ``(-Z, -Y, X)`` and stores vectors as ``(X, Y, Z)``. We identify
tensor axes one-to-one (public axis ``a`` *is* escnn's axis ``a``), so the adapter never moves
voxels: a public vector ``(u_0, u_1, u_2)`` is escnn's ``(u_X, u_Y, u_Z) = (u_2, -u_1, -u_0)``, i.e.
``v_escnn = C u`` with :data:`PUBLIC_TO_ESCNN` ``= C``, and element ``R`` is the escnn element whose
basespace action is ``C R C^T``.
"""
from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np
import torch

GROUPS = ("Oh", "O")
FIELDS = ("vector", "scalar")

#: Public coordinates -> escnn's (X, Y, Z): X = x_2, Y = -x_1, Z = -x_0.
PUBLIC_TO_ESCNN = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; allowed values: {', '.join(GROUPS)}")


@functools.lru_cache(maxsize=None)
def _matrices_np(group: str) -> np.ndarray:
    _check_group(group)
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


# --------------------------------------------------------------------------------------------
# escnn bridge
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def gspace(group: str = "Oh"):
    """The escnn gspace: ``fullOctaOnR3()`` for "Oh", ``octaOnR3()`` for "O" (cached per process)."""
    _check_group(group)
    from escnn import gspaces

    return gspaces.fullOctaOnR3() if group == "Oh" else gspaces.octaOnR3()


@functools.lru_cache(maxsize=None)
def escnn_element_indices(group: str = "Oh") -> np.ndarray:
    """``idx[i]``: position in escnn's ``fibergroup.elements`` of our element ``i``, i.e. of the escnn
    element whose basespace action is ``C R_i C^T`` (cached on disk: escnn's look-up is slow)."""
    stored = _group_cache(group)
    if "elements" not in stored:
        gs = gspace(group)
        C = PUBLIC_TO_ESCNN
        position = {np.rint(gs.basespace_action(g)).astype(int).tobytes(): i
                    for i, g in enumerate(gs.fibergroup.elements)}
        stored["elements"] = np.array([position[np.rint(C @ R @ C.T).astype(int).tobytes()]
                                       for R in _matrices_np(group)])
        _save_group_cache(group)
    return stored["elements"]


def escnn_elements(group: str = "Oh") -> tuple:
    """The escnn group elements, in the order of :func:`group_matrices`."""
    elements = gspace(group).fibergroup.elements
    return tuple(elements[i] for i in escnn_element_indices(group))


def representation_matrices(rep) -> np.ndarray:
    """Matrices ``(|G|, d, d)`` of an escnn representation, in the order of :func:`group_matrices`
    (computed once per representation name and cached on disk; read-only)."""
    group = _group_name(rep.group)
    stored = _group_cache(group)
    key = f"rep:{rep.name}"
    if key not in stored:
        stored[key] = np.stack([rep(g) for g in escnn_elements(group)]).astype(np.float64)
        _save_group_cache(group)
    stored[key].setflags(write=False)
    return stored[key]


@functools.lru_cache(maxsize=None)
def _group_cache(group: str) -> dict[str, np.ndarray]:
    from . import cache

    return cache.load(f"group-{group}")


def _save_group_cache(group: str) -> None:
    """Mark the group's cache for writing; it is written once, when the process exits."""
    import atexit

    from . import cache

    if group not in _DIRTY:
        _DIRTY.add(group)
        atexit.register(lambda: cache.save(f"group-{group}", _group_cache(group)))


_DIRTY: set[str] = set()


def _group_name(G) -> str:
    for name in GROUPS:
        if gspace(name).fibergroup is G:
            return name
    raise ValueError(f"field types must live on the gspace of O_h or O from steerable_sr.groups.gspace, got {G}")


def group_of(field_type) -> str:
    """The name ("Oh" or "O") of the gspace an escnn field type lives on."""
    return _group_name(field_type.gspace.fibergroup)


def velocity_type(group: str = "Oh", frames: int = 1):
    """``frames`` velocity (polar vector, escnn basespace action) fields."""
    from escnn import nn as enn

    gs = gspace(group)
    return enn.FieldType(gs, [gs.basespace_action] * frames)


def regular_type(group: str = "Oh", fields: int = 1):
    """``fields`` copies of the regular representation (|G| channels each)."""
    from escnn import nn as enn

    gs = gspace(group)
    return enn.FieldType(gs, [regular_representation(group)] * fields)


@functools.lru_cache(maxsize=None)
def regular_representation(group: str = "Oh"):
    """escnn's regular representation of the group, built from the irreps with exact integer group
    arithmetic (milliseconds) instead of escnn's element-by-element search (seconds), and installed
    where escnn looks for it, so ``gspace.regular_repr`` returns the same object.

    Same construction as ``escnn.group.representation.build_regular_representation``: channel ``i``
    is ``G.elements[i]``; ``Q[i] = [sqrt(d_psi) psi(g_i)[:, c] for psi, c] / sqrt(|G|)``."""
    from escnn.group import Representation

    G = gspace(group).fibergroup
    if "regular" not in G.representations:
        irreps = [irrep for irrep in G.irreps() for _ in range(irrep.size)]
        # Row i is escnn's element i; copy c of irrep psi reads column c of psi(g_i).
        ours = np.argsort(escnn_element_indices(group))
        blocks = [np.sqrt(irrep.size) * representation_matrices(irrep)[ours].transpose(0, 2, 1).reshape(len(ours), -1)
                  for irrep in G.irreps()]
        Q = np.concatenate(blocks, axis=1) / np.sqrt(len(ours))
        G.representations["regular"] = Representation(
            G, "regular", [irrep.id for irrep in irreps], Q, ["pointwise", "norm", "gated", "concatenated"],
            change_of_basis_inv=Q.T)
    return G.representations["regular"]


def irrep_names(group: str = "Oh") -> list[str]:
    """Human names of the irreps of ``group``, in escnn's order (e.g. "A1g", "T1u")."""
    return [_IRREP_NAMES[group][irr.id] for irr in gspace(group).fibergroup.irreps()]


# escnn ids -> spectroscopic names. O: j = 0 A1, 1 T1 (vector), -1 T2, 2 E, 3 A2; O_h: (inversion k, j).
_O_NAMES = {0: "A1", 1: "T1", -1: "T2", 2: "E", 3: "A2"}
_IRREP_NAMES = {
    "O": {(j,): name for j, name in _O_NAMES.items()},
    "Oh": {((k,), (j,), 0): name + ("g" if k == 0 else "u") for k in (0, 1) for j, name in _O_NAMES.items()},
}


def irrep_type(group: str = "Oh", fields: int = 1, irreps: Sequence[str] | None = None):
    """``fields`` copies of a band of irreps (default: every irrep of the group once: 20 channels for
    O_h, 10 for O). Each field is one escnn representation, the direct sum of the band (no change of
    basis), so that a field can be read as one function on G (Fourier nonlinearity, relaxed mixing)."""
    from escnn import nn as enn
    from escnn.group import directsum

    gs = gspace(group)
    G = gs.fibergroup
    names = irrep_names(group)
    chosen = names if irreps is None else list(irreps)
    unknown = [n for n in chosen if n not in names]
    if unknown or not chosen:
        raise ValueError(f"unknown or empty irreps {chosen} for {group}; allowed values: {', '.join(names)}")
    key = (group, f"band[{','.join(chosen)}]")
    if key not in _BANDS:
        _BANDS[key] = directsum([G.irreps()[names.index(n)] for n in chosen], name=key[1])
    return enn.FieldType(gs, [_BANDS[key]] * fields)


_BANDS: dict[tuple[str, str], object] = {}


class FrameAdapter(torch.nn.Module):
    """The public <-> escnn map for stacks of velocity frames ``(B, 3 T, ...)``.

    ``"to_escnn"``: per frame ``v = C u``, i.e. ``(u_X, u_Y, u_Z) = (u_2, -u_1, -u_0)``;
    ``"to_public"``: ``u = C^T v``. A signed channel permutation: exact, voxels untouched.
    """

    def __init__(self, direction: str = "to_escnn"):
        super().__init__()
        matrices = {"to_escnn": PUBLIC_TO_ESCNN, "to_public": PUBLIC_TO_ESCNN.T}
        if direction not in matrices:
            raise ValueError(f"unknown direction {direction!r}; allowed values: {', '.join(matrices)}")
        self.direction = direction
        C = matrices[direction]
        perm = np.argmax(np.abs(C), axis=1)
        self.register_buffer("perm", torch.from_numpy(perm).long(), persistent=False)
        self.register_buffer("sign", torch.tensor(C[np.arange(3), perm], dtype=torch.float32).view(1, 1, 3, 1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] % 3 != 0:
            raise ValueError("expected a stack of velocity frames (B, 3 T, N1, N2, N3)")
        frames = x.reshape(x.shape[0], x.shape[1] // 3, 3, x.shape[2], x.shape[3], x.shape[4])
        return (frames.index_select(2, self.perm) * self.sign.to(x.dtype)).reshape(x.shape)

    def extra_repr(self) -> str:
        return self.direction


def transform(x, element: int):
    """``x.transform(g)`` for an escnn ``GeometricTensor`` on a voxel grid, ``g`` given by its index in
    :func:`group_matrices`: fibers by the field representations, voxels by :func:`act`. Exact, and far
    faster than escnn's generic transform."""
    from escnn import nn as enn

    group = group_of(x.type)
    fiber = torch.block_diag(*[torch.tensor(representation_matrices(rep)[element])
                               for rep in x.type.representations]).to(x.tensor)
    moved = act(x.tensor, _matrices_np(group)[element], "scalar")
    return enn.GeometricTensor(torch.einsum("cd,bd...->bc...", fiber, moved), x.type)
