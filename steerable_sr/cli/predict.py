"""``steerable-sr predict``: a trained network (a training checkpoint or an export,
:func:`steerable_sr.export.load_for_inference`) applied to a velocity file.

The input is a JHTDB cutout or a file written by ``generate`` (HDF5, opened, not loaded:
:func:`steerable_sr.data.dataset.open_frames`), or a tensor file; ``T`` frames give the
``T - frames + 1`` windows of consecutive frames, each predicted at the middle frame's time, one after
the other. Each window goes through the network in tiles (:mod:`steerable_sr.tiling`; ``--tile auto``:
the largest that fit ``--max-memory``), read box by box from the input and written tile by tile into
a chunked HDF5 file in the JHTDB layout (``.h5``), so that neither the input nor the output is whole
in memory; or as a tensor (``.pt``, in memory). ``--tile stages`` runs the network stage by stage,
each stage in tiles with its own small halo, the fields between stages in scratch files
(:mod:`steerable_sr.tiling.staged`): about the time of the whole-volume pass instead of ~2.5x, for
disk space. ``--tile none`` runs whole windows in batches. All give the same values to float
round-off and the same file layout.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import CLIError
from .arguments import add_trust_option, check_output, positive_int

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..data.frames import VelocityFrames
    from ..export import InferenceModel
    from ..tiling.volumes import FrameWindow

HELP = "super-resolve a JHTDB-layout HDF5 file, a generated dataset or a saved tensor (.pt)"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
OUTPUT_SUFFIXES = (".h5", ".hdf5", ".hdf", ".pt")
ACCEPTED_INPUTS = ("a JHTDB cutout file (.h5/.hdf5: datasets Velocity_NNNN of shape (nz, ny, nx, 3); a directory "
                   "or glob of them), a dataset written by `steerable-sr generate` or a tensor file (.pt: "
                   "(T, 3, n, n, n) frames or (B, 3*frames, n, n, n) windows)")
#: Windows per forward pass of the whole-volume path (``--tile none``) unless ``--batch-size`` says otherwise.
BATCH_SIZE = 4


def tile_option(text: str) -> int | str | None:
    """``--tile``: ``"auto"``, ``"stages"``, ``None`` for ``none``, or a positive edge in high-resolution
    voxels."""
    if text in ("auto", "stages", "none"):
        return None if text == "none" else text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, stages, none or a positive tile edge in high-resolution "
                                         f"voxels, got {text!r}") from None


def memory_option(text: str) -> int:
    """``--max-memory``: bytes of a size such as ``2GB`` (:func:`steerable_sr.tiling.parse_memory`)."""
    from ..tiling import parse_memory

    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"{HELP}. MODEL is a training checkpoint (.ckpt) or a module from `steerable-sr export`. "
                          "An input of T time steps gives T - frames + 1 predicted steps (the middle frame of every "
                          "window), written in the JHTDB layout (.h5) or as a tensor (.pt). Each step is predicted "
                          "in tiles that fit --max-memory and written tile by tile, so inputs and outputs of any "
                          "size can be predicted.")
    parser.add_argument("model", help="training checkpoint (.ckpt) or export (.pt2, .onnx, .pt)")
    parser.add_argument("input", help="JHTDB HDF5 file (.h5/.hdf5), dataset written by `generate`, or tensor (.pt): "
                                      "(T,3,n,n,n) or (B,3*frames,n,n,n)")
    parser.add_argument("output", help="output file: .h5/.hdf5 (JHTDB layout) or .pt")
    parser.add_argument("--downsample", action="store_true",
                        help="block-average a high-resolution input by the upscale factor first")
    parser.add_argument("--any-size", action="store_true",
                        help="allow an input resolution other than the training one")
    parser.add_argument("--tile", type=tile_option, default="auto", metavar="EDGE|auto|stages|none",
                        help="tile edge in high-resolution voxels (a multiple of the upscale factor); auto (default): "
                             "the largest tiles that fit --max-memory; stages: the network stage by stage, each in "
                             "the largest tiles that fit --max-memory, the fields between stages in --scratch (about "
                             "the time of a whole-volume pass); none: whole volumes, in batches")
    parser.add_argument("--max-memory", type=memory_option, default=None, metavar="SIZE",
                        help="memory one tile may use with --tile auto or stages, e.g. 2GB or 512MiB (default: half "
                             "of what the device has available)")
    parser.add_argument("--scratch", default=None, metavar="DIR",
                        help="folder for the fields between stages with --tile stages (default: the output's folder); "
                             "the space they need is checked before the first stage")
    parser.add_argument("--periodic", action="store_true",
                        help="the input is periodic (a whole periodic box): the tiles' halos wrap around")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help=f"windows per forward pass with --tile none (default {BATCH_SIZE})")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_trust_option(parser)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that the chosen ``--tile`` would ignore."""
    if args.tile is None and args.periodic:
        raise CLIError("--periodic wraps the halos of the tiles around the volume; it needs --tile auto, stages or "
                       "EDGE, not --tile none")
    if args.tile not in ("auto", "stages") and args.max_memory is not None:
        raise CLIError(f"--max-memory sizes the automatic tiles (--tile auto or stages); with --tile "
                       f"{'none' if args.tile is None else args.tile} it would be ignored")
    if args.tile != "stages" and args.scratch is not None:
        raise CLIError(f"--scratch holds the fields between the stages of --tile stages; with --tile "
                       f"{'none' if args.tile is None else args.tile} it would be ignored")
    if args.tile is not None and args.batch_size is not None:
        raise CLIError("--batch-size sets the windows per forward pass of --tile none; tiled prediction runs one box "
                       "at a time")


