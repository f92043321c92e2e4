"""Symmetry discovery: relaxed kinds trained on each dataset (:func:`run_discover`), the symmetry their
relaxed weights kept per seed and the consensus over seeds (:func:`discovery_summary`), written as
``discover.json`` and ``discover.md`` (:func:`write_discovery`; the Markdown is
:func:`steerable_sr.report.discovery_markdown`)."""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..data.dataset import SuperResolutionDataset, TurbulenceDataModule, is_generated, load_generated
from ..data.spectral import forcing_label, forcing_symmetry
from ..data.statistics import dataset_statistics
from ..groups import subgroup_elements, subgroup_name
from ..io import atomic_output, to_json, write_text
from ..models import RELAXED_KINDS, build_model
from ..nn.relaxed import relaxed_layers
from ..report import discovery_markdown
from ..report.discovery import statistics_line, summary_markdown
from ..score_test import MIN_BLOCKS, ScoreTest, relaxed_gradients, score_test
from ..symmetry import SymmetryReport, consensus_stabilizer, direction_noise, symmetry_report
from .config import StudyConfig, parse_kind, split_held
from .output import StudyOutput, read_saved
from .runs import set_threads, train_one


def dataset_attributes(path: str) -> dict[str, Any]:
    """The metadata a generated dataset records (forcing, axis, shear axis, amplitude, ...).

    Parameters
    ----------
    path : str
        A dataset given to ``discover``.

    Returns
    -------
    dict
        The file's attributes as Python values (read by
        :func:`steerable_sr.data.dataset.load_generated`); ``{}`` for other inputs (JHTDB cutouts).
    """
    if not is_generated(Path(path)):
        return {}
    return {key: value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value
            for key, value in load_generated(path)["attrs"].items()}


#: The files a discovery publishes, and the names of the trained weights beside them.
DISCOVER_FILES = ("discover.json", "discover.md")
WEIGHTS = "*_seed*.pt"


def discovery_output(out: str | os.PathLike) -> StudyOutput:
    """The output directory of a discovery."""
    return StudyOutput(Path(out), "discover", DISCOVER_FILES, WEIGHTS)


def weights_name(data: str, augment: str | None, spec: str, seed: int) -> str:
    """The file name of a run's trained weights, beside its ``discover.json``."""
    tag = "_aug" + re.sub(r"[^A-Za-z0-9]", "", augment) if augment else ""
    return f"{Path(data).stem}{tag}_{spec}_seed{seed}.pt"


