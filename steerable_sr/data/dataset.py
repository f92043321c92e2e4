r"""Super-resolution samples from velocity time series, and the Lightning data module.

A sample is built from three consecutive frames ``(t, t+1, t+2)`` of one split:

* ``lr`` ``(9, n, n, n)``: the three frames block-averaged by 4 (:func:`downsample`), stacked frame
  after frame (channels ``3 i .. 3 i + 2`` are frame ``t + i``);
* ``hr`` ``(3, 4 n, 4 n, 4 n)``: the middle frame ``t + 1`` at full resolution.

Block averaging (``avg_pool3d`` with kernel = stride = 4) commutes with every element of O_h, so
a symmetry of the high-resolution data is a symmetry of the pairs; plain striding does not.

**Splits** are contiguous blocks in time (train, then val, then test) separated by ``gap >= 2``
unused frames (:func:`split_frames`), and windows are formed only from frames of one split.

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
from typing import Sequence

import h5py
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .checks import check_finite, open_hdf5
from .jhtdb import read_jhtdb, resolve_paths

__all__ = [
    "SPLITS",
    "SuperResolutionDataset",
    "TurbulenceDataModule",
    "check_crop",
    "downsample",
    "is_generated",
    "load_generated",
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


def rms_velocity(velocity: torch.Tensor, frames: Sequence[int] | np.ndarray) -> float:
    """Root-mean-square velocity component ``sqrt(<u . u> / 3)`` over the given frames.

    Parameters
    ----------
    velocity : torch.Tensor
        ``(T, 3, X, Y, Z)``.
    frames : sequence of int
        Frames to average over (the training split).
    """
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size == 0:
        raise ValueError("cannot compute a velocity scale from an empty set of frames")
    total = sum(float(velocity[int(t)].double().square().mean()) for t in frames)
    return math.sqrt(total / len(frames))


class SuperResolutionDataset(Dataset):
    """Samples ``{"low_res": (9, n, n, n), "high_res": (3, 4n, 4n, 4n)}`` from windows of one split.

    Parameters
    ----------
    velocity : torch.Tensor
        ``(T, 3, X, Y, Z)`` frames in the public convention.
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
        Seed of the fixed crop positions (``random_crop=False``).
    random_crop : bool
        Draw a new crop position at every access from torch's global RNG (seed it with
        ``torch.manual_seed`` / ``lightning.seed_everything``; DataLoader workers get distinct
        seeds). Otherwise sample ``i`` always has the same position, a function of ``(seed, i)``.
    crops_per_window : int
        Samples per window (distinct crop positions when cropping).

    Notes
    -----
    Each sample also carries ``"frame"`` (the index of the middle frame ``t + 1``) and ``"offset"``
    (int64 ``(3,)``, the crop origin in high-resolution voxels).
    """

    def __init__(
        self,
        velocity: torch.Tensor,
        frame_indices: Sequence[int] | np.ndarray,
        crop: int | None = None,
        periodic: bool = True,
        normalization: float | None = None,
        seed: int = 0,
        random_crop: bool = False,
        crops_per_window: int = 1,
    ) -> None:
        if velocity.dim() != 5 or velocity.shape[1] != 3:
            raise ValueError(f"expected velocity of shape (T, 3, X, Y, Z), got {tuple(velocity.shape)}")
        frames = np.unique(np.asarray(frame_indices, dtype=np.int64))
        if frames.size and (frames[0] < 0 or frames[-1] >= velocity.shape[0]):
            raise ValueError(f"frame indices must lie in [0, {velocity.shape[0]}), got {frames[0]}..{frames[-1]}")
        check_crop(crop, tuple(velocity.shape[2:]))
        if crops_per_window < 1:
            raise ValueError(f"crops_per_window must be >= 1, got {crops_per_window}")
        if normalization is not None and not normalization > 0:
            raise ValueError(f"the normalization scale must be positive, got {normalization}")
        members = set(frames.tolist())
        self.windows = [int(t) for t in frames if all(int(t) + i in members for i in range(WINDOW))]
        if not self.windows:
            raise ValueError(f"no {WINDOW} consecutive frames among the {frames.size} given frame indices")
        self.velocity, self.crop, self.periodic = velocity, crop, periodic
        self.normalization, self.seed, self.random_crop = normalization, seed, random_crop
        self.crops_per_window = crops_per_window

    def __len__(self) -> int:
        return len(self.windows) * self.crops_per_window

    def _offset(self, index: int) -> torch.Tensor:
        spatial = torch.tensor(self.velocity.shape[2:])
        if self.crop is None:
            return torch.zeros(3, dtype=torch.int64)
        high = spatial if self.periodic else spatial - self.crop + 1
        if self.random_crop:
            return torch.stack([torch.randint(int(h), ()) for h in high])
        rng = np.random.default_rng((self.seed, index))
        return torch.from_numpy(rng.integers(0, high.numpy()))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        start = self.windows[index // self.crops_per_window]
        window = self.velocity[start:start + WINDOW]
        offset = self._offset(index)
        if self.crop is not None:
            for axis in range(3):
                size = window.shape[2 + axis]
                idx = (int(offset[axis]) + torch.arange(self.crop)) % size
                window = window.index_select(2 + axis, idx)
        if self.normalization is not None:
            window = window / self.normalization
        lr = downsample(window).reshape(WINDOW * 3, *[s // FACTOR for s in window.shape[2:]])
        return {"low_res": lr, "high_res": window[1].clone(), "frame": start + 1, "offset": offset}


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
    """Read a file written by :func:`steerable_sr.data.generate.generate_dataset`.

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
    with open_hdf5(path) as handle:
        stored = handle["velocity"]
        velocity = np.empty(stored.shape, dtype=stored.dtype)
        for t in range(stored.shape[0]):
            where = f"{path}:velocity[{t}]"
            try:
                velocity[t] = stored[t]
            except (OSError, ValueError) as exc:
                raise ValueError(f"{where}: cannot read the data ({exc})") from exc
            check_finite(velocity[t], where)
        return {
            "velocity": torch.from_numpy(velocity),
            "splits": {name: np.asarray(handle["splits"][name][()], dtype=np.int64) for name in SPLITS},
            "attrs": dict(handle.attrs),
        }


