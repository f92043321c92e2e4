r"""Reading the learned symmetry breaking off relaxed layers.

A relaxed layer with weights ``w_l : G -> R`` is equivariant exactly to the stabilizer

    H = { k in G : w_l(k^-1 g) = w_l(g) for every g and every bank l }

(``docs/conventions.md``, "Relaxed group convolution"). :func:`stabilizer` computes H over every
relaxed layer of a module (indices into ``steerable_sr.groups.group_matrices``);
:func:`subgroup_name` names the well-known subgroups of O_h (e.g. "D4h, axis x", "D3d, diagonal
(1,1,1)"); :func:`symmetry_report` gathers, per layer, the per-irrep energies ``||w_l(psi)||`` and
the stabilizer.

**Robust criterion (the default).** Learned relaxed weights are never exactly invariant: Adam moves
every Fourier block a little, whatever the data (measured with penalty weight 1e-3, lr 2e-3,
``docs/results.md``: block significance ``s`` below 2e-4 after 240 steps on O_h-symmetrised data,
up to 1.4e-3 in blocks unrelated to the data's breaking; without a penalty the noise random-walks
to ``s ~ 1e-2`` in 240 steps, and no threshold separates it: the criterion is for penalised
training). So the read-out

1. computes, per layer and bank ``l``, each irrep block's *significance*
   ``s_l(psi) = ||w_l(psi)|| / (d_psi |w_l(A1g)|)`` (per-entry rms of the block relative to the
   trivial coefficient: white noise gives the same ``s`` in every block, whatever ``d_psi``), and
   keeps only the blocks with ``s > block_tol`` (``BLOCK_TOL``) as the layer's symmetry breaking
   ``v_l``; a model without any significant block is exactly equivariant (the whole group);
2. measures, per element ``k``, the *invariance defect* of what is left, pooled over layers after
   normalising each by its trivial part ``||m_l||`` (``r_l = v_l / ||m_l||``):
   ``d_k^2 = sum_l ||r_l(k^-1 .) - r_l||^2 / (2 sum_l ||r_l||^2)``: 0 for a symmetry of the
   weights, about 1 for an element that they do not respect (random ``v``: ``E d_k^2 = 1``; a
   quadrupole along x turned onto y: ``d_k = sqrt(3/2)``); ``k`` is kept when
   ``d_k <= defect_tol`` (``DEFECT_TOL = 0.5``, halfway between the two). If the kept elements do
   not form a group, the largest named subgroup inside them is reported. For a breaking in one
   irrep the defect is geometric: an ``Eg`` vector at angle ``theta`` from the x quadrupole
   ``3x^2 - r^2`` (towards ``y^2 - z^2``) has ``d = sqrt(2) sin(theta)`` for the elements of D4h
   that swap y and z, so the threshold reads "D4h about x" up to ``theta = 21`` degrees.

The report also gives each layer's *breaking ratio* ``||v|| / ||m||`` over all its non-trivial
blocks (``m`` the group mean, ``v = w - m``), significant or not.

``tol`` (the former criterion, kept for compatibility): when given, ``k`` is kept iff
``max |w_l(k^-1 g) - w_l(g)| <= tol * max |w|`` — right for weights that were *set* invariant, far
too strict for trained ones.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .groups import cayley_table, group_order, inverses, largest_subgroup_in, subgroup_name
from .nn.relaxed import relaxed_layers


#: Significance ``||w_l(psi)|| / (d_psi |w_l(A1g)|)`` above which an irrep block counts as symmetry breaking.
BLOCK_TOL = 3e-3
#: Relative invariance defect ``d_k`` up to which an element counts as a symmetry of the weights:
#: halfway between an exact symmetry (0) and an unrelated element (about 1).
DEFECT_TOL = 0.5


def _weights_np(weights) -> np.ndarray:
    w = np.asarray(torch.as_tensor(weights).detach().cpu().double())
    return w[None] if w.ndim == 1 else w


def _split_weights(w: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(v, ||m||, ||v||)``: the non-trivial part and the norms of the trivial and non-trivial parts."""
    m = w.mean(axis=1, keepdims=True)
    v = w - m
    return v, float(np.sqrt((m ** 2).sum() * w.shape[1])), float(np.linalg.norm(v))


def _defect_sq(v: np.ndarray, group: str) -> np.ndarray:
    """``||v(k^-1 .) - v||^2`` for every element ``k`` (shape ``(|G|,)``)."""
    table, inv = cayley_table(group), inverses(group)
    return np.array([((v[:, table[inv[k]]] - v) ** 2).sum() for k in range(table.shape[0])])


def block_significance(weights, group: str = "Oh") -> dict[str, np.ndarray]:
    """Per non-trivial irrep: ``s_l(psi) = ||w_l(psi)|| / (d_psi |w_l(A1g)|)`` for each bank, ``(L,)``."""
    from .nn.fourier import peter_weyl_basis

    phi, blocks = peter_weyl_basis(group)
    c = _weights_np(weights) @ phi.T
    trivial = np.abs(c[:, blocks[0][1]]).max(axis=1).clip(min=1e-30)
    return {name: np.linalg.norm(c[:, sl], axis=1) / (math.isqrt(sl.stop - sl.start) * trivial)
            for name, sl in blocks[1:]}