def run_discover(datasets: Sequence[str], cfg: StudyConfig, kinds: Sequence[str] = RELAXED_KINDS,
                 penalty_weight: float = 1e-3, tol: float | None = None, control: bool = False,
                 score_blocks: int = 0, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train relaxed kinds on each dataset and write the symmetry reports of the learned weights.

    Parameters
    ----------
    datasets : sequence of str
        Generated datasets or JHTDB cutouts.
    cfg : StudyConfig
        Training settings (``cfg.seeds``: one run per seed; ``cfg.out``: where results go).
    kinds : sequence of str
        Relaxed kinds (:data:`steerable_sr.models.RELAXED_KINDS`, or their ``_separable`` forms).
    penalty_weight : float
        Weight of the equivariance penalty in the loss.
    tol : float, optional
        The strict read-out (:func:`steerable_sr.symmetry.symmetry_report`); default: the robust one.
    control : bool
        For every dataset whose forcing is known, also train on its batches symmetrised by a random
        element each of the group the forcing keeps
        (:func:`steerable_sr.data.spectral.forcing_symmetry`; ``cfg.augment``): a training
        distribution with exactly the physics' symmetry, whatever the finite sample's asymmetry.
        With robust read-outs (``tol`` None), every run is then read again with the direction noise
        those controls measure (:func:`calibrate_on_controls`).
    score_blocks : int
        With ``B >=`` :data:`~steerable_sr.score_test.MIN_BLOCKS`, the score test of every plain run
        (:mod:`steerable_sr.score_test`) on its training windows in ``B`` time blocks
        (:func:`score_test_blocks`, checked before any training); ``0``: none. Symmetrised controls are not tested (their batches keep their group exactly).
    log : callable
        Progress lines: the sample statistics of each dataset, each run's read-out, the summary.

    Returns
    -------
    dict
        ``{"config", "summary", "results"}``: the summary per dataset, training and kind
        (:func:`discovery_summary`) and, per run, its dataset, forcing, sample statistics, symmetry
        report, read-out per epoch and test metrics. While the study trains, the finished runs
        and their trained weights are kept in ``cfg.out/partial/``; at the end ``discover.json``,
        ``discover.md`` (:func:`write_discovery`) and the weights are published together
        (:class:`~steerable_sr.study.output.StudyOutput`). ``cfg.out`` must not hold the results of an
        earlier discovery unless ``cfg.overwrite`` (checked before any training).
    """
    if not datasets or not kinds or not cfg.seeds:
        raise ValueError("symmetry discovery needs at least one dataset, one relaxed kind and one seed")
    for spec in kinds:
        if parse_kind(spec)[0] not in RELAXED_KINDS or split_held(spec)[1]:
            raise ValueError(f"symmetry discovery needs a relaxed kind with free weights "
                             f"({', '.join(RELAXED_KINDS)}), got {spec!r}")
    for data in datasets:
        if not Path(data).exists():
            raise FileNotFoundError(f"dataset not found: {data} (make one with `steerable-sr generate`)")
    # Checked before any training; the same blocks test every run of a dataset.
    score_batches = {data: score_test_blocks(data, score_blocks, cfg.crop) for data in datasets} if score_blocks else {}
    output = discovery_output(cfg.out)
    output.check(cfg.overwrite)
    set_threads(cfg)
    attributes = {data: dataset_attributes(data) for data in datasets}
    statistics = {data: dataset_statistics(data) if attrs else {} for data, attrs in attributes.items()}
    for data in datasets:
        log(f"[discover] {data}: {statistics_line(statistics[data], forcing_symmetry(attributes[data]))}")
    staging = output.start()
    results, models = [], []
    for data, job in discovery_jobs(attributes, cfg, control):
        attrs = attributes[data]
        for spec in kinds:
            for seed in job.seeds:
                r = train_one(spec, seed, job, data=data, penalty_weight=penalty_weight, keep_model=True)
                model = r.pop("model")
                models.append(model)
                with atomic_output(staging / weights_name(data, job.augment, spec, seed), overwrite=True) as tmp:
                    torch.save(model.state_dict(), tmp)
                report = symmetry_report(model, **({} if tol is None else {"tol": tol}))
                score = None
                if score_blocks and not job.augment:
                    score = score_test(relaxed_gradients(model, score_batches[data]), cfg.group).to_dict()
                results.append({"data": data, "forcing": attrs.get("forcing"), "axis": attrs.get("axis"),
                                "forcing_label": forcing_label(attrs), "forcing_keeps": forcing_symmetry(attrs),
                                "kind": spec, "augment": job.augment,
                                "augment_elements": subgroup_elements(job.augment) if job.augment else None,
                                "data_statistics": statistics[data], "seed": seed,
                                "penalty_weight": penalty_weight, "steps": r["steps"], "fit_s": r["fit_s"],
                                "test": r["test"], "curve": r["curve"], "report": report.to_dict(),
                                "score_test": score})
                log(f"[discover] {spec} on {data}{' (' + job.augment + '-symmetrised)' if job.augment else ''} "
                    f"seed {seed}: {report.in_words()}"
                    + ("" if score is None else f"; {ScoreTest(**score).in_words()}"))
                write_discovery(staging, {"config": asdict(cfg), "results": results})
    if tol is None:
        for line in calibrate_on_controls(results, models):
            log(f"[discover] {line}")
    with output.publish(staging) as tmp:
        for weights in staging.glob("*.pt"):
            os.replace(weights, tmp / weights.name)
        result = write_discovery(tmp, {"config": asdict(cfg), "results": results})
    for row in result["summary"]:
        log(f"[discover] {row['kind']} on {row['data']}{' (' + row['augment'] + '-symmetrised)' if row['augment'] else ''}: "
            f"kept {'; '.join(row['per_seed'])}; consensus {row['consensus']} (at most {row['consensus_at_most']})")
    return result


class WindowBatches:
    """Consecutive training windows as batches, read from the dataset each time they are iterated
    (a record need not fit in memory): per window ``(low_res, high_res)``, ``(c, 9, n, n, n)`` and
    ``(c, 3, 4n, 4n, 4n)`` with ``c`` the dataset's crops per window.

    Parameters
    ----------
    dataset : SuperResolutionDataset
        Fixed crops (``random_crop`` off).
    windows : sequence of int
        Window indices into ``dataset.windows``.
    """

    def __init__(self, dataset: SuperResolutionDataset, windows: Sequence[int]) -> None:
        self.dataset, self.windows = dataset, [int(w) for w in windows]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self):
        c = self.dataset.crops_per_window
        for w in self.windows:
            samples = [self.dataset[w * c + i] for i in range(c)]
            yield torch.stack([x["low_res"] for x in samples]), torch.stack([x["high_res"] for x in samples])


def score_test_blocks(data: str, blocks: int, crop: int | None, crops_per_window: int = 2) -> list[WindowBatches]:
    """The training windows of a dataset in contiguous time blocks, the batches of
    :func:`steerable_sr.score_test.relaxed_gradients`.

    Parameters
    ----------
    data : str
        A dataset given to ``discover``.
    blocks : int
        ``B >=`` :data:`~steerable_sr.score_test.MIN_BLOCKS`; at most the number of training windows.
    crop : int, optional
        The training crop (``None``: whole volumes, one per window).
    crops_per_window : int
        Fixed crops per window, one batch.

    Returns
    -------
    list of WindowBatches
        ``B`` blocks of consecutive windows (sizes differing by at most one), normalised as in
        training, read when iterated.
    """
    if not isinstance(blocks, int) or blocks < MIN_BLOCKS:
        raise ValueError(f"the score test needs at least {MIN_BLOCKS} time blocks, got {blocks!r}")
    dm = TurbulenceDataModule(data, crop=crop)
    dm.setup("fit")
    dm.teardown("fit")  # the frames open again when read
    dataset = SuperResolutionDataset(dm.frames, dm.splits["train"], crop=crop, periodic=dm.periodic,
                                     normalization=dm.velocity_scale,
                                     crops_per_window=crops_per_window if crop is not None else 1)
    count = len(dataset.windows)
    if count < blocks:
        raise ValueError(f"{data}: {count} training windows cannot make {blocks} time blocks for the score test")
    return [WindowBatches(dataset, chunk) for chunk in np.array_split(np.arange(count), blocks)]


def discovery_jobs(attributes: Mapping[str, Mapping[str, Any]], cfg: StudyConfig, control: bool = False
                   ) -> list[tuple[str, StudyConfig]]:
    """The trainings of a discovery.

    Parameters
    ----------
    attributes : mapping
        Per dataset, its :func:`dataset_attributes`.
    cfg : StudyConfig
    control : bool
        Add, for every dataset of known forcing, a training with ``cfg.augment`` the group its forcing
        keeps (:func:`steerable_sr.data.spectral.forcing_symmetry`).

    Returns
    -------
    list of (str, StudyConfig)
        ``(dataset, config)`` per training: each dataset with ``cfg``, then its control.
    """
    jobs = []
    for data, attrs in attributes.items():
        jobs.append((data, cfg))
        keeps = forcing_symmetry(attrs)
        if control and keeps is not None:
            jobs.append((data, replace(cfg, augment=keeps)))
    return jobs


def calibrate_on_controls(results: list[dict], models: Sequence[torch.nn.Module]) -> list[str]:
    """Read every run again with the direction noise of its dataset's symmetrised control.

    The runs trained on batches symmetrised by a subgroup ``H`` (``control``) keep ``H`` exactly in
    their data, so what their relaxed weights break of ``H`` is training noise: it measures ``kappa``
    (:func:`steerable_sr.symmetry.direction_noise`) for the runs of the same dataset and kind. A control
    run is read with the ``kappa`` of the *other* control runs (it does not calibrate itself).

    Parameters
    ----------
    results : list of dict
        The runs of :func:`run_discover`; the ``report`` of each run with a calibration is replaced,
        and ``direction_noise`` records ``kappa``, its degrees of freedom and the runs it came from.
    models : sequence of torch.nn.Module
        The trained model of each run, in the same order.

    Returns
    -------
    list of str
        One line per re-read run: ``kappa``, its source, the new read-out.
    """
    lines = []
    with torch.no_grad():
        weights = [[layer.relaxed_weights_on_group() for _, layer in relaxed_layers(model)] for model in models]
    for i, run in enumerate(results):
        controls = [j for j, other in enumerate(results) if j != i and other["augment"]
                    and other["data"] == run["data"] and other["kind"] == run["kind"]]
        if not controls:
            continue
        symmetric = results[controls[0]]["augment_elements"]
        noise = direction_noise([weights[j] for j in controls], symmetric, run["report"]["group"])
        if noise is None:
            continue
        report = symmetry_report(models[i], direction_noise=noise)
        run["report"] = report.to_dict()
        run["direction_noise"] = {"kappa": noise.kappa, "dof": noise.dof, "control": results[controls[0]]["augment"],
                                  "seeds": [results[j]["seed"] for j in controls]}
        lines.append(f"{run['kind']} on {run['data']}{' (' + run['augment'] + '-symmetrised)' if run['augment'] else ''} "
                     f"seed {run['seed']}, calibrated on the {results[controls[0]]['augment']} control (seeds "
                     f"{', '.join(str(results[j]['seed']) for j in controls)}: direction noise {noise.kappa:.3g}, "
                     f"{noise.dof:.3g} degrees of freedom): {report.in_words()}")
    return lines


def write_discovery(directory: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Add the summary to a discovery's result and write ``discover.json`` and ``discover.md``.

    Parameters
    ----------
    directory : pathlib.Path
        Where to write them.
    result : dict
        ``{"config", "results"}``.

    Returns
    -------
    dict
        ``{"config", "summary", "results"}`` as written.
    """
    result = {"config": result["config"], "summary": discovery_summary(result["results"]),
              "results": list(result["results"])}
    write_text(directory / "discover.json", to_json(result, indent=1))
    write_text(directory / "discover.md", discovery_markdown(result))
    return result


def render_discovery_from_json(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                               log: Callable[[str], Any] = print, overwrite: bool = False) -> dict[str, Any]:
    """Merge the runs of saved ``discover.json`` files and write their summary and reports.

    Where a file's trained weights lie beside it (as ``discover`` writes them), its runs are read
    again with the current read-out (:func:`steerable_sr.symmetry.symmetry_report`) and calibrated on
    their controls (:func:`calibrate_on_controls`); otherwise their saved reports are kept.

    Parameters
    ----------
    paths : sequence of path
        ``discover.json`` files of runs made with the same settings (e.g. one per kind or dataset).
    out : str or os.PathLike
        The output directory; refused if it holds a discovery's results, unless ``overwrite``
        (then only ``discover.json`` and ``discover.md`` are replaced).
    log : callable
        Receives a line per re-read file and the summary table.
    overwrite : bool

    Returns
    -------
    dict
        As :func:`write_discovery`.
    """
    output = discovery_output(out)
    output.check(overwrite, partial=False)
    saved = []
    for path in paths:
        data = read_saved(path, "discover.json", "discover", ("config", "results"))
        models = saved_models(Path(path), data)
        if models is None and not all(isinstance(entry, dict) and "decisions" in entry.get("report", {})
                                      for entry in data["results"]):
            raise ValueError(f"{path} was written by an earlier `steerable-sr discover` (its reports have no "
                             "per-element decisions) and its weights are not beside it: run the discovery again")
        saved.append((path, data, models))
    results = []
    for path, data, models in saved:
        if models is not None:
            for entry, model in zip(data["results"], models):
                entry.pop("direction_noise", None)
                entry["report"] = symmetry_report(model).to_dict()
            for line in calibrate_on_controls(data["results"], models):
                log(f"[discover] {line}")
            log(f"[discover] {path}: {len(models)} runs read again from their saved weights")
        results += data["results"]
    with output.publish() as tmp:
        result = write_discovery(tmp, {"config": saved[0][1]["config"], "results": results})
    log("\n".join(summary_markdown(result["summary"])))
    return result


def saved_models(path: Path, data: dict[str, Any]) -> list[torch.nn.Module] | None:
    """The trained models of a saved ``discover.json``'s runs, from the weights beside it.

    Parameters
    ----------
    path : pathlib.Path
        The ``discover.json``.
    data : dict
        Its contents.

    Returns
    -------
    list of torch.nn.Module or None
        One model per run, in order; ``None`` if any run's weights are missing (a merged or copied
        file) or a run was read with the strict criterion (its tolerance is not saved). Weights that do
        not fit the run's model are refused in one line.
    """
    config, runs = data["config"], data["results"]
    if not all(isinstance(e, dict) and {"data", "augment", "kind", "seed", "report"} <= e.keys() for e in runs):
        return None
    if any(str(e["report"].get("criterion", "")).startswith("strict") for e in runs):
        return None
    files = [path.parent / weights_name(e["data"], e["augment"], e["kind"], e["seed"]) for e in runs]
    if not files or not all(f.is_file() for f in files):
        return None
    models = []
    for entry, file in zip(runs, files):
        kind, overrides = parse_kind(entry["kind"])
        model = build_model(kind, group=config.get("group", "Oh"), preset=config.get("preset", "small"),
                            **{**overrides, **(config.get("model_overrides") or {})})
        try:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{file} does not hold the weights of its run in {path} "
                             f"({str(exc).strip().splitlines()[0]})") from None
        models.append(model.eval())
    return models


