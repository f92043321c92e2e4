"""Super-resolution samples, splits, normalization, the data module and dataset generation."""
import math
import os
import re

import h5py
import numpy as np
import pytest
import torch

from steerable_sr.data.dataset import (
    SuperResolutionDataset,
    TurbulenceDataModule,
    downsample,
    load_generated,
    rms_velocity,
    split_frames,
)
from steerable_sr.cli import main
from steerable_sr.data import generate as generate_module
from steerable_sr.data.generate import generate_dataset
from steerable_sr.data.jhtdb import save_jhtdb
from steerable_sr.data.spectral import SpectralSolver
from steerable_sr.groups import act, group_matrices

SMALL = dict(n=8, frames=13, spinup=0.2, dt_save=0.05, progress=False)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("gen") / "iso.h5", **SMALL)


def _frame_labelled(T=20, size=8):
    """velocity[t] = t everywhere (a frame's values name it), plus a per-voxel ramp to locate crops."""
    ramp = torch.arange(size ** 3, dtype=torch.float64).view(1, 1, size, size, size) * 1e-6
    return torch.arange(T, dtype=torch.float64).view(T, 1, 1, 1, 1) + ramp.expand(T, 3, size, size, size)


# ------------------------------------------------------------------------------ downsampling


def test_downsample_is_the_block_mean():
    x = torch.arange(8 ** 3, dtype=torch.float64).view(1, 8, 8, 8)
    low = downsample(x)
    assert low.shape == (1, 2, 2, 2)
    assert float(low[0, 1, 0, 1]) == float(x[0, 4:8, 0:4, 4:8].mean())
    with pytest.raises(ValueError, match=r"spatial shape \(8, 8, 6\) is not divisible by the factor 4"):
        downsample(torch.zeros(3, 8, 8, 6))


def test_block_average_commutes_with_every_Oh_element():
    x = torch.randn(2, 9, 16, 16, 16, dtype=torch.float64)
    low = downsample(x)
    for R in group_matrices("Oh"):
        torch.testing.assert_close(downsample(act(x, R)), act(low, R), rtol=0, atol=1e-14)
    # Plain striding samples a corner of each block; a flip moves it to the opposite corner.
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    strided = act(x, flip)[..., ::4, ::4, ::4]
    assert not torch.allclose(strided, act(x[..., ::4, ::4, ::4], flip))


# ------------------------------------------------------------------------------ splits


@pytest.mark.parametrize("T", [13, 20, 57, 100])
def test_splits_are_ordered_contiguous_blocks_with_gaps(T):
    splits = split_frames(T, (0.6, 0.2, 0.2), gap=2)
    train, val, test = splits["train"], splits["val"], splits["test"]
    for idx in splits.values():
        assert len(idx) >= 3 and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))
    assert train[0] == 0 and val[0] - train[-1] - 1 >= 2 and test[0] - val[-1] - 1 >= 2 and test[-1] < T


