"""``steerable-sr predict``: a trained network (a training checkpoint or an export,
:func:`steerable_sr.export.load_for_inference`) applied to a velocity file.

The input is a JHTDB cutout (HDF5, :mod:`steerable_sr.data.jhtdb`) or a tensor file; ``T`` frames
give the ``T - frames + 1`` windows of consecutive frames, each predicted at the middle frame's time.
The output is written in the same layout (``.h5``) or as a tensor (``.pt``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import CLIError
from .arguments import add_trust_option, check_output, positive_int

if TYPE_CHECKING:
    import numpy as np
    import torch

HELP = "super-resolve a JHTDB-layout HDF5 file or a saved tensor (.pt)"
JHTDB_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
OUTPUT_SUFFIXES = (".h5", ".hdf5", ".hdf", ".pt")
ACCEPTED_INPUTS = ("a JHTDB cutout file (.h5/.hdf5: datasets Velocity_NNNN of shape (nz, ny, nx, 3); a directory "
                   "or glob of them) or a tensor file (.pt: (T, 3, n, n, n) frames or (B, 3*frames, n, n, n) "
                   "windows)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"{HELP}. MODEL is a training checkpoint (.ckpt) or a module from `steerable-sr export`. "
                          "A JHTDB input of T time steps gives T - frames + 1 predicted steps (the middle frame of "
                          "every window), written in the same layout (.h5) or as a tensor (.pt).")
    parser.add_argument("model", help="training checkpoint (.ckpt) or exported module (.pt)")
    parser.add_argument("input", help="JHTDB HDF5 file (.h5/.hdf5) or tensor (.pt): (T,3,n,n,n) or (B,3*frames,n,n,n)")
    parser.add_argument("output", help="output file: .h5/.hdf5 (JHTDB layout) or .pt")
    parser.add_argument("--downsample", action="store_true",
                        help="block-average a high-resolution input by the upscale factor first")
    parser.add_argument("--any-size", action="store_true",
                        help="allow an input resolution other than the training one")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_trust_option(parser)


def _read_input(path: str) -> tuple[torch.Tensor, str, dict[str, Any]]:
    """Returns (velocity tensor, layout, extra). layout 'jhtdb': (T, 3, n, n, n) plus times/coords in
    extra; layout 'pt': whatever tensor the file holds."""
    import torch

    from ..data.checks import check_finite
    from ..data.dataset import is_generated
    from ..data.jhtdb import read_jhtdb

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
    """(T, 3, n, n, n) frames -> (T - frames + 1, 3 frames, n, n, n) windows (window t: frames t ..
    t + frames - 1, channel 3 i + a = component a of frame i); ready windows are taken as they are.
    Returns the windows and what the input was: 'window' (one), 'sequence' or 'batch'."""
    if v.dim() == 4 and v.shape[0] == 3 * frames and layout == "pt":
        return v.unsqueeze(0), "window"
    if v.dim() != 5:
        raise _bad_shape(v, frames, layout)
    if v.shape[1] == 3:
        T = v.shape[0]
        if T < frames:
            raise CLIError(f"the input holds {T} time steps; the model needs at least {frames}")
        windows = v.unfold(0, frames, 1).permute(0, 5, 1, 2, 3, 4)  # (T - frames + 1, frames, 3, n, n, n)
        return windows.reshape(T - frames + 1, 3 * frames, *v.shape[2:]), "sequence"
    if v.shape[1] == 3 * frames and layout == "pt":
        return v, "batch"
    raise _bad_shape(v, frames, layout)


def _upsampled_coords(coords: list[np.ndarray], s: int) -> list[np.ndarray]:
    """The high-res grid of low-res ``coords`` under the block-average convention: low-res point i is
    the mean of high-res points s i .. s i + s - 1."""
    import numpy as np

    out = []
    for c in coords:
        d = float(c[1] - c[0]) / s if len(c) > 1 else 2 * np.pi / (len(c) * s)
        out.append(c[0] - 0.5 * (s - 1) * d + d * np.arange(len(c) * s))
    return out


def _input_files(path: str) -> list[str | os.PathLike]:
    """The files an input argument names (a JHTDB directory or pattern names several)."""
    from ..data.jhtdb import resolve_paths

    try:
        return list(resolve_paths(path)) if Path(path).suffix.lower() != ".pt" else [path]
    except FileNotFoundError:
        return []


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.dataset import downsample
    from ..data.jhtdb import save_jhtdb
    from ..devices import check_device
    from ..export import load_for_inference
    from ..io import atomic_output

    check_device(args.device)
    out = Path(args.output)
    out_suffix = out.suffix.lower()
    if out_suffix not in OUTPUT_SUFFIXES:
        raise CLIError(f"unknown output format {out_suffix!r}; use .h5/.hdf5 (JHTDB layout) or .pt")
    check_output(out, args.overwrite, inputs=[args.model, *_input_files(args.input)])
    model = load_for_inference(args.model, args.device, trust=args.trust_checkpoint)
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
    y = model(x, args.batch_size)
    if out_suffix == ".pt":
        with atomic_output(out, overwrite=args.overwrite) as tmp:
            torch.save(y[0] if kind == "window" else y, tmp)
    else:
        times = extra.get("times")
        start = times[model.frames // 2] if (times and kind == "sequence") else 1
        save_jhtdb(out, y, coords=hr_coords, start=start, overwrite=args.overwrite)
    print(f"wrote {out}: {tuple(y.shape)} ({model.source}, {model.meta.get('kind')}, {n}^3 -> {n * s}^3)")
    return 0
