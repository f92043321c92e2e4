r"""The bridge to escnn: gspaces, field types and their representations, in the order of
:func:`steerable_sr.groups.group_matrices`.

**Axes** (docs/conventions.md, "Axes and vectors"). escnn reads voxel axes as ``(-Z, -Y, X)`` and
stores vectors as ``(X, Y, Z)``. We identify tensor axes one-to-one (public axis ``a`` *is* escnn's
axis ``a``), so the adapter never moves voxels: a public vector ``(u_0, u_1, u_2)`` is escnn's
``(u_X, u_Y, u_Z) = (u_2, -u_1, -u_0)``, i.e. ``v_escnn = C u`` with :data:`PUBLIC_TO_ESCNN` ``= C``,
and element ``R`` is the escnn element whose basespace action is ``C R C^T``. An escnn layer on
:func:`gspace` is therefore equivariant in the public sense once wrapped by :class:`FrameAdapter`.

**Field types** (docs/conventions.md, "Field types"): :func:`velocity_type` (the basespace action,
one field per frame), :func:`regular_type`, :func:`irrep_type` (bands of irreps, one representation
per field). A ``GeometricTensor`` of such a type is ``(B, type.size, N, N, N)`` and moves by
:func:`transform`: fibers by the field representations, voxels by :func:`steerable_sr.groups.act`.

escnn's element look-ups and representation matrices are slow to compute; they are cached on disk
(:mod:`steerable_sr.cache`). escnn itself is imported on first use, so that importing this module
(e.g. to unpickle an exported network holding a :class:`FrameAdapter`) does not need it.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from . import cache
from .groups import GROUPS, act, check_group, group_matrices

#: Public coordinates -> escnn's (X, Y, Z): X = x_2, Y = -x_1, Z = -x_0.
PUBLIC_TO_ESCNN = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])


@functools.lru_cache(maxsize=None)
def gspace(group: str = "Oh"):
    """The escnn gspace of ``group`` (cached per process).

    Parameters
    ----------
    group : {"Oh", "O"}
        The full octahedral group or its rotation subgroup.

    Returns
    -------
    escnn.gspaces.GSpace3D
        ``fullOctaOnR3()`` for "Oh", ``octaOnR3()`` for "O".
    """
    check_group(group)
    from escnn import gspaces

    return gspaces.fullOctaOnR3() if group == "Oh" else gspaces.octaOnR3()


def escnn_element_indices(group: str = "Oh") -> np.ndarray:
    """Where our elements sit among escnn's.

    Parameters
    ----------
    group : {"Oh", "O"}

    Returns
    -------
    np.ndarray
        ``(|G|,)`` int, read-only: ``idx[i]`` is the position in escnn's ``fibergroup.elements`` of
        the escnn element whose basespace action is ``C R_i C^T`` (our element ``i``); also the
        channel of element ``i`` in a regular field (:func:`regular_representation`). Cached on disk.
    """

    def compute() -> np.ndarray:
        gs = gspace(group)
        C = PUBLIC_TO_ESCNN
        position = {np.rint(gs.basespace_action(g)).astype(int).tobytes(): i
                    for i, g in enumerate(gs.fibergroup.elements)}
        return np.array([position[np.rint(C @ R @ C.T).astype(int).tobytes()]
                         for R in group_matrices(group).numpy()])

    return cache.get_or_compute(f"group-{group}", "elements", compute)


def escnn_elements(group: str = "Oh") -> tuple:
    """The escnn group elements of ``group`` ("Oh" or "O"), in the order of :func:`group_matrices`.

    Returns
    -------
    tuple of escnn.group.GroupElement
        ``|G|`` elements.
    """
    elements = gspace(group).fibergroup.elements
    return tuple(elements[i] for i in escnn_element_indices(group))


def representation_matrices(rep) -> np.ndarray:
    """The matrices of an escnn representation on every element.

    Parameters
    ----------
    rep : escnn.group.Representation
        A representation of the fibergroup of :func:`gspace`.

    Returns
    -------
    np.ndarray
        ``(|G|, d, d)`` float64, read-only, in the order of :func:`group_matrices` (computed once per
        representation name and cached on disk).
    """
    group = group_name(rep.group)
    return cache.get_or_compute(f"group-{group}", f"rep:{rep.name}",
                                lambda: np.stack([rep(g) for g in escnn_elements(group)]).astype(np.float64))


def group_name(G) -> str:
    """The name ("Oh" or "O") of an escnn fibergroup of :func:`gspace`.

    Raises
    ------
    ValueError
        If ``G`` is not the fibergroup of one of these gspaces.
    """
    for name in GROUPS:
        if gspace(name).fibergroup is G:
            return name
    raise ValueError(f"field types must live on the gspace of O_h or O from steerable_sr.fields.gspace, got {G}")


def group_of(field_type) -> str:
    """The name ("Oh" or "O") of the gspace an escnn ``FieldType`` lives on."""
    return group_name(field_type.gspace.fibergroup)


def velocity_type(group: str = "Oh", frames: int = 1):
    """The field type of ``frames`` velocity frames.

    Parameters
    ----------
    group : {"Oh", "O"}
    frames : int
        Number of velocity fields.

    Returns
    -------
    escnn.nn.FieldType
        ``frames`` polar-vector fields (escnn's basespace action), ``3 frames`` channels.
    """
    from escnn import nn as enn

    gs = gspace(group)
    return enn.FieldType(gs, [gs.basespace_action] * frames)


def regular_type(group: str = "Oh", fields: int = 1):
    """The field type of ``fields`` regular fields.

    Parameters
    ----------
    group : {"Oh", "O"}
    fields : int
        Number of copies of the regular representation.

    Returns
    -------
    escnn.nn.FieldType
        ``|G| fields`` channels; a field is a function on the group.
    """
    from escnn import nn as enn

    gs = gspace(group)
    return enn.FieldType(gs, [regular_representation(group)] * fields)


@functools.lru_cache(maxsize=None)
def regular_representation(group: str = "Oh"):
    """escnn's regular representation of ``group`` ("Oh" or "O").

    Built from the irreps with exact integer group arithmetic instead of escnn's element-by-element
    search, and installed where escnn looks for it, so that ``gspace.regular_repr`` returns the same
    object. Same construction as ``escnn.group.representation.build_regular_representation``:
    channel ``i`` is ``G.elements[i]``; ``Q[i] = [sqrt(d_psi) psi(g_i)[:, c] for psi, c] / sqrt(|G|)``.

    Returns
    -------
    escnn.group.Representation
        The representation named "regular" of the fibergroup (cached per process).
    """
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
    """The spectroscopic names of the irreps of ``group`` ("Oh" or "O"), in escnn's order (e.g. "A1g",
    "T1u"; docs/conventions.md, "Irreps")."""
    return [_IRREP_NAMES[group][irr.id] for irr in gspace(group).fibergroup.irreps()]


# escnn ids -> spectroscopic names. O: j = 0 A1, 1 T1 (vector), -1 T2, 2 E, 3 A2; O_h: (inversion k, j).
_O_NAMES = {0: "A1", 1: "T1", -1: "T2", 2: "E", 3: "A2"}
_IRREP_NAMES = {
    "O": {(j,): name for j, name in _O_NAMES.items()},
    "Oh": {((k,), (j,), 0): name + ("g" if k == 0 else "u") for k in (0, 1) for j, name in _O_NAMES.items()},
}


def irrep_type(group: str = "Oh", fields: int = 1, irreps: Sequence[str] | None = None):
    """The field type of ``fields`` bands of irreps.

    Each field is one escnn representation, the direct sum of the band (no change of basis), so that a
    field can be read as one function on G (Fourier nonlinearity, relaxed mixing).

    Parameters
    ----------
    group : {"Oh", "O"}
    fields : int
        Number of copies of the band.
    irreps : sequence of str, optional
        The band's irreps by name (:func:`irrep_names`); default every irrep once (20 channels per
        field for O_h, 10 for O).

    Returns
    -------
    escnn.nn.FieldType

    Raises
    ------
    ValueError
        For an unknown irrep name or an empty band.
    """
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


def is_regular(field_type) -> bool:
    """Whether every field of ``field_type`` is a copy of the regular representation."""
    return all(rep.name == "regular" for rep in field_type.representations)


def check_type(x, field_type) -> None:
    """Check that ``x`` is an escnn ``GeometricTensor`` of type ``field_type``.

    Raises
    ------
    ValueError
        Naming the expected and the given type.
    """
    from escnn import nn as enn

    if not isinstance(x, enn.GeometricTensor) or x.type != field_type:
        got = x.type if isinstance(x, enn.GeometricTensor) else type(x).__name__
        raise ValueError(f"expected a GeometricTensor of type {field_type}, got {got}")


class FrameAdapter(torch.nn.Module):
    """The public <-> escnn map for stacks of velocity frames ``(B, 3 T, N1, N2, N3)``.

    A signed channel permutation per frame: exact, voxels untouched, same shape out.

    Parameters
    ----------
    direction : {"to_escnn", "to_public"}
        ``"to_escnn"``: per frame ``v = C u``, i.e. ``(u_X, u_Y, u_Z) = (u_2, -u_1, -u_0)``;
        ``"to_public"``: ``u = C^T v``.
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
        """Map every frame of ``x (B, 3 T, N1, N2, N3)``; same shape.

        Raises
        ------
        ValueError
            Unless ``x`` is a stack of velocity frames.
        """
        if x.dim() != 5 or x.shape[1] % 3 != 0:
            raise ValueError("expected a stack of velocity frames (B, 3 T, N1, N2, N3)")
        frames = x.reshape(x.shape[0], x.shape[1] // 3, 3, x.shape[2], x.shape[3], x.shape[4])
        return (frames.index_select(2, self.perm) * self.sign.to(x.dtype)).reshape(x.shape)

    def extra_repr(self) -> str:
        return self.direction


def transform(x, element: int):
    """``x.transform(g)`` for an escnn ``GeometricTensor`` on a voxel grid: fibers by the field
    representations, voxels by :func:`act`. Exact, and cheaper than escnn's generic transform.

    Parameters
    ----------
    x : escnn.nn.GeometricTensor
        ``(B, type.size, N, N, N)``.
    element : int
        ``g``, by its index in :func:`group_matrices`.

    Returns
    -------
    escnn.nn.GeometricTensor
        ``g . x``, same type and shape.
    """
    from escnn import nn as enn

    group = group_of(x.type)
    fiber = torch.block_diag(*[torch.tensor(representation_matrices(rep)[element])
                               for rep in x.type.representations]).to(x.tensor)
    moved = act(x.tensor, group_matrices(group)[element], "scalar")
    return enn.GeometricTensor(torch.einsum("cd,bd...->bc...", fiber, moved), x.type)