def significant_part(weights, group: str = "Oh", block_tol: float | None = None) -> np.ndarray:
    """``v``: the non-trivial blocks with significance above ``block_tol`` (others zeroed), on G."""
    from .nn.fourier import peter_weyl_basis

    block_tol = BLOCK_TOL if block_tol is None else block_tol
    phi, blocks = peter_weyl_basis(group)
    c = _weights_np(weights) @ phi.T
    trivial = np.abs(c[:, blocks[0][1]]).max(axis=1).clip(min=1e-30)
    keep = np.zeros_like(c)
    for _, sl in blocks[1:]:
        sig = np.linalg.norm(c[:, sl], axis=1) / (math.isqrt(sl.stop - sl.start) * trivial)
        keep[sig > block_tol, sl] = c[sig > block_tol, sl]
    return keep @ phi


@dataclass
class BreakingMeasure:
    """The robust read-out of a set of relaxed weights (one layer or a pooled model)."""

    ratio: float  # ||v|| / ||m||: non-trivial over trivial energy, every block
    significance: float  # the largest block significance s_l(psi)
    defects: list[float]  # d_k per element k, of the significant blocks (0 if there are none)


def breaking_measure(weights_list, group: str = "Oh", block_tol: float | None = None) -> BreakingMeasure:
    """Breaking ratio, largest block significance and per-element invariance defects of one layer's
    weights ``(L, |G|)`` or of several layers' (a list), pooled as in the module docstring."""
    if not isinstance(weights_list, (list, tuple)):
        weights_list = [weights_list]
    order = group_order(group)
    num, den, ratios, sig = np.zeros(order), 0.0, [], 0.0
    for weights in weights_list:
        w = _weights_np(weights)
        _, m_norm, v_norm = _split_weights(w)
        scale = max(m_norm, 1e-30)
        ratios.append((v_norm / scale) ** 2)
        sig = max(sig, max(float(s.max()) for s in block_significance(w, group).values()))
        v = significant_part(w, group, block_tol)
        num += _defect_sq(v, group) / scale ** 2
        den += 2 * (v ** 2).sum() / scale ** 2
    ratio = float(np.sqrt(np.mean(ratios))) if ratios else 0.0
    defects = np.sqrt(num / den) if den > 0 else np.zeros(order)
    return BreakingMeasure(ratio, sig, [float(d) for d in defects])


def robust_stabilizer(weights_list, group: str = "Oh", block_tol: float | None = None,
                      defect_tol: float | None = None) -> list[int]:
    """The stabilizer by the robust criterion (module docstring) of one layer's weights or a list."""
    block_tol = BLOCK_TOL if block_tol is None else block_tol
    defect_tol = DEFECT_TOL if defect_tol is None else defect_tol
    measure = breaking_measure(weights_list, group, block_tol)
    if measure.significance <= block_tol:
        return list(range(len(measure.defects)))
    return largest_subgroup_in({k for k, d in enumerate(measure.defects) if d <= defect_tol}, group)


def consensus_stabilizer(stabilizers, group: str = "Oh") -> list[int]:
    """The symmetry kept by most of several runs (e.g. seeds): the elements that more than half of
    the ``stabilizers`` (lists of element indices) contain; if these do not form a group, the
    largest named subgroup inside them (as in the robust criterion)."""
    stabilizers = [set(int(k) for k in stab) for stab in stabilizers]
    if not stabilizers:
        raise ValueError("consensus_stabilizer needs at least one stabilizer")
    votes = np.zeros(group_order(group), dtype=int)
    for stab in stabilizers:
        votes[sorted(stab)] += 1
    return largest_subgroup_in({k for k, v in enumerate(votes) if 2 * v > len(stabilizers)}, group)


def weight_stabilizer(weights: torch.Tensor | np.ndarray, group: str = "Oh", tol: float | None = None,
                      block_tol: float | None = None, defect_tol: float | None = None) -> list[int]:
    """Stabilizer of weights ``(L, |G|)``: the robust criterion, or with ``tol`` the strict one
    (``max_{l,g} |w_l(k^-1 g) - w_l(g)| <= tol * max |w|``)."""
    if tol is None:
        return robust_stabilizer(weights, group, block_tol, defect_tol)
    w = _weights_np(weights)
    table, inv = cayley_table(group), inverses(group)
    scale = max(np.abs(w).max(), 1e-30)
    return [k for k in range(table.shape[0]) if np.abs(w[:, table[inv[k]]] - w).max() <= tol * scale]


def stabilizer(module: torch.nn.Module, tol: float | None = None, block_tol: float | None = None,
               defect_tol: float | None = None) -> list[int]:
    """Elements (indices into ``group_matrices``) that the relaxed weights of ``module`` keep.

    Default: the robust criterion over all relaxed layers pooled (module docstring). With ``tol``:
    the strict criterion, per layer, intersected. A module without relaxed layers is exactly
    equivariant: the whole group."""
    layers = relaxed_layers(module)
    if not layers:
        group = getattr(getattr(module, "config", None), "group", "Oh")
        return list(range(group_order(group)))
    group = layers[0][1].group
    with torch.no_grad():
        weights = [layer.relaxed_weights_on_group() for _, layer in layers]
    if tol is None:
        return robust_stabilizer(weights, group, block_tol, defect_tol)
    common = None
    for w in weights:
        stab = set(weight_stabilizer(w, group, tol))
        common = stab if common is None else common & stab
    return sorted(common)


