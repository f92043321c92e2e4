"""JHTDB cutout files: axis / component mapping, multi-file reading, atomic writing, clear errors."""
import os

import h5py
import numpy as np
import pytest
import torch

from steerable_sr.data.jhtdb import load_jhtdb, read_jhtdb, save_jhtdb

NX, NY, NZ = 6, 5, 4


def _f(x):
    return np.sin(x) + 2.0


def _g(y):
    return y ** 2 - 1.0


def _h(z):
    return np.exp(-z)


def _write_jhtdb_layout(path, times=(1, 2), name="Velocity_{:04d}", shift=0.0):
    """A cutout written the way the JHTDB services do: (z, y, x, 3) with (u_x, u_y, u_z)."""
    x, y, z = np.linspace(0, 1, NX), np.linspace(0, 2, NY), np.linspace(0, 3, NZ)
    with h5py.File(path, "w") as handle:
        handle["xcoor"], handle["ycoor"], handle["zcoor"] = x, y, z
        for t in times:
            zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")  # arrays indexed [z, y, x]
            data = np.stack([_f(xx) + t + shift, _g(yy), _h(zz)], axis=-1).astype(np.float32)
            handle[name.format(t)] = data
        handle["Pressure_0001"] = np.zeros((NZ, NY, NX, 1), np.float32)
    return x, y, z


def test_axes_and_components_map_to_the_public_convention(tmp_path):
    x, y, z = _write_jhtdb_layout(tmp_path / "cut.h5")
    u = load_jhtdb(tmp_path / "cut.h5")
    assert u.shape == (2, 3, NX, NY, NZ) and u.dtype == torch.float32
    # u_0 depends on x_0 only, u_1 on x_1 only, u_2 on x_2 only.
    expect_0 = torch.tensor(_f(x) + 1, dtype=torch.float32).view(NX, 1, 1).expand(NX, NY, NZ)
    expect_1 = torch.tensor(_g(y), dtype=torch.float32).view(1, NY, 1).expand(NX, NY, NZ)
    expect_2 = torch.tensor(_h(z), dtype=torch.float32).view(1, 1, NZ).expand(NX, NY, NZ)
    torch.testing.assert_close(u[0, 0], expect_0)
    torch.testing.assert_close(u[0, 1], expect_1)
    torch.testing.assert_close(u[0, 2], expect_2)
    torch.testing.assert_close(u[1, 0], expect_0 + 1)


@pytest.mark.parametrize("source", ["directory", "glob", "list"])
def test_times_are_sorted_across_files(tmp_path, source):
    _write_jhtdb_layout(tmp_path / "b.h5", times=(3, 1))
    _write_jhtdb_layout(tmp_path / "a.h5", times=(2,), name="VELOCITY_{:04d}")
    paths = {"directory": tmp_path, "glob": str(tmp_path / "*.h5"), "list": [tmp_path / "b.h5", tmp_path / "a.h5"]}
    cut = read_jhtdb(paths[source])
    assert cut.times == [1, 2, 3]
    # u_x at x = 0 is sin(0) + 2 + t: 3, 4, 5 in time order (exact in float32)
    torch.testing.assert_close(cut.velocity[:, 0, 0, 0, 0], torch.tensor([3.0, 4.0, 5.0]), rtol=0, atol=0)


def test_coordinates_are_read_per_axis(tmp_path):
    x, y, z = _write_jhtdb_layout(tmp_path / "cut.h5")
    cut = read_jhtdb(tmp_path / "cut.h5")
    for got, written in zip(cut.coords, (x, y, z)):  # xcoor, ycoor, zcoor: distinct lengths and ranges
        np.testing.assert_array_equal(got, written)


def _saved(tmp_path):
    u = torch.randn(3, 3, 8, 4, 12)
    coords = [np.arange(8) * 0.5, np.arange(4) * 0.25, np.arange(12) * 1.0]
    return u, coords, save_jhtdb(tmp_path / "out.h5", u, coords=coords, start=7)


def test_save_writes_the_jhtdb_layout(tmp_path):
    u, coords, path = _saved(tmp_path)
    with h5py.File(path, "r") as handle:
        assert sorted(handle) == ["Velocity_0007", "Velocity_0008", "Velocity_0009", "xcoor", "ycoor", "zcoor"]
        # (nz, ny, nx, 3) with components (u_x, u_y, u_z): entry [k, j, i, c] is u_c at voxel (i, j, k)
        stored = handle["Velocity_0008"][()]
        assert stored.shape == (12, 4, 8, 3)
        assert stored[5, 2, 7, 1] == u[1, 1, 7, 2, 5].item()
        np.testing.assert_array_equal(stored, np.einsum("cxyz->zyxc", u[1].numpy()))
        np.testing.assert_array_equal(handle["ycoor"][()], coords[1].astype(np.float32))


