"""``steerable-sr generate``: the options of :func:`steerable_sr.data.generate.generate_dataset`."""
from __future__ import annotations

import argparse
import math

from . import UsageError
from .arguments import check_output

HELP = "generate a synthetic turbulence dataset (pseudo-spectral DNS)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.spectral import FORCINGS, KOLMOGOROV_AMPLITUDE

    parser.description = ("Simulate forced turbulence with the pseudo-spectral solver and write the frames, splits "
                          "and metadata to one HDF5 file (atomically).")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("out", help="output HDF5 file")
    parser.add_argument("--n", type=int, default=64, help="grid points per direction")
    parser.add_argument("--frames", type=int, default=20, help="number of saved snapshots")
    parser.add_argument("--forcing", choices=[f for f in FORCINGS if f] + ["none"], default="isotropic")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=0,
                        help="axis of the anisotropic forcing; forced component u_axis of the kolmogorov forcing")
    parser.add_argument("--shear-axis", type=int, choices=(0, 1, 2), default=None,
                        help="kolmogorov: coordinate x_b of the force amplitude sin(wavenumber x_b) e_axis; "
                             "None: (axis + 1) mod 3")
    parser.add_argument("--amplitude", type=float, default=KOLMOGOROV_AMPLITUDE,
                        help="kolmogorov: amplitude of the force (> 0)")
    parser.add_argument("--wavenumber", type=int, default=1,
                        help="kolmogorov: wavenumber of the force, 1 <= wavenumber < n/3")
    parser.add_argument("--nu", type=float, default=None, help="viscosity; None: k_max eta = 1")
    parser.add_argument("--power", type=float, default=0.1,
                        help="injected power = dissipation rate of the band forcings; the rate the default nu assumes")
    parser.add_argument("--dt-save", type=float, default=0.1, help="time between snapshots")
    parser.add_argument("--spinup", type=float, default=None,
                        help="time before the first snapshot; None: 6 (isotropic), 20 (anisotropic), 30 (kolmogorov)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--gap", type=int, default=2, help="unused frames between splits")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="simulation precision; None: float64 on CPU, float32 on GPU")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from ..data.generate import generate_dataset
    from ..devices import check_device

    check_output(args.out, args.overwrite)
    check_device(args.device)
    if args.shear_axis == args.axis:
        raise UsageError(f"generate: --shear-axis must differ from --axis={args.axis} (the force sin(k x_b) e_a "
                         f"needs b != a to be divergence-free); accepted: "
                         f"{' or '.join(str(b) for b in range(3) if b != args.axis)}")
    if not args.amplitude > 0:
        raise UsageError(f"generate: --amplitude must be > 0, got {args.amplitude}")
    if not 1 <= args.wavenumber < args.n / 3:
        raise UsageError(f"generate: --wavenumber must be in 1..{math.ceil(args.n / 3) - 1} at --n {args.n} "
                         f"(kept by the 2/3 rule), got {args.wavenumber}")
    path = generate_dataset(
        args.out, n=args.n, frames=args.frames, forcing=None if args.forcing == "none" else args.forcing,
        axis=args.axis, shear_axis=args.shear_axis, amplitude=args.amplitude, wavenumber=args.wavenumber,
        nu=args.nu, power=args.power, dt_save=args.dt_save, spinup=args.spinup, seed=args.seed, splits=args.splits,
        gap=args.gap, device=args.device, dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
