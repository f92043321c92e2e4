"""Writing outputs safely: atomic files and directories, and JSON for numpy and torch values.

Every file or directory the package writes (datasets, JHTDB cutouts, checkpoints' exports,
predictions, reports, study results, figures) goes through :func:`atomic_output` or
:func:`atomic_directory`: the data is written under a temporary name next to the destination and
renamed onto it at the end, so a reader never sees half a file and a failing command (an exception,
``KeyboardInterrupt`` included) leaves the destination untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory (so ``os.replace`` is an atomic rename on the
    same file system) and is removed on any exception: ``path`` is either the complete new file or
    untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its directory is created if needed.
    overwrite : bool
        Replace an existing ``path``; otherwise refuse with ``FileExistsError`` before any work.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` only if the block succeeds.

    An existing ``path`` (with ``overwrite``) is renamed aside and removed after the new directory
    is in place; on any exception the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the directory the usual permissions
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, replacing an existing file."""
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text)


def json_default(obj: Any) -> Any:
    """The ``default`` hook of :func:`json.dumps` for the values results hold: numpy arrays and
    scalars and torch tensors (anything with ``tolist``) become lists or Python numbers, sets become
    lists, any other object its ``str``."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return str(obj)


def to_json(obj: Any, indent: int = 2) -> str:
    """``obj`` as JSON text, with :func:`json_default` for numpy and torch values."""
    return json.dumps(obj, indent=indent, default=json_default)
