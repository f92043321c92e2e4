"""Lazy reading: samples read only their crops from the files, in any process, with crop positions
that follow from (seed, epoch, index) whatever the number of DataLoader workers, and exact resume."""
import pickle

import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from steerable_sr.data.dataset import (
    EpochSampler,
    SuperResolutionDataset,
    TurbulenceDataModule,
    open_frames,
    rms_velocity,
    split_frames,
)
from steerable_sr.data.frames import GeneratedFrames, TensorFrames
from steerable_sr.data.jhtdb import JHTDBFrames, read_jhtdb, save_jhtdb
from steerable_sr.training import SuperResolutionModule

pytestmark = pytest.mark.usefixtures("single_thread")


def write_generated_layout(path, velocity, fractions=(0.6, 0.2, 0.2), velocity_scale=None):
    """``velocity`` (T, 3, n, n, n) in the layout of ``generate_dataset`` (chunks of 4^3 voxels)."""
    with h5py.File(path, "w") as handle:
        handle.attrs.update(generator="test", periodic=True)
        if velocity_scale is not None:
            handle.attrs["velocity_scale"] = velocity_scale
        handle.create_dataset("velocity", data=velocity.numpy(), chunks=(1, 3, 4, 4, 4))
        for name, idx in split_frames(velocity.shape[0], fractions).items():
            handle[f"splits/{name}"] = idx
    return path


@pytest.fixture
def random_file(tmp_path):
    velocity = torch.randn(13, 3, 12, 12, 12)
    return velocity, write_generated_layout(tmp_path / "random.h5", velocity)


def _rolled(frame, offset, crop):
    return torch.roll(frame, shifts=[-int(o) for o in offset], dims=(1, 2, 3))[:, :crop, :crop, :crop]


@pytest.fixture
def element_reads(monkeypatch):
    """The sizes of the arrays read from HDF5 datasets, one entry per read."""
    sizes = []
    getitem = h5py.Dataset.__getitem__

    def recording(self, *args, **kwargs):
        out = getitem(self, *args, **kwargs)
        sizes.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    return sizes


def test_a_sample_reads_its_three_crops_from_the_file_and_nothing_else(random_file, element_reads):
    velocity, path = random_file
    ds = SuperResolutionDataset(GeneratedFrames(path), range(13), crop=8, crops_per_window=6, random_crop=True)
    wrapped_on_every_axis = False
    for key in [(epoch, i) for epoch in (0, 3) for i in range(len(ds))]:
        element_reads.clear()
        sample = ds[key]
        t, offset = sample["frame"], sample["offset"]
        # bit for bit the crops of the frames in memory, wrapping around like torch.roll
        torch.testing.assert_close(sample["high_res"], _rolled(velocity[t], offset, 8), rtol=0, atol=0)
        assert sum(element_reads) == 3 * 3 * 8 ** 3  # three frames' crops: not one value more
        assert len(element_reads) <= 3 * 8  # at most two intervals per axis: 8 boxes a frame
        wrapped_on_every_axis |= bool((offset > 12 - 8).all())
    assert wrapped_on_every_axis  # (else the 8-box case was not exercised)


def test_jhtdb_crops_are_read_lazily_and_equal_those_of_the_eager_reader(tmp_path, element_reads):
    velocity = torch.randn(5, 3, 8, 12, 16)  # distinct nx, ny, nz: the axis mapping is checked
    save_jhtdb(tmp_path / "cut.h5", velocity)
    frames = JHTDBFrames(tmp_path / "cut.h5")
    assert frames.shape == (5, 3, 8, 12, 16) and frames.times == [1, 2, 3, 4, 5]
    element_reads.clear()
    crop = frames.crop(2, (6, 9, 13), (8, 8, 8))  # wraps on all three axes
    assert sum(element_reads) == 3 * 8 ** 3
    torch.testing.assert_close(torch.from_numpy(crop), _rolled(velocity[2], (6, 9, 13), 8), rtol=0, atol=0)
    torch.testing.assert_close(read_jhtdb(tmp_path / "cut.h5").velocity, velocity, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["generated", "jhtdb"])
