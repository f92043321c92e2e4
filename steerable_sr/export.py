r"""Exported networks: writing one, and loading a checkpoint or an export for inference.

An export is the network of a training checkpoint as plain torch layers
(:meth:`SuperResolutionNet.export`), in the format of the output file's suffix (:data:`FORMATS`):

* ``.pt2``: a ``torch.export`` ExportedProgram (recommended). Batch and spatial sizes are dynamic:
  one symbol ``n >= 2`` for the three spatial axes (inputs are cubes). ``torch.export.load`` alone
  runs it; it is also the input of AOTInductor (ahead-of-time compilation for C++, docs/deployment.md).
* ``.onnx``: ONNX (``torch.onnx.export(..., dynamo=True)``), input ``low_res`` and output
  ``high_res`` with dynamic axes ``batch`` and ``n``; onnxruntime runs it (Python, C++, C#, ...).
  Writing it needs the optional packages of the ``export`` extra (:data:`ONNX_PACKAGES`), reading
  it onnxruntime.
* ``.pt``: TorchScript (legacy: ``torch.jit`` is deprecated since torch 2.10; kept for consumers
  that only read TorchScript).

The metadata (:func:`module_metadata`: kind, group, frames, upscale, training input size, velocity
scale, the datamodule's settings, versions) travels inside the file, under the name
:data:`METADATA_KEY`: an extra file of the ``.pt2`` and ``.pt`` archives, a metadata property of the
``.onnx`` model. There is no file beside the export: exports of one name in several formats never
share anything.

Every export is loaded back with its reader before it replaces the output file, and compared with
the network on a random input of another size than the traced one (:func:`check_export`): a file
that disagrees by more than :data:`EXPORT_TOL` relative is refused, not written. An export computes
the network's function, so it keeps its symmetry: equivariant to the group (to round-off) for the
exact kinds, to the stabilizer of the learned relaxed weights for the relaxed ones.

:func:`load_for_inference` takes an export of any format or a checkpoint (read as data only,
:func:`steerable_sr.checkpoint.read_checkpoint`) and returns an :class:`InferenceModel`:
``(B, 3 frames, n, n, n)`` windows in physical units -> ``(B, 3, upscale n, upscale n, upscale n)``
in physical units. Its readers use ``torch.export.load``, onnxruntime and ``torch.jit.load`` only:
neither escnn nor this package's models are needed to run an export.

Exports are programs (a ``.pt`` holds TorchScript code; ``.pt2`` and ``.onnx`` hold graphs of
operators that their runtime executes): load those of trusted sources only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from . import __version__
from .checkpoint import is_torchscript, module_from_checkpoint, read_checkpoint
from .io import atomic_output, to_json
from .metrics import relative_l2
from .training import SuperResolutionModule

#: Version of the metadata layout written by :func:`write_export` (2: metadata inside the file only,
#: with the datamodule's settings).
EXPORT_FORMAT = "steerable-sr-export/2"
#: The name of the metadata (JSON text) inside every export: extra file or metadata property.
METADATA_KEY = "metadata.json"
#: Name of the ONNX model's input and output.
ONNX_NAMES = ("low_res", "high_res")
#: The packages that writing an ``.onnx`` export needs (the ``export`` extra); reading needs onnxruntime.
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
#: Largest relative difference ``||export(x) - net(x)|| / ||net(x)||`` accepted by :func:`check_export`:
#: float32 runtimes differ from torch by the order of their sums, ~1e-7 relative.
EXPORT_TOL = 1e-5

Network = Callable[[torch.Tensor], torch.Tensor]


class MissingPackageError(ValueError):
    """A format whose optional packages are not installed."""


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One file format of an export.

    Attributes
    ----------
    name : str
        Shown to the user (``"ExportedProgram"``).
    write : callable
        ``write(net, path, metadata, example)``: save the plain-torch network ``net`` (eval mode),
        traced on the input ``example`` ``(B, 3 frames, n, n, n)``, to ``path`` with the JSON text
        ``metadata`` inside.
    recognises : callable
        ``recognises(path) -> bool``: whether the file at ``path`` is meant to be of this format.
    load : callable
        ``load(path, device) -> (net, metadata)``: the network on ``device`` (a module in eval mode on
        ``(B, 3 frames, n, n, n)`` tensors) and the metadata stored inside (``{}`` if none).
    packages : tuple of str
        Optional packages that writing this format needs.
    """

    name: str
    write: Callable[[torch.nn.Module, Path, str, torch.Tensor], None]
    recognises: Callable[[str], bool]
    load: Callable[[str, str], tuple[torch.nn.Module, dict[str, Any]]]
    packages: tuple[str, ...] = ()


