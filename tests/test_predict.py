"""``steerable-sr predict`` in tiles: every input (JHTDB cutout, generated dataset, tensors) gives the
whole-volume prediction to float round-off, boundary included, and the same output file; periodic
halos; the input checks.

A tiny network (cnn, 2 hidden channels, upscale 2: halo 4, training velocity scale 2.5) on inputs of
4^3 to 15^3: tiles of 4 high-resolution voxels cut a 15^3 input into 6, 2, 2 and 5 low-resolution
voxels per axis, in boxes of 10 < 15, so boundary, interior and short tiles all occur. Every kind
through the tiling library: tests/test_tiling.py.

Tolerance of "equal": that of tests/test_tiling.py, 1e-5 of the output's largest value (the same
values through the same layers; only the order of a convolution's sums may change with the box).
"""
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from steerable_sr.cli import main
from steerable_sr.data.jhtdb import read_jhtdb, save_jhtdb
from steerable_sr.export import load_for_inference, write_export
from steerable_sr.tiling import receptive_field, tile_memory
from steerable_sr.tiling.volumes import PhysicalUnits
from steerable_sr.training import SuperResolutionModule

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL = 1e-5
SCALE = 2.5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``{"checkpoint": path, "export": path}`` of one tiny trained-looking module: batch-norm running
    statistics from one training-mode pass, velocity scale 2.5, no recorded input size."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    module = SuperResolutionModule(kind="cnn", upscale=2, model_overrides={"hidden": 2})
    with torch.no_grad():
        module.model(2 * torch.randn(2, 9, 4, 4, 4) + 1)
    module.velocity_scale.fill_(SCALE)
    module.eval()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, root / "tiny.ckpt")
    write_export(module, root / "tiny.pt", source="tiny.ckpt")
    return {"checkpoint": root / "tiny.ckpt", "export": root / "tiny.pt"}


def frames(count: int = 4, n: int = 15) -> torch.Tensor:
    """``(count, 3, n, n, n)`` velocity in physical units (not those of the network: scale 2.5)."""
    return 3 * torch.randn(count, 3, n, n, n) + 1


def predict(*argv) -> None:
    assert main(["predict", *map(str, argv)]) == 0


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def contents(path) -> dict[str, tuple]:
    """Every dataset of an HDF5 file: ``(shape, dtype, values)``."""
    with h5py.File(path) as f:
        return {name: (f[name].shape, f[name].dtype, torch.from_numpy(f[name][()])) for name in f}


def assert_same_file(tiled, whole) -> None:
    """Same datasets, shapes and dtypes; coordinates identical, velocities equal to round-off."""
    a, b = contents(tiled), contents(whole)
    assert {k: v[:2] for k, v in a.items()} == {k: v[:2] for k, v in b.items()}
    for name in a:
        if name.startswith("Velocity_"):
            assert relative_error(a[name][2], b[name][2]) <= RTOL
        else:
            assert torch.equal(a[name][2], b[name][2])


# ---- tiles equal the whole volume -----------------------------------------------------------------


@pytest.mark.parametrize("model", ["checkpoint", "export"])
def test_a_tiled_jhtdb_file_equals_the_whole_volume_file(tmp_path, models, model):
    """4 frames -> 2 windows, each 15^3 -> 30^3 in 4 x 4 x 4 tiles; the file is chunked."""
    save_jhtdb(tmp_path / "lr.h5", frames(), start=7)
    predict(models[model], tmp_path / "lr.h5", tmp_path / "whole.h5", "--tile", "none")
    predict(models[model], tmp_path / "lr.h5", tmp_path / "tiled.h5", "--tile", "4")
    assert_same_file(tmp_path / "tiled.h5", tmp_path / "whole.h5")
    with h5py.File(tmp_path / "tiled.h5") as f:
        assert sorted(f) == ["Velocity_0008", "Velocity_0009", "xcoor", "ycoor", "zcoor"]
        assert f["Velocity_0008"].chunks is not None


