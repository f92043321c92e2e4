"""Generate a turbulence dataset with the pseudo-spectral solver, and plot its spectrum.

The output is one HDF5 file:

* ``velocity``: ``(T, 3, n, n, n)`` float32, public convention (spatial axis ``a`` = ``x_a``,
  channel ``a`` = ``u_a``), frames ``dt_save`` apart after a spin-up; stored in chunks
  ``(1, 3, 32, 32, 32)`` (:func:`velocity_chunks`), so that a training crop reads a few chunks, not
  a whole frame;
* ``time``: ``(T,)`` simulation times;
* ``splits/train``, ``splits/val``, ``splits/test``: frame indices, contiguous blocks in time with
  ``gap`` unused frames between them (:func:`steerable_sr.data.dataset.split_frames`);
* attributes: the generation parameters (forcing, axis, nu, power, dt_save, spinup, seed, n,
  domain_length, solver_version, ...; shear_axis, amplitude and wavenumber for the Kolmogorov
  forcing) and ``velocity_scale``, the rms velocity component of the
  training frames (the normalization of :class:`~steerable_sr.data.dataset.TurbulenceDataModule`).

The file appears atomically: it is written under a temporary name in the target directory and
renamed at the end; on any error or interrupt the temporary file is removed. Before anything is
allocated, the memory the solver needs (:func:`solver_memory`) is compared with what the device has
free (:func:`available_memory`); a run that cannot fit is refused in one line.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_output
from .dataset import SPLITS, split_frames
from .spectral import (FORCINGS, KOLMOGOROV_AMPLITUDE, SOLVER_VERSION, SpectralSolver, default_viscosity,
                       energy_spectrum)

__all__ = ["available_memory", "generate_dataset", "main", "plot_spectrum", "solver_memory", "velocity_chunks"]

GENERATOR = "steerable_sr.data.generate"
#: Initial condition: energy close to the steady state of the default forcing power 0.1.
INITIAL_ENERGY = 0.5
#: Default spin-up time per forcing (see docs/data.md): the isotropic run is statistically steady
#: after ~3 time units at 64^3; the axial jets of the anisotropic forcing take ~15 to saturate; the
#: mean shear of the Kolmogorov forcing builds up and breaks down into turbulence within ~30 at 32^3.
DEFAULT_SPINUP = {"isotropic": 6.0, "anisotropic": 20.0, "kolmogorov": 30.0, None: 6.0}
#: Edge of the chunks of the ``velocity`` dataset (a 32^3 chunk of 3 float32 components is 384 KiB).
CHUNK_EDGE = 32
#: Real fields ``(3, n, n, n)`` of the solver's dtype held at the peak of a time step, everything
#: included: the growth of the peak RSS over ``initial_field`` and ``advance`` is 31.8 (float64) and
#: 33.6 (float32) fields at 64^3, 34.2 and 30.9 at 96^3, 20.8 at 128^3 (float32); 36 leaves a margin.
SOLVER_FIELDS = 36
#: Host bytes per grid point of a run on an accelerator: the initial noise (3 float64 components,
#: drawn on the CPU) and each frame copied back as 3 float32 components.
HOST_BYTES_PER_POINT = 3 * (8 + 4)


def _dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return torch.float64 if torch.device(device).type == "cpu" else torch.float32
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def velocity_chunks(n: int) -> tuple[int, int, int, int, int]:
    """Chunk shape of the ``velocity`` dataset ``(T, 3, n, n, n)``: one frame's 3 components over a
    cube of edge ``min(n, CHUNK_EDGE)``, so that reading a training crop touches a few chunks."""
    edge = min(n, CHUNK_EDGE)
    return (1, 3, edge, edge, edge)


def solver_memory(n: int, dtype: torch.dtype) -> int:
    """Bytes the solver needs at ``n^3`` in ``dtype`` at its peak: :data:`SOLVER_FIELDS` real fields
    ``(3, n, n, n)``."""
    return SOLVER_FIELDS * 3 * n ** 3 * torch.finfo(dtype).bits // 8


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """Bytes free for new allocations on ``device``, and where the number comes from.

    CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux).

    Returns
    -------
    tuple of (int, str) or None
        ``(bytes, source)``; ``None`` where it cannot be known (another OS, another device type).
    """
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], "torch.cuda.mem_get_info"
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        return None
    return None


def _check_memory(n: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a run whose solver (on ``device``) or host copies do not fit in the memory available."""
    precision = str(dtype).removeprefix("torch.")
    needs = [(device, solver_memory(n, dtype), f"the solver ({precision})")]
    if device.type != "cpu":
        needs.append((torch.device("cpu"), HOST_BYTES_PER_POINT * n ** 3, "the host copies"))
    remedies = ["a smaller n (--n)"]
    if dtype == torch.float64:
        remedies.append("float32 (--dtype float32)")
    if device.type == "cpu":
        remedies.append("a GPU (--device cuda)")
    for where, need, what in needs:
        available = available_memory(where)
        if available is not None and need > available[0]:
            raise ValueError(f"generating at n = {n} needs about {need / 2 ** 30:.1f} GiB of {where.type} memory for "
                             f"{what}, {available[0] / 2 ** 30:.1f} GiB available ({available[1]}); choose "
                             f"{', '.join(remedies[:-1]) + ' or ' if len(remedies) > 1 else ''}{remedies[-1]}")