class RuntimeModule(torch.nn.Module):
    """A network run by another runtime, as a torch module: ``forward`` calls ``run``.

    An ExportedProgram's module refuses ``train()`` / ``eval()`` and an onnxruntime session is no
    module: both were traced in eval mode, so this wrapper's mode is irrelevant, and code written for
    modules (``model.eval()``, ``model.to(device)``) runs them unchanged.

    Parameters
    ----------
    run : callable
        ``(B, 3 frames, n, n, n)`` -> ``(B, 3, upscale n, upscale n, upscale n)``, on the input's device.
    """

    def __init__(self, run: Network, device: str = "cpu") -> None:
        super().__init__()
        self.run = run
        #: Empty: says where ``run`` takes its input (:func:`steerable_sr.tiling.predict.placement`).
        self.register_buffer("placement", torch.empty(0, device=device), persistent=False)
        #: The network's :class:`~steerable_sr.tiling.TileGeometry` where its export recorded it.
        self.tile_geometry = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def _dynamic_shapes() -> tuple[dict[int, torch.export.Dim], ...]:
    """Dynamic batch and spatial sizes of the input ``(B, C, n, n, n)``: one symbol for the three
    spatial axes, ``n >= 2``."""
    n = torch.export.Dim("n", min=2)
    return ({0: torch.export.Dim("batch", min=1), 2: n, 3: n, 4: n},)


# ---------------------------------------------------------------------------------------- .pt2


def _write_exported_program(net: torch.nn.Module, path: Path, metadata: str, example: torch.Tensor) -> None:
    program = torch.export.export(net, (example,), dynamic_shapes=_dynamic_shapes())
    with open(path, "wb") as handle:  # a file object: torch.export.save expects a path ending in .pt2
        torch.export.save(program, handle, extra_files={METADATA_KEY: metadata})


def _load_exported_program(path: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: truncated or damaged file: not a complete .pt2 archive (a zip); write it again")
    extra = {METADATA_KEY: ""}
    try:
        with open(path, "rb") as handle:
            program = torch.export.load(handle, extra_files=extra)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{path}: not a loadable ExportedProgram ({str(exc).strip().splitlines()[0]})") from None
    if device != "cpu":
        from torch.export.passes import move_to_device_pass  # torch 2.11 does not import it with torch.export

        program = move_to_device_pass(program, device)
    net = RuntimeModule(program.module().__call__, device)  # the bound call: the module refuses eval()
    return net, json.loads(extra[METADATA_KEY]) if extra[METADATA_KEY] else {}


# ---------------------------------------------------------------------------------------- .onnx


@contextlib.contextmanager
def _onnx_exporter_notes_ignored() -> Iterator[None]:
    """``torch.onnx.export`` logs that torchvision's operators are skipped where torchvision is not
    installed, warns that the axis name ``n`` is used once for the three axes that share it (what is
    meant), and torch's pytree raises a ``LeafSpec`` ``FutureWarning`` inside it: none concerns the
    exported file."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        try:
            yield
        finally:
            logger.setLevel(level)


def _write_onnx(net: torch.nn.Module, path: Path, metadata: str, example: torch.Tensor) -> None:
    import onnx

    with _onnx_exporter_notes_ignored():
        program = torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=_dynamic_shapes(),
                                    input_names=[ONNX_NAMES[0]], output_names=[ONNX_NAMES[1]],
                                    external_data=False, verbose=False)
    model = program.model_proto
    model.metadata_props.add(key=METADATA_KEY, value=metadata)
    onnx.save(model, os.fspath(path))


def _run_session(session: Any, x: torch.Tensor) -> torch.Tensor:
    """One onnxruntime run: the tensor goes through host memory and comes back to its device."""
    (y,) = session.run(None, {ONNX_NAMES[0]: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
    return torch.from_numpy(y).to(x.device)


def _onnx_providers(path: str, device: str, available: list[str]) -> list[Any]:
    """onnxruntime's execution providers for ``device``: the CPU, or CUDA where this onnxruntime has it."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"{path}: this onnxruntime cannot run on {device!r} (its providers: {', '.join(available)}; "
                     "onnxruntime-gpu runs on CUDA)")