def test_slabs_cover_the_frame_and_name_the_position_of_a_nan(tmp_path, kind):
    velocity = torch.randn(3, 3, 8, 8, 8, dtype=torch.float32)
    if kind == "generated":
        frames = GeneratedFrames(write_generated_layout(tmp_path / "g.h5", velocity, fractions=(1.0, 0.0, 0.0)))
    else:
        frames = JHTDBFrames(save_jhtdb(tmp_path / "j.h5", velocity))
    plane = 3 * 8 * 8 * 4
    slabs = list(frames.slabs(1, max_bytes=3 * plane))  # 3 planes a slab: 3 + 3 + 2
    assert [s.shape[1 + frames.slab_axis] for _, s in slabs] == [3, 3, 2]
    whole = np.concatenate([s for _, s in slabs], axis=1 + frames.slab_axis)
    np.testing.assert_array_equal(whole, velocity[1].numpy())
    velocity[1, 2, 7, 6, 5] = float("inf")
    frames = open_frames(write_generated_layout(tmp_path / "bad.h5", velocity, fractions=(1.0, 0.0, 0.0))
                         if kind == "generated" else save_jhtdb(tmp_path / "bad.h5", velocity))
    with pytest.raises(ValueError, match=r"bad.h5:(velocity\[1\]|Velocity_0002): 1 NaN or Inf value\(s\) \(the first "
                                         r"at index \(2, 7, 6, 5\)\)"):
        list(frames.slabs(1, max_bytes=plane))


def test_velocity_scale_is_streamed_over_the_training_frames(tmp_path):
    velocity = torch.randn(20, 3, 8, 8, 8, dtype=torch.float64)
    save_jhtdb(tmp_path / "cut.h5", velocity)
    frames = JHTDBFrames(tmp_path / "cut.h5")
    train = split_frames(20, (0.8, 0.1, 0.1))["train"]
    expected = float(velocity.float()[train].double().square().mean().sqrt())  # the file holds float32
    # float64 sums of float32 squares: 1e-12 relative covers the summation order
    assert rms_velocity(frames, train) == pytest.approx(expected, rel=1e-12)
    assert rms_velocity(velocity.float(), train) == pytest.approx(expected, rel=1e-12)
    dm = TurbulenceDataModule(str(tmp_path / "cut.h5"))
    dm.setup("fit")
    assert dm.velocity_scale == pytest.approx(expected, rel=1e-12)


def test_training_crop_positions_follow_from_seed_epoch_and_index():
    ds = SuperResolutionDataset(torch.randn(3, 3, 12, 12, 12), [0, 1, 2], crop=4, crops_per_window=50,
                                random_crop=True)
    first = [ds[(2, i)]["offset"] for i in range(len(ds))]
    torch.manual_seed(99)  # no global RNG is involved
    np.random.seed(99)
    again = SuperResolutionDataset(torch.randn(3, 3, 12, 12, 12), [0, 1, 2], crop=4, crops_per_window=50,
                                   random_crop=True)
    assert all(torch.equal(again[(2, i)]["offset"], o) for i, o in reversed(list(enumerate(first))))
    assert all(torch.equal(ds[i]["offset"], ds[(0, i)]["offset"]) for i in range(len(ds)))  # i is epoch 0
    # another epoch moves the crops (50 draws from 12^3 positions all equal by chance: p = 1728^-50)
    assert not all(torch.equal(ds[(3, i)]["offset"], o) for i, o in enumerate(first))


def test_a_dataset_pickles_without_open_files_and_each_copy_reads_by_itself(random_file):
    _, path = random_file
    ds = SuperResolutionDataset(GeneratedFrames(path), range(13), crop=4, crops_per_window=2)
    sample = ds[3]  # the file is open in this process now
    copy = pickle.loads(pickle.dumps(ds))  # an h5py handle cannot be pickled: none travels
    torch.testing.assert_close(copy[3]["high_res"], sample["high_res"], rtol=0, atol=0)
    ds.frames.close()
    torch.testing.assert_close(ds[3]["high_res"], sample["high_res"], rtol=0, atol=0)  # reopened on demand


def _epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(batch["frame"], batch["offset"], batch["high_res"]) for batch in loader]