def test_automatic_tiles_under_a_small_budget_equal_the_whole_volume(tmp_path, models, capsys):
    """A budget that holds a box of 12 low-resolution voxels (tiles of 12 - 2 x 4 = 4 inside the volume,
    8 and 7 at its sides): 2 tiles per axis."""
    x = frames(3)
    torch.save(x, tmp_path / "lr.pt")
    network = PhysicalUnits(load_for_inference(models["checkpoint"]).net, SCALE).eval()
    budget = math.ceil(tile_memory(network, 9).peak(12))
    predict(models["checkpoint"], tmp_path / "lr.pt", tmp_path / "whole.pt", "--tile", "none")
    capsys.readouterr()
    predict(models["checkpoint"], tmp_path / "lr.pt", tmp_path / "tiled.pt", "--max-memory", budget)
    assert "2^3 tiles a step, input boxes of 12^3, halo 4" in capsys.readouterr().out
    assert relative_error(torch.load(tmp_path / "tiled.pt"), torch.load(tmp_path / "whole.pt")) <= RTOL


@pytest.mark.parametrize("model", ["checkpoint", "export"])
def test_stage_by_stage_equals_the_whole_volume_file_and_leaves_no_scratch(tmp_path, models, model, capsys):
    """4 frames -> 2 windows, 15^3 -> 30^3, under a budget that cuts the 30^3 stages into tiles."""
    save_jhtdb(tmp_path / "lr.h5", frames(), start=7)
    predict(models[model], tmp_path / "lr.h5", tmp_path / "whole.h5", "--tile", "none")
    capsys.readouterr()
    predict(models[model], tmp_path / "lr.h5", tmp_path / "staged.h5", "--tile", "stages", "--max-memory", "1MB")
    assert "stage by stage, 4 stages" in capsys.readouterr().out
    assert_same_file(tmp_path / "staged.h5", tmp_path / "whole.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.h5", "staged.h5", "whole.h5"]


