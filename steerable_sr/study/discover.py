"""Symmetry discovery: relaxed kinds trained on each dataset (:func:`run_discover`), the symmetry their
relaxed weights kept per seed and the consensus over seeds, as ``discover.json`` and ``discover.md``."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch

from ..io import atomic_output, to_json, write_text
from ..metrics import vorticity
from ..models import RELAXED_KINDS
from ..symmetry import SymmetryReport, consensus_stabilizer, subgroup_name, symmetry_report
from .config import CompareConfig, parse_kind
from .runs import set_threads, train_one


def run_discover(datasets: Sequence[str], cfg: CompareConfig, kinds: Sequence[str] = RELAXED_KINDS,
                 penalty_weight: float = 1e-3, tol: float | None = None, control: bool = False,
                 log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train relaxed ``kinds`` on each dataset and write the symmetry reports of the learned weights.

    ``control``: for every dataset with isotropic forcing, also train on its batches symmetrised by a
    random O_h element each (``cfg.augment = "Oh"``): a training distribution that is exactly O_h
    symmetric, whatever the finite sample's anisotropy.

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
    jobs = []
    for data in datasets:
        if not Path(data).exists():
            raise FileNotFoundError(f"dataset not found: {data} (make one with `steerable-sr generate`)")
        jobs.append((data, cfg))
        if control and _dataset_attrs(data).get("forcing") == "isotropic":
            jobs.append((data, replace(cfg, augment="Oh")))
    results = []
    for data, job in jobs:
        attrs = _dataset_attrs(data)
        try:
            stats = dataset_statistics(data)
        except Exception:  # JHTDB cutouts and other layouts: no statistics
            stats = {}
        for spec in kinds:
            for seed in job.seeds:
                r = train_one(spec, seed, job, data=data, penalty_weight=penalty_weight, keep_model=True)
                model = r.pop("model")
                tag = f"_aug{job.augment}" if job.augment else ""
                with atomic_output(out / f"{Path(data).stem}{tag}_{spec}_seed{seed}.pt", overwrite=True) as tmp:
                    torch.save(model.state_dict(), tmp)
                report = symmetry_report(model, **({} if tol is None else {"tol": tol}))
                results.append({"data": data, "forcing": attrs.get("forcing"), "axis": attrs.get("axis"),
                                "kind": spec, "augment": job.augment, "data_statistics": stats, "seed": seed,
                                "penalty_weight": penalty_weight, "steps": r["steps"], "fit_s": r["fit_s"],
                                "test": r["test"], "curve": r["curve"], "report": report.to_dict()})
                log(f"[discover] {spec} on {data}{' (' + job.augment + '-symmetrised)' if job.augment else ''} "
                    f"seed {seed}: kept {report.stabilizer_name} (order {len(report.stabilizer)})")
                result = write_discovery(out, {"config": asdict(cfg), "results": results})
    for row in result["summary"]:
        log(f"[discover] {row['kind']} on {row['data']}{' (' + row['augment'] + '-symmetrised)' if row['augment'] else ''}: "
            f"kept {', '.join(row['per_seed'])}; consensus {row['consensus']}")
    return result


def write_discovery(out: str | os.PathLike, result: dict[str, Any]) -> dict[str, Any]:
    """Add the summary to ``result`` (``{"config", "results"}``) and write ``discover.json`` and
    ``discover.md`` to ``out``, each atomically."""
    result = {"config": result["config"], "summary": discovery_summary(result["results"]),
              "results": list(result["results"])}
    md = summary_markdown(result["summary"])
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
    axis = f", axis {'xyz'[int(entry['axis'])]}" if entry["forcing"] == "anisotropic" else ""
    md = [f"### {entry['kind']} on `{entry['data']}` (forcing {entry['forcing']}{axis}), seed {entry['seed']}, "
          f"penalty {entry['penalty_weight']}, {entry['steps']} steps"
          + (f", training batches symmetrised by random {entry['augment']} elements" if entry["augment"] else ""), ""]
    stats = entry.get("data_statistics")
    if stats:
        md += ["Training frames: energy fractions (x, y, z) = ("
               + ", ".join(f"{v:.3f}" for v in stats["energy_fractions"])
               + f"), relative helicity {stats['relative_helicity']:.3f}.", ""]
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
        summary.append({"data": data, "augment": augment, "kind": kind, "forcing": rows[0]["forcing"],
                        "axis": rows[0]["axis"], "seeds": [r["seed"] for r in rows],
                        "per_seed": [r["report"]["stabilizer_name"] for r in rows],
                        "significance": [r["report"]["significance"] for r in rows],
                        "consensus": subgroup_name(consensus, group), "consensus_stabilizer": consensus})
    return summary


def summary_markdown(summary: Sequence[dict]) -> list[str]:
    """The summary table of :func:`discovery_summary` as Markdown lines."""
    lines = ["## Summary", "",
             "| data | training | kind | kept symmetry per seed (largest significance s) | consensus over seeds |",
             "| --- | --- | --- | --- | --- |"]
    for row in summary:
        forcing = row["forcing"] or "forcing unknown"
        if row["forcing"] == "anisotropic" and row["axis"] is not None:
            forcing += f", axis {'xyz'[int(row['axis'])]}"
        training = f"batches symmetrised by random {row['augment']} elements" if row["augment"] else "plain"
        seeds = "; ".join(f"{seed}: {name} ({s:.2g})"
                          for seed, name, s in zip(row["seeds"], row["per_seed"], row["significance"]))
        lines.append(f"| `{row['data']}` ({forcing}) | {training} | {row['kind']} | {seeds} | **{row['consensus']}** |")
    return lines + [""]


def dataset_statistics(path: str, split: str = "train") -> dict[str, Any]:
    """Anisotropy and chirality of a generated dataset's ``split`` frames: the fraction of the kinetic
    energy in each component (1/3 each for isotropic statistics) and the relative helicity
    ``<u.w> / (rms|u| rms|w|)`` (0 for mirror-symmetric statistics)."""
    with h5py.File(path, "r") as f:
        frames = np.sort(f[f"splits/{split}"][:]) if f"splits/{split}" in f else np.arange(f["velocity"].shape[0])
        u = torch.from_numpy(f["velocity"][frames.tolist()]).double()
    w = vorticity(u, method="spectral")
    energy = u.pow(2).mean(dim=(2, 3, 4)).mean(0)
    helicity = (u * w).sum(1).mean(dim=(1, 2, 3)) / (u.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()
                                                     * w.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt())
    return {"frames": len(frames), "energy_fractions": (energy / energy.sum()).tolist(),
            "relative_helicity": float(helicity.mean()), "relative_helicity_range": [float(helicity.min()),
                                                                                    float(helicity.max())]}


def _dataset_attrs(path: str) -> dict[str, Any]:
    """The forcing, forcing axis and grid size a generated dataset records; ``{}`` for other files."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                    if k in ("forcing", "axis", "n")}
    except OSError:  # not one HDF5 file (e.g. a directory of JHTDB cutouts)
        return {}
