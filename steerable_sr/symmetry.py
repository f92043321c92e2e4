r"""Reading the learned symmetry breaking off relaxed layers, with a statistical basis.

A relaxed layer with weights ``w_l : G -> R`` is equivariant exactly to the stabilizer

    H = { k in G : w_l(k^-1 g) = w_l(g) for every g and every bank l }

(``docs/conventions.md``, "Relaxed group convolution"). Trained weights are never exactly
invariant: the optimiser moves every Fourier block a little, whatever the data. So each element
``k`` is decided from how much the weights break it *and* from how much of that the weights' own
noise could explain (the criterion, with its reasoning, is in ``docs/conventions.md``, "Reading the
kept symmetry"):

1. **Coefficients.** Per layer, the weights' Fourier coefficients in the Peter-Weyl basis
   (:func:`steerable_sr.nn.fourier.peter_weyl_basis`), divided by the norm ``||m||`` of the
   trivial (``A1g``) coefficients of all banks: ``x = c / ||m||``.
2. **Noise.** Per layer, the per-entry noise ``sigma`` of the non-trivial coefficients
   (:func:`noise_level`): most blocks carry no breaking, so the median over the layer's blocks and
   banks of ``||x_psi||^2 / median(chi^2_{d_psi^2})`` estimates ``sigma^2`` robustly; it is at most
   :data:`BLOCK_TOL` relative to the trivial coefficient (a block larger than the optimiser's noise
   under the penalty is never noise).
3. **Significant blocks** (:func:`significant_blocks`): an irrep block of a bank is symmetry breaking
   when its *significance* ``s = ||w_l(psi)|| / (d_psi |w_l(A1g)|)`` (per-entry rms relative to the
   trivial coefficient, :func:`block_significance`) exceeds :data:`BLOCK_TOL` *and* it stands out of
   the layer's noise: ``||x_psi||^2 / sigma^2`` above the ``1 - alpha / n`` quantile of
   ``chi^2_{d_psi^2}`` (``n``: the layer's blocks). Other blocks are set to zero. A model without
   any significant block is equivariant to the whole group.
4. **Defects.** Per element, the *invariance defect* of the significant part, pooled over layers
   (``x_S``; ``T_k``: the left translation ``w -> w(k^-1 .)`` in coefficient space, orthogonal and
   block diagonal): ``d_k^2 = N_k / (2 E)`` with ``N_k = sum_l ||x_S (T_k - 1)||^2`` and
   ``E = sum_l ||x_S||^2``: 0 for a symmetry of the weights, about 1 for an element they do not
   respect.
5. **Uncertainty.** Were ``k`` a symmetry of the weights up to their noise, ``N_k`` would be
   ``||n (T_k - 1)||^2`` for white noise ``n`` of per-entry variance ``sigma_l^2`` on the
   significant blocks: a quadratic form of Gaussians with mean ``sum sigma_l^2 tr(M)`` and variance
   ``2 sum sigma_l^4 tr(M^2)``, ``M = (T_k - 1)(T_k - 1)^T`` per block, approximated by a scaled
   chi-square of the same two moments (exact for involutions). ``r_k = sqrt(q_k / (2 E))``, with
   ``q_k`` its ``1 - alpha`` quantile (:data:`ALPHA`), is the defect that noise alone reaches with
   probability ``alpha``.
6. **Decision.** ``k`` is *broken* when ``d_k > r_k`` (and above round-off, :data:`ROUNDOFF`): its
   breaking stands out of the noise; *kept* when not broken and ``d_k + r_k <= defect_tol``
   (:data:`DEFECT_TOL`): whatever breaking the noise may hide is small; *undecided* otherwise (the
   noise is too large to tell). The read-out names the largest subgroup of the kept elements
   (*kept with confidence*, the stabilizer) and the largest subgroup without a broken element (*at
   most*): the symmetry of the weights lies between the two.

7. **Calibration** (optional, :func:`direction_noise`). The white noise of step 5 is the noise of the
   blocks that carry no breaking; a significant block's *direction* wanders more (its coefficients
   get gradient from the data). Modelled as noise of per-entry rms ``kappa`` times the block's own
   per-entry rms, ``kappa`` is measured on runs whose data keep a known subgroup exactly (the
   symmetrised control of ``discover``): there ``N_k`` of every element ``k`` of the subgroup is noise,
   and ``kappa^2 = sum N_k / sum m_k`` (``m_k``: the mean of ``N_k`` under unit ``kappa``), an
   estimate with ``nu`` degrees of freedom (the exact two moments of ``sum_k N_k``). With it, ``r_k``
   is the larger of the white-noise quantile and ``kappa^2 m_k F_{1 - alpha}(f_k, nu)``, ``f_k`` the
   degrees of freedom of ``N_k``: the ratio of the element's noise to the estimate is F-distributed,
   so an estimate from few runs widens the quantile, as Student's t does.

Every layer is read alike, so pooling many layers sharpens the read-out and a layer of pure noise,
however large its blocks, adds none of its noise to the decisions. The report also gives each
layer's *breaking ratio* ``||v|| / ||m||`` over all its non-trivial blocks (``m`` the group mean,
``v = w - m``), significant or not.

With ``tol`` (the strict criterion), ``k`` is kept iff ``max |w_l(k^-1 g) - w_l(g)| <= tol * max |w|``
in every layer: right for weights that were *set* invariant, too strict for trained ones.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import stats

from .groups import cayley_table, element_label, group_order, inverses, largest_subgroup_in, subgroup_name
from .nn.fourier import peter_weyl_basis
from .nn.relaxed import relaxed_layers

#: Significance ``||w_l(psi)|| / (d_psi |w_l(A1g)|)`` a block needs to count as symmetry breaking, and
#: the largest per-entry noise of the coefficients relative to the trivial one.
BLOCK_TOL = 3e-3
#: The largest invariance defect an element may keep, with its uncertainty, to count as kept:
#: halfway between an exact symmetry (0) and an unrelated element (about 1).
DEFECT_TOL = 0.5
#: Probability that noise alone makes a block significant or an element broken.
ALPHA = 1e-3
#: Defects below this are round-off (relaxed weights are stored in float32).
ROUNDOFF = 1e-6
#: The decisions on an element.
DECISIONS = ("kept", "broken", "undecided")


def _weights_np(weights) -> np.ndarray:
    w = np.asarray(torch.as_tensor(weights).detach().cpu().double())
    return w[None] if w.ndim == 1 else w


def _normalised_coefficients(w: np.ndarray, group: str) -> np.ndarray:
    """``x = c / ||m||``, ``(L, |G|)``: the Fourier coefficients of the banks over the norm of their
    trivial coefficients."""
    phi, blocks = peter_weyl_basis(group)
    c = w @ phi.T
    return c / max(float(np.linalg.norm(c[:, blocks[0][1]])), 1e-30)


@functools.lru_cache(maxsize=None)
def _translations(group: str) -> np.ndarray:
    """``T[k]``, ``(|G|, |G|, |G|)``: the left translation ``w -> w(k^-1 .)`` on coefficients,
    ``x -> x @ T[k]``."""
    phi, _ = peter_weyl_basis(group)
    table, inv = cayley_table(group), inverses(group)
    out = np.stack([phi[:, table[inv[k]]] @ phi.T for k in range(len(phi))])
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=None)
def _set_traces(group: str, elements: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``tr(A)`` and ``tr(A^2)`` of ``A = sum_k M_k``, ``M_k = (T_k - 1)(T_k - 1)^T``, over ``elements``
    on each block, ``(blocks,)`` each: the mean and half the variance of ``sum_k ||n (T_k - 1)||^2`` on
    a block of unit white noise."""
    _, blocks = peter_weyl_basis(group)
    T = _translations(group)
    t1, t2 = np.zeros(len(blocks)), np.zeros(len(blocks))
    for j, (_, sl) in enumerate(blocks):
        eye = np.eye(sl.stop - sl.start)
        A = sum((T[k][sl, sl] - eye) @ (T[k][sl, sl] - eye).T for k in elements)
        t1[j], t2[j] = np.trace(A), np.trace(A @ A)
    return t1, t2