def test_save_then_load_round_trips(tmp_path):
    u, coords, path = _saved(tmp_path)
    cut = read_jhtdb(path)
    torch.testing.assert_close(cut.velocity, u, rtol=0, atol=0)  # float32 in, float32 out: bit for bit
    assert cut.times == [7, 8, 9]


def test_saved_file_gets_the_usual_permissions(tmp_path):
    _, _, path = _saved(tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of the temporary file


def test_save_refuses_to_overwrite(tmp_path):
    u, _, path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="out.h5 already exists"):
        save_jhtdb(path, torch.zeros_like(u))
    assert path.read_bytes() == before


@pytest.mark.parametrize("velocity, coords, message", [
    (torch.zeros(1, 3, 4, 4, 4), [np.arange(4)] * 2, "coords must be three 1D arrays"),
    (torch.zeros(2, 4, 4, 4, 4), None, "expected velocity of shape"),
])
def test_invalid_save_arguments_are_refused_before_writing(tmp_path, velocity, coords, message):
    with pytest.raises(ValueError, match=message):
        save_jhtdb(tmp_path / "bad.h5", velocity, coords=coords)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.Group, "create_dataset", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_jhtdb(tmp_path / "out.h5", torch.zeros(1, 3, 4, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.h5: no such file"):
        load_jhtdb(tmp_path / "nothere.h5")
    with pytest.raises(FileNotFoundError, match=r"\*.h5: no file matches"):
        load_jhtdb(str(tmp_path / "*.h5"))
    with pytest.raises(FileNotFoundError, match="directory contains no HDF5 files"):
        load_jhtdb(tmp_path)


def test_not_an_hdf5_file(tmp_path):
    (tmp_path / "text.h5").write_text("this is not HDF5\n")
    with pytest.raises(ValueError, match="text.h5: not a readable HDF5 file"):
        load_jhtdb(tmp_path / "text.h5")


def test_no_velocity_datasets(tmp_path):
    with h5py.File(tmp_path / "p.h5", "w") as handle:
        handle["Pressure_0001"] = np.zeros((4, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match=r"p.h5: no velocity datasets .*Pressure_0001"):
        load_jhtdb(tmp_path / "p.h5")


@pytest.mark.parametrize("shape", [(4, 4, 4), (4, 4, 4, 2), (2, 4, 4, 4, 3)])
def test_wrong_dataset_shape(tmp_path, shape):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle["Velocity_0001"] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=r"s.h5:Velocity_0001: expected shape \(nz, ny, nx, 3\)"):
        load_jhtdb(tmp_path / "s.h5")


def test_inconsistent_shapes_across_times(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle["Velocity_0001"] = np.zeros((4, 4, 4, 3), np.float32)
        handle["Velocity_0002"] = np.zeros((4, 4, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"Velocity_0002: shape \(4, 4, 5, 3\) differs from \(4, 4, 4, 3\)"):
        load_jhtdb(tmp_path / "s.h5")


def test_duplicate_time_across_files(tmp_path):
    _write_jhtdb_layout(tmp_path / "a.h5", times=(1,))
    _write_jhtdb_layout(tmp_path / "b.h5", times=(1,))
    with pytest.raises(ValueError, match="time index 1 appears twice"):
        load_jhtdb(tmp_path)


def test_different_regions_across_files(tmp_path):
    _write_jhtdb_layout(tmp_path / "a.h5", times=(1,))
    _write_jhtdb_layout(tmp_path / "b.h5", times=(2,))
    with h5py.File(tmp_path / "b.h5", "a") as handle:
        handle["xcoor"][0] = 99.0
    with pytest.raises(ValueError, match="b.h5: coordinates differ"):
        load_jhtdb(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_frame_is_named(tmp_path, bad):
    _write_jhtdb_layout(tmp_path / "n.h5", times=(1, 2, 3))
    with h5py.File(tmp_path / "n.h5", "a") as handle:
        handle["Velocity_0002"][1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="n.h5:Velocity_0002: 1 NaN or Inf value"):
        load_jhtdb(tmp_path / "n.h5")
