"""Atomic file output: write to a temporary file in the target directory, rename at the end."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory (so ``os.replace`` is an atomic rename on the
    same file system) and is removed on any exception, ``KeyboardInterrupt`` included: ``path`` is
    either the complete new file or untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its directory is created if needed.
    overwrite : bool
        Replace an existing ``path``; otherwise refuse with ``FileExistsError`` before any work.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
