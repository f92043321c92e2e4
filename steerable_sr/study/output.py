"""The output directory of a study: refused before any training when it holds results (unless
``overwrite``), runs kept in ``partial/`` as they finish, and all outputs published together at the end.

A study's outputs are one set: ``results.json``, ``results.md`` and the plots of a comparison;
``discover.json``, ``discover.md`` and the trained weights of a discovery. While a study trains, each
finished run goes to ``OUT/partial/`` (the results so far, and the weights), so an interrupted study
keeps its finished runs there (``--from-json OUT/partial/results.json`` renders them) and leaves
the results already in ``OUT`` untouched. At the end the whole set is written to a temporary
directory and moved into ``OUT`` (:func:`steerable_sr.io.atomic_files`: one rename per file, after
all were written; the earlier set's files that the new one lacks are removed), then ``partial/`` is
removed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..io import atomic_files

#: Subdirectory of a running study's finished runs.
PARTIAL = "partial"


@dataclass(frozen=True)
class StudyOutput:
    """Where one kind of study writes.

    Attributes
    ----------
    out : pathlib.Path
        The output directory.
    command : str
        The study's name in messages (``"compare"``, ``"discover"``).
    names : tuple of str
        The files the study always publishes.
    pattern : str, optional
        A glob of further files it publishes (the trained weights of a discovery).
    """

    out: Path
    command: str
    names: tuple[str, ...]
    pattern: str | None = None

    def published(self) -> list[str]:
        """The names of the study's files that ``out`` holds now, sorted."""
        if not self.out.is_dir():
            return []
        return sorted(p.name for p in self.out.iterdir() if p.is_file() and (
            p.name in self.names or (self.pattern is not None and fnmatch.fnmatch(p.name, self.pattern))))

    def check(self, overwrite: bool, partial: bool = True) -> None:
        """Refuse ``out`` before any work.

        Parameters
        ----------
        overwrite : bool
            Allow replacing the study's results in ``out``.
        partial : bool
            Count the finished runs of an interrupted study (``partial/``) as results too.

        Raises
        ------
        FileExistsError
            ``out`` is a file, or holds the study's results (and ``overwrite`` is not given).
        """
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"{self.out} is a file; the results of {self.command} are a directory: "
                                  "choose another --out")
        held = self.published() + ([PARTIAL + "/"] if partial and (self.out / PARTIAL).is_dir() else [])
        if held and not overwrite:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise FileExistsError(f"{self.out} holds the results of an earlier {self.command} ({shown}); "
                                  "pass --overwrite to replace them, or choose another --out")

    def start(self) -> Path:
        """Create ``out`` and an empty ``partial/`` in it (replacing an interrupted study's); return it."""
        staging = self.out / PARTIAL
        if staging.is_dir():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    @contextlib.contextmanager
    def publish(self, staging: Path | None = None) -> Iterator[Path]:
        """Yield a temporary directory for the whole set of outputs; move them into ``out`` together.

        Parameters
        ----------
        staging : pathlib.Path, optional
            The ``partial/`` of a study's run (:meth:`start`), removed once the outputs are in place;
            the earlier set's files that the new one lacks are all removed (its trained weights
            too). Without it (a re-rendering of saved results), only :attr:`names` are replaced.

        Yields
        ------
        pathlib.Path
            The temporary directory. If the block fails, ``out`` is untouched.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        owned = list(self.names) + (self.published() if staging is not None else [])
        with atomic_files(self.out, owned) as tmp:
            yield tmp
        if staging is not None:
            shutil.rmtree(staging)


def read_saved(path: str | os.PathLike, filename: str, command: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A study's saved results file, read and checked before any work.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    filename, command : str
        What it should be, for the messages (``"results.json"`` of ``"compare"``).
    keys : tuple of str
        The top-level keys it must have.

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError, ValueError
        In one line naming the file: missing, not JSON, or not such a file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{filename} not found: {path}")
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not set(keys) <= data.keys():
        raise ValueError(f"{path} is not a {filename} of `steerable-sr {command}` (no {' and '.join(keys)})")
    return data
