"""Argument types and options shared by the commands of :mod:`steerable_sr.cli`."""
from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..io import check_writable
from . import CLIError

#: Help of ``--trust-checkpoint`` (:func:`steerable_sr.checkpoint.read_checkpoint`, ``trust``).
TRUST_HELP = ("read a checkpoint that holds more than tensors and plain data (refused by default: reading it runs "
              "code from the file); only for files you made yourself")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (``'{"hidden": 4}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hidden\": 4}}', got {text!r}")
    return value


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: read a checkpoint beyond data (``args.trust_checkpoint``)."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def check_data_path(path: str | os.PathLike | Sequence[str | os.PathLike],
                    hint: str = "generate a dataset with `steerable-sr generate`") -> None:
    """Refuse a dataset path (or glob pattern, or list of them) that names no file, with ``hint``."""
    for item in [path] if isinstance(path, (str, os.PathLike)) else list(path):
        text = os.fspath(item)
        if any(ch in text for ch in "*?["):
            if not glob.glob(text):
                raise CLIError(f"data path pattern matches no file: {text}")
        elif not os.path.exists(text):
            raise CLIError(f"data path not found: {text} ({hint})")


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output file that is one of the ``inputs`` (``--overwrite`` never
    replaces an input), that exists without ``overwrite``, or that cannot be written
    (:func:`steerable_sr.io.check_writable`)."""
    path = Path(path)
    if path.exists():
        for item in inputs:
            if os.path.exists(item) and os.path.samefile(item, path):
                raise CLIError(f"the output {path} is the input file {item}; write to another file "
                               "(--overwrite never replaces an input)")
        if not overwrite:
            raise CLIError(f"{path} exists; pass --overwrite to replace it")
    check_writable(path)
