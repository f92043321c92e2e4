"""Paired comparisons of a study: relaxed minus exact twin, and free relaxed minus held relaxed, seed by
seed (:func:`paired_differences`), and whether a run's validation curve has flattened
(:func:`convergence`).

Every run of a comparison is tested on the same crops (the data module's ``eval_seed``), and two
runs with the same seed were also trained on the same crops, so the difference of their test metrics
cancels the variance of the test set and of the training crops; over ``n`` seeds the
differences give a Student-t interval for the mean with ``n - 1`` degrees of freedom.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from scipy import stats

from ..models import KIND_SPECS
from .config import HELD_SUFFIX, SEPARABLE_SUFFIX, parse_kind, split_held

#: The validation curve has flattened when its last fifth improves its best value by less than this.
FLAT_TOLERANCE = 0.02


def exact_twin(spec: str) -> str | None:
    """The exact kind a relaxed study kind relaxes (``"rgcnn" -> "gcnn"``, ``"rgcnn_held" -> "gcnn"``,
    ``"rgcnn_separable" -> "gcnn_separable"``), ``None`` for an exact kind.

    The twin has the same field family (regular fields or irreps) and is not relaxed.
    """
    kind, overrides = parse_kind(spec)
    spec_of = KIND_SPECS[kind]
    if not spec_of.relaxed:
        return None
    twin = next(k for k, s in KIND_SPECS.items() if s.field_family == spec_of.field_family and not s.relaxed)
    return twin + (SEPARABLE_SUFFIX if overrides.get("separable") else "")


def baselines(spec: str) -> list[str]:
    """The kinds a study kind is compared with, seed by seed: a relaxed kind's exact twin (what
    relaxing buys), and for a free relaxed kind also its held form (``"rgcnn" -> ["gcnn",
    "rgcnn_held"]``: what breaking the symmetry buys beyond the relaxed parametrisation); ``[]`` for
    an exact kind."""
    twin = exact_twin(spec)
    if twin is None:
        return []
    return [twin] if split_held(spec)[1] else [twin, spec + HELD_SUFFIX]


def paired_differences(runs: Sequence[dict], metric: str = "mae", confidence: float = 0.95) -> list[dict[str, Any]]:
    """Test-metric differences of every kind minus each of its :func:`baselines`, over the seeds both
    were trained with.

    Parameters
    ----------
    runs : sequence of dict
        :func:`~steerable_sr.study.runs.train_one` results (``kind``, ``seed``, ``test``).
    metric : str
        A test metric (``"mae"``: the training loss's metric; negative differences favour the first
        kind of the pair).
    confidence : float
        Of the interval for the mean difference.

    Returns
    -------
    list of dict
        One per pair of kinds that were both run: ``pair`` ("rgcnn - gcnn", "rgcnn - rgcnn_held"),
        ``seeds``, the per-seed ``differences``, their ``mean``, sample ``std``, the interval
        ``low``/``high`` (Student t, ``n - 1`` degrees of freedom; ``nan`` for one seed), the
        baseline's seed spread ``baseline_std`` (sample std of its metric over the seeds, unpaired)
        and ``baseline_mean``.
    """
    by = {(r["kind"], r["seed"]): r["test"].get(metric) for r in runs}
    out = []
    for spec in dict.fromkeys(r["kind"] for r in runs):
        for baseline in baselines(spec):
            seeds = [s for (k, s), v in by.items()
                     if k == spec and v is not None and by.get((baseline, s)) is not None]
            if seeds:
                out.append(_paired(f"{spec} - {baseline}", metric, seeds, [by[(spec, s)] for s in seeds],
                                   [by[(baseline, s)] for s in seeds], confidence))
    return out


def _paired(pair: str, metric: str, seeds: list[int], first: list[float], second: list[float],
            confidence: float) -> dict[str, Any]:
    diffs = [a - b for a, b in zip(first, second)]
    n = len(diffs)
    mean = sum(diffs) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    baseline_mean = sum(second) / n
    baseline_std = math.sqrt(sum((b - baseline_mean) ** 2 for b in second) / (n - 1)) if n > 1 else float("nan")
    return {"pair": pair, "metric": metric, "seeds": seeds, "differences": diffs, "mean": mean, "std": std,
            "low": mean - half, "high": mean + half, "confidence": confidence,
            "baseline_mean": baseline_mean, "baseline_std": baseline_std}


def convergence(curve: Sequence[dict], key: str = "val/mae", tolerance: float = FLAT_TOLERANCE) -> dict[str, Any]:
    """Whether a validation curve has flattened: the best value over the whole curve improves on the
    best value before its last fifth by less than ``tolerance`` (relative).

    Parameters
    ----------
    curve : sequence of dict
        Rows per validation epoch (:class:`~steerable_sr.study.runs.Recorder`), with ``key``.
    key : str
    tolerance : float

    Returns
    -------
    dict
        ``improvement`` (relative, ``nan`` with fewer than 5 epochs), ``flat`` (bool; ``False`` with
        fewer than 5 epochs), ``epochs``.
    """
    values = [row[key] for row in curve if row.get(key) is not None]
    epochs = len(values)
    if epochs < 5:
        return {"improvement": float("nan"), "flat": False, "epochs": epochs}
    last = max(1, epochs // 5)
    before = min(values[:-last])
    improvement = (before - min(values)) / before
    return {"improvement": improvement, "flat": improvement < tolerance, "epochs": epochs}


def paired_markdown(runs: Sequence[dict], metric: str = "mae") -> str:
    """The paired differences and every run's convergence as Markdown (empty without a relaxed pair).

    Parameters
    ----------
    runs : sequence of dict
    metric : str

    Returns
    -------
    str
    """
    pairs = paired_differences(runs, metric)
    lines = []
    if pairs:
        level = round(100 * pairs[0]["confidence"])
        lines += [f"Paired by seed (same training and test crops), test {metric}, relaxed minus exact twin and "
                  f"free minus held relaxed:", "",
                  f"| pair | per seed | mean | {level}% interval | second's seed spread (std) | relative to second |",
                  "| --- | --- | ---: | --- | ---: | ---: |"]
        for p in pairs:
            per_seed = ", ".join(f"{s}: {d:+.4f}" for s, d in zip(p["seeds"], p["differences"]))
            lines.append(f"| {p['pair']} | {per_seed} | {p['mean']:+.4f} | [{p['low']:+.4f}, {p['high']:+.4f}] | "
                         f"{p['baseline_std']:.4f} | {p['mean'] / p['baseline_mean']:+.1%} |")
        lines.append("")
    rows = [(r["kind"], r["seed"], convergence(r.get("curve", []))) for r in runs]
    flat = sum(c["flat"] for _, _, c in rows)
    lines.append(f"Validation curves flat (the last fifth of the epochs improves the best val MAE by less than "
                 f"{FLAT_TOLERANCE:.0%}): {flat} of {len(rows)} runs"
                 + ("." if flat == len(rows) else "; not flat: " + ", ".join(
                     f"{k} seed {s} ({c['improvement']:.1%})" if c["epochs"] >= 5 else f"{k} seed {s} ({c['epochs']} epochs)"
                     for k, s, c in rows if not c["flat"]) + "."))
    return "\n".join(lines)
