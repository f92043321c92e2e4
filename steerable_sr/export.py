r"""Exported networks: writing one, and loading a checkpoint or an export for inference.

An export is the network of a training checkpoint as plain torch layers
(:meth:`SuperResolutionNet.export`), loadable without escnn or this package, in a format chosen by
the suffix of the output file (:data:`FORMATS`), with its metadata (:func:`module_metadata`: kind,
frames, upscale, training input size, velocity scale, ...) inside the file and next to it
(:func:`metadata_path`). Formats:

* ``.pt``: TorchScript (``torch.jit.script``; ``torch.jit.load`` alone runs it).

A format is one :class:`ExportFormat` entry: how to write the plain-torch network with its metadata
text, how to recognise and load such a file. :func:`load_for_inference` takes either an export or a
checkpoint (read as data only, :func:`steerable_sr.checkpoint.read_checkpoint`) and returns an
:class:`InferenceModel`: ``(B, 3 frames, n, n, n)`` windows in physical units ->
``(B, 3, upscale n, upscale n, upscale n)`` in physical units.

Exports are programs (TorchScript holds code that ``torch.jit.load`` runs): load those of trusted
sources only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import __version__
from .checkpoint import is_torchscript, load_module
from .io import atomic_output, to_json
from .training import SuperResolutionModule

#: Version of the metadata layout written by :func:`write_export`.
EXPORT_FORMAT = "steerable-sr-export/1"


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One file format of an export.

    Attributes
    ----------
    name : str
        Shown to the user (``"TorchScript"``).
    write : callable
        ``write(net, path, metadata)``: save the plain-torch network ``net`` (eval mode) to ``path``
        with the JSON text ``metadata`` inside.
    recognises : callable
        ``recognises(path) -> bool``: whether the file at ``path`` is of this format.
    load : callable
        ``load(path, device) -> (net, metadata)``: the network on ``device`` (a callable on
        ``(B, 3 frames, n, n, n)`` tensors) and the metadata stored inside (``{}`` if none).
    """

    name: str
    write: Callable[[torch.nn.Module, Path, str], None]
    recognises: Callable[[str], bool]
    load: Callable[[str, str], tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]]


@contextlib.contextmanager
def _torchscript_deprecation_ignored() -> Iterator[None]:
    """torch >= 2.10 deprecates TorchScript; it remains the format that runs with torch alone (no
    escnn, no steerable_sr) in every torch this package supports: its writer and reader use it on
    purpose, without the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def _write_torchscript(net: torch.nn.Module, path: Path, metadata: str) -> None:
    with _torchscript_deprecation_ignored():
        torch.jit.save(torch.jit.script(net), os.fspath(path), _extra_files={"metadata.json": metadata})


def _load_torchscript(path: str, device: str) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    extra = {"metadata.json": ""}
    try:
        with _torchscript_deprecation_ignored():
            net = torch.jit.load(path, map_location=device, _extra_files=extra)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a loadable TorchScript module ({str(exc).strip().splitlines()[0]})") from None
    return net, json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}


#: The export formats by the suffix of the output file.
FORMATS: dict[str, ExportFormat] = {
    ".pt": ExportFormat("TorchScript", _write_torchscript, is_torchscript, _load_torchscript),
}


def export_format(path: str | os.PathLike) -> ExportFormat:
    """The format of an export written to ``path``, by its suffix; ``ValueError`` for another suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(f"{s} ({f.name})" for s, f in FORMATS.items())
        raise ValueError(f"{path}: unknown export format {suffix or '(no suffix)'!r}; known: {known}")
    return FORMATS[suffix]


def metadata_path(out: str | os.PathLike) -> Path:
    """``model.pt`` -> ``model.json``: the metadata written next to an export."""
    return Path(out).with_suffix(".json")


def module_metadata(module: SuperResolutionModule) -> dict[str, Any]:
    """What an export records of its training module: identity, widths, size, training units."""
    hp = dict(module.hparams)
    meta = {k: hp.get(k) for k in ("kind", "group", "frames", "upscale", "preset", "model_overrides")}
    meta["config"] = dataclasses.asdict(module.model.config)
    meta["parameters"] = module.model.num_parameters()
    meta["input_size"] = int(module.train_input_size) or None
    meta["velocity_scale"] = float(module.velocity_scale)
    return meta


def write_export(module: SuperResolutionModule, out: str | os.PathLike, source: str,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write the network of ``module`` to ``out`` (format by suffix, :data:`FORMATS`) and its metadata
    to ``out`` and :func:`metadata_path` (``out`` with suffix ``.json``), both atomically.

    Parameters
    ----------
    module : SuperResolutionModule
        The trained module (e.g. :func:`steerable_sr.checkpoint.load_module`).
    out : str or os.PathLike
        The export file.
    source : str
        What the module was read from (recorded as ``source_checkpoint``).
    overwrite : bool
        Replace existing files; otherwise ``FileExistsError`` before any work.

    Returns
    -------
    dict
        The metadata written.
    """
    fmt = export_format(out)
    meta = {**module_metadata(module), "format": EXPORT_FORMAT, "source_checkpoint": source,
            "torch_version": torch.__version__, "steerable_sr_version": __version__,
            "input": "(B, 3*frames, n, n, n) float32, public convention (docs/conventions.md), divided by "
                     "velocity_scale",
            "output": "(B, 3, upscale*n, upscale*n, upscale*n), multiply by velocity_scale"}
    text = to_json(meta) + "\n"
    net = module.model.export().eval()
    with atomic_output(out, overwrite=overwrite) as tmp, \
            atomic_output(metadata_path(out), overwrite=overwrite) as tmp_meta:
        fmt.write(net, tmp, text)
        tmp_meta.write_text(text)
    return meta


@dataclasses.dataclass
class InferenceModel:
    """A trained network ready for inference, from a checkpoint or an export.

    Attributes
    ----------
    net : callable
        ``(B, 3 frames, n, n, n)`` -> ``(B, 3, upscale n, upscale n, upscale n)`` in the network's
        units (velocity divided by :attr:`velocity_scale`), on :attr:`device`.
    meta : dict
        :func:`module_metadata` (at least ``frames`` and ``upscale``).
    source : str
        ``"checkpoint"`` or the name of the export format.
    device : str
        Where ``net`` runs.
    """

    net: Callable[[torch.Tensor], torch.Tensor]
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


def load_for_inference(path: str | os.PathLike, device: str = "cpu", trust: bool = False) -> InferenceModel:
    """The network of an export (any format of :data:`FORMATS`) or of a training checkpoint (read as
    data only unless ``trust``: :func:`steerable_sr.checkpoint.read_checkpoint`), on ``device``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        A truncated file, an export without steerable-sr metadata, or a file that is neither.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    for fmt in FORMATS.values():
        if fmt.recognises(path):
            net, meta = fmt.load(path, device)
            side = metadata_path(path)
            if not meta and side.is_file():
                meta = json.loads(side.read_text())
            if "frames" not in meta or "upscale" not in meta:
                raise ValueError(f"{path}: exported module without steerable-sr metadata (frames, upscale)")
            return InferenceModel(net.eval(), meta, fmt.name, device)
    module = load_module(path, device, trust=trust)
    return InferenceModel(module.model, module_metadata(module), "checkpoint", device)