@functools.lru_cache(maxsize=None)
def _odd_traces(group: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_set_traces` of each single element, ``(|G|, blocks)`` each."""
    t1, t2 = zip(*(_set_traces(group, (k,)) for k in range(group_order(group))))
    return np.stack(t1), np.stack(t2)


def block_significance(weights, group: str = "Oh") -> dict[str, np.ndarray]:
    """The significance of each non-trivial irrep block of each bank.

    Parameters
    ----------
    weights : array_like
        ``(L, |G|)`` relaxed weights on the elements (or ``(|G|,)``).
    group : {"Oh", "O"}

    Returns
    -------
    dict of str to numpy.ndarray
        Per non-trivial irrep ``psi``, ``(L,)``: ``s_l(psi) = ||w_l(psi)|| / (d_psi |w_l(A1g)|)``,
        the per-entry rms of the block relative to the trivial coefficient (white noise gives the
        same ``s`` in every block, whatever ``d_psi``). Invariant under the group's action on ``w``.
    """
    phi, blocks = peter_weyl_basis(group)
    c = _weights_np(weights) @ phi.T
    trivial = np.abs(c[:, blocks[0][1]]).max(axis=1).clip(min=1e-30)
    return {name: np.linalg.norm(c[:, sl], axis=1) / (math.isqrt(sl.stop - sl.start) * trivial)
            for name, sl in blocks[1:]}


def noise_level(weights, group: str = "Oh") -> float:
    """The per-entry noise ``sigma`` of a layer's non-trivial coefficients ``x = c / ||m||``.

    Parameters
    ----------
    weights : array_like
        ``(L, |G|)`` relaxed weights of one layer.
    group : {"Oh", "O"}

    Returns
    -------
    float
        ``sqrt(median ||x_psi||^2 / median(chi^2_{d_psi^2}))`` over the non-trivial blocks and banks
        (module docstring, step 2), at most ``BLOCK_TOL / sqrt(L)`` (:data:`BLOCK_TOL` relative to
        each bank's trivial coefficient).
    """
    w = _weights_np(weights)
    _, blocks = peter_weyl_basis(group)
    x = _normalised_coefficients(w, group)
    scaled = [(x[:, sl] ** 2).sum(axis=1) / stats.chi2.median(sl.stop - sl.start) for _, sl in blocks[1:]]
    return min(math.sqrt(float(np.median(np.concatenate(scaled)))), BLOCK_TOL / math.sqrt(len(w)))


def significant_blocks(weights, group: str = "Oh", block_tol: float | None = None,
                       alpha: float | None = None) -> np.ndarray:
    """Which irrep blocks of a layer break the symmetry (module docstring, step 3).

    Parameters
    ----------
    weights : array_like
        ``(L, |G|)`` relaxed weights of one layer.
    group : {"Oh", "O"}
    block_tol : float, optional
        Least significance (default :data:`BLOCK_TOL`).
    alpha : float, optional
        Probability that a block of pure noise passes, over all the layer's blocks (default
        :data:`ALPHA`).

    Returns
    -------
    numpy.ndarray
        ``(L, number of irreps)`` bool, in the order of the Peter-Weyl blocks; the trivial block is
        never significant.
    """
    block_tol = BLOCK_TOL if block_tol is None else block_tol
    alpha = ALPHA if alpha is None else alpha
    w = _weights_np(weights)
    _, blocks = peter_weyl_basis(group)
    x = _normalised_coefficients(w, group)
    sigma2 = noise_level(w, group) ** 2
    significance = block_significance(w, group)
    tests = w.shape[0] * (len(blocks) - 1)
    out = np.zeros((w.shape[0], len(blocks)), dtype=bool)
    for j, (name, sl) in enumerate(blocks[1:], start=1):
        above_noise = (x[:, sl] ** 2).sum(axis=1) > sigma2 * stats.chi2.ppf(1 - alpha / tests, sl.stop - sl.start)
        out[:, j] = (significance[name] > block_tol) & above_noise
    return out


@dataclass
class BreakingMeasure:
    """The read-out of a set of relaxed weights: one layer, or several pooled (module docstring).

    Attributes
    ----------
    group : str
    ratio : float
        ``||v|| / ||m||``: non-trivial over trivial energy, every block, rms over layers.
    significance : float
        The largest block significance.
    defects : list of float
        ``d_k`` per element (0 if no block is significant).
    uncertainty : list of float
        ``r_k`` per element: the defect that noise alone reaches with probability ``alpha``.
    noise : list of float
        ``sigma`` per layer (:func:`noise_level`).
    decisions : list of str
        Per element, one of :data:`DECISIONS`.
    direction_noise : DirectionNoise or None
        The direction noise the uncertainty includes, if any.
    """

    group: str
    ratio: float
    significance: float
    defects: list[float]
    uncertainty: list[float]
    noise: list[float]
    decisions: list[str]
    direction_noise: DirectionNoise | None = None

    def kept_subgroup(self) -> list[int]:
        """The largest subgroup of the kept elements: the symmetry kept with confidence."""
        return largest_subgroup_in({k for k, d in enumerate(self.decisions) if d == "kept"}, self.group)

    def unbroken_subgroup(self) -> list[int]:
        """The largest subgroup without a broken element: the most the weights may keep."""
        return largest_subgroup_in({k for k, d in enumerate(self.decisions) if d != "broken"}, self.group)


@dataclass(frozen=True)
class DirectionNoise:
    """The direction noise of significant blocks, measured on runs whose data keep a known subgroup
    (:func:`direction_noise`).

    Attributes
    ----------
    kappa : float
        Per-entry rms of a significant block's noise relative to the block's own per-entry rms.
    dof : float
        Degrees of freedom of the estimate ``kappa^2`` (a scaled chi-square of the same two moments):
        few runs or blocks give few, and the noise quantiles widen accordingly.
    """

    kappa: float
    dof: float


@dataclass
class _Moments:
    """What the read-out of one layer or several pooled needs (module docstring, steps 2-5)."""

    odd: np.ndarray  # N_k, (|G|,)
    energy: float  # E
    white: tuple[np.ndarray, np.ndarray]  # mean and variance of N_k under the layers' white noise
    block_rms2: tuple[np.ndarray, np.ndarray]  # per irrep block: sum over banks of rms^2 and of rms^4
    ratios: list[float]
    significance: float
    noise: list[float]


def _moments(weights_list, group: str, block_tol: float | None, alpha: float) -> _Moments:
    _, blocks = peter_weyl_basis(group)
    T, (t1, t2) = _translations(group), _odd_traces(group)
    order = group_order(group)
    odd, energy = np.zeros(order), 0.0
    white_mean, white_var = np.zeros(order), np.zeros(order)
    rms2_sum, rms4_sum = np.zeros(len(blocks)), np.zeros(len(blocks))
    ratios, significance, noise = [], 0.0, []
    for weights in weights_list:
        w = _weights_np(weights)
        x = _normalised_coefficients(w, group)
        ratios.append(float((x[:, blocks[0][1].stop:] ** 2).sum()))
        significance = max(significance, max(float(s.max()) for s in block_significance(w, group).values()))
        sigma = noise_level(w, group)
        noise.append(sigma)
        mask = significant_blocks(w, group, block_tol, alpha)
        xs = np.zeros_like(x)
        rms2 = np.zeros(mask.shape)  # per-entry mean square of each significant block
        for j, (_, sl) in enumerate(blocks):
            xs[mask[:, j], sl] = x[mask[:, j], sl]
            rms2[:, j] = (xs[:, sl] ** 2).sum(axis=1) / (sl.stop - sl.start)
        odd += ((np.einsum("li,kij->klj", xs, T) - xs) ** 2).sum(axis=(1, 2))
        energy += float((xs ** 2).sum())
        counts = mask.sum(axis=0)
        white_mean += sigma ** 2 * t1 @ counts
        white_var += 2 * sigma ** 4 * t2 @ counts
        rms2_sum += rms2.sum(axis=0)
        rms4_sum += (rms2 ** 2).sum(axis=0)
    return _Moments(odd, energy, (white_mean, white_var), (rms2_sum, rms4_sum), ratios, significance, noise)


def _quantile(mean: np.ndarray, var: np.ndarray, alpha: float, estimate_dof: float | None = None) -> np.ndarray:
    """The ``1 - alpha`` quantile of a non-negative quadratic form of Gaussians with these moments: a
    scaled chi-square of the same mean and variance, ``f`` degrees of freedom (0 where the mean is 0).
    With ``estimate_dof``, the noise's scale is itself an estimate of that many degrees of freedom,
    and the form over it is F-distributed: ``mean * F_{1 - alpha}(f, estimate_dof)``."""
    out = np.zeros_like(mean)
    noisy = mean > 0
    dof = 2 * mean[noisy] ** 2 / var[noisy]
    ratio = (stats.chi2.ppf(1 - alpha, dof) / dof if estimate_dof is None
             else stats.f.ppf(1 - alpha, dof, estimate_dof))
    out[noisy] = mean[noisy] * ratio
    return out


def breaking_measure(weights_list, group: str = "Oh", block_tol: float | None = None,
                     defect_tol: float | None = None, alpha: float | None = None,
                     direction_noise: DirectionNoise | None = None) -> BreakingMeasure:
    """The read-out of one layer's relaxed weights or of several layers' pooled (module docstring).

    Parameters
    ----------
    weights_list : array_like or list of array_like
        ``(L, |G|)`` weights of one layer, or a list of them (banks may differ between layers).
    group : {"Oh", "O"}
    block_tol : float, optional
        Least block significance (default :data:`BLOCK_TOL`).
    defect_tol : float, optional
        Largest defect with uncertainty of a kept element (default :data:`DEFECT_TOL`).
    alpha : float, optional
        Probability that noise alone makes a block significant or an element broken (default
        :data:`ALPHA`).
    direction_noise : DirectionNoise, optional
        Measured on runs whose data keep a known subgroup (:func:`direction_noise`): ``r_k`` is then
        the larger of the white-noise quantile and the quantile under noise of per-entry rms ``kappa``
        times each significant block's own, with the estimate's own spread (module docstring, step 7).

    Returns
    -------
    BreakingMeasure
        The decisions are invariant under conjugation: weights moved by an element ``g``,
        ``w(g^-1 .)``, give each ``g k g^-1`` the decision of ``k``.
    """
    defect_tol = DEFECT_TOL if defect_tol is None else defect_tol
    alpha = ALPHA if alpha is None else alpha
    if not isinstance(weights_list, (list, tuple)):
        weights_list = [weights_list]
    order = group_order(group)
    m = _moments(weights_list, group, block_tol, alpha)
    ratio = math.sqrt(float(np.mean(m.ratios))) if m.ratios else 0.0
    if m.energy == 0:
        return BreakingMeasure(group, ratio, m.significance, [0.0] * order, [0.0] * order, m.noise,
                               ["kept"] * order, direction_noise)
    quantile = _quantile(*m.white, alpha)
    if direction_noise is not None:
        (t1, t2), (rms2, rms4), kappa2 = _odd_traces(group), m.block_rms2, direction_noise.kappa ** 2
        wander = _quantile(kappa2 * t1 @ rms2, 2 * kappa2 ** 2 * t2 @ rms4, alpha, direction_noise.dof)
        quantile = np.maximum(quantile, wander)
    defects, uncertainty = np.sqrt(m.odd / (2 * m.energy)), np.sqrt(quantile / (2 * m.energy))
    broken = defects > np.maximum(uncertainty, ROUNDOFF)
    kept = ~broken & (defects + uncertainty <= defect_tol)
    decisions = np.where(broken, "broken", np.where(kept, "kept", "undecided")).tolist()
    return BreakingMeasure(group, ratio, m.significance, defects.tolist(), uncertainty.tolist(), m.noise, decisions,
                           direction_noise)


def direction_noise(runs: Sequence, symmetric: Iterable[int], group: str = "Oh", block_tol: float | None = None,
                    alpha: float | None = None) -> DirectionNoise | None:
    """How far the directions of significant blocks wander in training, measured where the answer is known.

    Parameters
    ----------
    runs : sequence of list of array_like
        Per run, the ``(L, |G|)`` weights of its relaxed layers; the runs were trained on data that
        the elements ``symmetric`` keep exactly (e.g. batches symmetrised by them, the control of
        ``discover``).
    symmetric : iterable of int
        Element indices.
    group : {"Oh", "O"}
    block_tol, alpha : float, optional
        Of the significant blocks (:func:`significant_blocks`).

    Returns
    -------
    DirectionNoise or None
        ``kappa^2 = sum N_k / sum m_k`` over the runs and the elements ``k`` of ``symmetric``, with
        ``m_k`` the mean of ``N_k`` under unit ``kappa`` (module docstring, step 7); its degrees of
        freedom from the exact mean and variance of ``sum_k N_k`` under that noise. ``None`` when
        those elements act trivially on every significant block (they measure nothing) or no block is
        significant.
    """
    alpha = ALPHA if alpha is None else alpha
    symmetric = tuple(sorted(set(int(k) for k in symmetric)))
    a1, a2 = _set_traces(group, symmetric)
    odd = mean = var = energy = 0.0
    for weights_list in runs:
        m = _moments(list(weights_list), group, block_tol, alpha)
        rms2, rms4 = m.block_rms2
        odd += float(m.odd[list(symmetric)].sum())
        mean += float(a1 @ rms2)
        var += float(2 * a2 @ rms4)
        energy += m.energy
    if energy == 0 or mean <= 1e-9 * energy:
        return None
    return DirectionNoise(math.sqrt(odd / mean), 2 * mean ** 2 / var)


def robust_stabilizer(weights_list, group: str = "Oh", block_tol: float | None = None,
                      defect_tol: float | None = None, alpha: float | None = None) -> list[int]:
    """The symmetry kept with confidence by one layer's weights or a list (:func:`breaking_measure`):
    element indices, the whole group when no block is significant."""
    return breaking_measure(weights_list, group, block_tol, defect_tol, alpha).kept_subgroup()


def consensus_stabilizer(stabilizers, group: str = "Oh") -> list[int]:
    """The symmetry kept by most of several runs (e.g. seeds).

    Parameters
    ----------
    stabilizers : iterable of iterable of int
        Element indices kept by each run.
    group : {"Oh", "O"}

    Returns
    -------
    list of int
        The elements that more than half of the runs keep if they form a group, else the largest
        named subgroup inside them.
    """
    stabilizers = [set(int(k) for k in stab) for stab in stabilizers]
    if not stabilizers:
        raise ValueError("consensus_stabilizer needs at least one stabilizer")
    votes = np.zeros(group_order(group), dtype=int)
    for stab in stabilizers:
        votes[sorted(stab)] += 1
    return largest_subgroup_in({k for k, v in enumerate(votes) if 2 * v > len(stabilizers)}, group)


def weight_stabilizer(weights: torch.Tensor | np.ndarray, group: str = "Oh", tol: float | None = None,
                      block_tol: float | None = None, defect_tol: float | None = None) -> list[int]:
    """The stabilizer of one layer's weights ``(L, |G|)``.

    Parameters
    ----------
    weights : torch.Tensor or numpy.ndarray
    group : {"Oh", "O"}
    tol : float, optional
        The strict criterion: ``k`` is kept iff ``max_{l,g} |w_l(k^-1 g) - w_l(g)| <= tol * max |w|``.
        Default: the robust one, kept with confidence (:func:`robust_stabilizer`).
    block_tol, defect_tol : float, optional
        Of the robust criterion.

    Returns
    -------
    list of int
        Element indices.
    """
    if tol is None:
        return robust_stabilizer(weights, group, block_tol, defect_tol)
    w = _weights_np(weights)
    table, inv = cayley_table(group), inverses(group)
    scale = max(np.abs(w).max(), 1e-30)
    return [k for k in range(table.shape[0]) if np.abs(w[:, table[inv[k]]] - w).max() <= tol * scale]


def stabilizer(module: torch.nn.Module, tol: float | None = None, block_tol: float | None = None,
               defect_tol: float | None = None) -> list[int]:
    """The elements that the relaxed weights of a module keep.

    Parameters
    ----------
    module : torch.nn.Module
        A network or a layer.
    tol, block_tol, defect_tol : float, optional
        As in :func:`weight_stabilizer`: the robust criterion over all relaxed layers pooled, or with
        ``tol`` the strict one per layer, intersected.

    Returns
    -------
    list of int
        Indices into ``group_matrices``; the whole group for a module without relaxed layers
        (exactly equivariant).
    """
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
    """One relaxed layer in a :class:`SymmetryReport`.

    Attributes
    ----------
    layer : str
        Its name in the model.
    irrep_energies : dict of str to list of float
        ``||w_l(psi)||`` per irrep and bank.
    stabilizer_order, stabilizer_name
        The symmetry this layer alone keeps.
    breaking_ratio, significance, noise : float
        Of this layer (:class:`BreakingMeasure`).
    """

    layer: str
    irrep_energies: dict[str, list[float]]
    stabilizer_order: int
    stabilizer_name: str
    breaking_ratio: float
    significance: float
    noise: float


@dataclass
class SymmetryReport:
    """The symmetry a model's relaxed weights keep, per element and per layer.

    Attributes
    ----------
    group : str
    layers : list of LayerSymmetry
    stabilizer, stabilizer_name
        The symmetry kept with confidence (element indices and name).
    at_most, at_most_name
        The largest subgroup without a broken element.
    criterion : str
        The criterion in words.
    breaking_ratio, significance : float
        Pooled over layers.
    defects, uncertainty : list of float
        ``d_k`` and ``r_k`` per element, pooled over layers.
    decisions : list of str
        Per element: kept, broken or undecided.
    direction_noise, direction_noise_dof : float or None
        ``kappa`` and its degrees of freedom (:class:`DirectionNoise`) the uncertainty includes;
        ``None``: white noise only.
    """

    group: str
    layers: list[LayerSymmetry] = field(default_factory=list)
    stabilizer: list[int] = field(default_factory=list)
    stabilizer_name: str = ""
    at_most: list[int] = field(default_factory=list)
    at_most_name: str = ""
    criterion: str = ""
    breaking_ratio: float = float("nan")
    significance: float = float("nan")
    defects: list[float] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    direction_noise: float | None = None
    direction_noise_dof: float | None = None

    @property
    def resolved(self) -> bool:
        """Whether any breaking is resolved: some element's defect is above round-off. ``False`` when
        no irrep block is significant; every element is then kept only to within the read-out's
        resolution (the significance threshold), not measured as kept."""
        return bool(self.defects) and max(self.defects) > ROUNDOFF

    def in_words(self) -> str:
        """The read-out in one line, e.g. ``kept D4h, axis x (order 16), at most D4h, axis x``."""
        kept = f"kept {self.stabilizer_name} (order {len(self.stabilizer)})"
        return f"{kept}, at most {self.at_most_name}" if self.resolved else f"{kept}, no breaking resolved"

    def to_dict(self) -> dict:
        """The report as plain values (JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SymmetryReport":
        """The inverse of :meth:`to_dict` (e.g. a report read back from JSON)."""
        return cls(**{**data, "layers": [LayerSymmetry(**layer) for layer in data.get("layers", [])]})

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """The report as Markdown: the kept symmetry, the criterion, a table of the decisions (every
        undecided element on its own row) and a table of the layers."""
        kept = (f"kept with confidence; at most **{self.at_most_name}** (order {len(self.at_most)})" if self.resolved
                else "no breaking resolved: no irrep block is significant, so every element is kept only to "
                     "within the read-out's resolution")
        lines = [f"Kept symmetry: **{self.stabilizer_name}** (order {len(self.stabilizer)} of {self.group}), {kept}.", "",
                 f"Criterion: {self.criterion}; largest block significance {self.significance:.3g}, pooled breaking "
                 f"ratio ||v||/||m|| = {self.breaking_ratio:.3g}.", ""]
        if self.decisions:
            lines += ["| decision | elements | invariance defect d_k | noise quantile r_k |",
                      "| --- | --- | --- | --- |"]
            for decision in DECISIONS:
                members = [k for k, d in enumerate(self.decisions) if d == decision]
                if not members:
                    continue
                name = subgroup_name(members, self.group)
                named = "" if name.startswith("order ") else f" ({name})"
                lines.append(f"| {decision} | {len(members)}{named} | {_span(self.defects, members)} "
                             f"| {_span(self.uncertainty, members)} |")
            undecided = [k for k, d in enumerate(self.decisions) if d == "undecided"]
            if undecided:
                lines += ["", "| element R(x, y, z) | decision | d_k | r_k |", "| --- | --- | ---: | ---: |"]
                lines += [f"| {element_label(k, self.group)} | undecided | {self.defects[k]:.3g} "
                          f"| {self.uncertainty[k]:.3g} |" for k in undecided]
            lines.append("")
        irreps = list(self.layers[0].irrep_energies) if self.layers else []
        lines += ["| layer | " + " | ".join(irreps) + " | ratio | max s | noise | stabilizer |",
                  "| --- |" + " ---: |" * (len(irreps) + 3) + " --- |"]
        for layer in self.layers:
            cells = [" / ".join(f"{v:.3g}" for v in layer.irrep_energies[name]) for name in irreps]
            lines.append(f"| {layer.layer} | " + " | ".join(cells) + f" | {layer.breaking_ratio:.3g} "
                         f"| {layer.significance:.3g} | {layer.noise:.2g} "
                         f"| {layer.stabilizer_name} ({layer.stabilizer_order}) |")
        return "\n".join(lines)


def _span(values: list[float], members: list[int]) -> str:
    low, high = min(values[k] for k in members), max(values[k] for k in members)
    return f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g} - {high:.3g}"


def symmetry_report(model: torch.nn.Module, tol: float | None = None, block_tol: float | None = None,
                    defect_tol: float | None = None, alpha: float | None = None,
                    direction_noise: DirectionNoise | None = None) -> SymmetryReport:
    """The symmetry read-out of a model's relaxed layers.

    Parameters
    ----------
    model : torch.nn.Module
        A network or a single layer with relaxed weights.
    tol : float, optional
        The strict criterion (module docstring); default: the robust one.
    block_tol, defect_tol, alpha : float, optional
        Of the robust criterion (:func:`breaking_measure`).
    direction_noise : DirectionNoise, optional
        Of the robust criterion, for the pooled read-out (it is measured on whole models,
        :func:`direction_noise`).

    Returns
    -------
    SymmetryReport
        ``ValueError`` for a model without relaxed layers (exactly equivariant by construction).
    """
    layers = relaxed_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no relaxed layers: it is exactly equivariant by construction")
    group = layers[0][1].group
    block_tol = BLOCK_TOL if block_tol is None else block_tol
    defect_tol = DEFECT_TOL if defect_tol is None else defect_tol
    alpha = ALPHA if alpha is None else alpha
    report = SymmetryReport(group=group)
    weights = []
    with torch.no_grad():
        for name, layer in layers:
            w = layer.relaxed_weights_on_group()
            weights.append(w)
            stab = weight_stabilizer(w, group, tol, block_tol, defect_tol)
            energies = {k: [round(float(v), 6) for v in e] for k, e in layer.irrep_energies().items()}
            measure = breaking_measure(w, group, block_tol, defect_tol, alpha)
            report.layers.append(LayerSymmetry(name, energies, len(stab), subgroup_name(stab, group), measure.ratio,
                                               measure.significance, measure.noise[0]))
    pooled = breaking_measure(weights, group, block_tol, defect_tol, alpha, direction_noise if tol is None else None)
    report.breaking_ratio, report.significance = pooled.ratio, pooled.significance
    report.defects, report.uncertainty = pooled.defects, pooled.uncertainty
    if tol is None:
        report.decisions = pooled.decisions
        report.stabilizer, report.at_most = pooled.kept_subgroup(), pooled.unbroken_subgroup()
        noise = "the layers' white noise"
        if direction_noise is not None:
            report.direction_noise, report.direction_noise_dof = direction_noise.kappa, direction_noise.dof
            noise = (f"the larger of the layers' white noise and a direction noise kappa = {direction_noise.kappa:.3g} "
                     f"({direction_noise.dof:.3g} degrees of freedom) of the significant blocks")
        report.criterion = (f"robust (irrep blocks with significance s > {block_tol:g} that stand out of their layer's "
                            f"noise break the symmetry; an element k is broken when its invariance defect d_k exceeds "
                            f"r_k, the defect that {noise} reaches with probability {alpha:g}, kept when "
                            f"d_k <= r_k and d_k + r_k <= {defect_tol:g}, undecided otherwise)")
    else:
        report.stabilizer = report.at_most = stabilizer(model, tol)
        report.decisions = ["kept" if k in set(report.stabilizer) else "broken" for k in range(group_order(group))]
        report.criterion = f"strict (max |w(k^-1 g) - w(g)| <= {tol:g} max |w|)"
    report.stabilizer_name = subgroup_name(report.stabilizer, group)
    report.at_most_name = subgroup_name(report.at_most, group)
    return report
