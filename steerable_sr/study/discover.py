"""Symmetry discovery: relaxed kinds trained on each dataset (:func:`run_discover`), the symmetry their
relaxed weights kept per seed and the consensus over seeds, as ``discover.json`` and ``discover.md``."""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch

from .. import groups
from ..data.dataset import load_generated
from ..io import atomic_output, to_json, write_text
from ..metrics import velocity_gradient, vorticity
from ..models import RELAXED_KINDS
from ..symmetry import (AXES, SymmetryReport, consensus_stabilizer, largest_subgroup_in, subgroup_elements,
                        subgroup_name, symmetry_report)
from .config import CompareConfig, parse_kind
from .runs import set_threads, train_one


def run_discover(datasets: Sequence[str], cfg: CompareConfig, kinds: Sequence[str] = RELAXED_KINDS,
                 penalty_weight: float = 1e-3, tol: float | None = None, control: bool = False,
                 log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train relaxed ``kinds`` on each dataset and write the symmetry reports of the learned weights.

    ``control``: for every dataset whose forcing is known, also train on its batches symmetrised by
    a random element each of the group the forcing keeps (:func:`forcing_symmetry`: O_h, D4h about
    the axis, D2h; ``cfg.augment``): a training distribution with exactly the physics' symmetry,
    whatever the finite sample's asymmetry, so its read-out must contain that group.

    Every dataset's sample statistics and own symmetry (:func:`dataset_statistics`) are logged and
    saved with its runs.

    Writes to ``cfg.out`` (:func:`write_discovery`, after every run): ``discover.json`` (config,
    summary per dataset and kind with the consensus over seeds, and per run: report, read-out per
    epoch, test metrics), ``discover.md`` (the summary table, then every run's report) and the
    trained weights.
    """
    if not datasets or not kinds or not cfg.seeds:
        raise ValueError("symmetry discovery needs at least one dataset, one relaxed kind and one seed")
    for spec in kinds:
        if parse_kind(spec)[0] not in RELAXED_KINDS:
            raise ValueError(f"symmetry discovery needs a relaxed kind ({', '.join(RELAXED_KINDS)}), got {spec!r}")
    set_threads(cfg)
    out = Path(cfg.out)
    jobs = discovery_jobs(datasets, cfg, control)
    statistics = {}
    for data in datasets:
        try:
            statistics[data] = dataset_statistics(data)
        except (ValueError, KeyError):  # JHTDB cutouts and other layouts: no statistics
            statistics[data] = {}
        log(f"[discover] {data}: {statistics_line(statistics[data], forcing_symmetry(_dataset_attrs(data)))}")
    results = []
    for data, job in jobs:
        attrs = _dataset_attrs(data)
        for spec in kinds:
            for seed in job.seeds:
                r = train_one(spec, seed, job, data=data, penalty_weight=penalty_weight, keep_model=True)
                model = r.pop("model")
                tag = "_aug" + re.sub(r"[^A-Za-z0-9]", "", job.augment) if job.augment else ""
                with atomic_output(out / f"{Path(data).stem}{tag}_{spec}_seed{seed}.pt", overwrite=True) as tmp:
                    torch.save(model.state_dict(), tmp)
                report = symmetry_report(model, **({} if tol is None else {"tol": tol}))
                results.append({"data": data, "forcing": attrs.get("forcing"), "axis": attrs.get("axis"),
                                "forcing_label": forcing_label(attrs), "forcing_keeps": forcing_symmetry(attrs),
                                "kind": spec, "augment": job.augment,
                                "augment_elements": subgroup_elements(job.augment) if job.augment else None,
                                "data_statistics": statistics[data], "seed": seed,
                                "penalty_weight": penalty_weight, "steps": r["steps"], "fit_s": r["fit_s"],
                                "test": r["test"], "curve": r["curve"], "report": report.to_dict()})
                log(f"[discover] {spec} on {data}{' (' + job.augment + '-symmetrised)' if job.augment else ''} "
                    f"seed {seed}: kept {report.stabilizer_name} (order {len(report.stabilizer)})")
                result = write_discovery(out, {"config": asdict(cfg), "results": results})
    for row in result["summary"]:
        log(f"[discover] {row['kind']} on {row['data']}{' (' + row['augment'] + '-symmetrised)' if row['augment'] else ''}: "
            f"kept {', '.join(row['per_seed'])}; consensus {row['consensus']}")
    return result


def discovery_jobs(datasets: Sequence[str], cfg: CompareConfig, control: bool = False
                   ) -> list[tuple[str, CompareConfig]]:
    """``(dataset, config)`` per training: each dataset with ``cfg``, and with ``control`` also with
    ``cfg.augment`` the group its forcing keeps (:func:`forcing_symmetry`; datasets of unknown
    forcing get no control)."""
    jobs = []
    for data in datasets:
        if not Path(data).exists():
            raise FileNotFoundError(f"dataset not found: {data} (make one with `steerable-sr generate`)")
        jobs.append((data, cfg))
        keeps = forcing_symmetry(_dataset_attrs(data))
        if control and keeps is not None:
            jobs.append((data, replace(cfg, augment=keeps)))
    return jobs


def statistics_line(stats: dict[str, Any], forcing_keeps: str | None = None) -> str:
    """The sample statistics of :func:`dataset_statistics` in one line (Markdown); empty if none."""
    if not stats:
        return ""
    line = (f"{stats['frames']} training frames: energy fractions (x, y, z) = ("
            + ", ".join(f"{v:.3f}" for v in stats["energy_fractions"])
            + f"), relative helicity {stats['relative_helicity']:.3f}")
    if "velocity_skewness" not in stats:  # saved by an earlier version
        return line + "."
    skew = np.asarray(stats["derivative_skewness"])
    off = max(((a, b) for a in range(3) for b in range(3) if a != b), key=lambda ab: abs(skew[ab]))
    line += ("; skewness of u_x, u_y, u_z " + ", ".join(f"{v:.2f}" for v in stats["velocity_skewness"])
             + "; correlation of u_x u_y, u_x u_z, u_y u_z " + ", ".join(f"{v:.3f}" for v in stats["cross_correlation"])
             + f"; derivative skewness: longitudinal " + ", ".join(f"{skew[a, a]:.2f}" for a in range(3))
             + f", largest transverse {skew[off]:.2f} (d u_{AXES[off[0]]} / d {AXES[off[1]]})")
    tol = stats["tolerance"]
    parts = {name: np.asarray(v) for name, v in stats["odd_parts"].items()}
    line += (f". Sample keeps **{stats['sample_keeps']}** (statistics within {stats['noise_factor']:g} standard "
             f"errors over {stats['noise_blocks']} time blocks: " + ", ".join(f"{name.replace('_', ' ')} {t:.3f}"
                                                                              for name, t in tol.items()) + ")")
    if forcing_keeps:
        inside = subgroup_elements(forcing_keeps)
        line += (f"; the forcing keeps {forcing_keeps}, whose elements reverse at most: "
                 + ", ".join(f"{name.replace('_', ' ')} {parts[name][inside].max():.3f}" for name in parts))
    return line + "."


def write_discovery(out: str | os.PathLike, result: dict[str, Any]) -> dict[str, Any]:
    """Add the summary to ``result`` (``{"config", "results"}``) and write ``discover.json`` and
    ``discover.md`` to ``out``, each atomically."""
    result = {"config": result["config"], "summary": discovery_summary(result["results"]),
              "results": list(result["results"])}
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
    out = Path(out)
    write_text(out / "discover.json", to_json(result, indent=1))
    write_text(out / "discover.md", "\n".join(md) + "\n")
    return result


def render_discovery_from_json(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                               log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Merge the runs of one or more saved ``discover.json`` files (e.g. one per kind or dataset,
    made with the same settings) and write their summary and reports to ``out``."""
    saved = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"discovery results not found: {path}")
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not {"config", "results"} <= data.keys():
            raise ValueError(f"{path} is not a discover.json of `steerable-sr discover` (no config and results)")
        saved.append(data)
    result = write_discovery(out, {"config": saved[0]["config"],
                                   "results": [entry for s in saved for entry in s["results"]]})
    log("\n".join(summary_markdown(result["summary"])))
    return result


def run_markdown(entry: dict[str, Any]) -> list[str]:
    """One discovery run (an entry of ``discover.json``) as Markdown lines: the data, the full
    symmetry report, the read-out after each epoch and the test metrics."""
    forcing = entry.get("forcing_label") or forcing_label({"forcing": entry["forcing"], "axis": entry["axis"]})
    md = [f"### {entry['kind']} on `{entry['data']}` (forcing {forcing}), seed {entry['seed']}, "
          f"penalty {entry['penalty_weight']}, {entry['steps']} steps"
          + (f", training batches symmetrised by random {entry['augment']} elements" if entry["augment"] else ""), ""]
    stats = entry.get("data_statistics")
    if stats:
        md += [statistics_line(stats, entry.get("forcing_keeps")), ""]
    md += [SymmetryReport.from_dict(entry["report"]).to_markdown(), ""]
    along = [f"{row['epoch'] + 1}: {row['symmetry']} (s = {row['significance']:.2g}, {row['largest_block']})"
             for row in entry["curve"] if "symmetry" in row]
    if along:
        md += ["Read-out after each epoch (epoch: kept symmetry, largest significance, its block): "
               + "; ".join(along) + ".", ""]
    return md + [f"Test MAE {entry['test'].get('mae', float('nan')):.4f}, equivariance error "
                 f"{entry['test'].get('equiv_err', float('nan')):.2e}.", ""]


def discovery_summary(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Per dataset, training (plain or symmetrised) and kind: the symmetry each seed kept and the
    consensus over seeds (:func:`steerable_sr.symmetry.consensus_stabilizer`)."""
    runs: dict[tuple, list[dict]] = {}
    for r in results:
        runs.setdefault((r["data"], r["augment"], r["kind"]), []).append(r)
    summary = []
    for (data, augment, kind), rows in runs.items():
        group = rows[0]["report"]["group"]
        consensus = consensus_stabilizer([r["report"]["stabilizer"] for r in rows], group)
        first = rows[0]
        summary.append({"data": data, "augment": augment, "kind": kind, "forcing": first["forcing"],
                        "axis": first["axis"], "forcing_label": first.get("forcing_label"),
                        "forcing_keeps": first.get("forcing_keeps"),
                        "sample_keeps": (first.get("data_statistics") or {}).get("sample_keeps"),
                        "seeds": [r["seed"] for r in rows],
                        "per_seed": [r["report"]["stabilizer_name"] for r in rows],
                        "significance": [r["report"]["significance"] for r in rows],
                        "consensus": subgroup_name(consensus, group), "consensus_stabilizer": consensus})
    return summary


def summary_markdown(summary: Sequence[dict]) -> list[str]:
    """The summary table of :func:`discovery_summary` as Markdown lines."""
    lines = ["## Summary", "",
             "| data | training | kind | kept symmetry per seed (largest significance s) | consensus over seeds "
             "| sample keeps | forcing keeps |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary:
        forcing = row.get("forcing_label") or forcing_label({"forcing": row["forcing"], "axis": row["axis"]})
        training = f"batches symmetrised by random {row['augment']} elements" if row["augment"] else "plain"
        seeds = "; ".join(f"{seed}: {name} ({s:.2g})"
                          for seed, name, s in zip(row["seeds"], row["per_seed"], row["significance"]))
        lines.append(f"| `{row['data']}` ({forcing}) | {training} | {row['kind']} | {seeds} | **{row['consensus']}** "
                     f"| {row.get('sample_keeps') or '-'} | {row.get('forcing_keeps') or '-'} |")
    return lines + [""]


#: Time blocks of the training frames from whose spread the sampling noise of a statistic is estimated.
NOISE_BLOCKS = 4
#: A statistic's odd part under an element is noise up to this many block standard errors.
NOISE_FACTOR = 3.0


def frame_moments(u: torch.Tensor, chunk: int = 8) -> dict[str, torch.Tensor]:
    """Per frame of ``u`` ``(T, 3, n, n, n)`` (periodic), double precision, the raw voxel means from
    which :func:`moment_statistics` combines its statistics over any set of frames: ``u2``
    ``<u_a u_b>`` ``(T, 3, 3)``, ``u3`` ``<u_a u_b u_c>`` ``(T, 3, 3, 3)``, ``g2`` and ``g3``
    ``<g_ab^2>``, ``<g_ab^3>`` of ``g_ab = d u_a / d x_b`` ``(T, 3, 3)``, ``helicity`` the relative
    helicity ``<u.w> / (rms|u| rms|w|)`` ``(T,)``. ``chunk`` frames at a time (memory)."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("u2", "u3", "g2", "g3", "helicity")}
    for start in range(0, u.shape[0], chunk):
        x = u[start:start + chunk].to(torch.float64)
        parts["u2"].append(torch.einsum("tapqr,tbpqr->tab", x, x) / x[0, 0].numel())
        u3 = torch.zeros(x.shape[0], 3, 3, 3, dtype=torch.float64)
        for a, b, c in itertools.combinations_with_replacement(range(3), 3):
            value = (x[:, a] * x[:, b] * x[:, c]).mean(dim=(1, 2, 3))
            for i, j, k in set(itertools.permutations((a, b, c))):
                u3[:, i, j, k] = value
        parts["u3"].append(u3)
        g = velocity_gradient(x, method="spectral")  # (t, 3, 3, n, n, n)
        parts["g2"].append(g.pow(2).mean(dim=(3, 4, 5)))
        parts["g3"].append(g.pow(3).mean(dim=(3, 4, 5)))
        w = vorticity(x, method="spectral")
        parts["helicity"].append((x * w).sum(1).mean(dim=(1, 2, 3)) / (x.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()
                                                                       * w.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()))
    return {k: torch.cat(v) for k, v in parts.items()}


def moment_statistics(moments: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dimensionless low-order statistics of the frames of ``moments`` (:func:`frame_moments`),
    averaged over frames and voxels, each with a known law under an element ``R`` of O_h
    (:func:`transform_statistics`):

    * ``second_moment`` ``(3, 3)``: ``<u_a u_b> / (<|u|^2> / 3)`` (the identity for isotropic
      statistics; its diagonal is 3 times the energy fractions);
    * ``third_moment`` ``(3, 3, 3)``: ``<u_a u_b u_c> / (s_a s_b s_c)``, ``s_a^2 = <u_a^2>`` (its
      diagonal is the skewness of each component);
    * ``derivative_skewness`` ``(3, 3)``: ``<g_ab^3> / <g_ab^2>^(3/2)`` of ``g_ab = d u_a / d x_b``;
    * ``relative_helicity`` ``()``: the frames' mean.

    The moments are raw (about zero): the group acts linearly on ``u``.
    """
    u2, u3 = moments["u2"].mean(0), moments["u3"].mean(0)
    s = torch.diagonal(u2).sqrt()
    return {"second_moment": u2 / (torch.trace(u2) / 3),
            "third_moment": u3 / torch.einsum("a,b,c->abc", s, s, s),
            "derivative_skewness": moments["g3"].mean(0) / moments["g2"].mean(0).pow(1.5),
            "relative_helicity": moments["helicity"].mean()}


def transform_statistics(stats: dict[str, torch.Tensor], R: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics (:func:`moment_statistics`) of the transformed field ``(R.u)(p) = R u(R^-1 p)``:
    moment tensors as tensors (``M_ab -> R_ac R_bd M_cd``, likewise rank 3), the relative helicity as
    a pseudoscalar (``det R``), the derivative skewness as ``R S R^T`` (exact for a signed permutation
    ``R``: it maps ``d u_a / d x_b`` to ``+-`` one entry of the gradient, and ``(+-1)^3 = +-1``)."""
    R = torch.as_tensor(R, dtype=torch.float64)
    return {"second_moment": R @ stats["second_moment"] @ R.T,
            "third_moment": torch.einsum("ad,be,cf,def->abc", R, R, R, stats["third_moment"]),
            "derivative_skewness": R @ stats["derivative_skewness"] @ R.T,
            "relative_helicity": torch.det(R) * stats["relative_helicity"]}


def odd_parts(stats: dict[str, torch.Tensor], group: str = "Oh") -> dict[str, np.ndarray]:
    """Per statistic, ``(|G|,)``: the largest entry of ``|T_g X - X| / 2`` for each element ``g``
    (indices of ``group_matrices``): the part of ``X`` that ``g`` reverses (0 for a symmetry; the
    skewness of ``u_a`` itself for a flip of axis ``a``)."""
    mats = groups.group_matrices(group).to(torch.float64)
    out = {name: np.zeros(len(mats)) for name in stats}
    for k, R in enumerate(mats):
        for name, value in transform_statistics(stats, R).items():
            out[name][k] = float((value - stats[name]).abs().max()) / 2
    return out


def sample_symmetry(moments: dict[str, torch.Tensor], group: str = "Oh", blocks: int = NOISE_BLOCKS,
                    factor: float = NOISE_FACTOR) -> dict[str, Any]:
    """The symmetry of a sample's statistics: per element of ``group``, the odd parts of
    :func:`moment_statistics` of the frames of ``moments`` (:func:`frame_moments`;
    :func:`odd_parts`); per statistic
    a tolerance, ``factor`` standard errors from the spread over ``blocks`` consecutive blocks of
    frames (rms over the entries); kept are the elements whose every odd part is within its
    tolerance, and ``sample_keeps`` names the largest subgroup among them.

    Frames correlated across blocks (a record shorter than its slowest fluctuations) make the
    tolerance small: the result is then the symmetry of *this* sample, not of the flow's statistics.
    """
    stats = moment_statistics(moments)
    parts = odd_parts(stats, group)
    frames = len(moments["helicity"])
    chunks = [moment_statistics({k: v[idx] for k, v in moments.items()})
              for idx in np.array_split(np.arange(frames), blocks) if len(idx)]
    tolerance = {}
    for name in stats:
        spread = torch.stack([c[name] for c in chunks]).std(dim=0) / math.sqrt(len(chunks))
        tolerance[name] = factor * float(spread.pow(2).mean().sqrt())
    kept = {k for k in range(len(groups.group_matrices(group)))
            if all(parts[name][k] <= tolerance[name] for name in stats)}
    keeps = largest_subgroup_in(kept, group)
    return {"statistics": {name: value.tolist() for name, value in stats.items()},
            "odd_parts": {name: value.tolist() for name, value in parts.items()},
            "tolerance": tolerance, "noise_blocks": len(chunks), "noise_factor": factor,
            "kept_elements": sorted(kept), "sample_keeps_elements": keeps,
            "sample_keeps": subgroup_name(keeps, group)}


def dataset_statistics(path: str, split: str = "train") -> dict[str, Any]:
    """Anisotropy, chirality and symmetry of a generated dataset's ``split`` frames: the fraction of
    the kinetic energy in each component (1/3 each for isotropic statistics), the relative helicity
    ``<u.w> / (rms|u| rms|w|)`` (0 for mirror-symmetric statistics), the skewness of each component
    (0 if the flip of its axis is a symmetry), the correlation coefficients of ``u_x u_y``,
    ``u_x u_z``, ``u_y u_z`` (0 under the flip of either axis), the skewness of each ``d u_a / d x_b``
    (``(3, 3)``), and the sample's own symmetry (:func:`sample_symmetry`)."""
    data = load_generated(path)
    frames = np.sort(data["splits"][split])
    u = data["velocity"][torch.from_numpy(frames)].double()
    moments = frame_moments(u)
    symmetry = sample_symmetry(moments)
    stats = symmetry["statistics"]
    second = np.asarray(stats["second_moment"])
    helicity = moments["helicity"]
    return {"frames": len(frames), "energy_fractions": (np.diag(second) / np.trace(second)).tolist(),
            "relative_helicity": stats["relative_helicity"],
            "relative_helicity_range": [float(helicity.min()), float(helicity.max())],
            "velocity_skewness": [stats["third_moment"][a][a][a] for a in range(3)],
            "cross_correlation": [float(second[a, b] / math.sqrt(second[a, a] * second[b, b]))
                                  for a, b in ((0, 1), (0, 2), (1, 2))],
            "derivative_skewness": stats["derivative_skewness"], **symmetry}


def forcing_symmetry(attrs: dict[str, Any]) -> str | None:
    """The subgroup of O_h that a dataset's forcing keeps (up to translations), from its file
    attributes: isotropic O_h, anisotropic about axis ``a`` D4h about ``a``, Kolmogorov D2h (the sign
    flips of the axes, docs/data.md); ``None`` for an unknown forcing."""
    forcing = attrs.get("forcing")
    if forcing == "isotropic":
        return "Oh"
    if forcing == "anisotropic":
        return f"D4h, axis {AXES[int(attrs.get('axis', 0))]}"
    if forcing == "kolmogorov":
        return "D2h"
    return None


def forcing_label(attrs: dict[str, Any]) -> str:
    """The forcing of a dataset in words, e.g. ``"anisotropic, axis x"``, ``"kolmogorov 0.2 sin(1 x_1) e_0"``."""
    forcing = attrs.get("forcing")
    if forcing == "anisotropic" and attrs.get("axis") is not None:
        return f"anisotropic, axis {AXES[int(attrs['axis'])]}"
    if forcing == "kolmogorov":
        a = int(attrs.get("axis", 0))
        b = int(attrs["shear_axis"]) if attrs.get("shear_axis") is not None else (a + 1) % 3
        return (f"kolmogorov {attrs.get('amplitude', 0.2):g} sin({attrs.get('wavenumber', 1):g} x_{b}) e_{a}")
    return forcing or "forcing unknown"


def _dataset_attrs(path: str) -> dict[str, Any]:
    """The forcing and its parameters (axis, shear axis, amplitude, wavenumber) and the grid size a
    generated dataset records; ``{}`` for other files."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                    if k in ("forcing", "axis", "shear_axis", "amplitude", "wavenumber", "n")}
    except OSError:  # not one HDF5 file (e.g. a directory of JHTDB cutouts)
        return {}
