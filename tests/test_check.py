"""``steerable-sr check DATA``: every value of a dataset read (slab by slab), the first NaN / Inf named
with its file, frame and position in one line, exit status 1; a one-line summary and 0 otherwise."""
import argparse
import math
import re

import h5py
import numpy as np
import pytest
import torch

from steerable_sr.cli import check
from steerable_sr.data.jhtdb import save_jhtdb

from test_lazy_data import write_generated_layout


def _check(*argv):
    parser = argparse.ArgumentParser(prog="steerable-sr check")
    check.add_arguments(parser)
    return check.run(parser.parse_args([*map(str, argv), "--no-progress"]))


def _velocity():
    return torch.randn(13, 3, 8, 12, 16)


@pytest.mark.parametrize("kind", ["generated", "jhtdb"])
def test_a_clean_dataset_passes_with_a_one_line_summary(tmp_path, capsys, kind):
    velocity = _velocity()
    path = (write_generated_layout(tmp_path / "data.h5", velocity) if kind == "generated"
            else save_jhtdb(tmp_path / "data.h5", velocity))
    assert _check(path) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    rms = math.sqrt(float(velocity.double().square().mean()))
    assert out == (f"{path}: 13 frames of 8x12x16 (float32), every value finite; rms velocity component {rms:.4g}, "
                   f"max |u_a| {float(velocity.abs().max()):.4g}\n")


@pytest.mark.parametrize("kind", ["generated", "jhtdb"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_value_is_reported_with_file_frame_and_position(tmp_path, capsys, kind, bad):
    velocity = _velocity()
    velocity[11, 2, 7, 1, 9] = bad  # a test frame, which no training crop reads
    velocity[12, 0, 0, 0, 0] = bad
    if kind == "generated":
        path, where = write_generated_layout(tmp_path / "bad.h5", velocity), r"velocity\[11\]"
    else:
        path, where = save_jhtdb(tmp_path / "bad.h5", velocity), "Velocity_0012"
    assert _check(path) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.fullmatch(rf"steerable-sr: error: .*bad.h5:{where}: 1 NaN or Inf value\(s\) \(the first at index "
                        rf"\(2, 7, 1, 9\)\); velocities must be finite\n", err), err


def test_a_position_in_a_later_slab_is_counted_in_the_frame(tmp_path, capsys, monkeypatch):
    velocity = _velocity()
    velocity[3, 1, 6, 10, 2] = float("nan")
    path = write_generated_layout(tmp_path / "bad.h5", velocity)
    monkeypatch.setattr("steerable_sr.data.frames.SLAB_BYTES", 3 * 12 * 16 * 4)  # one x-plane a slab
    assert _check(path) == 1
    assert r"bad.h5:velocity[3]: 1 NaN or Inf value(s) (the first at index (1, 6, 10, 2))" in capsys.readouterr().err


@pytest.mark.parametrize("fault, message", [
    ("integers", r"int.h5:velocity: velocity stored as int32; velocities must be floating point"),
    ("truncated", r"int.h5: not a readable HDF5 file"),
    ("no velocity", r"int.h5: no velocity datasets"),
])
def test_data_that_is_not_velocity_fails_with_one_line(tmp_path, capsys, fault, message):
    path = tmp_path / "int.h5"
    if fault == "integers":
        write_generated_layout(path, (100 * _velocity()).int())
    elif fault == "truncated":
        data = write_generated_layout(tmp_path / "good.h5", _velocity()).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with h5py.File(path, "w") as handle:
            handle["Pressure_0001"] = np.zeros((4, 4, 4, 1), np.float32)
    assert _check(path) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5: no such file"):
        _check(tmp_path / "missing.h5")
