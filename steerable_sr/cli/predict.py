"""``steerable-sr predict`` and ``steerable-sr export``: a trained network, from a training checkpoint
or an exported TorchScript module (:func:`load_any`), applied to velocity files; and the export.

An export is a TorchScript module of :meth:`SuperResolutionNet.export` (plain torch layers, loadable
without escnn or this package) with its metadata (:func:`module_meta`: kind, frames, upscale,
training input size, velocity scale, ...) both inside the module (extra file ``metadata.json``) and
next to it (:func:`export_metadata_path`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .. import __version__
from ..data.checks import check_finite
from ..data.dataset import downsample, is_generated
from ..data.jhtdb import read_jhtdb, resolve_paths, save_jhtdb
from ..io import atomic_output, to_json
from ..checkpoint import is_torchscript, load_module
from ..training import SuperResolutionModule
from . import CLIError
from ..devices import check_device

EXPORT_FORMAT = "steerable-sr-export/1"
JHTDB_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
ACCEPTED_INPUTS = ("a JHTDB cutout file (.h5/.hdf5: datasets Velocity_NNNN of shape (nz, ny, nx, 3); a directory "
                   "or glob of them) or a tensor file (.pt: (T, 3, n, n, n) frames or (B, 3*frames, n, n, n) "
                   "windows)")


def export_metadata_path(out: str | os.PathLike) -> Path:
    """``model.pt`` -> ``model.json``: the metadata written next to an exported module."""
    return Path(out).with_suffix(".json")


@dataclasses.dataclass
class LoadedModel:
    """A network ready for inference, from a checkpoint or an exported TorchScript module."""

    net: torch.nn.Module
    meta: dict[str, Any]
    source: str  # "checkpoint" or "export"

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def upscale(self) -> int:
        return int(self.meta["upscale"])

    @property
    def input_size(self) -> int | None:
        n = self.meta.get("input_size")
        return int(n) if n else None

    @property
    def velocity_scale(self) -> float:
        return float(self.meta.get("velocity_scale") or 1.0)


def module_meta(module: SuperResolutionModule) -> dict[str, Any]:
    """What an export records of its training module: identity, widths, size, training units."""
    hp = dict(module.hparams)
    meta = {k: hp.get(k) for k in ("kind", "group", "frames", "upscale", "preset", "model_overrides")}
    meta["config"] = dataclasses.asdict(module.model.config)
    meta["parameters"] = module.model.num_parameters()
    meta["input_size"] = int(module.train_input_size) or None
    meta["velocity_scale"] = float(module.velocity_scale)
    return meta


def _load_export(path: str, device: str) -> LoadedModel:
    """The exported TorchScript module at ``path`` with its metadata."""
    extra = {"metadata.json": ""}
    net = torch.jit.load(path, map_location=device, _extra_files=extra)
    meta = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
    side = export_metadata_path(path)
    if not meta and side.is_file():
        meta = json.loads(side.read_text())
    if "frames" not in meta or "upscale" not in meta:
        raise CLIError(f"{path}: exported module without steerable-sr metadata (frames, upscale)")
    return LoadedModel(net.eval(), meta, "export")


def load_any(path: str, device: str = "cpu", trust: bool = False) -> LoadedModel:
    """Load a Lightning checkpoint (``.ckpt``, data only unless ``trust``:
    :func:`steerable_sr.checkpoint.read_checkpoint`) or an exported TorchScript module."""
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
    if is_torchscript(path):
        return _load_export(path, device)
    module = load_module(path, device, trust=trust)
    return LoadedModel(module.model.eval(), module_meta(module), "checkpoint")


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


def _read_input(path: str) -> tuple[torch.Tensor, str, dict[str, Any]]:
    """Returns (velocity tensor, layout, extra). layout 'jhtdb': (T, 3, n, n, n) plus times/coords in
    extra; layout 'pt': whatever tensor the file holds."""
    if not os.path.exists(path):
        raise CLIError(f"input file not found: {path}")
    suffix = Path(path).suffix.lower()
    if suffix in JHTDB_SUFFIXES or os.path.isdir(path):
        if is_generated(Path(path)):
            raise CLIError(f"{path} is a dataset written by `steerable-sr generate` (datasets velocity, splits); "
                           f"predict reads {ACCEPTED_INPUTS}. For a generated dataset use `steerable-sr evaluate "
                           f"CKPT --data {path} --out DIR`")
        cut = read_jhtdb(path)  # FileNotFoundError / ValueError with a clear message
        return cut.velocity.float(), "jhtdb", {"times": cut.times, "coords": cut.coords}
    if suffix != ".pt":
        raise CLIError(f"unknown input format {suffix!r} for {path}; predict reads {ACCEPTED_INPUTS}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CLIError(f"cannot read tensor file {path}: {exc}")
    if isinstance(obj, dict):
        obj = next((obj[key] for key in ("low_res", "lr", "velocity", "x") if key in obj), obj)
    if not isinstance(obj, torch.Tensor):
        raise CLIError(f"{path} must hold a tensor (or a dict with key 'low_res' or 'velocity')")
    check_finite(obj, path)
    return obj.float(), "pt", {}


def _bad_shape(v: torch.Tensor, frames: int, layout: str) -> CLIError:
    """The error for an input tensor of a shape the model cannot take: the accepted shapes."""
    shapes = "(T, 3, n, n, n) frames"
    if layout == "pt":
        shapes += (f", (B, 3*frames, n, n, n) windows or one (3*frames, n, n, n) window, 3*frames = {3 * frames} "
                   "for this model")
    return CLIError(f"input of shape {tuple(v.shape)}: expected {shapes}")


def _windows(v: torch.Tensor, frames: int, layout: str) -> tuple[torch.Tensor, str]:
    """(T,3,n,n,n) sequence -> (T-frames+1, 3*frames, n,n,n) windows; also accepts ready windows.
    Returns the windows and what the input was: 'window' (one), 'sequence' or 'batch'."""
    if v.dim() == 4 and v.shape[0] == 3 * frames and layout == "pt":
        return v.unsqueeze(0), "window"
    if v.dim() != 5:
        raise _bad_shape(v, frames, layout)
    if v.shape[1] == 3:
        T = v.shape[0]
        if T < frames:
            raise CLIError(f"the input holds {T} time steps; the model needs at least {frames}")
        windows = [v[t : t + frames].reshape(3 * frames, *v.shape[2:]) for t in range(T - frames + 1)]
        return torch.stack(windows), "sequence"
    if v.shape[1] == 3 * frames and layout == "pt":
        return v, "batch"
    raise _bad_shape(v, frames, layout)


def _upsampled_coords(coords: list[np.ndarray], s: int) -> list[np.ndarray]:
    """The high-res grid of low-res ``coords`` under the block-average convention: low-res point i is
    the mean of high-res points s i .. s i + s - 1."""
    out = []
    for c in coords:
        d = float(c[1] - c[0]) / s if len(c) > 1 else 2 * np.pi / (len(c) * s)
        out.append(c[0] - 0.5 * (s - 1) * d + d * np.arange(len(c) * s))
    return out


def refuse_input_as_output(inputs: Iterable[str | os.PathLike], output: Path) -> None:
    """Refuse an ``output`` that is one of the ``inputs`` (``--overwrite`` never replaces an input)."""
    if not output.exists():
        return
    for path in inputs:
        if os.path.exists(path) and os.path.samefile(path, output):
            raise CLIError(f"the output {output} is the input file {path}; write to another file "
                           "(--overwrite never replaces an input)")


def _input_files(path: str) -> list[str | os.PathLike]:
    """The files an input argument names (a JHTDB directory or pattern names several)."""
    try:
        return list(resolve_paths(path)) if Path(path).suffix.lower() != ".pt" else [path]
    except FileNotFoundError:
        return []


def run_predict(args: argparse.Namespace) -> int:
    check_device(args.device)
    out = Path(args.output)
    out_suffix = out.suffix.lower()
    if out_suffix not in (".h5", ".hdf5", ".hdf", ".pt"):
        raise CLIError(f"unknown output format {out_suffix!r}; use .h5/.hdf5 (JHTDB layout) or .pt")
    refuse_input_as_output([args.model, *_input_files(args.input)], out)
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    model = load_any(args.model, args.device, trust=args.trust_checkpoint)
    velocity, layout, extra = _read_input(args.input)
    if velocity.dim() not in (4, 5):
        raise _bad_shape(velocity, model.frames, layout)
    spatial = tuple(velocity.shape[-3:])
    if len(set(spatial)) != 1:
        raise CLIError(f"input grid {spatial} is not cubic; the octahedral models need n x n x n")
    s = model.upscale
    coords = extra.get("coords")
    if args.downsample:
        if spatial[0] % s:
            raise CLIError(f"--downsample: grid size {spatial[0]} is not divisible by the upscale factor {s}")
        flat = velocity.reshape(-1, *velocity.shape[-4:])
        velocity = downsample(flat, s).reshape(*velocity.shape[:-3], *(n // s for n in spatial))
        spatial = tuple(velocity.shape[-3:])
        hr_coords = coords  # the high-resolution file's own grid
    else:
        hr_coords = None if coords is None else _upsampled_coords(coords, s)
    n = spatial[0]
    if model.input_size and n != model.input_size and not args.any_size:
        raise CLIError(f"input resolution {n}^3 does not match the model's training input {model.input_size}^3 "
                       f"(it maps {model.input_size}^3 -> {model.input_size * s}^3); pass --downsample for a "
                       f"high-resolution file, or --any-size to run anyway")
    x, kind = _windows(velocity, model.frames, layout)
    scale = model.velocity_scale
    preds = []
    with torch.no_grad():
        for i in range(0, x.shape[0], args.batch_size):
            xb = (x[i : i + args.batch_size] / scale).to(args.device)
            preds.append(model.net(xb).float().cpu() * scale)
    y = torch.cat(preds)
    if out_suffix == ".pt":
        with atomic_output(out, overwrite=args.overwrite) as tmp:
            torch.save(y[0] if kind == "window" else y, tmp)
    else:
        times = extra.get("times")
        start = times[model.frames // 2] if (times and kind == "sequence") else 1
        save_jhtdb(out, y, coords=hr_coords, start=start, overwrite=args.overwrite)
    print(f"wrote {out}: {tuple(y.shape)} ({model.source}, {model.meta.get('kind')}, {n}^3 -> {n * s}^3)")
    return 0


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    meta_path = export_metadata_path(out)
    if meta_path == out:
        raise CLIError(f"the export file needs a suffix other than .json (got {out})")
    for path in (out, meta_path):
        refuse_input_as_output([args.ckpt], path)
        if path.exists() and not args.overwrite:
            raise CLIError(f"{path} exists; pass --overwrite to replace it")
    module = load_module(args.ckpt, trust=args.trust_checkpoint)
    try:
        scripted = torch.jit.script(module.model.export())
    except Exception as exc:
        raise CLIError(f"TorchScript export failed: {exc}")
    meta = module_meta(module)
    meta.update({
        "format": EXPORT_FORMAT,
        "source_checkpoint": os.path.abspath(args.ckpt),
        "torch_version": torch.__version__,
        "steerable_sr_version": __version__,
        "input": "(B, 3*frames, n, n, n) float32, public convention (docs/conventions.md), divided by "
                 "velocity_scale",
        "output": "(B, 3, upscale*n, upscale*n, upscale*n), multiply by velocity_scale",
    })
    text = to_json(meta) + "\n"
    with atomic_output(out, overwrite=True) as tmp, atomic_output(meta_path, overwrite=True) as tmp_meta:
        torch.jit.save(scripted, os.fspath(tmp), _extra_files={"metadata.json": text})
        tmp_meta.write_text(text)
    print(f"wrote {out} and {meta_path} ({meta['kind']}, {meta['parameters']} parameters)")
    return 0
