r"""Relaxed weights ``w_l : G -> R``, learned by their values on the elements and read by their Fourier
blocks (docs/conventions.md, "Relaxed group convolution").

``RelaxedWeights`` holds ``L`` functions on the group by their values ``(L, |G|)`` (Wang et al.'s
parametrisation, with the mean of each function a parameter apart); their coefficients in the
Peter-Weyl basis (one ``d_psi x d_psi`` block per irrep ``psi``) give the layer's mixing, the penalty
and the read-out. The values are the parameters because the group acts on them by permutations,
which commute with an optimiser's per-parameter steps (Adam): trained on data that keep an element,
the weights are driven towards invariance under it from every side. The group acts on a Fourier
block by an orthogonal matrix instead, which per-coordinate steps do not respect: they pull a
block's direction towards the axes of its basis (measured: a y <-> z part of about 0.2 in the defect
of an x-axis quadrupole, the same in every seed, even on exactly D4h-symmetric training data).

Multiplying a field by ``w_l`` acts on any field type through its Fourier embedding ``F``
(:mod:`steerable_sr.nn.fourier`):

    M_rho(w) = F^T diag(w) F            (d x d, one per field representation)

which, on a regular field, is Wang et al.'s pointwise product ``f(g) -> w(g) f(g)`` on the output
element. ``M_rho(w)`` commutes with ``rho(k)`` whenever ``w(k^-1 g) = w(g)``: the layer stays
equivariant exactly to the stabilizer of the weights.

:class:`RelaxedLayerMixin` is the public relaxed-layer API (``relaxed_weights_on_group``,
``set_relaxed_weights_on_group``, ``irrep_energies``, ``equivariance_penalty``) of every layer that
keeps its weights in ``self.relaxed`` (:class:`~steerable_sr.nn.conv.OctahedralConv`,
:class:`~steerable_sr.nn.separable.SeparableGroupConv`); :func:`relaxed_layers` finds such layers
in a module by this class.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..groups import group_order
from .fourier import fourier_embedding, peter_weyl_basis


class RelaxedWeights(torch.nn.Module):
    """``L`` learnable functions on G, initialised to the constant 1 (trivial irrep only).

    Parameters
    ----------
    group : {"Oh", "O"}
    num_filter_banks : int
        ``L >= 1``.

    Attributes
    ----------
    trivial : torch.nn.Parameter
        ``(L,)``: the mean of each bank over the elements.
    deviation : torch.nn.Parameter
        ``(L, |G|)``: each bank's values on the elements (order of ``group_matrices``) minus their mean
        (its own mean is removed in use): the weights are ``trivial + deviation - mean(deviation)``.
        Apart, the mean's gradient does not swamp the deviation's in Adam's per-parameter scaling.

    The Fourier coefficients, grouped by irrep block, are the property :attr:`coefficients`.
    """

    def __init__(self, group: str, num_filter_banks: int):
        super().__init__()
        if not isinstance(num_filter_banks, int) or num_filter_banks < 1:
            raise ValueError(f"num_filter_banks must be an integer >= 1, got {num_filter_banks!r}")
        self.group = group
        phi, blocks = peter_weyl_basis(group)
        self.blocks = blocks
        self.register_buffer("phi", torch.from_numpy(phi.copy()).float(), persistent=False)
        self.trivial = torch.nn.Parameter(torch.ones(num_filter_banks))
        self.deviation = torch.nn.Parameter(torch.zeros(num_filter_banks, len(phi)))

    def _centred(self) -> torch.Tensor:
        return self.deviation - self.deviation.mean(dim=1, keepdim=True)

    @property
    def coefficients(self) -> torch.Tensor:
        """``(L, |G|)``: the Fourier coefficients of the weights, ``on_group() @ phi^T`` (``phi`` is
        orthogonal): ``sqrt(|G|)`` times the mean, then those of the deviation (the non-trivial basis
        functions are orthogonal to constants), exactly zero for constant weights."""
        order = self.deviation.shape[1]
        return torch.cat([self.trivial[:, None] * math.sqrt(order), self._centred() @ self.phi[1:].T], dim=1)

    @property
    def num_filter_banks(self) -> int:
        """``L``."""
        return self.deviation.shape[0]

    def on_group(self) -> torch.Tensor:
        """The weights on the elements, ``(L, |G|)``, in the order of ``group_matrices``."""
        return self.trivial[:, None] + self._centred()

    @torch.no_grad()
    def set_on_group(self, weights: torch.Tensor) -> None:
        """Set the weights from their values on the elements, ``(L, |G|)``."""
        weights = torch.as_tensor(weights, dtype=self.deviation.dtype, device=self.deviation.device)
        expected = tuple(self.deviation.shape)
        if tuple(weights.shape) != expected:
            raise ValueError(f"relaxed weights must have shape (L, |G|) = {expected}, got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all():
            raise ValueError("relaxed weights contain NaN or Inf")
        mean = weights.mean(dim=1, keepdim=True)
        self.trivial.copy_(mean[:, 0])
        self.deviation.copy_(weights - mean)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written when the parameter was the Fourier coefficients.
        if prefix + "coefficients" in state_dict and prefix + "deviation" not in state_dict:
            coefficients = state_dict.pop(prefix + "coefficients")
            phi = self.phi.to(coefficients)
            state_dict[prefix + "trivial"] = coefficients[:, 0] / math.sqrt(coefficients.shape[1])
            state_dict[prefix + "deviation"] = coefficients[:, 1:] @ phi[1:]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def irrep_energies(self) -> dict[str, torch.Tensor]:
        """Per irrep ``psi``: the Frobenius norm of each bank's block ``w_l(psi)``, a tensor ``(L,)``."""
        return {name: self.coefficients[:, block].norm(dim=1) for name, block in self.blocks}

    def penalty(self) -> torch.Tensor:
        """``sum_l sum_{psi != trivial} ||w_l(psi)||``: zero iff every bank is G-invariant."""
        return sum(energy.sum() for name, energy in list(self.irrep_energies().items())[1:])

    def mixing_basis(self, rep) -> np.ndarray:
        """``(|G|, d, d)``: ``T[k] = M_rho(phi_k)``, so that ``M_rho(w_l) = sum_k coefficients[l, k] T[k]``."""
        F = fourier_embedding(rep)
        phi, _ = peter_weyl_basis(self.group)
        return np.einsum("kg,gi,gj->kij", phi, F, F)

    def extra_repr(self) -> str:
        return f"group={self.group}, num_filter_banks={self.num_filter_banks}, |G|={group_order(self.group)}"