def is_generated(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file written by ``generate_dataset`` (has ``velocity`` and ``splits``).

    Raises ``ValueError`` for an HDF5 file that cannot be opened (truncated, corrupt)."""
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with open_hdf5(path) as handle:
        return "velocity" in handle and "splits" in handle and handle.attrs.get("generator") is not None


class TurbulenceDataModule(L.LightningDataModule):
    """Train / val / test / predict loaders over a generated dataset or JHTDB cutouts.

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
        DataLoader worker processes.
    normalize : bool
        Divide by the training split's rms velocity (:attr:`velocity_scale`).
    seed : int
        Seed of the shuffling order and of the fixed val / test crop positions.
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
    The predict loader serves the test windows, whole volumes, in order; :attr:`velocity_scale`
    (``None`` without normalization) maps predictions back to physical units and is part of
    :meth:`state_dict`, hence of Lightning checkpoints.
    """

    def __init__(
        self,
        path: str | Sequence[str],
        crop: int | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        normalize: bool = True,
        seed: int = 0,
        periodic: bool | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        gap: int = 2,
        crops_per_window: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.velocity: torch.Tensor | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.velocity_scale: float | None = None
        self.periodic: bool | None = periodic
        self.source = ""
        self.datasets: dict[str, SuperResolutionDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load the data (once) and build the split datasets."""
        if self.velocity is None:
            self._load()
        hp = self.hparams
        for name in SPLITS:
            if name not in self.datasets and self.splits[name].size:
                self.datasets[name] = SuperResolutionDataset(
                    self.velocity, self.splits[name], crop=hp.crop, periodic=self.periodic,
                    normalization=self.velocity_scale, seed=hp.seed, random_crop=name == "train",
                    crops_per_window=hp.crops_per_window)
        if stage in (None, "predict") and "predict" not in self.datasets and self.splits["test"].size:
            check_crop(None, tuple(self.velocity.shape[2:]), self.source)
            self.datasets["predict"] = SuperResolutionDataset(
                self.velocity, self.splits["test"], crop=None, periodic=self.periodic,
                normalization=self.velocity_scale)

    def _load(self) -> None:
        hp = self.hparams
        files = resolve_paths(hp.path)
        self.source = ", ".join(map(str, files))
        if len(files) == 1 and is_generated(files[0]):
            data = load_generated(files[0])
            velocity, splits = data["velocity"], data["splits"]
            periodic = bool(data["attrs"].get("periodic", True))
            stored_scale = data["attrs"].get("velocity_scale")
        else:
            velocity = read_jhtdb(files).velocity
            periodic, stored_scale = False, None
            if velocity.shape[0] >= WINDOW:
                fractions = (1.0 - hp.val_fraction - hp.test_fraction, hp.val_fraction, hp.test_fraction)
                try:
                    splits = split_frames(velocity.shape[0], fractions, hp.gap)
                except ValueError as exc:
                    raise ValueError(f"{self.source}: {exc}") from exc
        if velocity.shape[0] < WINDOW:
            raise ValueError(f"{self.source}: {velocity.shape[0]} frame(s), at least {WINDOW} consecutive frames are needed")
        check_crop(hp.crop, tuple(velocity.shape[2:]), self.source)
        self.periodic = periodic if hp.periodic is None else hp.periodic
        self.splits = splits
        if hp.normalize and self.velocity_scale is None:
            self.velocity_scale = float(stored_scale) if stored_scale is not None else rms_velocity(velocity, splits["train"])
        self.velocity = velocity

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            split = "test" if name == "predict" else name
            raise ValueError(f"{self.source or self.hparams.path}: no {name} samples (setup() not called for this "
                             f"stage, or the {split} split is empty)")
        generator = torch.Generator().manual_seed(self.hparams.seed) if shuffle else None
        return DataLoader(self.datasets[name], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, generator=generator,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    def state_dict(self) -> dict:
        """``{"velocity_scale": float | None}``: stored in checkpoints so predictions can be rescaled."""
        return {"velocity_scale": self.velocity_scale}

    def load_state_dict(self, state_dict: dict) -> None:
        self.velocity_scale = state_dict.get("velocity_scale")
