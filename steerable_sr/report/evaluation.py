r"""The evaluation report of a trained network: metrics table (JSON + Markdown), energy spectra and
slice plots, symmetry report.

:func:`evaluate_model` runs a trained network over batches ``{"low_res", "high_res"}`` and returns the metrics
of the model and of the trilinear baseline (sample-weighted means over batches of
:func:`steerable_sr.metrics.field_metrics`, the same numbers ``steerable-sr test`` logs), the
truth's divergence residual (the floor), the equivariance error over the whole group on the first
batch, and the batch-averaged energy spectra of the truth, the prediction, the trilinear baseline and
the input (middle low-res frame). :func:`write_report` writes

* ``metrics.json`` and ``metrics.md``: the table;
* ``spectra.png``: ``E(k)`` of truth, prediction, trilinear and input (log-log);
* ``slice.png``: velocity magnitude and vorticity magnitude on the middle ``x_2`` slice of the first
  sample, for input, trilinear, prediction and truth side by side;
* ``symmetry.md`` (+ ``symmetry.json``) for relaxed models, from :mod:`steerable_sr.symmetry`.

A new directory is written to a temporary sibling first and renamed into place. An existing report
directory is only updated with ``overwrite``: the files above are replaced (each atomically, after
all were written) and every other file in it is kept; a directory that holds no report is refused
(:func:`check_report_destination`). A failed evaluation never leaves a half-written or clobbered
report.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from .. import metrics
from ..io import atomic_directory, atomic_files, to_json
from ..plots import plot_spectra, save_png
from ..symmetry import SymmetryReport
from ..tiling import BoundedNetwork, default_max_memory, tileable


_ROWS = [
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("rel_l2", "relative L2"),
    ("spec_err", "spectrum error (mean abs log10, all k)"),
    ("spec_err_low", "spectrum error, low k"),
    ("spec_err_mid", "spectrum error, mid k"),
    ("spec_err_high", "spectrum error, high k"),
    ("div", "divergence residual"),
]


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, batches: Iterable[Any], group: str = "Oh", upscale: int = 4,
                   equivariance_elements: int | None = None, device: str | torch.device = "cpu",
                   max_batches: int | None = None, divergence_periodic: bool = False,
                   max_memory: int | None = None) -> dict[str, Any]:
    """Metrics, spectra and one sample of fields for the report (module docstring).

    A network of :mod:`steerable_sr.models` runs batch by batch within ``max_memory``
    (:class:`steerable_sr.tiling.BoundedNetwork`): a batch of whole volumes too large for one pass is
    predicted sample by sample in tiles, the same values to float round-off; crops that fit go through
    the network whole, as batches.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``low_res`` ``(B, 3 T, n, n, n)`` to ``(B, 3, upscale n, ...)``.
    batches : iterable
        Dicts ``{"low_res", "high_res"}`` or pairs ``(low_res, high_res)``.
    group : {"Oh", "O"}
        Of the equivariance error.
    upscale : int
        Of the trilinear baseline.
    equivariance_elements : int, optional
        Elements of the equivariance error on the first batch (``None``: all).
    device : str or torch.device
    max_batches : int, optional
        Stop after this many batches.
    divergence_periodic : bool
        Samples are whole periodic boxes (else crops: interior differences).
    max_memory : int, optional
        Bytes that one forward pass may use (default :func:`steerable_sr.tiling.default_max_memory` of
        ``device``); not used for a model that :func:`steerable_sr.tiling.tileable` does not read.

    Returns
    -------
    dict
        ``metrics`` (``model``, ``trilinear``, ``truth``: sample-weighted means), ``equivariance``
        (max, mean, elements, group), ``samples``, ``spectra`` (mean ``E(k)`` of truth, prediction,
        trilinear, input for ``k <= N // 2``), ``spectrum_error_of_mean_spectra``, ``sample`` (the
        first sample's input, trilinear, prediction and truth, ``(3, N, N, N)`` each).
    """
    model = model.to(device)
    was_training = model.training
    model.eval()
    network = (BoundedNetwork(model, default_max_memory(device) if max_memory is None else max_memory)
               if tileable(model) else model)
    sums: dict[str, dict[str, float]] = {"model": {}, "trilinear": {}, "truth": {}}
    count = 0
    spectra: dict[str, torch.Tensor] = {}
    sample = None
    equiv = None
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if isinstance(batch, dict):
                x, y = batch["low_res"], batch["high_res"]
            else:
                x, y = batch[0], batch[1]
            x = x.to(device).float()
            y = y.to(device).float()
            pred = network(x).float()
            base = metrics.trilinear(x, upscale)
            bs = x.shape[0]
            for name, field in (("model", pred), ("trilinear", base)):
                for k, v in metrics.field_metrics(field, y, periodic=divergence_periodic).items():
                    sums[name][k] = sums[name].get(k, 0.0) + v * bs
            sums["truth"]["div"] = sums["truth"].get("div", 0.0) + bs * float(
                metrics.divergence_residual(y, periodic=divergence_periodic))
            count += bs
            inp = metrics.middle_frame(x)
            for name, field in (("truth", y), ("prediction", pred), ("trilinear", base), ("input", inp)):
                s = metrics.energy_spectrum(field).sum(0).cpu()
                spectra[name] = spectra[name] + s if name in spectra else s
            if sample is None:
                sample = {"input": inp[0].cpu(), "trilinear": base[0].cpu(), "prediction": pred[0].cpu(),
                          "truth": y[0].cpu()}
                errs = metrics.equivariance_errors(network, x, group, equivariance_elements)
                equiv = {"max": float(errs.max()), "mean": float(errs.mean()), "elements": int(errs.numel()),
                         "group": group}
    finally:
        if was_training:
            model.train()
    if count == 0:
        raise ValueError("no evaluation batches: the dataset split is empty")
    results = {name: {k: v / count for k, v in d.items()} for name, d in sums.items()}
    # keep the shells k <= N/2 that the cube resolves in every direction (corners are partial shells)
    sizes = {name: field.shape[-1] for name, field in sample.items()}
    spectra = {k: (v / count).numpy()[: sizes[k] // 2 + 1]
               for k, v in spectra.items()}
    overall = {}
    n = sample["truth"].shape[-1] if sample else 0
    if "truth" in spectra and n >= 6:
        t = np.log10(np.maximum(spectra["truth"], 1e-30))
        for name in ("prediction", "trilinear"):
            p = np.log10(np.maximum(spectra[name], 1e-30))
            overall[name] = float(np.mean(np.abs(p - t)[1 : n // 2 + 1]))
    return {"metrics": results, "equivariance": equiv, "samples": count, "spectra": spectra,
            "spectrum_error_of_mean_spectra": overall, "sample": sample}


def metrics_markdown(result: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """The metrics table of :func:`evaluate_model` as Markdown (``metrics.md``), ``info`` as a list above it."""
    m = result["metrics"]
    lines = ["# Evaluation report", ""]
    if info:
        for k, v in info.items():
            lines.append(f"- **{k}**: {v}")
        lines.append("")
    lines += [f"Samples: {result['samples']}. Metrics are sample-weighted means over batches, in the data's "
              "(normalised) units; spectrum errors are mean |log10 E_pred(k) - log10 E_true(k)| over the "
              "shells k = 1 .. N/2 and their thirds (see `steerable_sr.metrics`).", "",
              "| metric | model | trilinear | truth |", "|---|---|---|---|"]
    for key, label in _ROWS:
        if key not in m["model"]:
            continue
        truth = m["truth"].get(key)
        lines.append(f"| {label} | {m['model'][key]:.4g} | {m['trilinear'].get(key, float('nan')):.4g} | "
                     f"{'' if truth is None else f'{truth:.4g}'} |")
    eq = result.get("equivariance")
    if eq:
        lines += ["", f"Equivariance error (relative, {eq['group']}, {eq['elements']} elements, first batch): "
                  f"max {eq['max']:.3g}, mean {eq['mean']:.3g}."]
    return "\n".join(lines) + "\n"


def slice_panels(field: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Velocity and vorticity magnitude of a field on its middle ``x_2`` plane.

    Parameters
    ----------
    field : torch.Tensor
        ``(3, N, N, N)`` velocity.

    Returns
    -------
    speed : numpy.ndarray
        ``|u|`` on the plane ``x_2 = N // 2``, ``(N, N)`` indexed ``(x_0, x_1)``.
    curl : numpy.ndarray
        ``|curl u|`` on the same plane from central differences on the interior voxels, like the
        divergence metric (a crop is not periodic, and differences across its edges would show a
        bright frame): ``(N - 2, N - 2)``, voxels ``1 .. N - 2``; for ``N < 3``, which has no
        interior voxel, ``(N, N)`` of NaN (a blank panel).

    Both are in box units (grid units times ``N``), so all resolutions share a colour scale.
    """
    n = field.shape[-1]
    speed = field.double().norm(dim=0)[:, :, n // 2].numpy()
    if n < 3:
        return speed, np.full((n, n), np.nan)
    curl = metrics.vorticity(field.double(), method="central", periodic=False).norm(dim=0) * n
    return speed, curl[:, :, n // 2 - 1].numpy()


def plot_slice(path: str | os.PathLike, fields: Mapping[str, torch.Tensor], title: str = "") -> None:
    """Plot velocity magnitude (top) and vorticity magnitude (bottom) on the middle ``x_2`` slice
    (:func:`slice_panels`) of each field side by side, and save them as PNG.

    Parameters
    ----------
    path : str or os.PathLike
    fields : mapping of str to torch.Tensor
        ``(3, N, N, N)`` fields by name; ``N`` may differ between them.
    title : str
    """
    names = list(fields)
    fig = Figure(figsize=(3 * len(names), 6))
    axes = fig.subplots(2, len(names), squeeze=False)
    panels = {k: slice_panels(v) for k, v in fields.items()}
    vmax = []
    for i in range(2):  # one colour scale per row, over the panels that have values
        finite = [float(np.nanmax(p[i])) for p in panels.values() if np.isfinite(p[i]).any()]
        vmax.append(max(finite) if finite else None)
    for j, k in enumerate(names):
        n = fields[k].shape[-1]
        for i, label in enumerate(("|u|", "|curl u|")):
            ax = axes[i][j]
            edge = 1.0 / n if i == 1 and n >= 3 else 0.0  # the interior voxels 1 .. n - 2 of the curl
            im = ax.imshow(panels[k][i].T, origin="lower", cmap="viridis" if i == 0 else "magma", vmin=0,
                           vmax=vmax[i], extent=(edge, 1 - edge, edge, 1 - edge))
            ax.set_title(f"{k}: {label}" + ("" if i == 0 or n >= 3 else " (no interior voxel)"), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    save_png(fig, path, dpi=110)


#: Every file a report may hold: all that ``overwrite`` replaces or removes in an existing report.
REPORT_FILES = ("metrics.json", "metrics.md", "spectra.png", "slice.png", "symmetry.md", "symmetry.json")


def is_report(directory: Path) -> bool:
    """Whether ``directory`` holds a report: a ``metrics.json`` written by :func:`write_report`."""
    try:
        payload = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and {"info", "metrics", "spectra"} <= set(payload)


def check_report_destination(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse a report destination before any work.

    Parameters
    ----------
    out_dir : str or os.PathLike
    overwrite : bool

    Raises
    ------
    FileExistsError
        For an existing file; an existing directory without ``overwrite``; with ``overwrite``, a
        non-empty directory that holds no report (its files are not ours to replace).
    """
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file; the report is a directory: choose another --out")
    if not overwrite:
        raise FileExistsError(f"report directory {out} exists; pass --overwrite to replace its report files")
    if any(out.iterdir()) and not is_report(out):
        raise FileExistsError(f"{out} is not a report directory (no report metrics.json) and is not empty; "
                              f"--overwrite replaces only the files of an earlier report "
                              f"({', '.join(REPORT_FILES)}): choose another --out")


def write_report(out_dir: str | os.PathLike, result: Mapping[str, Any], info: Mapping[str, Any] | None = None,
                 symmetry: SymmetryReport | None = None, overwrite: bool = False) -> Path:
    """Write the report (module docstring).

    Parameters
    ----------
    out_dir : str or os.PathLike
        A new directory, written atomically (:func:`steerable_sr.io.atomic_directory`); with
        ``overwrite``, an existing report directory, of which only :data:`REPORT_FILES` are
        replaced (:func:`steerable_sr.io.atomic_files`).
    result : mapping
        :func:`evaluate_model`.
    info : mapping, optional
        Shown at the top of ``metrics.md`` and saved in ``metrics.json``.
    symmetry : SymmetryReport, optional
        Written as ``symmetry.md`` and ``symmetry.json``.
    overwrite : bool

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    out = Path(out_dir)
    check_report_destination(out, overwrite)
    writer = atomic_files(out, REPORT_FILES) if out.exists() else atomic_directory(out)
    with writer as tmp:
        payload = {"info": dict(info or {}), "samples": result["samples"], "metrics": result["metrics"],
                   "equivariance": result.get("equivariance"),
                   "spectrum_error_of_mean_spectra": result.get("spectrum_error_of_mean_spectra"),
                   "spectra": result["spectra"]}
        (tmp / "metrics.json").write_text(to_json(payload) + "\n")
        (tmp / "metrics.md").write_text(metrics_markdown(result, info))
        title = str((info or {}).get("kind", ""))
        plot_spectra(tmp / "spectra.png", result["spectra"], title)
        if result.get("sample"):
            plot_slice(tmp / "slice.png", result["sample"], title)
        if symmetry is not None:
            (tmp / "symmetry.md").write_text(symmetry.to_markdown())
            (tmp / "symmetry.json").write_text(to_json(symmetry.to_dict()) + "\n")
    return out
