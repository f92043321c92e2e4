r"""Training checkpoints are data: reading one never runs code from it.

A checkpoint (``.ckpt``, written by Lightning) is a pickle inside a zip archive, and unpickling can
call any importable function. Every checkpoint this package reads goes through
:func:`read_checkpoint`: ``torch.load(..., weights_only=True)``, which builds tensors, plain
containers, numbers and strings, and the types of :data:`SAFE_GLOBALS` (the one list of what our
checkpoints may hold beyond those), and nothing else. A file that needs anything else is refused
with :class:`UntrustedCheckpointError` before anything in it runs; ``trust=True`` (the command
line's ``--trust-checkpoint``) reads it with the full unpickler, after a
:class:`TrustedCheckpointWarning`, for files the user made themselves.

Built on it:

* :func:`load_module`: the :class:`~steerable_sr.training.SuperResolutionModule` of a checkpoint
  (:func:`module_from_checkpoint` when the checkpoint is already read);
* :class:`CheckpointReader`: the same reader as Lightning's checkpoint IO, for ``--ckpt_path`` of
  ``fit`` / ``validate`` / ``test`` (a file read beforehand is handed over, not read again).

Exported modules (TorchScript, :mod:`steerable_sr.export`) are programs, not data: they are not
checkpoints and are refused here.
"""
from __future__ import annotations

import inspect
import os
import pathlib
import pickle
import warnings
import zipfile
from typing import Any, Callable, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .training import CheckpointMismatchError, SuperResolutionModule

#: What a steerable-sr checkpoint may hold beyond tensors, plain containers, numbers and strings:
#: paths (a datamodule given a ``pathlib.Path`` keeps it in its saved hyperparameters). Building
#: one calls the path class on strings, nothing else.
SAFE_GLOBALS: tuple[type, ...] = (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                                  pathlib.PureWindowsPath)
#: The command-line option that lets :func:`read_checkpoint` use the full unpickler.
TRUST_OPTION = "--trust-checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"


class UntrustedCheckpointError(ValueError):
    """A checkpoint that holds more than data: reading it would run code from the file."""


