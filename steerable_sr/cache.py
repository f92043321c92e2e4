"""A small on-disk cache for group data that escnn computes slowly (element look-ups, representation
matrices, kernel bases): one ``.npz`` of named arrays per cache name, in a user cache directory.

:func:`get_or_compute` is the entry point: an array is read from memory, else from disk (the whole
file, once per process), else computed; new arrays are written when the process exits, one file
write per name. :func:`load` and :func:`save` read and write a whole file.

The directory is ``$STEERABLE_SR_CACHE`` if set, else ``$XDG_CACHE_HOME/steerable_sr`` (default
``~/.cache/steerable_sr``); it never lives in site-packages, so a read-only installation works.
Files are written atomically (temporary file, then rename); an unwritable or corrupt cache is
ignored (the data is recomputed), never an error.

Each array is stored with a SHA-256 of its cache name, key, dtype, shape and bytes (:func:`checksum`):
an entry that does not match (corrupt, edited, or copied from another group's file) is dropped with
one warning, recomputed and written again.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

FORMAT = 2
#: Suffix of the entry that holds the checksum of entry ``key`` (``key + CHECKSUM``).
CHECKSUM = "#sha256"


def cache_dir() -> Path:
    """Where the cache files live (see the module docstring)."""
    root = os.environ.get("STEERABLE_SR_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steerable_sr"


def _path(name: str) -> Path:
    import escnn

    return cache_dir() / f"{name}-escnn{escnn.__version__}-v{FORMAT}.npz"


def checksum(name: str, key: str, array: np.ndarray) -> str:
    """SHA-256 (hex) of an entry: its cache name and key, dtype, shape and bytes."""
    digest = hashlib.sha256(f"{name}\0{key}\0{array.dtype.str}\0{array.shape}\0".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def load(name: str) -> dict[str, np.ndarray]:
    """The arrays stored under ``name`` whose checksum matches (empty if absent or unreadable); an
    entry that fails its checksum is left out with a warning (the caller recomputes it)."""
    path = _path(name)
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except FileNotFoundError:
        return {}
    except Exception as error:  # a corrupt file is recomputed, not fatal
        warnings.warn(f"ignoring unreadable cache file {path}: {error}")
        return {}
    arrays = {key: value for key, value in stored.items() if not key.endswith(CHECKSUM)}
    bad = [key for key, value in arrays.items() if str(stored.get(key + CHECKSUM, "")) != checksum(name, key, value)]
    if bad:
        warnings.warn(f"cache file {path}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} failed the checksum "
                      f"({', '.join(bad)}); recomputing and rewriting them")
    return {key: value for key, value in arrays.items() if key not in bad}


def save(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` under ``name`` atomically, each with its :func:`checksum`; silently skipped
    where the cache is not writable."""
    path = _path(name)
    sums = {key + CHECKSUM: np.array(checksum(name, key, value)) for key, value in arrays.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays, **sums)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def get_or_compute(name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array ``key`` of cache ``name``, from memory or disk, else computed by ``compute()`` and
    stored (in memory at once, on disk when the process exits). Read-only."""
    arrays = _in_memory(name)
    if key not in arrays:
        arrays[key] = np.asarray(compute())
        _save_at_exit(name)
    arrays[key].setflags(write=False)
    return arrays[key]


@functools.lru_cache(maxsize=None)
def _in_memory(name: str) -> dict[str, np.ndarray]:
    return load(name)


@functools.lru_cache(maxsize=None)
def _save_at_exit(name: str) -> None:
    """Registers one write of ``name`` at exit (the lru_cache makes it once per name)."""
    atexit.register(lambda: save(name, _in_memory(name)))
