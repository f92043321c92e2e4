"""The comparison of model kinds: every kind and seed trained alike (:func:`run_compare`), the table of
test metrics over seeds (:func:`aggregate`, :func:`table_markdown`) and the two plots, published
together (:func:`render`)."""
from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..io import to_json, write_text
from ..plots import plot_spectra, save_png
from .config import StudyConfig
from .output import StudyOutput, read_saved
from .paired import convergence, paired_differences, paired_markdown
from .runs import measure_build_time, set_threads, train_one

#: Test metrics of the table: (key logged by SuperResolutionModule, column title, format).
TABLE_METRICS = (
    ("mae", "MAE", "{:.4f}"),
    ("rmse", "RMSE", "{:.4f}"),
    ("rel_l2", "rel L2", "{:.4f}"),
    ("spec_err", "spectrum err", "{:.4f}"),
    ("div", "divergence", "{:.4f}"),
    ("equiv_err", "equiv err", "{:.2e}"),
)


def _stats(values: Sequence[float | None]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def aggregate(runs: Sequence[dict], build: dict[str, dict] | None = None) -> dict[str, dict]:
    """Statistics over seeds, per kind.

    Parameters
    ----------
    runs : sequence of dict
        :func:`~steerable_sr.study.runs.train_one` results (at least ``kind``, ``seed``, ``params``,
        ``step_s``, ``test``).
    build : dict, optional
        Build times per kind (:func:`~steerable_sr.study.runs.measure_build_time`).

    Returns
    -------
    dict
        Per kind: ``params``, ``seeds``, and for the step time and every test metric its ``mean``,
        sample ``std``, ``min``, ``max`` and ``n`` over seeds; the build times.
    """
    table: dict[str, dict] = {}
    for spec in dict.fromkeys(r["kind"] for r in runs):
        mine = [r for r in runs if r["kind"] == spec]
        row: dict[str, Any] = {"params": mine[0]["params"], "seeds": [r["seed"] for r in mine],
                               "step_s": _stats([r["step_s"] for r in mine]),
                               "steps": sorted({int(r["steps"]) for r in mine if "steps" in r})}
        for key in sorted({k for r in mine for k in r["test"]}):
            row[key] = _stats([r["test"].get(key) for r in mine])
        if build and spec in build:
            row.update(build[spec])
        table[spec] = row
    return table


def _pm(stats: dict | None, fmt: str) -> str:
    if not stats or not stats.get("n"):
        return "–"
    text = fmt.format(stats["mean"])
    if stats["n"] > 1:
        text += " ± " + fmt.format(stats["std"])
    return text


def _steps_taken(table: dict[str, dict]) -> str:
    """``", 100 training steps per run"``: the steps the runs took (an epoch ends with its data, before
    ``limit_train_batches`` when the split is short)."""
    steps = sorted({n for row in table.values() for n in row.get("steps", [])})
    if not steps:
        return ""
    return f", {steps[0]}{'-' + str(steps[-1]) if len(steps) > 1 else ''} training steps per run"


def table_markdown(table: dict[str, dict], cfg: StudyConfig | None = None) -> str:
    """The comparison table as Markdown: mean ± sample std over seeds, and the trilinear baseline.

    Parameters
    ----------
    table : dict
        :func:`aggregate`.
    cfg : StudyConfig, optional
        The settings, described below the table.

    Returns
    -------
    str
    """
    cols = ["kind", "params", "build cold (s)", "build warm (s)", "step (ms)"] + [t for _, t, _ in TABLE_METRICS]
    lines = ["| " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) - 1)]
    for spec, row in table.items():
        step = row["step_s"]
        step_ms = {**step, "mean": step["mean"] * 1e3, "std": step["std"] * 1e3}
        cells = [spec, f"{row['params']:,}",
                 f"{row['build_cold_s']:.2f}" if "build_cold_s" in row else "–",
                 f"{row['build_warm_s']:.2f}" if "build_warm_s" in row else "–",
                 _pm(step_ms, "{:.0f}")]
        cells += [_pm(row.get(key), fmt) for key, _, fmt in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    if table:
        ref = next(iter(table.values()))
        cells = ["trilinear", "0", "–", "–", "–"] + [
            _pm(ref.get("trilinear_" + key), fmt) if key != "equiv_err" else "0 (exact)"
            for key, _, fmt in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
        if "div_true" in ref:
            lines.append("")
            lines.append(f"Divergence residual of the truth (the floor of the central-difference stencil on crops): "
                         f"{ref['div_true']['mean']:.4f}.")
    if cfg is not None:
        seeds = ", ".join(str(s) for s in cfg.seeds)
        lines.append("")
        lines.append(f"Data `{cfg.data}`, crops {cfg.crop}^3 (input {cfg.crop // 4 if cfg.crop else 'whole'}^3), "
                     f"batch {cfg.batch_size}, {cfg.max_epochs} epochs"
                     + (f" of at most {cfg.limit_train_batches} batches" if cfg.limit_train_batches else "")
                     + (f" (at most {cfg.max_steps} steps)" if cfg.max_steps and cfg.max_steps > 0 else "")
                     + _steps_taken(table)
                     + f", Adam lr {cfg.lr} (weight decay "
                     f"{cfg.weight_decay}, StepLR {cfg.gamma}), penalty weight {cfg.penalty_weight} (relaxed kinds), "
                     f"preset `{cfg.preset}`, group {cfg.group}, seeds {seeds}: mean ± sample std over seeds; "
                     "test split; equivariance error over "
                     f"{'all' if cfg.test_equivariance_elements is None else cfg.test_equivariance_elements} group elements.")
    return "\n".join(lines)


def plot_curves(path: str | os.PathLike, runs: Sequence[dict], key: str = "val/mae") -> None:
    """Plot a validation metric per epoch and kind and save it as PNG.

    Parameters
    ----------
    path : str or os.PathLike
    runs : sequence of dict
        With their ``curve`` (:class:`~steerable_sr.study.runs.Recorder`).
    key : str
        The metric: mean over seeds, band from min to max; the trilinear baseline dashed.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for spec in dict.fromkeys(r["kind"] for r in runs):
        curves = [[row.get(key, np.nan) for row in r["curve"]] for r in runs if r["kind"] == spec]
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        arr = np.asarray([c[:n] for c in curves], dtype=float)
        epochs = np.arange(1, n + 1)
        line, = ax.plot(epochs, arr.mean(0), marker="o", ms=3, label=spec)
        if arr.shape[0] > 1:
            ax.fill_between(epochs, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
    tri = [r["curve"][-1].get("val/trilinear_mae") for r in runs if r["curve"]]
    tri = [t for t in tri if t is not None]
    if tri:
        ax.axhline(float(np.mean(tri)), color="k", ls="--", lw=1, label="trilinear")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key + " (normalised units)")
    ax.set_title("validation MAE (mean over seeds, band = min..max)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def plot_run_spectra(path: str | os.PathLike, runs: Sequence[dict]) -> None:
    """Plot the test-set spectra of the truth, trilinear and each kind's predictions (mean over seeds)
    and save them as PNG.

    Parameters
    ----------
    path : str or os.PathLike
    runs : sequence of dict
        With their ``spectra`` (:func:`~steerable_sr.study.runs.mean_spectra`).
    """
    first = runs[0]["spectra"]
    spectra = {"truth": first["truth"], "trilinear": first["trilinear"]}
    for spec in dict.fromkeys(r["kind"] for r in runs):
        spectra[spec] = np.mean([r["spectra"]["prediction"] for r in runs if r["kind"] == spec], axis=0)
    # k = N/2, the largest shell resolved in every direction (num_shells(N) = round(sqrt(3) N/2) + 1)
    half = round((len(first["truth"]) - 1) / math.sqrt(3))
    plot_spectra(path, spectra, "test-set energy spectra (mean over samples and seeds)", mark_k=half)


#: The files a comparison publishes.
COMPARE_FILES = ("results.json", "results.md", "val_curves.png", "spectra.png")


def comparison_output(out: str | os.PathLike) -> StudyOutput:
    """The output directory of a comparison."""
    return StudyOutput(Path(out), "compare", COMPARE_FILES)


def run_compare(cfg: StudyConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train every kind of a study with every seed and publish the comparison.

    Parameters
    ----------
    cfg : StudyConfig
        ``cfg.out`` must not hold the results of an earlier comparison unless ``cfg.overwrite``
        (checked before any training, :class:`~steerable_sr.study.output.StudyOutput`).
    log : callable
        Progress lines (build times, each run) and the table.

    Returns
    -------
    dict
        ``{"config", "build", "table", "paired", "convergence", "runs"}`` as in ``results.json``. The
        finished runs are kept in ``cfg.out/partial/results.json`` while the study trains; at the end ``results.json``,
        ``results.md``, ``val_curves.png`` and ``spectra.png`` are published together.
    """
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"dataset not found: {cfg.data} (make one with `steerable-sr generate`)")
    output = comparison_output(cfg.out)
    output.check(cfg.overwrite)
    set_threads(cfg)
    staging = output.start()
    build: dict[str, dict] = {}
    if cfg.build_time:
        for spec in cfg.kinds:
            build[spec] = measure_build_time(spec, cfg.group, cfg.preset)
            log(f"[compare] build {spec}: cold {build[spec]['build_cold_s']:.2f} s, "
                f"warm {build[spec]['build_warm_s']:.2f} s")
    runs = []
    for spec in cfg.kinds:
        for seed in cfg.seeds:
            r = train_one(spec, seed, cfg)
            runs.append(r)
            log(f"[compare] {spec} seed {seed}: {r['params']:,} params, {r['steps']} steps in {r['fit_s']:.1f} s "
                f"(step {r['step_s'] * 1e3:.0f} ms), test MAE {r['test'].get('mae', float('nan')):.4f}, "
                f"equiv err {r['test'].get('equiv_err', float('nan')):.2e}")
            progress = {"config": asdict(cfg), "build": build, "runs": runs}
            write_text(staging / "results.json", to_json(progress, indent=1))
    with output.publish(staging) as tmp:
        result = render(tmp, cfg, runs, build)
    log(table_markdown(result["table"], cfg) + "\n\n" + paired_markdown(runs))
    return result


def render(directory: Path, cfg: StudyConfig, runs: Sequence[dict], build: dict[str, dict] | None = None
           ) -> dict[str, Any]:
    """Aggregate runs and write the comparison's files.

    Parameters
    ----------
    directory : pathlib.Path
        Receives ``results.json``, ``results.md``, ``val_curves.png`` and ``spectra.png``.
    cfg : StudyConfig
        The settings, saved and shown below the table.
    runs : sequence of dict
        :func:`~steerable_sr.study.runs.train_one` results.
    build : dict, optional
        Build times per kind.

    Returns
    -------
    dict
        ``{"config", "build", "table", "paired", "convergence", "runs"}``: ``paired`` the relaxed
        minus exact differences of test MAE (:func:`~steerable_sr.study.paired.paired_differences`),
        ``convergence`` per run (:func:`~steerable_sr.study.paired.convergence`).
    """
    table = aggregate(runs, build)
    result = {"config": asdict(cfg), "build": build or {}, "table": table, "paired": paired_differences(runs),
              "convergence": [{"kind": r["kind"], "seed": r["seed"], **convergence(r.get("curve", []))} for r in runs],
              "runs": list(runs)}
    (directory / "results.json").write_text(to_json(result, indent=1))
    (directory / "results.md").write_text(table_markdown(table, cfg) + "\n\n" + paired_markdown(runs) + "\n")
    plot_curves(directory / "val_curves.png", runs)
    plot_run_spectra(directory / "spectra.png", runs)
    return result


#: Settings that do not change what a run learns or how it is tested: comparisons that differ only
#: in these may be merged (:func:`render_from_json`).
MERGEABLE_SETTINGS = frozenset({"out", "kinds", "seeds", "build_time", "threads", "progress", "overwrite",
                                "accelerator", "devices"})


def render_from_json(paths: str | os.PathLike | Sequence[str | os.PathLike], out: str | None = None,
                     log: Callable[[str], Any] = print, overwrite: bool = False) -> dict[str, Any]:
    """Render saved, possibly partial, ``results.json`` files of :func:`run_compare` again, merging
    their runs.

    Studies of other kinds or seeds under the same settings (e.g. two halves of the seeds run side by
    side) merge into one table, paired differences over all their seeds included.

    Parameters
    ----------
    paths : path or sequence of paths
        ``OUT/results.json`` files, or ``OUT/partial/results.json`` of an interrupted comparison.
    out : str, optional
        The output directory (default: the first file's); refused if it holds a comparison's
        results, unless ``overwrite``.
    log : callable
        Receives the table.
    overwrite : bool

    Returns
    -------
    dict
        As :func:`run_compare`.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file: missing, not a ``results.json``, trained with other settings than the first
        (any but :data:`MERGEABLE_SETTINGS`), or holding a kind and seed another file holds too.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("no results.json to render")
    saved = [read_saved(path, "results.json", "compare", ("config", "runs")) for path in paths]
    config = dict(saved[0]["config"])
    runs: list[dict] = []
    owner: dict[tuple[str, int], str | os.PathLike] = {}
    for path, data in zip(paths, saved):
        for key in config.keys() - MERGEABLE_SETTINGS:
            if data["config"].get(key) != config[key]:
                raise ValueError(f"{path}: {key} = {data['config'].get(key)!r}, not {config[key]!r} as in {paths[0]}: "
                                 "only comparisons with the same settings merge")
        for run in data["runs"]:
            key = (run["kind"], run["seed"])
            if key in owner:
                raise ValueError(f"{path}: {run['kind']} seed {run['seed']} is also in {owner[key]}")
            owner[key] = path
            runs.append(run)
    build = {k: v for data in saved for k, v in (data.get("build") or {}).items()}
    if out is not None:
        config["out"] = out
    config["overwrite"] = overwrite
    cfg = StudyConfig(**{k: v for k, v in config.items() if k in StudyConfig.__dataclass_fields__})
    cfg.kinds = tuple(dict.fromkeys(r["kind"] for r in runs)) or cfg.kinds
    cfg.seeds = tuple(sorted({r["seed"] for r in runs})) or cfg.seeds
    output = comparison_output(cfg.out)
    output.check(overwrite, partial=False)
    with output.publish() as tmp:
        result = render(tmp, cfg, runs, build)
    log(table_markdown(result["table"], cfg) + "\n\n" + paired_markdown(runs))
    return result

