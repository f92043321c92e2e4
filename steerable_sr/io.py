"""Writing outputs safely: atomic files and directories, and JSON for numpy and torch values.

Every file or directory the package writes (datasets, JHTDB cutouts, checkpoints' exports,
predictions, reports, study results, figures) goes through :func:`atomic_output`,
:func:`atomic_directory` or :func:`atomic_files`: the data is written under a temporary name next to
the destination and renamed onto it at the end, so a reader never sees half a file and a failing
command (an exception, ``KeyboardInterrupt`` included) leaves the destination untouched.

Temporary names carry the writer's process id (``.NAME.PID.XXXXXXXX.tmp`` for a file,
``.NAME.PID.XXXXXXXX`` for a directory). A writer killed by SIGKILL cannot remove its temporary
file; the next write of the same destination removes those of processes that no longer exist
(:func:`remove_stale_temporaries`), never one of a live writer.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written: its folder (or the nearest
    one that exists, where the missing ones would be made) is a regular file, or takes no new file
    (read-only, no permission, a virtual file system such as ``/proc``). Probed by creating and
    removing a temporary file there, which is what writing the output does.

    Raises
    ------
    NotADirectoryError
        A parent of ``path`` is a regular file.
    PermissionError
        The folder takes no new file; the message names ``path`` and the reason.
    """
    path = Path(path)
    folder = path.absolute().parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise PermissionError(f"cannot write {path}: {folder} takes no new file ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporary files and directories of earlier writers of ``path`` whose process no longer
    exists (killed by SIGKILL or a power loss); those of running processes are left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}(\.tmp)?")
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _process_exists(int(match.group(1))):
            continue
        if match.group(2):
            entry.unlink(missing_ok=True)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


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
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary_directory(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the directory the usual permissions
    return tmp


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path`` (which must not exist); move it onto ``path`` only
    if the block succeeds. On any exception the temporary directory is removed."""
    path = Path(path)
    _refuse_existing(path, overwrite=False)
    tmp = _temporary_directory(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike, owned: Collection[str]) -> Iterator[Path]:
    """Yield a temporary directory inside the existing ``directory``; if the block succeeds, move the
    files written there into ``directory`` (one atomic rename each, replacing files of the same name)
    and remove the files of ``owned`` (the names this writer ever writes) that the block did not write.
    Every other file of ``directory`` is kept. On any exception ``directory`` is untouched."""
    directory = Path(directory)
    tmp = _temporary_directory(directory / ".files")
    try:
        yield tmp
        written = sorted(p.name for p in tmp.iterdir())
        for name in written:
            os.replace(tmp / name, directory / name)
        for name in set(owned) - set(written):
            (directory / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
