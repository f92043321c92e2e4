r"""Super-resolution samples from velocity time series, and the Lightning data module.

A sample is built from three consecutive frames ``(t, t+1, t+2)`` of one split:

* ``lr`` ``(9, n, n, n)``: the three frames block-averaged by 4 (:func:`downsample`), stacked frame
  after frame (channels ``3 i .. 3 i + 2`` are frame ``t + i``);
* ``hr`` ``(3, 4 n, 4 n, 4 n)``: the middle frame ``t + 1`` at full resolution.

Block averaging (``avg_pool3d`` with kernel = stride = 4) commutes with every element of O_h, so
a symmetry of the high-resolution data is a symmetry of the pairs; plain striding does not.

**Splits** are contiguous blocks in time (train, then val, then test) separated by ``gap >= 2``
unused frames (:func:`split_frames`), and windows are formed only from frames of one split.

**Lazy reading.** The frames stay on disk (:mod:`~steerable_sr.data.frames`): a sample reads its
crop of three frames and nothing else, so memory does not grow with the file.

**Normalization** divides ``lr`` and ``hr`` by one scalar, the rms velocity component of the
training frames (:func:`rms_velocity`). A per-component scale ``diag(s_x, s_y, s_z)`` would not
commute with the axis permutations of O_h: an equivariant model trained on such data would be
equivariant in the wrong coordinates, and the anisotropy of the data (the very signal the
relaxed models must detect) would be partly normalised away.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checks import open_hdf5
from .frames import GeneratedFrames, TensorFrames, VelocityFrames
from .jhtdb import JHTDBFrames, resolve_paths

__all__ = [
    "SPLITS",
    "EpochSampler",
    "SuperResolutionDataset",
    "TurbulenceDataModule",
    "check_crop",
    "downsample",
    "is_generated",
    "load_generated",
    "open_frames",
    "rms_velocity",
    "split_frames",
]

SPLITS = ("train", "val", "test")
#: Frames per sample (t, t+1, t+2) and the resolution factor between ``hr`` and ``lr``.
WINDOW = 3
FACTOR = 4


def downsample(hr: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """Block average by ``factor`` along the last three axes.

    Parameters
    ----------
    hr : torch.Tensor
        ``(..., C, X, Y, Z)`` with ``X, Y, Z`` multiples of ``factor``.
    factor : int
        Block size.

    Returns
    -------
    torch.Tensor
        ``(..., C, X / factor, Y / factor, Z / factor)``: the mean of each ``factor^3`` block.
    """
    if hr.dim() < 4:
        raise ValueError(f"expected a tensor (..., C, X, Y, Z), got shape {tuple(hr.shape)}")
    spatial = tuple(hr.shape[-3:])
    if any(s % factor for s in spatial):
        raise ValueError(f"spatial shape {spatial} is not divisible by the factor {factor}")
    flat = hr.reshape(-1, *hr.shape[-4:])
    low = F.avg_pool3d(flat, kernel_size=factor, stride=factor)
    return low.reshape(*hr.shape[:-3], *low.shape[-3:])


def split_frames(num_frames: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), gap: int = 2) -> dict[str, np.ndarray]:
    """Split ``num_frames`` frames into contiguous train / val / test blocks separated by gaps.

    The frames left after removing the gaps are shared by the fractions: val and test get their
    share rounded down but at least ``WINDOW = 3`` frames (one sample) when their fraction is
    positive, train gets the rest. Frames inside a gap belong to no split.

    Parameters
    ----------
    num_frames : int
        Length ``T`` of the time series.
    fractions : sequence of three floats
        Shares of train, val and test; non-negative, summing to 1.
    gap : int
        Unused frames between consecutive non-empty splits (``>= 2``, so that even a window
        anchored at a split's last frame never reaches the next split).

    Returns
    -------
    dict
        ``{"train": idx, "val": idx, "test": idx}``, increasing int64 frame indices.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if fractions[0] == 0:
        raise ValueError("the train fraction must be positive")
    if gap < WINDOW - 1:
        raise ValueError(f"the gap between splits must be at least {WINDOW - 1} frames, got {gap}")
    counts = _split_counts(num_frames, fractions, gap)
    if counts[0] < WINDOW:
        needed = next(t for t in range(num_frames + 1, 2 ** 62) if _split_counts(t, fractions, gap)[0] >= WINDOW)
        raise ValueError(
            f"{num_frames} frames are too few for split fractions {fractions} with a gap of {gap}: at least "
            f"{needed} frames are needed ({WINDOW} per split, {gap} between splits)")
    out, start = {}, 0
    for i, name in enumerate(SPLITS):
        out[name] = np.arange(start, start + counts[i], dtype=np.int64)
        if counts[i]:
            start += counts[i] + gap
    return out


def _split_counts(num_frames: int, fractions: tuple[float, ...], gap: int) -> list[int]:
    """Frames of train, val and test (see :func:`split_frames`); train's may come out below ``WINDOW``."""
    active = [i for i, f in enumerate(fractions) if f > 0]
    usable = num_frames - gap * (len(active) - 1)
    counts = [max(WINDOW, math.floor(fractions[i] * usable)) if i in active else 0 for i in range(3)]
    counts[0] = usable - counts[1] - counts[2]
    return counts


def rms_velocity(velocity: torch.Tensor | VelocityFrames, frames: Sequence[int] | np.ndarray) -> float:
    """Root-mean-square velocity component ``sqrt(<u . u> / 3)`` over the given frames.

    One streaming pass: each frame is read slab by slab (:meth:`VelocityFrames.slabs`), so memory stays
    bounded for frames of any size; every value is checked for NaN / Inf on the way.

    Parameters
    ----------
    velocity : torch.Tensor or VelocityFrames
        ``(T, 3, X, Y, Z)``.
    frames : sequence of int
        Frames to average over (the training split).
    """
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size == 0:
        raise ValueError("cannot compute a velocity scale from an empty set of frames")
    source = velocity if isinstance(velocity, VelocityFrames) else TensorFrames(velocity)
    voxels = 3 * math.prod(source.spatial)
    total = 0.0
    for t in frames:
        squares = 0.0
        for _, slab in source.slabs(int(t)):
            flat = slab.astype(np.float64, copy=False).ravel()
            squares += float(flat @ flat)
        total += squares / voxels
    return math.sqrt(total / len(frames))


class SuperResolutionDataset(Dataset):
    """Samples ``{"low_res": (9, n, n, n), "high_res": (3, 4n, 4n, 4n)}`` from windows of one split.

    A sample reads its three crops, and nothing else, from ``velocity`` (a file stays on disk).

    Parameters
    ----------
    velocity : torch.Tensor or VelocityFrames
        ``(T, 3, X, Y, Z)`` frames in the public convention: a tensor, or frames opened lazily
        (:class:`~steerable_sr.data.frames.GeneratedFrames`,
        :class:`~steerable_sr.data.jhtdb.JHTDBFrames`).
    frame_indices : sequence of int
        Frames of the split; a window ``(t, t+1, t+2)`` is used only if all three are in it.
    crop : int, optional
        Edge of the cubic high-resolution crop (a multiple of 4, at most the volume's smallest edge);
        ``None`` serves whole volumes (edges must be multiples of 4).
    periodic : bool
        The volume is periodic: crops start anywhere and wrap around (as with ``torch.roll``);
        otherwise they stay inside.
    normalization : float, optional
        Velocity scale: ``lr`` and ``hr`` are divided by it.
    seed : int
        Seed of the crop positions.
    random_crop : bool
        New crop positions every epoch: sample ``i`` of epoch ``e``, read as ``dataset[(e, i)]`` (the
        keys :class:`EpochSampler` yields; ``dataset[i]`` is epoch 0), is cropped at a position drawn
        from ``(seed, e, i)``. Otherwise sample ``i`` always has the same position, drawn from
        ``(seed, i)``. Either way the position depends on no global RNG, so it is the same in
        whichever process (DataLoader worker, DDP rank) reads the sample, and after a resume.
    crops_per_window : int
        Samples per window (distinct crop positions when cropping).

    Notes
    -----
    Each sample also carries ``"frame"`` (the index of the middle frame ``t + 1``) and ``"offset"``
    (int64 ``(3,)``, the crop origin in high-resolution voxels). A NaN or Inf in a crop raises
    ``ValueError`` naming the file, the frame and the crop origin.
    """

    def __init__(
        self,
        velocity: torch.Tensor | VelocityFrames,
        frame_indices: Sequence[int] | np.ndarray,
        crop: int | None = None,
        periodic: bool = True,
        normalization: float | None = None,
        seed: int = 0,
        random_crop: bool = False,
        crops_per_window: int = 1,
    ) -> None:
        self.frames = velocity if isinstance(velocity, VelocityFrames) else TensorFrames(velocity)
        indices = np.unique(np.asarray(frame_indices, dtype=np.int64))
        if indices.size and (indices[0] < 0 or indices[-1] >= len(self.frames)):
            raise ValueError(f"frame indices must lie in [0, {len(self.frames)}), got {indices[0]}..{indices[-1]}")
        check_crop(crop, self.frames.spatial)
        if crops_per_window < 1:
            raise ValueError(f"crops_per_window must be >= 1, got {crops_per_window}")
        if normalization is not None and not normalization > 0:
            raise ValueError(f"the normalization scale must be positive, got {normalization}")
        members = set(indices.tolist())
        self.windows = [int(t) for t in indices if all(int(t) + i in members for i in range(WINDOW))]
        if not self.windows:
            raise ValueError(f"no {WINDOW} consecutive frames among the {indices.size} given frame indices")
        self.crop, self.periodic = crop, periodic
        self.normalization, self.seed, self.random_crop = normalization, seed, random_crop
        self.crops_per_window = crops_per_window

    def __len__(self) -> int:
        return len(self.windows) * self.crops_per_window

    def _offset(self, epoch: int, index: int) -> np.ndarray:
        if self.crop is None:
            return np.zeros(3, dtype=np.int64)
        spatial = np.asarray(self.frames.spatial)
        high = spatial if self.periodic else spatial - self.crop + 1
        rng = np.random.default_rng((self.seed, epoch, index) if self.random_crop else (self.seed, index))
        return rng.integers(0, high)

    def _read(self, t: int, offset: np.ndarray) -> np.ndarray:
        if self.crop is None:
            return self.frames.frame(t)
        return self.frames.crop(t, offset, (self.crop,) * 3)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        """Sample ``key = index`` or ``key = (epoch, index)`` (see ``random_crop``)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        start = self.windows[index // self.crops_per_window]
        offset = self._offset(epoch, index)
        window = torch.from_numpy(np.stack([self._read(start + i, offset) for i in range(WINDOW)]))
        if self.normalization is not None:
            window = window / self.normalization
        lr = downsample(window).reshape(WINDOW * 3, *[s // FACTOR for s in window.shape[2:]])
        return {"low_res": lr, "high_res": window[1].clone(), "frame": start + 1, "offset": torch.from_numpy(offset)}


class EpochSampler(DistributedSampler):
    """The training order: each epoch a permutation of the samples drawn from ``(seed, epoch)`` (this
    process's share of it under DDP), each index yielded with its epoch as ``(epoch, index)``.

    The crop position of a sample then follows from ``(seed, epoch, index)``
    (:class:`SuperResolutionDataset` with ``random_crop``) in whichever DataLoader worker reads it:
    order and crops of an epoch are the same with any number of workers and after a resume.
    Lightning calls :meth:`set_epoch` before every epoch and keeps a ``DistributedSampler`` as it is
    under DDP; set the first epoch with :meth:`set_epoch` (the data module does, from the trainer),
    since a DataLoader with workers draws its first indices when its iterator is made.

    Parameters
    ----------
    dataset : SuperResolutionDataset
    seed : int
        Seed of the order (``torch.Generator().manual_seed(seed + epoch)``, as ``DistributedSampler``).
    num_replicas, rank : int
        Processes and this one's rank (1 and 0 without DDP).
    """

    def __init__(self, dataset: SuperResolutionDataset, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, index) for index in super().__iter__()])


def check_crop(crop: int | None, spatial: tuple[int, ...], source: str = "") -> None:
    """Validate a crop size against a volume ``spatial = (X, Y, Z)``; ``source`` prefixes messages."""
    where = f"{source}: " if source else ""
    if crop is None:
        if any(s % FACTOR for s in spatial):
            raise ValueError(f"{where}volume {spatial} is not divisible by {FACTOR}; choose a crop (a multiple of {FACTOR})")
        return
    if crop <= 0 or crop % FACTOR:
        raise ValueError(f"{where}crop {crop} must be a positive multiple of {FACTOR}")
    if crop > min(spatial):
        raise ValueError(f"{where}crop {crop} is larger than the volume {spatial}")


def load_generated(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`steerable_sr.data.generate.generate_dataset`, all of it, into memory.

    Training does not need this (it reads crops, :class:`GeneratedFrames`); statistics over whole
    frames do.

    Returns
    -------
    dict
        ``velocity`` ``(T, 3, n, n, n)`` float32 tensor, ``splits`` (``{"train": idx, ...}``),
        ``attrs`` (the file's metadata).

    Raises
    ------
    ValueError
        The file is not readable HDF5 (truncated, corrupt), or a frame cannot be read or holds NaN or
        Inf (each frame is checked as it is read).
    """
    frames = GeneratedFrames(path)
    velocity = np.empty(frames.shape, dtype=frames.dtype)
    try:
        for t in range(len(frames)):
            velocity[t] = frames.frame(t)
    finally:
        frames.close()
    return {"velocity": torch.from_numpy(velocity), "splits": frames.splits, "attrs": frames.attrs}


def is_generated(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file written by ``generate_dataset`` (has ``velocity`` and ``splits``).

    Raises ``ValueError`` for an HDF5 file that cannot be opened (truncated, corrupt)."""
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with open_hdf5(path) as handle:
        return "velocity" in handle and "splits" in handle and handle.attrs.get("generator") is not None


def open_frames(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> VelocityFrames:
    """The frames of a generated file (:class:`GeneratedFrames`) or of JHTDB cutout file(s)
    (:class:`~steerable_sr.data.jhtdb.JHTDBFrames`: a file, directory, glob pattern or list), opened lazily.

    Raises
    ------
    FileNotFoundError
        A named file or directory does not exist, or nothing matches.
    ValueError
        Not HDF5, or not a layout of either kind (see the two classes).
    """
    files = resolve_paths(path_or_paths)
    if len(files) == 1 and is_generated(files[0]):
        return GeneratedFrames(files[0])
    return JHTDBFrames(files)


class TurbulenceDataModule(L.LightningDataModule):
    """Train / val / test / predict loaders over a generated dataset or JHTDB cutouts, read lazily.

    Parameters
    ----------
    path : str or list of str
        A file from ``generate_dataset`` (splits and periodicity are read from it), or JHTDB
        cutout file(s): a file, a directory, a glob pattern or a list (split by time fractions).
    crop : int, optional
        High-resolution crop edge (multiple of 4); ``None`` = whole volumes.
    batch_size : int
        Samples per batch (predict uses the same).
    num_workers : int
        DataLoader worker processes per loader (0: samples are read in the training process). Each
        worker opens the files itself.
    persistent_workers : bool
        Keep the workers (and their open files) from one epoch to the next (with ``num_workers > 0``).
    pin_memory : bool, optional
        Page-locked batches, for faster copies to a GPU; ``None``: when CUDA is available.
    normalize : bool
        Divide by the training split's rms velocity (:attr:`velocity_scale`).
    seed : int
        Seed of the shuffling order and of the training crop positions of every epoch.
    eval_seed : int
        Seed of the fixed val / test crop positions. Apart from ``seed``, so that runs with different
        training seeds are scored on the same crops (their spread is the training's alone).
    periodic : bool, optional
        Periodic volume (crops may wrap); ``None``: True for generated data, False for JHTDB cutouts.
    val_fraction, test_fraction : float
        Time fractions of the val and test splits of JHTDB data (the rest is train).
    gap : int
        Unused frames between JHTDB splits (``>= 2``).
    crops_per_window : int
        Samples per window and epoch (distinct crop positions).

    Notes
    -----
    The training loader's order and crops of epoch ``e`` are a function of ``(seed, e)``
    (:class:`EpochSampler`): the same with any ``num_workers`` and when training resumes at epoch
    ``e``. The velocity scale is the file's ``velocity_scale`` attribute, else one streaming pass over
    the training frames. The predict loader serves the test windows, whole volumes, in order;
    :attr:`velocity_scale` (``None`` without normalization) maps predictions back to physical units
    and is part of :meth:`state_dict`, hence of Lightning checkpoints.
    """

    def __init__(
        self,
        path: str | Sequence[str],
        crop: int | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        normalize: bool = True,
        seed: int = 0,
        eval_seed: int = 0,
        periodic: bool | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        gap: int = 2,
        crops_per_window: int = 1,
    ) -> None:
        super().__init__()
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.frames: VelocityFrames | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.velocity_scale: float | None = None
        self.periodic: bool | None = periodic
        self.source = ""
        self.datasets: dict[str, SuperResolutionDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Open the data (once) and build the split datasets."""
        if self.frames is None:
            self._open()
        hp = self.hparams
        for name in SPLITS:
            if name not in self.datasets and self.splits[name].size:
                self.datasets[name] = SuperResolutionDataset(
                    self.frames, self.splits[name], crop=hp.crop, periodic=self.periodic,
                    normalization=self.velocity_scale, seed=hp.seed if name == "train" else hp.eval_seed,
                    random_crop=name == "train",
                    crops_per_window=hp.crops_per_window)
        if stage in (None, "predict") and "predict" not in self.datasets and self.splits["test"].size:
            check_crop(None, self.frames.spatial, self.source)
            self.datasets["predict"] = SuperResolutionDataset(
                self.frames, self.splits["test"], crop=None, periodic=self.periodic,
                normalization=self.velocity_scale)

    def teardown(self, stage: str | None = None) -> None:
        """Close the files this process opened (a later read opens them again)."""
        if self.frames is not None:
            self.frames.close()

    def _open(self) -> None:
        hp = self.hparams
        files = resolve_paths(hp.path)
        self.source = ", ".join(map(str, files))
        frames = open_frames(files)
        if isinstance(frames, GeneratedFrames):
            splits = frames.splits
            periodic = bool(frames.attrs.get("periodic", True))
            stored_scale = frames.attrs.get("velocity_scale")
        else:
            periodic, stored_scale = False, None
            if len(frames) >= WINDOW:
                fractions = (1.0 - hp.val_fraction - hp.test_fraction, hp.val_fraction, hp.test_fraction)
                try:
                    splits = split_frames(len(frames), fractions, hp.gap)
                except ValueError as exc:
                    raise ValueError(f"{self.source}: {exc}") from exc
        if len(frames) < WINDOW:
            raise ValueError(f"{self.source}: {len(frames)} frame(s), at least {WINDOW} consecutive frames are needed")
        check_crop(hp.crop, frames.spatial, self.source)
        self.periodic = periodic if hp.periodic is None else hp.periodic
        self.splits = splits
        if hp.normalize and self.velocity_scale is None:
            self.velocity_scale = (float(stored_scale) if stored_scale is not None
                                   else rms_velocity(frames, splits["train"]))
        self.frames = frames

    def _dataset(self, name: str) -> SuperResolutionDataset:
        if name not in self.datasets:
            split = "test" if name == "predict" else name
            raise ValueError(f"{self.source or self.hparams.path}: no {name} samples (setup() not called for this "
                             f"stage, or the {split} split is empty)")
        return self.datasets[name]

    def _loader(self, dataset: SuperResolutionDataset, sampler: EpochSampler | None = None) -> DataLoader:
        hp = self.hparams
        return DataLoader(dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          persistent_workers=hp.persistent_workers and hp.num_workers > 0,
                          pin_memory=torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by :class:`EpochSampler`, starting at the trainer's current epoch (the epoch a
        resumed run continues with); this process's share under DDP."""
        dataset, trainer = self._dataset("train"), self.trainer
        sampler = EpochSampler(dataset, seed=self.hparams.seed, num_replicas=trainer.world_size if trainer else 1,
                               rank=trainer.global_rank if trainer else 0)
        sampler.set_epoch(trainer.current_epoch if trainer else 0)
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("predict"))

    def state_dict(self) -> dict:
        """``{"velocity_scale": float | None}``: stored in checkpoints so predictions can be rescaled."""
        return {"velocity_scale": self.velocity_scale}

    def load_state_dict(self, state_dict: dict) -> None:
        self.velocity_scale = state_dict.get("velocity_scale")
