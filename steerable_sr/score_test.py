r"""The score test of a relaxed model: the elements whose symmetry the training data's loss gradient breaks.

The relaxed weights' penalty is a group lasso: an irrep block of the weights stays at zero while the
data loss gains less from it than the penalty costs, so the weights' read-out
(:mod:`steerable_sr.symmetry`) cannot see a breaking that the penalty withholds. The loss gradient at
the trained weights can (Rao's score test). If the data keep an element ``k`` and the weights keep it,
the expected gradient of the loss on the relaxed values ``w_l(g)`` is ``k``-invariant:
``E[G](k^-1 g) = E[G](g)``, for ``k`` permutes the terms of the expectation. A ``k``-odd part of the
mean gradient beyond its scatter over time is the data asking for the breaking.

Statistic (``B`` time blocks of the training windows, in order):

1. Per block ``b``, the mean gradient ``G_b`` of the L1 loss on every bank's relaxed values, centred
   per bank (the mean is the layer's gain). Its Fourier blocks that the weights hold significant
   (:func:`steerable_sr.symmetry.block_significance` above ``BLOCK_TOL``) are projected out: there the
   data gradient balances the penalty, and would only re-read the weights.
2. Per element ``k``, ``D_b = G_b - k.G_b`` (``(k.G)(g) = G(k^-1 g)``), their mean ``D`` and sample
   covariance ``S`` over the blocks, and ``R_k = B ||D||^2 / tr S``.
3. If the data keep ``k``, ``R_k`` is close to ``F(f, (B - 1) f)`` with ``f = tr(S)^2 / tr(S^2)``
   (Satterthwaite: a quadratic form with ``f`` effective degrees of freedom over its estimated scale;
   ``tr(S^2)`` estimated without the bias of few blocks, ``f`` at most the defect's dimension);
   ``k`` is *broken* when its p-value is below ``alpha / (|G| - 1)`` (Bonferroni over the non-identity
   elements). The test only breaks elements: an element it leaves is not shown to be kept.

The blocks must be longer than the record's correlation time: correlated blocks underestimate the
scatter, and the test then breaks elements that the data keep (docs/results.md measures this).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from .groups import cayley_table, group_order, inverses, largest_subgroup_in, subgroup_name
from .nn.fourier import peter_weyl_basis
from .nn.relaxed import relaxed_layers
from .symmetry import ALPHA, BLOCK_TOL, block_significance

#: The fewest time blocks: the unbiased estimate of ``tr(Sigma^2)`` divides by ``B - 2``.
MIN_BLOCKS = 3


@dataclass
class ScoreTest:
    """The score test's result.

    Attributes
    ----------
    group : str
    blocks : int
        ``B``, the number of time blocks.
    statistic, dof, p_value : list of float
        Per element (order of ``group_matrices``): ``R_k``, ``f`` and the p-value (identity: 0, 0, 1;
        a defect without scatter: 0, 0 and p-value 1 if it is zero, 0 if not).
    alpha : float
        Family-wise level: an element is broken when its p-value is below ``alpha / (|G| - 1)``.
    broken : list of int
        The elements the test breaks.
    keeps : list of int
        The largest subgroup without a broken element; ``keeps_name`` its name.
    """

    group: str
    blocks: int
    statistic: list[float]
    dof: list[float]
    p_value: list[float]
    alpha: float
    broken: list[int]
    keeps: list[int]
    keeps_name: str

    def in_words(self) -> str:
        """One line, e.g. ``score test over 8 time blocks: breaks 32 elements, keeps at most D4h, axis x
        (smallest p-value of the others 0.07)``."""
        others = [p for k, p in enumerate(self.p_value) if k and k not in self.broken]
        rest = f" (smallest p-value of the others {min(others):.2g})" if others else ""
        return (f"score test over {self.blocks} time blocks: breaks {len(self.broken)} elements, keeps at most "
                f"{self.keeps_name}{rest}")

    def to_dict(self) -> dict:
        """The result as plain values (JSON)."""
        return asdict(self)


def score_test(gradients: np.ndarray, group: str = "Oh", alpha: float = ALPHA) -> ScoreTest:
    """The score test of block-mean gradients (module docstring, steps 2 and 3).

    Parameters
    ----------
    gradients : array ``(B, L, |G|)``
        Per time block, the mean loss gradient on the relaxed values of ``L`` banks (every layer's
        banks stacked), ``B >=`` :data:`MIN_BLOCKS`.
    group : {"Oh", "O"}
    alpha : float
        Family-wise level over the non-identity elements.

    Returns
    -------
    ScoreTest
    """
    G = np.asarray(gradients, dtype=np.float64)
    order = group_order(group)
    if G.ndim != 3 or G.shape[0] < MIN_BLOCKS or G.shape[2] != order:
        raise ValueError(f"gradients must have shape (B >= {MIN_BLOCKS}, L, {order}), got {G.shape}")
    if not np.isfinite(G).all():
        raise ValueError("gradients contain NaN or Inf")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    B = G.shape[0]
    table, inv = cayley_table(group), inverses(group)
    statistic, dof, p_value = [0.0] * order, [0.0] * order, [1.0] * order
    for k in range(1, order):
        D = (G - G[:, :, table[inv[k]]]).reshape(B, -1)
        mean, scatter = D.mean(axis=0), D - D.mean(axis=0)
        gram = scatter @ scatter.T / (B - 1)  # tr S = tr gram, tr S^2 = ||gram||_F^2
        tr_s = float(np.trace(gram))
        if tr_s <= 0:
            p_value[k] = 0.0 if mean.any() else 1.0
            continue
        # tr(Sigma^2), unbiased (Bai & Saranadasa 1996): the plain tr(S^2) of B blocks is biased up by
        # tr(S)^2 / (B - 1), which would cap f at B - 1 whatever the dimension.
        tr_s2 = (B - 1) ** 2 / ((B - 2) * (B + 1)) * (float((gram ** 2).sum()) - tr_s ** 2 / (B - 1))
        statistic[k] = B * float(mean @ mean) / tr_s
        dof[k] = min(D.shape[1], tr_s ** 2 / tr_s2) if tr_s2 > 0 else float(D.shape[1])
        p_value[k] = float(stats.f.sf(statistic[k], dof[k], (B - 1) * dof[k]))
    broken = [k for k in range(1, order) if p_value[k] < alpha / (order - 1)]
    keeps = largest_subgroup_in(set(range(order)) - set(broken), group)
    return ScoreTest(group, B, statistic, dof, p_value, alpha, broken, keeps, subgroup_name(keeps, group))


def relaxed_gradients(model: torch.nn.Module, blocks: Sequence[Iterable[tuple[torch.Tensor, torch.Tensor]]],
                      block_tol: float = BLOCK_TOL) -> np.ndarray:
    """Per time block, the mean gradient of the L1 loss on the relaxed values (module docstring, step 1).

    Parameters
    ----------
    model : torch.nn.Module
        A relaxed network (``model(low_res) -> prediction``), evaluated in training mode, as the loss
        met it in training (batch norms normalise by each batch's statistics; escnn's layers in eval
        mode hold a fixed filter, without a gradient). Its mode and its state (the batch norms'
        running statistics) are restored afterwards; no ``.grad`` is touched.
    blocks : sequence of iterables of (low_res, high_res)
        The batches of each time block, ``(N, C_in, n, n, n)`` and ``(N, 3, s n, s n, s n)``, on any
        device (moved to the model's).
    block_tol : float
        Irrep blocks of the weights with a larger significance are projected out.

    Returns
    -------
    numpy.ndarray ``(B, L, |G|)``
        Every relaxed layer's banks, in the order of :func:`~steerable_sr.nn.relaxed.relaxed_layers`.
    """
    layers = [layer for _, layer in relaxed_layers(model)]
    if not layers:
        raise ValueError("the model has no relaxed layers: there is no relaxed weight to test")
    phi, _ = peter_weyl_basis(layers[0].group)
    masks = [_insignificant_mask(layer, block_tol) for layer in layers]
    params = [layer.relaxed.deviation for layer in layers]
    device = params[0].device
    state, training = {k: v.clone() for k, v in model.state_dict().items()}, model.training
    model.train()
    try:
        out = []
        for batches in blocks:
            total, count = [torch.zeros_like(p) for p in params], 0
            for low_res, high_res in batches:
                loss = F.l1_loss(model(low_res.to(device)), high_res.to(device))
                for t, g in zip(total, torch.autograd.grad(loss, params)):
                    t += g
                count += 1
            if count == 0:
                raise ValueError("a time block holds no batch")
            # The deviation enters centred, so its gradient is the centred gradient on the values.
            out.append(np.concatenate([((t / count).double().cpu().numpy() @ phi.T * mask) @ phi
                                       for t, mask in zip(total, masks)]))
    finally:
        model.load_state_dict(state)
        model.train(training)
    return np.stack(out)


def _insignificant_mask(layer: torch.nn.Module, block_tol: float) -> np.ndarray:
    """``(L, |G|)``: 1 on the Fourier coefficients of the non-trivial irrep blocks that are not
    significant in the layer's weights, bank by bank; 0 elsewhere (the trivial block included)."""
    weights = layer.relaxed_weights_on_group().detach()
    significance = block_significance(weights, layer.group)
    _, irrep_blocks = peter_weyl_basis(layer.group)
    mask = np.zeros(tuple(weights.shape))
    for name, sl in irrep_blocks[1:]:
        mask[:, sl] = (significance[name] <= block_tol)[:, None]
    return mask