def test_split_errors():
    with pytest.raises(ValueError, match="12 frames are too few .* at least 13 frames are needed"):
        split_frames(12, (0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match="at least 2 frames"):
        split_frames(50, (0.6, 0.2, 0.2), gap=1)
    with pytest.raises(ValueError, match="summing to 1"):
        split_frames(50, (0.6, 0.2, 0.3))
    assert split_frames(10, (0.7, 0.3, 0.0))["test"].size == 0


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("random_crop", [True, False])
def test_samples_never_leak_frames_between_splits(periodic, random_crop):
    velocity = _frame_labelled(T=20)
    splits = split_frames(20, (0.6, 0.2, 0.2))
    seen = {}
    for name, frames in splits.items():
        ds = SuperResolutionDataset(velocity, frames, crop=4, periodic=periodic, random_crop=random_crop,
                                    crops_per_window=3)
        assert len(ds) == 3 * (len(frames) - 2)
        used = set()
        for i in range(len(ds)):
            sample = ds[i]
            lr_frames = {int(v) for v in sample["low_res"].reshape(3, -1).round().unique(dim=1).reshape(-1)}
            hr_frames = {int(v) for v in sample["high_res"].round().unique()}
            assert hr_frames == {sample["frame"]}
            assert lr_frames == {sample["frame"] - 1, sample["frame"], sample["frame"] + 1}
            used |= lr_frames
        assert used <= set(frames.tolist())
        seen[name] = used
    assert not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"]) and not (seen["train"] & seen["test"])


def test_lr_is_three_block_averaged_frames_and_hr_the_middle_one():
    velocity = torch.randn(5, 3, 16, 16, 16, dtype=torch.float64)
    ds = SuperResolutionDataset(velocity, [1, 2, 3, 4])
    assert len(ds) == 2
    sample = ds[1]  # window (2, 3, 4)
    assert sample["low_res"].shape == (9, 4, 4, 4) and sample["high_res"].shape == (3, 16, 16, 16)
    torch.testing.assert_close(sample["high_res"], velocity[3])
    torch.testing.assert_close(sample["low_res"], downsample(velocity[2:5]).reshape(9, 4, 4, 4))


def _crops(periodic, seed=1):
    velocity = torch.randn(3, 3, 12, 12, 12, dtype=torch.float64)
    return velocity, SuperResolutionDataset(velocity, [0, 1, 2], crop=8, periodic=periodic, crops_per_window=20,
                                            seed=seed)


def test_periodic_crops_wrap_around_like_roll():
    velocity, periodic = _crops(periodic=True)
    wrapped = False
    for i in range(len(periodic)):
        sample = periodic[i]
        o = sample["offset"].tolist()
        rolled = torch.roll(velocity[1], shifts=[-o[0], -o[1], -o[2]], dims=(1, 2, 3))[:, :8, :8, :8]
        torch.testing.assert_close(sample["high_res"], rolled, rtol=0, atol=0)  # a copy: bit for bit
        wrapped |= max(o) > 4
    assert wrapped  # 20 crops of 8 in 12: some start past 12 - 8 (else the test checks no wrapping)


def test_crops_of_a_non_periodic_volume_stay_inside():
    velocity, inside = _crops(periodic=False)
    for i in range(len(inside)):
        o = inside[i]["offset"]
        assert int(o.min()) >= 0 and int(o.max()) <= 12 - 8
        torch.testing.assert_close(inside[i]["high_res"], velocity[1, :, o[0]:o[0] + 8, o[1]:o[1] + 8, o[2]:o[2] + 8],
                                   rtol=0, atol=0)


def test_fixed_crop_positions_depend_on_seed_and_index_only():
    _, first = _crops(periodic=True)
    expected = [first[i]["offset"] for i in range(len(first))]
    # An independently built dataset with the same seed, read in reverse order after the global RNG
    # moved on, gives every sample the same position: a function of (seed, index), no hidden state.
    _, again = _crops(periodic=True)
    torch.manual_seed(1234)
    torch.rand(100)
    got = [again[i]["offset"] for i in reversed(range(len(again)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    # ...and the positions do depend on the seed (20 draws from 12^3 positions: all equal by chance
    # with p = 1728^-20 ~ 2e-65)
    _, other = _crops(periodic=True, seed=2)
    assert not all(torch.equal(other[i]["offset"], expected[i]) for i in range(len(other)))


def test_rms_velocity_is_the_rms_component_of_the_given_frames_only():
    velocity = torch.empty(4, 3, 2, 2, 2)
    velocity[:, 0], velocity[:, 1], velocity[:, 2] = 1.0, 2.0, -2.0  # <u.u> = 9: rms component sqrt(3)
    velocity[3] = 100.0  # a frame that is not averaged
    # float32 input: 1e-6 relative covers the rounding of sqrt(3)
    assert rms_velocity(velocity, [0, 1, 2]) == pytest.approx(math.sqrt(3), rel=1e-6)


def test_dataset_errors():
    velocity = torch.zeros(4, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="crop 6 must be a positive multiple of 4"):
        SuperResolutionDataset(velocity, range(4), crop=6)
    with pytest.raises(ValueError, match=r"crop 20 is larger than the volume \(16, 16, 16\)"):
        SuperResolutionDataset(velocity, range(4), crop=20)
    with pytest.raises(ValueError, match="no 3 consecutive frames"):
        SuperResolutionDataset(velocity, [0, 1, 3])
    with pytest.raises(ValueError, match=r"volume \(16, 16, 10\) is not divisible by 4"):
        SuperResolutionDataset(torch.zeros(4, 3, 16, 16, 10), range(4))


# ------------------------------------------------------------------------------ generation


def test_generated_file_layout_and_metadata(generated):
    data = load_generated(generated)
    v, attrs, splits = data["velocity"], data["attrs"], data["splits"]
    assert v.shape == (13, 3, 8, 8, 8) and v.dtype == torch.float32
    assert attrs["forcing"] == "isotropic" and attrs["n"] == 8 and attrs["seed"] == 0
    assert attrs["dt_save"] == 0.05 and attrs["nu"] > 0 and attrs["solver_version"]
    assert np.isclose(attrs["domain_length"], 2 * np.pi)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 3, 3]
    # the rms velocity component sqrt(<u.u> / 3) of the training frames, computed here from its definition
    assert np.isclose(attrs["velocity_scale"], float(v[splits["train"]].double().pow(2).mean().sqrt()), rtol=1e-6)
    with h5py.File(generated, "r") as handle:
        np.testing.assert_allclose(handle["time"][()], 0.2 + 0.05 * np.arange(13))
    # the frames are consecutive states of the solver, and divergence-free
    solver = SpectralSolver(8, attrs["nu"], "isotropic")
    assert float(solver.divergence(v[5].double()).abs().max()) < 1e-5


def test_generation_is_deterministic_and_refuses_to_overwrite(generated, tmp_path):
    again = generate_dataset(tmp_path / "again.h5", **SMALL)
    assert torch.equal(load_generated(again)["velocity"], load_generated(generated)["velocity"])
    other = generate_dataset(tmp_path / "other.h5", seed=1, forcing="anisotropic", axis=2, **SMALL)
    assert not torch.equal(load_generated(other)["velocity"], load_generated(generated)["velocity"])
    with pytest.raises(FileExistsError, match="again.h5 already exists"):
        generate_dataset(tmp_path / "again.h5", **SMALL)
    generate_dataset(tmp_path / "again.h5", overwrite=True, seed=1, forcing="anisotropic", axis=2, **SMALL)
    assert torch.equal(load_generated(again)["velocity"], load_generated(other)["velocity"])


@pytest.mark.parametrize("error", [RuntimeError("solver exploded"), KeyboardInterrupt()])
def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch, error):
    calls = []
    advance = SpectralSolver.advance

    def failing_advance(self, u, duration, dt=None):
        calls.append(duration)
        if len(calls) == 8:  # during the saved frames
            raise error
        return advance(self, u, duration, dt)

    monkeypatch.setattr(SpectralSolver, "advance", failing_advance)
    with pytest.raises(type(error)):
        generate_dataset(tmp_path / "broken.h5", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_generation_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        generate_dataset(tmp_path / "x.h5", n=8, frames=5, progress=False)
    with pytest.raises(ValueError, match="unknown forcing 'shear'"):
        generate_dataset(tmp_path / "x.h5", forcing="shear", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_velocity_is_chunked_for_crop_reads_and_the_chunks_change_no_value(generated, tmp_path, monkeypatch):
    assert generate_module.velocity_chunks(64) == (1, 3, 32, 32, 32)  # 384 KiB, not a 3 MiB frame
    assert generate_module.velocity_chunks(8) == (1, 3, 8, 8, 8)
    with h5py.File(generated, "r") as handle:
        assert handle["velocity"].chunks == (1, 3, 8, 8, 8)
    monkeypatch.setattr(generate_module, "CHUNK_EDGE", 4)
    small_chunks = generate_dataset(tmp_path / "chunks4.h5", **SMALL)
    with h5py.File(small_chunks, "r") as handle:
        assert handle["velocity"].chunks == (1, 3, 4, 4, 4)
    # the same run written in 8 chunks a frame: the same values, bit for bit
    assert torch.equal(load_generated(small_chunks)["velocity"], load_generated(generated)["velocity"])


def test_generation_that_does_not_fit_in_memory_is_refused_before_any_allocation(tmp_path, monkeypatch):
    need = generate_module.solver_memory(8, torch.float64)
    assert need == 36 * 3 * 8 ** 3 * 8  # SOLVER_FIELDS real (3, n, n, n) float64 fields
    monkeypatch.setattr(generate_module, "available_memory", lambda device: (need - 1, "a test's MemAvailable"))

    def no_solver(*args, **kwargs):
        raise AssertionError("the solver was built")

    with monkeypatch.context() as patch:
        patch.setattr(SpectralSolver, "__init__", no_solver)
        with pytest.raises(ValueError, match=r"^generating at n = 8 needs about 0.0 GiB of cpu memory for the solver "
                                             r"\(float64\), 0.0 GiB available \(a test's MemAvailable\); choose a "
                                             r"smaller n \(--n\), float32 \(--dtype float32\) or a GPU "
                                             r"\(--device cuda\)$"):
            generate_dataset(tmp_path / "big.h5", **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(generate_module, "available_memory", lambda device: (need, "a test's MemAvailable"))
    generate_dataset(tmp_path / "fits.h5", **SMALL)  # exactly enough


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only")
def test_available_host_memory_is_memavailable():
    free, source = generate_module.available_memory(torch.device("cpu"))
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")) * 1024
    assert source == "MemAvailable in /proc/meminfo" and 0 < free <= total


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    argv = ["generate", str(out), "--n", "8", "--frames", "13", "--spinup", "0.1", "--dt-save", "0.05", "--forcing",
            "anisotropic", "--axis", "1", "--no-progress"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    attrs = load_generated(out)["attrs"]
    assert attrs["forcing"] == "anisotropic" and attrs["axis"] == 1
    assert main(argv) == 1 and "exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--seed", "5"]) == 0
    assert load_generated(out)["attrs"]["seed"] == 5


# ------------------------------------------------------------------------------ data module


def test_data_module_on_generated_data(generated):
    dm = TurbulenceDataModule(str(generated), crop=4, batch_size=2, seed=3)
    assert dm.hparams.crop == 4 and dm.hparams.batch_size == 2 and dm.hparams.seed == 3
    dm.setup("fit")
    assert dm.periodic is True
    data = load_generated(generated)
    assert dm.velocity_scale == pytest.approx(float(data["attrs"]["velocity_scale"]))
    batch = next(iter(dm.train_dataloader()))
    assert batch["low_res"].shape == (1, 9, 1, 1, 1) and batch["high_res"].shape == (1, 3, 4, 4, 4)
    val = [b["high_res"] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b["high_res"]) for a, b in zip(val, dm.val_dataloader()))  # fixed val crops
    dm.setup("predict")
    sample = next(iter(dm.predict_dataloader()))
    assert sample["high_res"].shape == (1, 3, 8, 8, 8)
    frame = int(sample["frame"][0])
    torch.testing.assert_close(sample["high_res"][0] * dm.velocity_scale, data["velocity"][frame])
    assert frame - 1 in data["splits"]["test"] and frame + 1 in data["splits"]["test"]
    assert dm.state_dict() == {"velocity_scale": pytest.approx(float(data["attrs"]["velocity_scale"]))}


def test_evaluation_crops_do_not_depend_on_the_training_seed(generated):
    """Runs with other training seeds are scored on the same val / test crops; their training crops differ."""
    def offsets(dm, split):
        return [tuple(dm.datasets[split][i]["offset"].tolist()) for i in range(len(dm.datasets[split]))]

    a, b = (TurbulenceDataModule(str(generated), crop=4, crops_per_window=3, seed=s) for s in (1, 2))
    for dm in (a, b):
        dm.setup("fit")
    assert offsets(a, "val") == offsets(b, "val") and offsets(a, "test") == offsets(b, "test")
    assert offsets(a, "train") != offsets(b, "train")
    other = TurbulenceDataModule(str(generated), crop=4, crops_per_window=3, seed=1, eval_seed=7)
    other.setup("fit")
    assert offsets(other, "test") != offsets(a, "test")


def test_normalization_uses_the_training_split_only(tmp_path):
    velocity = torch.ones(20, 3, 4, 4, 4)
    splits = split_frames(20, (0.6, 0.2, 0.2))
    velocity[splits["train"]] *= 2.0
    velocity[splits["val"]] *= 1e3
    velocity[splits["test"]] *= 1e6
    save_jhtdb(tmp_path / "cut.h5", velocity)
    dm = TurbulenceDataModule(str(tmp_path / "cut.h5"), batch_size=1, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.periodic is False and dm.velocity_scale == pytest.approx(2.0)
    assert {s: list(v) for s, v in dm.splits.items()} == {s: list(v) for s, v in splits.items()}
    sample = dm.datasets["train"][0]
    torch.testing.assert_close(sample["high_res"], torch.ones(3, 4, 4, 4))  # one scalar for all components
    torch.testing.assert_close(sample["low_res"], torch.ones(9, 1, 1, 1))
    raw = TurbulenceDataModule(str(tmp_path / "cut.h5"), normalize=False, val_fraction=0.2, test_fraction=0.2)
    raw.setup("fit")
    assert raw.velocity_scale is None and float(raw.datasets["val"][0]["high_res"].max()) == 1e3


def test_data_module_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5: no such file"):
        TurbulenceDataModule(str(tmp_path / "missing.h5")).setup("fit")
    save_jhtdb(tmp_path / "two.h5", torch.zeros(2, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=r"two.h5: 2 frame\(s\), at least 3 consecutive frames"):
        TurbulenceDataModule(str(tmp_path / "two.h5")).setup("fit")
    save_jhtdb(tmp_path / "ten.h5", torch.zeros(10, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=r"ten.h5: crop 12 is larger than the volume \(8, 8, 8\)"):
        TurbulenceDataModule(str(tmp_path / "ten.h5"), crop=12, val_fraction=0.0, test_fraction=0.0).setup("fit")
    with pytest.raises(ValueError, match="ten.h5: crop 6 must be a positive multiple of 4"):
        TurbulenceDataModule(str(tmp_path / "ten.h5"), crop=6, val_fraction=0.0, test_fraction=0.0).setup("fit")
    with pytest.raises(ValueError, match="ten.h5: 10 frames are too few"):
        TurbulenceDataModule(str(tmp_path / "ten.h5")).setup("fit")
    (tmp_path / "corrupt.h5").write_text("not an HDF5 file")
    with pytest.raises(ValueError, match="corrupt.h5: not a readable HDF5 file"):
        TurbulenceDataModule(str(tmp_path / "corrupt.h5")).setup("fit")


def test_nan_in_a_generated_file_is_refused_naming_file_frame_and_crop_origin(generated, tmp_path):
    (tmp_path / "nan.h5").write_bytes(generated.read_bytes())
    with h5py.File(tmp_path / "nan.h5", "r+") as handle:
        handle["velocity"][5, 1, 2, 3, 4] = np.nan  # frame 5: the first val frame
    with pytest.raises(ValueError, match=r"nan.h5:velocity\[5\]: 1 NaN or Inf value\(s\) \(the first at index "
                                         r"\(1, 2, 3, 4\)\); velocities must be finite"):
        load_generated(tmp_path / "nan.h5")
    dm = TurbulenceDataModule(str(tmp_path / "nan.h5"), crop=8)
    dm.setup("fit")  # opens the file, reads no frame (the scale is the stored attribute)
    dm.datasets["train"][0]  # the training frames 0-2 are clean
    with pytest.raises(ValueError) as info:
        dm.datasets["val"][0]  # window (5, 6, 7): a whole-volume crop always holds the NaN
    found = re.fullmatch(r".*nan.h5:velocity\[5\], crop at \((\d), (\d), (\d)\): 1 NaN or Inf value\(s\) \(the first "
                         r"at index \(1, (\d), (\d), (\d)\)\); velocities must be finite", str(info.value))
    assert found, str(info.value)
    origin, index = [int(v) for v in found.groups()[:3]], [int(v) for v in found.groups()[3:]]
    # the index into the crop of the voxel (2, 3, 4), the crop wrapping around from its origin
    assert index == [(p - o) % 8 for p, o in zip((2, 3, 4), origin)]


def test_truncated_generated_file_is_named(generated, tmp_path):
    data = generated.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.h5: not a readable HDF5 file"):
        TurbulenceDataModule(str(tmp_path / "cut.h5")).setup("fit")


def test_too_few_jhtdb_frames_for_the_splits_say_how_many_are_needed(tmp_path):
    save_jhtdb(tmp_path / "six.h5", torch.zeros(6, 3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"six.h5: 6 frames are too few .* at least 13 frames are needed"):
        TurbulenceDataModule(str(tmp_path / "six.h5")).setup("fit")