def last_resolved_epoch(run: dict) -> dict[str, Any] | None:
    """The last epoch whose read-out broke part of the group, for a run whose final weights resolve no
    breaking (a breaking learned early and worn away by the penalty tells apart from none ever).

    Parameters
    ----------
    run : dict
        A run of :func:`run_discover` (its ``report`` and its ``curve``, the read-out after each epoch).

    Returns
    -------
    dict or None
        ``{"epoch", "symmetry", "significance"}`` (epoch counted from 1); ``None`` when the final
        weights resolve breaking or no epoch did.
    """
    report = SymmetryReport.from_dict(run["report"])
    if report.resolved:
        return None
    whole = subgroup_name(list(range(len(report.defects))), report.group)
    broke = [row for row in run["curve"] if row.get("symmetry", whole) != whole]
    if not broke:
        return None
    row = broke[-1]
    return {"epoch": row["epoch"] + 1, "symmetry": row["symmetry"], "significance": row["significance"]}


def discovery_summary(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Per dataset, training (plain or symmetrised) and kind: the symmetry each seed kept with
    confidence and at most, and the consensus over seeds of both
    (:func:`steerable_sr.symmetry.consensus_stabilizer`).

    Parameters
    ----------
    results : sequence of dict
        The runs of :func:`run_discover`.

    Returns
    -------
    list of dict
        One row per dataset, training and kind, in order of first appearance: per seed the kept
        symmetry, the most it may be, the largest significance, ``kappa``, whether any breaking is
        resolved (:attr:`steerable_sr.symmetry.SymmetryReport.resolved`) and, where the end resolves
        none, the last epoch that did (:func:`last_resolved_epoch`), what the score test keeps at most
        (``None`` where it did not run); the consensus of both read-outs of the weights.
    """
    runs: dict[tuple, list[dict]] = {}
    for r in results:
        runs.setdefault((r["data"], r["augment"], r["kind"]), []).append(r)
    summary = []
    for (data, augment, kind), rows in runs.items():
        group = rows[0]["report"]["group"]
        consensus = consensus_stabilizer([r["report"]["stabilizer"] for r in rows], group)
        at_most = consensus_stabilizer([r["report"]["at_most"] for r in rows], group)
        first = rows[0]
        summary.append({"data": data, "augment": augment, "kind": kind, "forcing": first["forcing"],
                        "axis": first["axis"], "forcing_label": first["forcing_label"],
                        "forcing_keeps": first["forcing_keeps"],
                        "sample_keeps": (first["data_statistics"] or {}).get("sample_keeps"),
                        "seeds": [r["seed"] for r in rows],
                        "per_seed": [r["report"]["stabilizer_name"] for r in rows],
                        "per_seed_at_most": [r["report"]["at_most_name"] for r in rows],
                        "significance": [r["report"]["significance"] for r in rows],
                        "resolved": [SymmetryReport.from_dict(r["report"]).resolved for r in rows],
                        "last_resolved": [last_resolved_epoch(r) for r in rows],
                        "score_keeps": [(r.get("score_test") or {}).get("keeps_name") for r in rows],
                        "direction_noise": [r["report"].get("direction_noise") for r in rows],
                        "consensus": subgroup_name(consensus, group), "consensus_stabilizer": consensus,
                        "consensus_at_most": subgroup_name(at_most, group)})
    return summary