def _spin_up(solver: SpectralSolver, u: torch.Tensor, duration: float, chunk: float, bar: tqdm) -> torch.Tensor:
    steps = math.ceil(duration / chunk - 1e-9) if duration > 0 else 0
    for i in range(steps):
        u = solver.advance(u, min(chunk, duration - i * chunk))
        bar.update(1)
    return u


def generate_dataset(
    out_path: str | os.PathLike,
    n: int = 64,
    frames: int = 20,
    forcing: str | None = "isotropic",
    axis: int = 0,
    shear_axis: int | None = None,
    amplitude: float = KOLMOGOROV_AMPLITUDE,
    wavenumber: int = 1,
    nu: float | None = None,
    power: float = 0.1,
    dt_save: float = 0.1,
    spinup: float | None = None,
    seed: int = 0,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
    gap: int = 2,
    device: str = "cpu",
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Simulate forced turbulence and write ``frames`` snapshots to one HDF5 file.

    Parameters
    ----------
    out_path : str or os.PathLike
        Output ``.h5`` file (refused if it exists, unless ``overwrite``).
    n : int
        Grid points per direction (``n^3``; use a multiple of 4 for 4x super-resolution).
    frames : int
        Number of saved snapshots ``T``.
    forcing : {"isotropic", "anisotropic", "kolmogorov", None}
        See :mod:`steerable_sr.data.spectral`.
    axis : int
        Preferred axis of the anisotropic forcing; forced component of the Kolmogorov forcing.
    shear_axis : int, optional
        Coordinate along which the Kolmogorov force ``amplitude * sin(wavenumber * x_shear_axis) e_axis``
        varies; default ``(axis + 1) % 3``.
    amplitude, wavenumber
        Amplitude and wavenumber of the Kolmogorov force.
    nu : float, optional
        Viscosity; default :func:`~steerable_sr.data.spectral.default_viscosity` (``k_max eta = 1``).
    power : float
        Injected power (= dissipation rate in the steady state) of the band forcings; for all
        forcings, the dissipation rate assumed by the default viscosity.
    dt_save : float
        Simulation time between snapshots.
    spinup : float, optional
        Simulation time before the first snapshot (from a random band-limited field); default
        :data:`DEFAULT_SPINUP` of the forcing (6 isotropic, 20 anisotropic, 30 kolmogorov).
    seed : int
        Seed of the initial field; the output is a deterministic function of all arguments (on a
        given device and dtype).
    splits : sequence of three floats
        Train / val / test fractions of the frames (contiguous in time, in that order).
    gap : int
        Unused frames between splits (``>= 2``).
    device : str
        Torch device of the simulation (``"cuda"`` for large grids).
    dtype : {"float32", "float64"}, optional
        Simulation precision; default float64 on CPU, float32 elsewhere. The file stores float32, in
        chunks :func:`velocity_chunks`.
    overwrite : bool
        Replace an existing ``out_path``.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    ValueError
        Invalid arguments, or more memory needed than available (:func:`solver_memory`,
        :func:`available_memory`): refused before anything is allocated or written.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if spinup is None:
        spinup = DEFAULT_SPINUP.get(forcing, 0.0)
    if dt_save <= 0 or spinup < 0:
        raise ValueError(f"need dt_save > 0 and spinup >= 0, got dt_save={dt_save}, spinup={spinup}")
    split_idx = split_frames(frames, splits, gap)
    nu = default_viscosity(n, power) if nu is None else float(nu)
    _check_memory(n, _dtype(dtype, device), torch.device(device))
    solver = SpectralSolver(n, nu, forcing, axis=axis, shear_axis=shear_axis, amplitude=amplitude,
                            wavenumber=wavenumber, power=power, device=device, dtype=_dtype(dtype, device), seed=seed)
    spin_chunks = math.ceil(spinup / dt_save - 1e-9) if spinup > 0 else 0
    attrs = {
        "generator": GENERATOR, "solver_version": SOLVER_VERSION, "forcing": str(forcing), "axis": axis,
        "nu": nu, "power": power, "forcing_kmax": solver.forcing_kmax, "cfl": solver.cfl, "dt_max": solver.dt_max,
        "dt_save": dt_save, "spinup": spinup, "seed": seed, "n": n, "domain_length": 2.0 * math.pi,
        "periodic": True, "initial_energy": INITIAL_ENERGY, "split_fractions": np.asarray(splits, dtype=np.float64),
        "gap": gap, "dtype": str(solver.dtype).removeprefix("torch."), "device_type": solver.device.type,
        "convention": "velocity[t, a, i0, i1, i2] = u_a(x_0 = i0 dx, x_1 = i1 dx, x_2 = i2 dx), dx = 2 pi / n",
    }
    if forcing == "kolmogorov":
        attrs.update(shear_axis=solver.shear_axis, amplitude=solver.amplitude, wavenumber=solver.wavenumber)
    with atomic_output(out_path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs.update(attrs)
        velocity = handle.create_dataset("velocity", shape=(frames, 3, n, n, n), dtype=np.float32,
                                         chunks=velocity_chunks(n))
        times = handle.create_dataset("time", shape=(frames,), dtype=np.float64)
        group = handle.create_group("splits")
        for name in SPLITS:
            group.create_dataset(name, data=split_idx[name])
        train_frames, sum_squares = set(split_idx["train"].tolist()), 0.0
        with tqdm(total=spin_chunks + frames, desc=f"{forcing} {n}^3: {spin_chunks} spin-up + {frames} frames",
                  unit="interval", disable=not progress) as bar:
            u = _spin_up(solver, solver.initial_field(INITIAL_ENERGY), spinup, dt_save, bar)
            for t in range(frames):
                if t:
                    u = solver.advance(u, dt_save)
                frame = u.to("cpu", torch.float32)
                velocity[t] = frame.numpy()
                if t in train_frames:
                    sum_squares += float(frame.double().square().mean())
                times[t] = spinup + t * dt_save
                bar.update(1)
                bar.set_postfix(energy=f"{solver.energy(u):.3f}")
        handle.attrs["velocity_scale"] = math.sqrt(sum_squares / len(train_frames))
    return Path(out_path)


def plot_spectrum(
    out_png: str | os.PathLike,
    n: int = 64,
    spinup: float = 6.0,
    average: float = 2.0,
    samples: int = 5,
    nu: float | None = None,
    power: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Plot the time-averaged energy spectrum of a spun-up isotropic run with a ``k^-5/3`` guide.

    Runs ``spinup`` time units, then averages ``samples`` spectra over ``average`` time units and
    plots ``E(k)`` (log-log) with the dealiasing cut-off and a ``C eps^(2/3) k^(-5/3)`` line
    (``C = 1.6``, ``eps = power``). Also prints the run's statistics.

    Returns
    -------
    pathlib.Path
        ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nu = default_viscosity(n, power) if nu is None else nu
    solver = SpectralSolver(n, nu, "isotropic", power=power, device=device, dtype=_dtype(None, device), seed=seed)
    u = solver.advance(solver.initial_field(INITIAL_ENERGY), spinup)
    spectra, energies, dissipations = [], [], []
    for _ in tqdm(range(samples), desc="spectrum"):
        u = solver.advance(u, average / samples)
        spectra.append(energy_spectrum(u)[1].cpu())
        energies.append(solver.energy(u))
        dissipations.append(solver.dissipation(u))
    E = torch.stack(spectra).mean(0).numpy()
    energy, eps = float(np.mean(energies)), float(np.mean(dissipations))
    u_rms = math.sqrt(2.0 * energy / 3.0)
    taylor = math.sqrt(15.0 * nu * u_rms ** 2 / eps)
    eta = (nu ** 3 / eps) ** 0.25
    kmax = math.ceil(n / 3) - 1
    k = np.arange(len(E))
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.loglog(k[1:], E[1:], "o-", ms=3, label="E(k), time average")
    guide = k[2:kmax + 1].astype(float)
    ax.loglog(guide, 1.6 * eps ** (2 / 3) * guide ** (-5 / 3), "k--", label=r"$1.6\,\varepsilon^{2/3}k^{-5/3}$")
    ax.axvline(kmax, color="gray", lw=0.8, ls=":", label=f"2/3-rule cut-off k={kmax}")
    ax.set_xlabel("k")
    ax.set_ylabel("E(k)")
    ax.set_ylim(max(E[1:].min(), 1e-8) / 2, E[1:].max() * 3)
    ax.set_title(f"isotropic forcing, {n}$^3$, Re$_\\lambda$ = {u_rms * taylor / nu:.0f}, "
                 f"k$_{{max}}\\eta$ = {kmax * eta:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    print(f"nu={nu:.5g} E={energy:.4f} eps={eps:.4f} (power {power}) u_rms={u_rms:.4f} lambda={taylor:.4f} "
          f"Re_lambda={u_rms * taylor / nu:.1f} eta={eta:.4f} kmax*eta={kmax * eta:.3f}")
    return out_png