def _load_onnx(path: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    require_packages(".onnx", ("onnxruntime",))
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch: formats compare alike
    # onnxruntime's memory pattern keeps one block for every intermediate of the graph: 2.6x eager torch's
    # peak at 32^3 -> 128^3; without it the peak drops to ~0.6x of that, at the same speed
    options.enable_mem_pattern = False
    providers = _onnx_providers(path, device, onnxruntime.get_available_providers())
    try:
        session = onnxruntime.InferenceSession(path, options, providers=providers)
    except (Fail, InvalidGraph, InvalidProtobuf) as exc:
        raise ValueError(f"{path}: not a loadable ONNX model ({str(exc).strip().splitlines()[0]})") from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return RuntimeModule(functools.partial(_run_session, session), device), json.loads(text) if text else {}


# ---------------------------------------------------------------------------------------- .pt


@contextlib.contextmanager
def _torchscript_deprecation_ignored() -> Iterator[None]:
    """torch >= 2.10 deprecates TorchScript; the legacy ``.pt`` format uses it on purpose, for
    consumers that read nothing else: its writer and reader run without the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def _write_torchscript(net: torch.nn.Module, path: Path, metadata: str, example: torch.Tensor) -> None:
    with _torchscript_deprecation_ignored():
        torch.jit.save(torch.jit.script(net), os.fspath(path), _extra_files={METADATA_KEY: metadata})


def _load_torchscript(path: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    extra = {METADATA_KEY: ""}
    try:
        with _torchscript_deprecation_ignored():
            net = torch.jit.load(path, map_location=device, _extra_files=extra)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a loadable TorchScript module ({str(exc).strip().splitlines()[0]})") from None
    return net.eval(), json.loads(extra[METADATA_KEY]) if extra[METADATA_KEY] else {}


def _has_suffix(suffix: str) -> Callable[[str], bool]:
    return lambda path: Path(path).suffix.lower() == suffix


#: The export formats by the suffix of the output file. ``.pt2`` and ``.onnx`` files are recognised
#: by their suffix; a ``.pt`` file by its content (``.pt`` names tensors and checkpoints too).
FORMATS: dict[str, ExportFormat] = {
    ".pt2": ExportFormat("ExportedProgram", _write_exported_program, _has_suffix(".pt2"), _load_exported_program),
    ".onnx": ExportFormat("ONNX", _write_onnx, _has_suffix(".onnx"), _load_onnx, ONNX_PACKAGES),
    ".pt": ExportFormat("TorchScript", _write_torchscript, is_torchscript, _load_torchscript),
}


def require_packages(what: str, packages: tuple[str, ...]) -> None:
    """Refuse ``what`` (a format) with one line naming the ``packages`` that are not installed."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackageError(f"{what} needs the package(s) {', '.join(missing)}, not installed here: "
                                  "pip install 'steerable_sr[export]'")