def test_stages_without_the_scratch_space_they_need_are_refused_before_any_work(tmp_path, models, capsys,
                                                                                 monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 6, 10 ** 6 - 100, 100))
    save_jhtdb(tmp_path / "lr.h5", frames(3, 6))
    # the ResBlock's input and output on the 12^3 grid, 2 channels of float32: 2 x 2 x 12^3 x 4 bytes
    _one_line_error([models["checkpoint"], tmp_path / "lr.h5", tmp_path / "out.h5", "--tile", "stages"],
                    "--tile stages needs 27.6 kB of scratch space in", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.h5"]


@pytest.mark.parametrize("layout", ["frames", "windows", "window"])
def test_tensor_inputs_in_tiles_equal_the_whole_volume(tmp_path, models, layout):
    x = {"frames": frames(4), "windows": frames(6).reshape(2, 9, 15, 15, 15),
         "window": frames(3).reshape(9, 15, 15, 15)}
    torch.save(x[layout], tmp_path / "lr.pt")
    predict(models["export"], tmp_path / "lr.pt", tmp_path / "whole.pt", "--tile", "none")
    predict(models["export"], tmp_path / "lr.pt", tmp_path / "tiled.pt", "--tile", "4")
    whole, tiled = torch.load(tmp_path / "whole.pt"), torch.load(tmp_path / "tiled.pt")
    assert tiled.shape == whole.shape == {"frames": (2, 3, 30, 30, 30), "windows": (2, 3, 30, 30, 30),
                                          "window": (3, 30, 30, 30)}[layout]
    assert relative_error(tiled, whole) <= RTOL


def test_a_downsampled_high_resolution_file_in_tiles_equals_the_whole_volume(tmp_path, models):
    """30^3 block-averaged to 15^3 box by box: the output keeps the file's own coordinates."""
    coords = [np.linspace(0.5, 3.0, 30) + a for a in range(3)]
    save_jhtdb(tmp_path / "hr.h5", frames(3, 30), coords=coords)
    predict(models["checkpoint"], tmp_path / "hr.h5", tmp_path / "whole.h5", "--downsample", "--tile", "none")
    predict(models["checkpoint"], tmp_path / "hr.h5", tmp_path / "tiled.h5", "--downsample", "--tile", "4")
    assert_same_file(tmp_path / "tiled.h5", tmp_path / "whole.h5")
    np.testing.assert_array_equal(read_jhtdb(tmp_path / "tiled.h5").coords[2], coords[2].astype(np.float32))


def write_generated(path, velocity: torch.Tensor) -> None:
    """``velocity`` (T, 3, n, n, n) in the layout of ``generate_dataset`` (no frame in any split)."""
    with h5py.File(path, "w") as handle:
        handle.attrs.update(generator="test", periodic=True)
        handle.create_dataset("velocity", data=velocity.numpy(), chunks=(1, 3, 4, 4, 4))
        handle.create_group("splits")


def test_a_generated_dataset_is_predicted_like_its_frames_in_jhtdb_layout(tmp_path, models):
    velocity = frames(4, 30)
    write_generated(tmp_path / "generated.h5", velocity)
    save_jhtdb(tmp_path / "cutout.h5", velocity)
    predict(models["checkpoint"], tmp_path / "generated.h5", tmp_path / "a.h5", "--downsample", "--tile", "4")
    predict(models["checkpoint"], tmp_path / "cutout.h5", tmp_path / "b.h5", "--downsample", "--tile", "none")
    assert_same_file(tmp_path / "a.h5", tmp_path / "b.h5")


def test_periodic_tiles_equal_the_whole_prediction_of_the_circularly_padded_input(tmp_path, models):
    """6^3 in tiles of 2 low-resolution voxels: boxes of 2 + 2 x 4 = 10 > 6 wrap around."""
    x = frames(3, 6)
    save_jhtdb(tmp_path / "box.h5", x)
    predict(models["export"], tmp_path / "box.h5", tmp_path / "periodic.h5", "--tile", "4", "--periodic")
    model = load_for_inference(models["export"])
    halo = receptive_field(model.net)
    padded = model(F.pad(x.reshape(1, 9, 6, 6, 6), (halo,) * 6, mode="circular"))
    reference = padded[(..., *[slice(2 * halo, -2 * halo)] * 3)]
    assert relative_error(read_jhtdb(tmp_path / "periodic.h5").velocity, reference) <= RTOL


# ---- input checks ---------------------------------------------------------------------------------


def _one_line_error(argv, message: str, capsys) -> None:
    assert main(["predict", *map(str, argv)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_velocity_in_a_tensor_file_is_refused(tmp_path, models, capsys, dtype):
    """velocity x 100 stored as integers would give a prediction 100 times too large."""
    torch.save((100 * frames(3, 4)).to(getattr(torch, dtype)), tmp_path / "int.pt")
    _one_line_error([models["checkpoint"], tmp_path / "int.pt", tmp_path / "y.pt"],
                    f"int.pt: velocity stored as {dtype}; velocities must be floating point", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int.pt"]


def test_float16_velocity_is_read_as_float32(tmp_path, models):
    x = frames(3, 4).half()
    torch.save(x, tmp_path / "half.pt")
    torch.save(x.float(), tmp_path / "single.pt")
    predict(models["checkpoint"], tmp_path / "half.pt", tmp_path / "a.pt")
    predict(models["checkpoint"], tmp_path / "single.pt", tmp_path / "b.pt")
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))


@pytest.mark.parametrize("options, message", [
    (["--tile", "3"], "tile edge 3 must be a positive multiple of the upscale factor 2"),
    (["--max-memory", "1kB"], "max memory 1 kB is too small"),
    (["--tile", "none", "--periodic"], "--periodic wraps the halos of the tiles around the volume"),
    (["--tile", "none", "--max-memory", "2GB"], "with --tile none it would be ignored"),
    (["--tile", "8", "--max-memory", "2GB"], "with --tile 8 it would be ignored"),
    (["--batch-size", "2"], "tiled prediction runs one box at a time"),
    (["--tile", "big"], "argument --tile: expected auto, stages, none or a positive tile edge"),
    (["--scratch", "."], "with --tile auto it would be ignored"),
    (["--tile", "stages", "--scratch", "missing"], "scratch folder missing does not exist"),
    (["--max-memory", "2XB"], "argument --max-memory: memory size '2XB'"),
])
def test_a_tiling_option_that_cannot_be_honoured_is_one_line_and_writes_nothing(tmp_path, models, capsys, options,
                                                                                 message):
    save_jhtdb(tmp_path / "lr.h5", frames(3, 6))
    _one_line_error([models["checkpoint"], tmp_path / "lr.h5", tmp_path / "out.h5", *options], message, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.h5"]


def test_nan_in_a_later_frame_stops_the_tiles_and_leaves_no_output(tmp_path, models, capsys):
    """The first window is written before the second window's box holds the NaN: nothing is left."""
    x = frames(4, 6)
    x[3, 1, 2, 3, 4] = float("nan")
    save_jhtdb(tmp_path / "lr.h5", x)
    _one_line_error([models["checkpoint"], tmp_path / "lr.h5", tmp_path / "out.h5", "--tile", "4"],
                    "lr.h5:Velocity_0004: 1 NaN or Inf value(s) (the first at index (1, 2, 3, 4))", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.h5"]