class TrustedCheckpointWarning(UserWarning):
    """A checkpoint read with the full unpickler (``trust=True``): code in the file may have run."""


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete TorchScript archive (a zip with a ``code/`` folder; a checkpoint
    written by ``torch.save`` has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _first_record(path: str) -> str | None:
    """The name of the first record of a zip archive, read from its local header (present even when
    the end of the file, with the archive's directory, is missing); ``None`` if it is not a zip."""
    with open(path, "rb") as handle:
        header = handle.read(30)
        if len(header) < 30 or header[:4] != _ZIP_MAGIC:
            return None
        return handle.read(int.from_bytes(header[26:28], "little")).decode("utf-8", "replace")


def _check_archive(path: str) -> None:
    """Refuse what is not a complete archive of ``torch.save``, saying what it is: not a zip archive,
    a truncated one, or an exported module."""
    first = _first_record(path)
    if first is None:
        raise ValueError(f"{path} is not a training checkpoint (not a zip archive, as torch.save writes)")
    if not zipfile.is_zipfile(path):
        what = "an exported module (TorchScript)" if "/extra/" in first or "/code/" in first else "a checkpoint"
        raise ValueError(f"{path}: truncated or damaged file: the beginning of {what} without the rest "
                         "(its writing was cut short?); write it again")
    if is_torchscript(path):
        raise ValueError(f"{path} is an exported module (TorchScript), not a training checkpoint; "
                         "`steerable-sr predict` takes it as MODEL")


def _refusal(path: str, found: list[str]) -> UntrustedCheckpointError:
    what = ", ".join(found) or "objects other than tensors and plain data"
    return UntrustedCheckpointError(f"{path}: refused: the file holds {what}, which reading it would run (a "
                                    f"steerable-sr checkpoint holds data only); if you made this file yourself, "
                                    f"pass {TRUST_OPTION}")


def _load(path: str, full: bool) -> Any:
    """``torch.load`` on the CPU: data only, or (``full``) with the full unpickler after a warning."""
    if full:
        warnings.warn(f"{path}: read with the full unpickler ({TRUST_OPTION}): any code in the file has run",
                      TrustedCheckpointWarning, stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=not full)
    except RuntimeError as exc:  # a damaged record
        raise ValueError(f"{path} is not a readable training checkpoint ({str(exc).strip().splitlines()[0]})"
                         ) from None


def read_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """The contents of the steerable-sr training checkpoint at ``path``, on the CPU.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint written by Lightning (``fit``).
    trust : bool
        Read a file that holds more than data with the full unpickler, after a
        :class:`TrustedCheckpointWarning` (code in the file runs). Only for files the user made.

    Returns
    -------
    dict
        Lightning's checkpoint: ``state_dict``, ``hyper_parameters`` (those of
        :class:`~steerable_sr.training.SuperResolutionModule`), ``datamodule_hyper_parameters``,
        optimizer and loop states, ...

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    UntrustedCheckpointError
        The file holds objects other than tensors and plain data (``trust`` not given): refused
        before any of them is built.
    ValueError
        An exported module, a truncated file, or a file that is not a steerable-sr checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_archive(path)
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if unsafe and not trust:
            raise _refusal(path, unsafe)
        try:
            checkpoint = _load(path, full=bool(unsafe))
        except pickle.UnpicklingError:  # what the static scan cannot see (globals built while unpickling)
            if not trust:
                raise _refusal(path, []) from None
            checkpoint = _load(path, full=True)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)
            and isinstance(checkpoint.get("hyper_parameters"), dict)):
        raise ValueError(f"{path} is not a steerable-sr training checkpoint (no state_dict/hyper_parameters)")
    return checkpoint


def module_from_checkpoint(checkpoint: dict[str, Any], device: str | torch.device = "cpu",
                           source: str = "the checkpoint") -> SuperResolutionModule:
    """The :class:`~steerable_sr.training.SuperResolutionModule` of a checkpoint read by
    :func:`read_checkpoint`, with its weights and buffers (velocity scale, training input size),
    on ``device``, in eval mode. ``source`` names the checkpoint in errors."""
    accepted = inspect.signature(SuperResolutionModule.__init__).parameters
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted}
    module = SuperResolutionModule(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{source}: the weights do not fit the model its hyperparameters describe "
                         f"({' '.join(str(exc).split())})") from None
    return module.to(device).eval()


def load_module(path: str | os.PathLike, device: str | torch.device = "cpu", trust: bool = False,
                expect_kind: str | None = None) -> SuperResolutionModule:
    """The :class:`~steerable_sr.training.SuperResolutionModule` saved at ``path`` (read by
    :func:`read_checkpoint`: data only unless ``trust``), on ``device``, in eval mode.

    Raises
    ------
    CheckpointMismatchError
        ``expect_kind`` is given and the checkpoint holds another kind.
    """
    checkpoint = read_checkpoint(path, trust=trust)
    kind = checkpoint["hyper_parameters"].get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointMismatchError(f"the checkpoint holds a {kind!r} model, expected {expect_kind!r}")
    return module_from_checkpoint(checkpoint, device, source=os.fspath(path))


class CheckpointReader(TorchCheckpointIO):
    """Lightning's checkpoint IO reading through :func:`read_checkpoint` (writing is Lightning's).

    Set as ``trainer.strategy.checkpoint_io``: the Trainer's own reads (``ckpt_path`` of
    ``fit`` / ``validate`` / ``test``, ``"last"`` and ``"best"`` included) follow the same rules as
    every other command. A checkpoint read by :meth:`preload` (read before the Trainer exists, to check
    it) is handed over once instead of being read again.

    Parameters
    ----------
    trust : bool
        Passed to :func:`read_checkpoint`.
    """

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = trust
        self._preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read ``path`` now; the next :meth:`load_checkpoint` of it returns this result."""
        checkpoint = read_checkpoint(path, trust=self.trust)
        self._preloaded[os.path.abspath(path)] = checkpoint
        return checkpoint

    def load_checkpoint(self, path: str | os.PathLike, map_location: Optional[Callable] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        """The checkpoint at ``path`` (``map_location`` and ``weights_only`` are Lightning's: the
        tensors stay on the CPU, and what may be unpickled is :func:`read_checkpoint`'s rule)."""
        checkpoint = self._preloaded.pop(os.path.abspath(path), None)
        return checkpoint if checkpoint is not None else read_checkpoint(path, trust=self.trust)