def test_training_batches_of_an_epoch_are_the_same_with_any_number_of_workers(random_file):
    _, path = random_file
    loaders = {}
    for workers in (0, 2):
        dm = TurbulenceDataModule(str(path), crop=4, batch_size=3, crops_per_window=4, seed=5,
                                  num_workers=workers, persistent_workers=True, pin_memory=False)
        dm.setup("fit")
        loaders[workers] = dm.train_dataloader()
    assert loaders[2].num_workers == 2 and loaders[2].persistent_workers and not loaders[2].pin_memory
    assert isinstance(loaders[2].sampler, EpochSampler)
    epochs = {workers: [_epoch_batches(loader, e) for e in (0, 1, 2)] for workers, loader in loaders.items()}
    for zero, two in zip(epochs[0], epochs[2]):
        for a, b in zip(zero, two):
            for x, y in zip(a, b):
                assert torch.equal(x, y)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(epochs[0][0], epochs[0][1]))  # epochs differ
    # the same epoch from a loader made afresh (a resumed run): the same batches
    dm = TurbulenceDataModule(str(path), crop=4, batch_size=3, crops_per_window=4, seed=5)
    dm.setup("fit")
    for a, b in zip(_epoch_batches(dm.train_dataloader(), 2), epochs[0][2]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def _fit(path, root, epochs, ckpt=None):
    pl.seed_everything(7)
    module = SuperResolutionModule(kind="cnn", model_overrides={"hidden": 2}, val_equivariance_elements=0, lr=3e-3)
    dm = TurbulenceDataModule(str(path), crop=8, batch_size=2, crops_per_window=2, seed=3, num_workers=2,
                              pin_memory=False)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(root), save_last=True, save_top_k=0)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[checkpoint],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1)
    trainer.fit(module, dm, ckpt_path=None if ckpt is None else str(ckpt))
    return module


def test_resume_with_workers_and_random_crops_reproduces_an_uninterrupted_run(tmp_path):
    path = write_generated_layout(tmp_path / "data.h5", torch.randn(16, 3, 16, 16, 16), fractions=(0.5, 0.25, 0.25))
    straight = _fit(path, tmp_path / "straight", 3)
    _fit(path, tmp_path / "part", 1)
    resumed = _fit(path, tmp_path / "resumed", 3, ckpt=tmp_path / "part" / "last.ckpt")
    # the same batches in the same order give the same float32 updates: equal up to the order of
    # reductions inside one step, far below 1e-6
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_tensor_frames_and_files_give_the_same_samples(random_file):
    velocity, path = random_file
    from_file = SuperResolutionDataset(GeneratedFrames(path), range(13), crop=4, crops_per_window=3)
    in_memory = SuperResolutionDataset(TensorFrames(velocity), range(13), crop=4, crops_per_window=3)
    for i in range(len(from_file)):
        a, b = from_file[i], in_memory[i]
        assert torch.equal(a["low_res"], b["low_res"]) and torch.equal(a["high_res"], b["high_res"])


# ------------------------------------------------------------------------------ stored dtypes


@pytest.mark.parametrize("dtype", ["int32", "int16", "uint8", "bool"])
def test_velocity_stored_as_integers_is_refused_naming_file_and_dtype(tmp_path, dtype):
    # e.g. velocity x 100 stored as int32 would otherwise give predictions 100x too large
    velocity = (100 * torch.randn(13, 3, 8, 8, 8)).to(getattr(torch, dtype))
    path = write_generated_layout(tmp_path / "int.h5", velocity)
    message = rf"int.h5:velocity: velocity stored as {dtype}; velocities must be floating point"
    with pytest.raises(ValueError, match=message):
        TurbulenceDataModule(str(path)).setup("fit")
    with h5py.File(tmp_path / "cut.h5", "w") as handle:
        handle["Velocity_0001"] = velocity[0].numpy().transpose(3, 2, 1, 0)
    with pytest.raises(ValueError, match=rf"cut.h5:Velocity_0001: velocity stored as {dtype}; velocities must be "
                                         rf"floating point"):
        read_jhtdb(tmp_path / "cut.h5")
    with pytest.raises(ValueError, match=rf"velocity stored as {dtype}; velocities must be floating point"):
        SuperResolutionDataset(velocity, range(13))


def test_float16_velocity_is_read_as_float32(tmp_path):
    velocity = torch.randn(13, 3, 8, 8, 8).half()
    exact = velocity.float()  # every float16 value is a float32 value
    frames = open_frames(write_generated_layout(tmp_path / "half.h5", velocity))
    assert frames.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(frames.crop(4, (6, 1, 7), (4, 4, 4))),
                               _rolled(exact[4], (6, 1, 7), 4), rtol=0, atol=0)
    save_jhtdb(tmp_path / "cut.h5", exact)
    with h5py.File(tmp_path / "cut.h5", "r+") as handle:  # one time step stored as float16 (same values)
        data = handle["Velocity_0003"][()].astype(np.float16)
        del handle["Velocity_0003"]
        handle["Velocity_0003"] = data
    cut = read_jhtdb(tmp_path / "cut.h5")
    assert cut.velocity.dtype == torch.float32
    torch.testing.assert_close(cut.velocity, exact, rtol=0, atol=0)
    sample = SuperResolutionDataset(velocity, range(13))[0]
    assert sample["high_res"].dtype == torch.float32
    torch.testing.assert_close(sample["high_res"], exact[1], rtol=0, atol=0)