def export_format(path: str | os.PathLike) -> ExportFormat:
    """The format of an export written to ``path``, by its suffix; ``ValueError`` for another suffix,
    :class:`MissingPackageError` when the format's optional packages are not installed."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(f"{s} ({f.name})" for s, f in FORMATS.items())
        raise ValueError(f"{path}: unknown export format {suffix or '(no suffix)'!r}; known: {known}")
    require_packages(suffix, FORMATS[suffix].packages)
    return FORMATS[suffix]


def module_metadata(module: SuperResolutionModule) -> dict[str, Any]:
    """What an export records of its training module: identity, widths, size, training units."""
    hp = dict(module.hparams)
    meta = {k: hp.get(k) for k in ("kind", "group", "frames", "upscale", "preset", "model_overrides",
                                   "divergence_periodic")}
    meta["config"] = dataclasses.asdict(module.model.config)
    meta["parameters"] = module.model.num_parameters()
    meta["input_size"] = int(module.train_input_size) or None
    meta["velocity_scale"] = float(module.velocity_scale)
    return meta


def tiling_metadata(net: torch.nn.Module, channels: int) -> dict[str, Any]:
    """What tiled prediction reads from the network's layers (:class:`~steerable_sr.tiling.TileGeometry`:
    halo and memory per voxel, measured on ``net`` in eval mode on the CPU), recorded with an export
    whose graph hides the layers (``.pt2``, ``.onnx``)."""
    from .tiling import receptive_field, tile_memory

    return {"halo": receptive_field(net), "bytes_per_voxel": tile_memory(net, channels).bytes_per_voxel}


@torch.no_grad()
def check_export(fmt: ExportFormat, path: str | os.PathLike, net: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Load the export at ``path`` with its reader and compare it with ``net`` on a random input.

    Parameters
    ----------
    fmt : ExportFormat
        The format of ``path``.
    path : str or os.PathLike
        The export file.
    net : torch.nn.Module
        The network exported, in eval mode.
    shape : tuple of int
        ``(B, 3 frames, n, n, n)``: the input of the comparison (seeded standard normal).

    Returns
    -------
    float
        ``||export(x) - net(x)|| / ||net(x)||`` per sample, averaged over the batch
        (:func:`steerable_sr.metrics.relative_l2`).

    Raises
    ------
    ValueError
        The difference exceeds :data:`EXPORT_TOL`.
    """
    loaded, _ = fmt.load(os.fspath(path), "cpu")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    error = float(relative_l2(loaded(x), net(x)))
    if not error <= EXPORT_TOL:
        raise ValueError(f"the {fmt.name} export disagrees with the network: relative difference {error:.1e} > "
                         f"{EXPORT_TOL:g} on an input of shape {tuple(shape)}; nothing written")
    return error


