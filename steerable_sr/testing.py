r"""Assertions and random inputs for tests of equivariant modules, ours and users'.

Tolerances: an exactly equivariant float32 network differs from its transformed copy only by the
order of summation, ~1e-7 relative per operation over a few dozen layers, so :data:`EQUIVARIANT_TOL`
= 1e-5 relative is the bar for "equivariant to round-off"; a broken symmetry shows up at
:data:`BROKEN_TOL` = 1e-2 or more for random weights.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from . import fields, groups
from .metrics import equivariance_errors

EQUIVARIANT_TOL = 1e-5
BROKEN_TOL = 1e-2


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` over all entries."""
    return ((a - b).norm() / b.norm()).item()


def assert_equivariant(module, x, group: str = "Oh", elements: Iterable[int] | None = None,
                       tol: float = EQUIVARIANT_TOL) -> np.ndarray:
    """Assert ``||module(g.x) - g.module(x)|| / ||module(x)|| < tol`` for every ``g`` in ``elements``
    (indices into :func:`steerable_sr.groups.group_matrices`; ``None``: the whole group).

    ``x``: public velocity frames ``(B, 3 T, N, N, N)`` or an escnn ``GeometricTensor`` (see
    :func:`steerable_sr.metrics.equivariance_errors`). Runs in eval mode, all transformed copies in one
    batch. Returns the errors.
    """
    if elements is None:
        if not isinstance(x, torch.Tensor):
            group = fields.group_of(x.type)
        elements = range(groups.group_order(group))
    indices = sorted(elements)
    errors = equivariance_errors(module, x, group, indices, chunk=len(indices)).numpy()
    worst = int(np.argmax(errors))
    assert errors[worst] < tol, (f"not equivariant: relative error {errors[worst]:.3g} >= {tol:g} "
                                 f"for element {indices[worst]}")
    return errors


def assert_not_equivariant(module, x, group: str = "Oh", elements: Iterable[int] | None = None,
                           min_error: float = BROKEN_TOL) -> np.ndarray:
    """Assert the relative equivariance error is at least ``min_error`` for every ``g`` in ``elements``
    (``None``: the whole group but the identity). Returns the errors."""
    if elements is None:
        if not isinstance(x, torch.Tensor):
            group = fields.group_of(x.type)
        elements = range(1, groups.group_order(group))
    elements = sorted(elements)
    errors = equivariance_errors(module, x, group, elements, chunk=len(elements)).numpy()
    best = int(np.argmin(errors))
    assert errors[best] >= min_error, (f"unexpectedly equivariant: relative error {errors[best]:.3g} < "
                                       f"{min_error:g} for element {elements[best]}")
    return errors


def assert_symmetry(module, x, subgroup: Iterable[int], group: str = "Oh") -> None:
    """Assert ``module`` is equivariant exactly to the elements of ``subgroup``: to round-off
    (:func:`assert_equivariant`) inside it, broken (:func:`assert_not_equivariant`) outside
    (``x``, ``group`` as in :func:`assert_equivariant`)."""
    if not isinstance(x, torch.Tensor):
        group = fields.group_of(x.type)
    inside = sorted(subgroup)
    assert_equivariant(module, x, group, inside)
    assert_not_equivariant(module, x, group, sorted(set(range(groups.group_order(group))) - set(inside)))


def random_field(field_type, size: int = 4, batch: int = 2):
    """A ``GeometricTensor`` ``(batch, field_type.size, size, size, size)`` of standard normal values."""
    from escnn import nn as enn

    return enn.GeometricTensor(torch.randn(batch, field_type.size, size, size, size), field_type)


def random_invariant_weights(subgroup: Iterable[int], group: str = "Oh", banks: int = 2) -> torch.Tensor:
    """Random relaxed weights ``(banks, |G|)`` with ``w_l(k^-1 g) = w_l(g)`` for ``k`` in ``subgroup``
    (constant on the right cosets ``H g``): a relaxed layer holding them is equivariant to ``subgroup``."""
    table = groups.cayley_table(group)
    coset = [min(table[k, g] for k in subgroup) for g in range(len(table))]  # representative of H g
    return torch.randn(banks, len(table))[:, coset]
