"""The Markdown of a symmetry discovery (``discover.md`` of ``steerable-sr discover``).

:func:`discovery_markdown` renders the result of :func:`steerable_sr.study.discover.run_discover`:
the summary table (:func:`summary_markdown`: per dataset, training and kind, the symmetry each seed
kept and the consensus), one line of sample statistics per dataset (:func:`statistics_line`), then
every run (:func:`run_markdown`: its symmetry report, the read-out after each epoch, test metrics).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..groups import AXES, subgroup_elements
from ..score_test import ScoreTest
from ..symmetry import SymmetryReport

__all__ = ["discovery_markdown", "run_markdown", "statistics_line", "summary_markdown"]


def statistics_line(stats: dict[str, Any], forcing_keeps: str | None = None) -> str:
    """The sample statistics of a dataset in one line.

    Parameters
    ----------
    stats : dict
        :func:`steerable_sr.data.statistics.dataset_statistics`; empty for a dataset without them.
    forcing_keeps : str, optional
        The subgroup its forcing keeps: the line then adds how much its elements reverse of each
        statistic.

    Returns
    -------
    str
        Markdown; empty for empty ``stats``.
    """
    if not stats:
        return ""
    skew = np.asarray(stats["derivative_skewness"])
    off = max(((a, b) for a in range(3) for b in range(3) if a != b), key=lambda ab: abs(skew[ab]))
    line = (f"{stats['frames']} training frames: energy fractions (x, y, z) = ("
            + ", ".join(f"{v:.3f}" for v in stats["energy_fractions"])
            + f"), relative helicity {stats['relative_helicity']:.3f}"
            + "; skewness of u_x, u_y, u_z " + ", ".join(f"{v:.2f}" for v in stats["velocity_skewness"])
            + "; correlation of u_x u_y, u_x u_z, u_y u_z " + ", ".join(f"{v:.3f}" for v in stats["cross_correlation"])
            + "; derivative skewness: longitudinal " + ", ".join(f"{skew[a, a]:.2f}" for a in range(3))
            + f", largest transverse {skew[off]:.2f} (d u_{AXES[off[0]]} / d {AXES[off[1]]})")
    tol = stats["tolerance"]
    parts = {name: np.asarray(v) for name, v in stats["odd_parts"].items()}
    line += (f". Sample keeps **{stats['sample_keeps']}** (statistics within {stats['noise_factor']:g} standard "
             f"errors over {stats['noise_blocks']} time blocks: "
             + ", ".join(f"{name.replace('_', ' ')} {t:.3f}" for name, t in tol.items()) + ")")
    if forcing_keeps:
        inside = subgroup_elements(forcing_keeps)
        line += (f"; the forcing keeps {forcing_keeps}, whose elements reverse at most: "
                 + ", ".join(f"{name.replace('_', ' ')} {parts[name][inside].max():.3f}" for name in parts))
    return line + "."


def run_markdown(entry: dict[str, Any]) -> list[str]:
    """One discovery run as Markdown lines.

    Parameters
    ----------
    entry : dict
        An entry of ``result["results"]`` of :func:`steerable_sr.study.discover.run_discover`.

    Returns
    -------
    list of str
        A heading (kind, data and forcing, seed, penalty, steps, symmetrisation), the sample
        statistics, the full symmetry report, the read-out after each epoch, the test metrics.
    """
    md = [f"### {entry['kind']} on `{entry['data']}` (forcing {entry['forcing_label']}), seed {entry['seed']}, "
          f"penalty {entry['penalty_weight']}, {entry['steps']} steps"
          + (f", training batches symmetrised by random {entry['augment']} elements" if entry["augment"] else ""), ""]
    stats = entry.get("data_statistics")
    if stats:
        md += [statistics_line(stats, entry.get("forcing_keeps")), ""]
    md += [SymmetryReport.from_dict(entry["report"]).to_markdown(), ""]
    if entry.get("score_test"):
        md += [score_test_markdown(ScoreTest(**entry["score_test"])), ""]
    along = [f"{row['epoch'] + 1}: {_kept(row['symmetry'], row['at_most'])} (s = {row['significance']:.2g}, "
             f"{row['largest_block']})" for row in entry["curve"] if "symmetry" in row]
    if along:
        md += ["Read-out after each epoch (epoch: symmetry kept with confidence, at most; largest significance, "
               "its block): " + "; ".join(along) + ".", ""]
    return md + [f"Test MAE {entry['test'].get('mae', float('nan')):.4f}, equivariance error "
                 f"{entry['test'].get('equiv_err', float('nan')):.2e}.", ""]


def score_test_markdown(test: ScoreTest) -> str:
    """The score test of one run in a paragraph: what it keeps at most, and each broken element's
    statistic and p-value."""
    broken = ", ".join(f"{k} (R = {test.statistic[k]:.3g}, p = {test.p_value[k]:.2g})" for k in test.broken)
    return (f"Score test (the training data's loss gradient on the relaxed weights, {test.blocks} time blocks, "
            f"family-wise level {test.alpha:g}): keeps at most **{test.keeps_name}**; "
            + (f"breaks elements {broken}." if broken else "breaks no element."))


def summary_markdown(summary: Sequence[dict]) -> list[str]:
    """The summary table as Markdown lines.

    Parameters
    ----------
    summary : sequence of dict
        :func:`steerable_sr.study.discover.discovery_summary`.

    Returns
    -------
    list of str
        A heading and one table row per dataset, training and kind.
    """
    lines = ["## Summary", "",
             "| data | training | kind | kept symmetry per seed (at most; largest significance s; direction noise "
             "kappa, where a control calibrates it) "
             "| consensus over seeds | sample keeps | forcing keeps |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary:
        training = f"batches symmetrised by random {row['augment']} elements" if row["augment"] else "plain"
        kappas = row.get("direction_noise") or [None] * len(row["seeds"])
        resolved = row.get("resolved") or [True] * len(row["seeds"])
        last = row.get("last_resolved") or [None] * len(row["seeds"])
        scores = row.get("score_keeps") or [None] * len(row["seeds"])
        seeds = "; ".join(f"{seed}: {_kept(name, at_most)}" + ("" if ok else ", no breaking resolved")
                          + f" (s = {s:.2g}" + ("" if kappa is None else f", kappa {kappa:.2g}")
                          + ("" if early is None else f"; {early['symmetry']} until epoch {early['epoch']}, "
                                                      f"s = {early['significance']:.2g}")
                          + ("" if score is None else f"; score test at most {score}") + ")"
                          for seed, name, at_most, s, kappa, ok, early, score
                          in zip(row["seeds"], row["per_seed"], row["per_seed_at_most"], row["significance"], kappas,
                                 resolved, last, scores))
        lines.append(f"| `{row['data']}` ({row['forcing_label']}) | {training} | {row['kind']} | {seeds} "
                     f"| {_kept(row['consensus'], row['consensus_at_most'], bold=True)} "
                     f"| {row.get('sample_keeps') or '-'} | {row.get('forcing_keeps') or '-'} |")
    return lines + [""]


def _kept(name: str, at_most: str, bold: bool = False) -> str:
    """A read-out in words: the symmetry kept with confidence, and the most it may be if that is more."""
    kept = f"**{name}**" if bold else name
    return kept if at_most == name else f"{kept}, at most {at_most}"


def discovery_markdown(result: dict[str, Any]) -> str:
    """The whole ``discover.md``.

    Parameters
    ----------
    result : dict
        ``{"summary", "results", ...}`` of :func:`steerable_sr.study.discover.run_discover`.

    Returns
    -------
    str
        The summary table, the sample statistics of each dataset, then every run.
    """
    md = summary_markdown(result["summary"])
    datasets = {entry["data"]: entry for entry in result["results"] if entry.get("data_statistics")}
    if datasets:
        md += ["Sample statistics of the training frames (odd part: the largest entry of |g.X - X| / 2 of a "
               "statistic X under an element g; an element is kept by the sample when every odd part is "
               "within its tolerance):", ""]
        md += [f"* `{data}`: " + statistics_line(entry["data_statistics"], entry.get("forcing_keeps"))
               for data, entry in datasets.items()] + [""]
    for entry in result["results"]:
        md += run_markdown(entry)
    return "\n".join(md) + "\n"