class RelaxedLayerMixin:
    """The relaxed-layer API, for a ``torch.nn.Module`` with ``self.relaxed``: a :class:`RelaxedWeights`
    (relaxed layer) or ``None`` (exactly equivariant layer)."""

    relaxed: RelaxedWeights | None

    def _relaxed(self) -> RelaxedWeights:
        if self.relaxed is None:
            raise AttributeError(f"{type(self).__name__} is exactly equivariant and has no relaxed weights")
        return self.relaxed

    def relaxed_weights_on_group(self) -> torch.Tensor:
        """``(L, |G|)``: ``w_l(g)``, indexed like ``steerable_sr.groups.group_matrices``."""
        return self._relaxed().on_group()

    def set_relaxed_weights_on_group(self, weights: torch.Tensor) -> None:
        """Set ``w_l(g)`` from ``(L, |G|)`` values (see :meth:`RelaxedWeights.set_on_group`)."""
        self._relaxed().set_on_group(weights)

    def irrep_energies(self) -> dict[str, torch.Tensor]:
        """Per irrep name: ``||w_l(psi)||`` for each bank, ``(L,)``."""
        return self._relaxed().irrep_energies()

    def equivariance_penalty(self) -> torch.Tensor:
        """Sum of the non-trivial irrep norms of the relaxed weights (0 for an exact layer)."""
        if self.relaxed is None:
            return next(self.parameters()).new_zeros(())
        return self.relaxed.penalty()


def relaxed_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every relaxed convolution in ``module``, ``module`` itself included.

    Parameters
    ----------
    module : torch.nn.Module
        A network or a single layer.

    Returns
    -------
    list of (str, torch.nn.Module)
        ``(name, layer)`` in the order of ``named_modules``, for every :class:`RelaxedLayerMixin`
        with relaxed weights (exactly equivariant layers are left out); the name drops escnn's
        ``.module`` suffix, and a relaxed ``module`` itself is named by its class.
    """
    return [(name.removesuffix(".module") or type(m).__name__, m) for name, m in module.named_modules()
            if isinstance(m, RelaxedLayerMixin) and m.relaxed is not None]


@torch.no_grad()
def hold_at_invariants(module: torch.nn.Module) -> int:
    """Hold the relaxed weights of every relaxed layer in ``module`` at G-invariant functions.

    Each bank's deviation from its mean is set to zero and frozen (``requires_grad=False``); the
    means stay learnable. Every relaxed layer is then ``sum_l w_l K_l`` with constants ``w_l``, an
    exactly equivariant convolution reached through the relaxed layer's parametrisation: the
    control that tells what a relaxed network gains by breaking the symmetry from what it gains by
    its parametrisation. Optimisers skip the frozen deviations (their gradient is ``None``), so they
    stay zero through training; loading a state dict replaces them like any other parameter.

    Parameters
    ----------
    module : torch.nn.Module
        A network or a single layer.

    Returns
    -------
    int
        The number of relaxed layers held (0 for an exactly equivariant ``module``).
    """
    layers = relaxed_layers(module)
    for _, layer in layers:
        layer.relaxed.deviation.zero_()
        layer.relaxed.deviation.requires_grad_(False)
    return len(layers)