def write_export(module: SuperResolutionModule, out: str | os.PathLike, source: str,
                 datamodule: Mapping[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the network of ``module`` to ``out`` (format by suffix, :data:`FORMATS`) with its
    metadata inside, atomically, after :func:`check_export`.

    The network is traced on an input ``(2, 3 frames, n, n, n)``, ``n`` the training input size (4 if
    unknown), and checked on ``(1, 3 frames, n + 1, n + 1, n + 1)``: sizes other than the traced ones.

    Parameters
    ----------
    module : SuperResolutionModule
        The trained module (e.g. :func:`steerable_sr.checkpoint.load_module`).
    out : str or os.PathLike
        The export file.
    source : str
        What the module was read from (recorded as ``source_checkpoint``).
    datamodule : mapping, optional
        The training datamodule's hyperparameters (a checkpoint's ``datamodule_hyper_parameters``):
        recorded, so that ``steerable-sr evaluate`` reads the same split of the same data.
    overwrite : bool
        Replace an existing file; otherwise ``FileExistsError`` before any work.

    Returns
    -------
    dict
        The metadata written.
    """
    fmt = export_format(out)
    meta = {**module_metadata(module), "datamodule": dict(datamodule or {}), "format": EXPORT_FORMAT,
            "file_format": fmt.name, "source_checkpoint": source, "torch_version": torch.__version__,
            "steerable_sr_version": __version__,
            "input": "(B, 3*frames, n, n, n) float32, public convention (docs/conventions.md), divided by "
                     "velocity_scale",
            "output": "(B, 3, upscale*n, upscale*n, upscale*n), multiply by velocity_scale"}
    net = module.model.export().eval()
    n = meta["input_size"] or 4
    channels = 3 * int(meta["frames"])
    meta["tiling"] = tiling_metadata(net, channels)
    example = torch.randn(2, channels, n, n, n, generator=torch.Generator().manual_seed(0))
    with atomic_output(out, overwrite=overwrite) as tmp:
        fmt.write(net, tmp, to_json(meta) + "\n", example)
        check_export(fmt, tmp, net, (1, channels, n + 1, n + 1, n + 1))
    return meta


@dataclasses.dataclass
class InferenceModel:
    """A trained network ready for inference, from a checkpoint or an export.

    Attributes
    ----------
    net : torch.nn.Module
        ``(B, 3 frames, n, n, n)`` -> ``(B, 3, upscale n, upscale n, upscale n)`` in the network's
        units (velocity divided by :attr:`velocity_scale`), on :attr:`device`, in eval mode. The
        :class:`~steerable_sr.models.SuperResolutionNet` of a checkpoint; the loaded program of an export.
    meta : dict
        :func:`module_metadata` (at least ``frames`` and ``upscale``), with ``datamodule``: the
        training datamodule's hyperparameters where recorded.
    source : str
        ``"checkpoint"`` or the name of the export format.
    device : str
        Where ``net`` runs.
    """

    net: torch.nn.Module
    meta: dict[str, Any]
    source: str
    device: str = "cpu"

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def upscale(self) -> int:
        return int(self.meta["upscale"])

    @property
    def input_size(self) -> int | None:
        """The edge ``n`` of the training inputs (``None``: not recorded)."""
        n = self.meta.get("input_size")
        return int(n) if n else None

    @property
    def velocity_scale(self) -> float:
        return float(self.meta.get("velocity_scale") or 1.0)

    @torch.no_grad()
    def __call__(self, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """Super-resolve ``windows`` ``(B, 3 frames, n, n, n)`` in physical units, ``batch_size`` at a
        time; returns ``(B, 3, upscale n, upscale n, upscale n)`` float32 on the CPU, in physical units."""
        scale = self.velocity_scale
        parts = [self.net((windows[i: i + batch_size] / scale).to(self.device)).float().cpu() * scale
                 for i in range(0, windows.shape[0], batch_size)]
        return torch.cat(parts)


def _recognised_format(path: str | os.PathLike) -> ExportFormat | None:
    """The export format of the file at ``path`` (:attr:`ExportFormat.recognises`); ``None`` for any
    other file (a checkpoint)."""
    path = os.fspath(path)
    return next((fmt for fmt in FORMATS.values() if fmt.recognises(path)), None)


def load_for_inference(path: str | os.PathLike, device: str = "cpu", trust: bool = False) -> InferenceModel:
    """The network of an export (any format of :data:`FORMATS`) or of a training checkpoint (read as
    data only unless ``trust``: :func:`steerable_sr.checkpoint.read_checkpoint`), on ``device``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        A truncated file, an export without steerable-sr metadata, or a file that is neither.
    MissingPackageError
        An ``.onnx`` file without onnxruntime installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = _recognised_format(path)
    if fmt is None:
        checkpoint = read_checkpoint(path, trust=trust)
        module = module_from_checkpoint(checkpoint, device, source=path)
        meta = {**module_metadata(module), "datamodule": dict(checkpoint.get("datamodule_hyper_parameters") or {})}
        return InferenceModel(module.model, meta, "checkpoint", device)
    net, meta = fmt.load(path, device)
    if "frames" not in meta or "upscale" not in meta:
        raise ValueError(f"{path}: exported module without steerable-sr metadata (frames, upscale)")
    if isinstance(net, RuntimeModule) and "tiling" in meta:
        from .tiling import TileGeometry

        net.tile_geometry = TileGeometry(upscale=int(meta["upscale"]), **meta["tiling"])
    return InferenceModel(net, meta, fmt.name, device)