@dataclass
class LayerSymmetry:
    layer: str
    irrep_energies: dict[str, list[float]]
    stabilizer_order: int
    stabilizer_name: str
    breaking_ratio: float = float("nan")  # ||v|| / ||m|| of this layer (robust criterion)
    significance: float = float("nan")  # largest block significance s_l(psi) of this layer


@dataclass
class SymmetryReport:
    """Per relaxed layer: irrep energies ``||w_l(psi)||`` per bank, the layer's stabilizer; and the
    stabilizer of the whole model (the symmetry the model kept)."""

    group: str
    layers: list[LayerSymmetry] = field(default_factory=list)
    stabilizer: list[int] = field(default_factory=list)
    stabilizer_name: str = ""
    criterion: str = ""
    breaking_ratio: float = float("nan")  # pooled over layers
    significance: float = float("nan")  # largest block significance over layers
    defects: list[float] = field(default_factory=list)  # pooled d_k per element
    gap: dict[str, float] = field(default_factory=dict)  # max d_k inside, min d_k outside the stabilizer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SymmetryReport":
        """The inverse of :meth:`to_dict` (e.g. a report read back from JSON)."""
        return cls(**{**data, "layers": [LayerSymmetry(**layer) for layer in data.get("layers", [])]})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        irreps = list(self.layers[0].irrep_energies) if self.layers else []
        lines = [f"Kept symmetry: **{self.stabilizer_name}** (order {len(self.stabilizer)} of {self.group})", ""]
        if self.criterion:
            line = (f"Criterion: {self.criterion}; largest block significance {self.significance:.3g}, pooled "
                    f"breaking ratio ||v||/||m|| = {self.breaking_ratio:.3g}")
            if self.gap:
                line += (f"; invariance defect d_k: max {self.gap['inside']:.3g} inside the stabilizer, "
                         f"min {self.gap['outside']:.3g} outside" if self.gap.get("outside") is not None else
                         f"; invariance defect d_k: max {self.gap['inside']:.3g}")
            lines += [line + ".", ""]
        lines += ["| layer | " + " | ".join(irreps) + " | ratio | max s | stabilizer |",
                  "| --- |" + " ---: |" * (len(irreps) + 2) + " --- |"]
        for layer in self.layers:
            cells = [" / ".join(f"{v:.3g}" for v in layer.irrep_energies[name]) for name in irreps]
            lines.append(f"| {layer.layer} | " + " | ".join(cells) + f" | {layer.breaking_ratio:.3g} | {layer.significance:.3g} | "
                         f"{layer.stabilizer_name} ({layer.stabilizer_order}) |")
        return "\n".join(lines)


def symmetry_report(model: torch.nn.Module, tol: float | None = None, block_tol: float | None = None,
                    defect_tol: float | None = None) -> SymmetryReport:
    """The symmetry read-out of ``model``'s relaxed layers (see :class:`SymmetryReport`); the robust
    criterion by default, the strict one with ``tol`` (module docstring)."""
    layers = relaxed_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no relaxed layers: it is exactly equivariant by construction")
    group = layers[0][1].group
    report = SymmetryReport(group=group)
    weights = []
    with torch.no_grad():
        for name, layer in layers:
            w = layer.relaxed_weights_on_group()
            weights.append(w)
            stab = weight_stabilizer(w, group, tol, block_tol, defect_tol)
            energies = {k: [round(float(v), 6) for v in e] for k, e in layer.irrep_energies().items()}
            measure = breaking_measure(w, group, block_tol)
            report.layers.append(LayerSymmetry(name, energies, len(stab), subgroup_name(stab, group), measure.ratio,
                                               measure.significance))
    report.stabilizer = stabilizer(model, tol, block_tol, defect_tol)
    report.stabilizer_name = subgroup_name(report.stabilizer, group)
    pooled = breaking_measure(weights, group, block_tol)
    report.breaking_ratio = pooled.ratio
    report.significance = pooled.significance
    report.defects = pooled.defects
    inside = [d for k, d in enumerate(pooled.defects) if k in set(report.stabilizer)]
    outside = [d for k, d in enumerate(pooled.defects) if k not in set(report.stabilizer)]
    report.gap = {"inside": max(inside) if inside else 0.0, "outside": min(outside) if outside else None}
    if tol is None:
        e = BLOCK_TOL if block_tol is None else block_tol
        d = DEFECT_TOL if defect_tol is None else defect_tol
        report.criterion = (f"robust (irrep blocks with significance s > {e:g} break the symmetry; keep k with "
                            f"d_k <= {d:g})")
    else:
        report.criterion = f"strict (max |w(k^-1 g) - w(g)| <= {tol:g} max |w|)"
    return report