def _open_input(path: str) -> tuple[VelocityFrames | torch.Tensor, dict[str, Any]]:
    """The input, opened: the frames of an HDF5 file (read later, box by box), with their ``times`` in
    the extra dict (a generated file's frame ``t`` is number ``t + 1``, as the ``frame`` of its samples)
    and a JHTDB cutout's ``coords``; or the float32 tensor of a ``.pt`` file."""
    import torch

    from ..data.checks import check_finite, velocity_dtype
    from ..data.dataset import open_frames
    from ..data.jhtdb import JHTDBFrames

    if not os.path.exists(path):
        raise CLIError(f"input file not found: {path}")
    if Path(path).suffix.lower() in HDF5_SUFFIXES or os.path.isdir(path):
        frames = open_frames(path)  # FileNotFoundError / ValueError with a clear message
        if isinstance(frames, JHTDBFrames):
            return frames, {"times": frames.times, "coords": frames.coords}
        return frames, {"times": list(range(1, len(frames) + 1))}
    if Path(path).suffix.lower() != ".pt":
        raise CLIError(f"unknown input format {Path(path).suffix.lower()!r} for {path}; predict reads "
                       f"{ACCEPTED_INPUTS}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CLIError(f"cannot read tensor file {path}: {exc}")
    if isinstance(obj, dict):
        obj = next((obj[key] for key in ("low_res", "lr", "velocity", "x") if key in obj), obj)
    if not isinstance(obj, torch.Tensor):
        raise CLIError(f"{path} must hold a tensor (or a dict with key 'low_res' or 'velocity')")
    if not obj.is_floating_point():
        velocity_dtype(str(obj.dtype).removeprefix("torch."), path)  # refuses integers, naming file and dtype
    check_finite(obj, path)
    return obj.float(), {}


def _bad_shape(shape: tuple[int, ...], frames: int, tensor: bool) -> CLIError:
    """The error for an input of a shape the model cannot take: the accepted shapes."""
    shapes = "(T, 3, n, n, n) frames"
    if tensor:
        shapes += (f", (B, 3*frames, n, n, n) windows or one (3*frames, n, n, n) window, 3*frames = {3 * frames} "
                   "for this model")
    return CLIError(f"input of shape {shape}: expected {shapes}")


def _windows(source: VelocityFrames | torch.Tensor, frames: int, factor: int) -> tuple[list[FrameWindow], str]:
    """The network inputs ``(3 frames, n, n, n)`` of an input, opened (:class:`FrameWindow`: window
    ``t`` holds frames ``t .. t + frames - 1``, channel ``3 i + a`` = component ``a`` of frame ``i``);
    ready windows of a tensor are taken as they are. Returns them and what the input was: ``'window'``
    (one), ``'sequence'`` or ``'batch'``."""
    import torch

    from ..data.frames import TensorFrames
    from ..tiling.volumes import FrameWindow

    tensor = isinstance(source, torch.Tensor)
    shape = tuple(source.shape)
    if len(shape) not in (4, 5):
        raise _bad_shape(shape, frames, tensor)
    if len(set(shape[-3:])) != 1:
        raise CLIError(f"input grid {shape[-3:]} is not cubic; the octahedral models need n x n x n")
    if factor > 1 and shape[-1] % factor:
        raise CLIError(f"--downsample: grid size {shape[-1]} is not divisible by the upscale factor {factor}")
    if tensor and len(shape) == 4 and shape[0] == 3 * frames:
        return [FrameWindow(TensorFrames(source.view(frames, 3, *shape[1:])), 0, frames, factor)], "window"
    if len(shape) == 5 and shape[1] == 3:
        if shape[0] < frames:
            raise CLIError(f"the input holds {shape[0]} time steps; the model needs at least {frames}")
        sequence = TensorFrames(source) if tensor else source
        return [FrameWindow(sequence, t, frames, factor) for t in range(shape[0] - frames + 1)], "sequence"
    if tensor and len(shape) == 5 and shape[1] == 3 * frames:
        return [FrameWindow(TensorFrames(w.view(frames, 3, *shape[2:])), 0, frames, factor) for w in source], "batch"
    raise _bad_shape(shape, frames, tensor)


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


def _predict_whole(model: InferenceModel, windows: list[FrameWindow], batch_size: int) -> torch.Tensor:
    """``(W, 3, s n, s n, s n)``: every window whole, ``batch_size`` at a time (the ``--tile none`` path)."""
    import torch

    whole = (slice(None),) * 4
    return torch.cat([model(torch.stack([w[whole] for w in windows[i: i + batch_size]]), batch_size)
                      for i in range(0, len(windows), batch_size)])


def _tiling(model: InferenceModel, args: argparse.Namespace, channels: int, n: int,
            out: Path) -> tuple[Callable[[FrameWindow, Any], None], str]:
    """How ``--tile`` (auto, stages or EDGE) writes a window into its target, and that in words; every
    check (the network, the scratch folder and its free space) before the first tile."""
    from ..tiling import auto_tile, default_max_memory, format_memory, predict_tiled, receptive_field, tileable
    from ..tiling.predict import axis_tiles
    from ..tiling.staged import network_stages, predict_staged, scratch_bytes
    from ..tiling.volumes import PhysicalUnits

    network = PhysicalUnits(model.net, model.velocity_scale).eval()
    budget = default_max_memory(args.device) if args.max_memory is None else args.max_memory
    if args.tile == "stages":
        stages = network_stages(network)
        if stages is None:
            raise CLIError(f"{args.model}: --tile stages runs the network's stages one by one, which this "
                           f"{model.source} module does not show; use --tile auto")
        scratch = Path(args.scratch) if args.scratch is not None else out.resolve().parent
        need = scratch_bytes(stages, n)
        _check_scratch(scratch, need)

        def write(window: FrameWindow, target: Any) -> None:
            predict_staged(network, window, target, max_memory=budget, scratch=scratch, periodic=args.periodic,
                           stages=stages)
        return write, f"stage by stage, {len(stages.stages)} stages, up to {format_memory(need)} of scratch in {scratch}"
    if not tileable(network):
        raise CLIError(f"{args.model}: tiled prediction reads the network's convolutions, which this "
                       f"{model.source} module does not show; pass --tile none")
    tile = args.tile if args.tile != "auto" else auto_tile(network, channels, n, budget, periodic=args.periodic)
    halo = receptive_field(network)
    axis = axis_tiles(n, min(tile // model.upscale, n), halo, args.periodic)

    def write(window: FrameWindow, target: Any) -> None:
        predict_tiled(network, window, target, tile=tile, periodic=args.periodic)
    return write, f"{len(axis)}^3 tiles a step, input boxes of {axis[0].box_edge}^3, halo {halo}"


def _check_scratch(folder: Path, need: int) -> None:
    """Refuse a scratch folder that is missing, not writable or without ``need`` bytes free."""
    import shutil

    from ..tiling import format_memory

    if not folder.is_dir():
        raise CLIError(f"scratch folder {folder} does not exist (--scratch)")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"scratch folder {folder} is not writable (--scratch)")
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CLIError(f"--tile stages needs {format_memory(need)} of scratch space in {folder}, which has "
                       f"{format_memory(free)} free; pass --scratch DIR or use --tile auto")


def _write_tiled_jhtdb(path: Path, write: Callable[[FrameWindow, Any], None], windows: list[FrameWindow],
                       size: int, start: int, coords: list[np.ndarray] | None, overwrite: bool) -> None:
    """Predict every window in tiles into a new JHTDB-layout file (atomically): ``Velocity_{start:04d}``,
    ... chunked, written tile by tile."""
    import h5py

    from ..io import atomic_output
    from ..tiling.volumes import create_jhtdb_frames

    with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as handle:
        targets = create_jhtdb_frames(handle, size, range(start, start + len(windows)), coords)
        for window, target in zip(windows, targets):
            write(window, target)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.jhtdb import save_jhtdb
    from ..devices import check_device
    from ..export import load_for_inference
    from ..io import atomic_output

    check_device(args.device)
    _check_options(args)
    out = Path(args.output)
    out_suffix = out.suffix.lower()
    if out_suffix not in OUTPUT_SUFFIXES:
        raise CLIError(f"unknown output format {out_suffix!r}; use .h5/.hdf5 (JHTDB layout) or .pt")
    check_output(out, args.overwrite, inputs=[args.model, *_input_files(args.input)])
    model = load_for_inference(args.model, args.device, trust=args.trust_checkpoint)
    s = model.upscale
    source, extra = _open_input(args.input)
    try:
        windows, kind = _windows(source, model.frames, s if args.downsample else 1)
        n = windows[0].shape[-1]
        if model.input_size and n != model.input_size and not args.any_size:
            raise CLIError(f"input resolution {n}^3 does not match the model's training input {model.input_size}^3 "
                           f"(it maps {model.input_size}^3 -> {model.input_size * s}^3); pass --downsample for a "
                           f"high-resolution file, or --any-size to run anyway")
        coords, times = extra.get("coords"), extra.get("times")
        if coords is not None:  # the high-resolution file's own grid, or the fine grid of the input's
            coords = coords if args.downsample else _upsampled_coords(coords, s)
        start = times[model.frames // 2] if (times and kind == "sequence") else 1
        shape = (len(windows), 3, s * n, s * n, s * n)
        if args.tile is None:
            how = f"whole volumes, {args.batch_size or BATCH_SIZE} a pass"
            y = _predict_whole(model, windows, args.batch_size or BATCH_SIZE)
        else:
            write, how = _tiling(model, args, windows[0].shape[0], n, out)
            if out_suffix == ".pt":
                y = torch.empty(shape)
                for window, target in zip(windows, y):
                    write(window, target)
            else:
                _write_tiled_jhtdb(out, write, windows, s * n, start, coords, args.overwrite)
        if out_suffix == ".pt":
            with atomic_output(out, overwrite=args.overwrite) as tmp:
                torch.save(y[0] if kind == "window" else y, tmp)
        elif args.tile is None:
            save_jhtdb(out, y, coords=coords, start=start, overwrite=args.overwrite)
    finally:
        if not isinstance(source, torch.Tensor):
            source.close()
    print(f"wrote {out}: {shape[1:] if kind == 'window' else shape} ({model.source}, {model.meta.get('kind')}, "
          f"{n}^3 -> {n * s}^3, {how})")
    return 0
