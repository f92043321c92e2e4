"""Atomic outputs (steerable_sr.io): what a killed writer leaves is cleaned up, never a live writer's
file; SIGTERM unwinds like an exception; replacing a writer's own files keeps every other file; an
output that cannot be written is named before any work."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steerable_sr.io import atomic_files, atomic_output, check_writable


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f".out.h5.{_dead_pid()}.abcd1234.tmp"
    live = tmp_path / f".out.h5.{os.getppid()}.abcd1234.tmp"
    other = tmp_path / f".other.h5.{_dead_pid()}.abcd1234.tmp"
    for path in (dead, live, other):
        path.write_text("partial")
    with atomic_output(tmp_path / "out.h5") as tmp:
        assert tmp.name.startswith(f".out.h5.{os.getpid()}.")
        tmp.write_text("complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "out.h5"])


def test_an_unwritable_output_is_named_before_anything_is_written(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"cannot write .*afile/new/out.h5: .*afile is a file, not a folder"):
        check_writable(tmp_path / "afile" / "new" / "out.h5")
    with pytest.raises(PermissionError, match=r"cannot write /proc/steerable_sr/out.pt: /proc takes no new file"):
        check_writable("/proc/steerable_sr/out.pt")
    check_writable(tmp_path / "new" / "deeper" / "out.h5")  # missing folders are made when writing
    assert [(p.name, p.read_text()) for p in tmp_path.iterdir()] == [("afile", "mine")]


def test_atomic_files_replace_owned_files_and_keep_the_others(tmp_path):
    for name, text in (("a.txt", "old a"), ("b.txt", "old b"), ("mine.txt", "mine")):
        (tmp_path / name).write_text(text)
    with atomic_files(tmp_path, owned=("a.txt", "b.txt")) as tmp:
        (tmp / "a.txt").write_text("new a")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "new a", "mine.txt": "mine"}


def test_atomic_files_leave_the_directory_untouched_on_failure(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), atomic_files(tmp_path, owned=("a.txt",)) as tmp:
        (tmp / "a.txt").write_text("new a")
        raise RuntimeError("plot failed")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "old a"}


def test_sigterm_during_generate_removes_the_temporary_file(tmp_path):
    exe = Path(sys.executable).with_name("steerable-sr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "steerable_sr.cli"]
    proc = subprocess.Popen(cmd + ["generate", "out.h5", "--n", "16", "--frames", "2000", "--spinup", "0",
                                   "--no-progress"], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.h5.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmp_path.glob(".out.h5.*.tmp")), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and err.strip().endswith("steerable-sr: terminated")
    assert list(tmp_path.iterdir()) == []
