"""``steerable-sr compare`` and ``steerable-sr discover`` (also ``scripts/compare.py``): the arguments
of the two studies of :mod:`steerable_sr.study`, turned into a
:class:`~steerable_sr.study.config.StudyConfig`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from ..models import RELAXED_KINDS
from ..study.config import DISCOVERY_OVERRIDES, StudyConfig


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "all") else int(text)


def _limit(text: str) -> int | float | None:
    if text.lower() in ("none", "null"):
        return None
    return float(text) if "." in text else int(text)


def _common_args(p: argparse.ArgumentParser, defaults: StudyConfig) -> None:
    p.add_argument("--out", default=defaults.out, help="output directory (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="training seeds")
    p.add_argument("--group", default=defaults.group, choices=("Oh", "O"))
    p.add_argument("--preset", default=defaults.preset, help="model widths, steerable_sr/presets/<preset>.yaml")
    p.add_argument("--overrides", type=json.loads, default=defaults.model_overrides,
                   help='JSON dict of build_model overrides for every kind, e.g. \'{"hidden": 1}\'')
    p.add_argument("--crop", type=_opt_int, default=defaults.crop, help="high-res crop edge (multiple of 4; none = whole)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--crops-per-window", type=int, default=defaults.crops_per_window)
    p.add_argument("--epochs", type=int, default=defaults.max_epochs, help="training epochs")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="stop after this many steps (-1: off)")
    for split in ("train", "val", "test"):
        p.add_argument(f"--limit-{split}-batches", type=_limit, default=getattr(defaults, f"limit_{split}_batches"),
                       help=f"{split} batches per epoch (an int, a fraction, or none = all)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--gamma", type=float, default=defaults.gamma)
    p.add_argument("--equivariance-elements", type=_opt_int, default=None,
                   help="group elements for the test equivariance error (default: all)")
    p.add_argument("--accelerator", default=defaults.accelerator, help="cpu, gpu, auto")
    p.add_argument("--devices", default=defaults.devices)
    p.add_argument("--precision", default=defaults.precision, help="32-true, bf16-mixed, ...")
    p.add_argument("--threads", type=_opt_int, default=defaults.threads,
                   help="torch CPU threads (default 1: shared machines; none = torch's default)")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bars")


def _config(args: argparse.Namespace, **extra: Any) -> StudyConfig:
    devices = args.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return StudyConfig(out=args.out, seeds=args.seeds, group=args.group, preset=args.preset, crop=args.crop,
                         model_overrides=args.overrides,
                         batch_size=args.batch_size, crops_per_window=args.crops_per_window, max_epochs=args.epochs,
                         max_steps=args.max_steps, limit_train_batches=args.limit_train_batches,
                         limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
                         lr=args.lr, weight_decay=args.weight_decay, gamma=args.gamma,
                         test_equivariance_elements=args.equivariance_elements, accelerator=args.accelerator,
                         devices=devices, precision=args.precision, threads=args.threads, progress=args.progress,
                         **extra)


def compare_parser(prog: str = "steerable-sr compare") -> argparse.ArgumentParser:
    d = StudyConfig()
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train model kinds with matched budgets on the same data and seeds; write "
                                "a table (results.md/json: parameters, build and step time, test metrics, mean ± std "
                                "over seeds) and plots (val_curves.png, spectra.png) to --out.")
    p.add_argument("--data", default=d.data, help="dataset (.h5 from `steerable-sr generate`, or JHTDB cutouts)")
    p.add_argument("--kinds", nargs="+", default=list(d.kinds),
                   help="model kinds: cnn gcnn rgcnn steer rsteer, and gcnn_separable rgcnn_separable")
    p.add_argument("--penalty-weight", type=float, default=d.penalty_weight, help="relaxed kinds' penalty weight")
    p.add_argument("--no-build-time", action="store_true", help="skip the cold/warm build-time measurement")
    p.add_argument("--from-json", metavar="RESULTS_JSON",
                   help="only render the table and plots of a saved (possibly partial) results.json into --out")
    _common_args(p, d)
    return p


def discover_parser(prog: str = "steerable-sr discover") -> argparse.ArgumentParser:
    # the same budget on every dataset, whatever its length: 12 epochs of 20 batches of 4 crops
    d = StudyConfig(out="runs/discover", seeds=(0, 1, 2), max_epochs=12, crops_per_window=4,
                      limit_train_batches=20, limit_val_batches=8, limit_test_batches=8,
                      model_overrides=DISCOVERY_OVERRIDES)
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train relaxed kinds with an equivariance penalty on each dataset and "
                                "write the symmetry reports of the learned relaxed weights (discover.md/json).")
    p.add_argument("data", nargs="*", help="datasets, e.g. data/aniso_n32.h5 data/iso_n32_long.h5")
    p.add_argument("--kinds", nargs="+", default=list(RELAXED_KINDS),
                   help=f"relaxed kinds: {', '.join(RELAXED_KINDS)} (and <kind>_separable where allowed)")
    p.add_argument("--from-json", nargs="+", metavar="DISCOVER_JSON",
                   help="only merge saved discover.json files (same settings) and render their summary and "
                   "reports into --out")
    p.add_argument("--penalty-weight", type=float, default=1e-3, help="weight of the equivariance penalty")
    p.add_argument("--control", action="store_true",
                   help="also train on batches of every generated dataset symmetrised by the group its forcing "
                   "keeps (O_h, D4h about the axis, D2h for Kolmogorov): a control")
    p.add_argument("--tol", type=float, default=None,
                   help="strict stabilizer tolerance (default: the robust criterion of steerable_sr.symmetry)")
    p.add_argument("--augment", default=None,
                   help="apply a random element of this named subgroup of O_h (e.g. Oh, O, D2h, 'D4h, axis x') "
                   "to every training batch (a symmetrised control)")
    _common_args(p, d)
    return p


def main_compare(argv: Sequence[str] | None = None, prog: str = "steerable-sr compare") -> int:
    args = compare_parser(prog).parse_args(argv)
    # imported after parsing: the study trains with lightning (seconds to import), --help does not
    from ..study.compare import render_from_json, run_compare

    if args.from_json:
        render_from_json(args.from_json, args.out)
        print(f"[compare] wrote {args.out}/results.md, results.json, val_curves.png, spectra.png")
        return 0
    cfg = _config(args, data=args.data, kinds=args.kinds, penalty_weight=args.penalty_weight,
                  build_time=not args.no_build_time)
    run_compare(cfg)
    print(f"[compare] wrote {cfg.out}/results.md, results.json, val_curves.png, spectra.png")
    return 0


def main_discover(argv: Sequence[str] | None = None, prog: str = "steerable-sr discover") -> int:
    parser = discover_parser(prog)
    args = parser.parse_args(argv)
    if args.from_json and args.data:
        parser.error("give either datasets to train on or --from-json, not both")
    if not args.from_json and not args.data:
        parser.error("give the datasets to train on (or --from-json)")
    # imported after parsing: the study trains with lightning (seconds to import), --help does not
    from ..study.discover import render_discovery_from_json, run_discover

    if args.from_json:
        render_discovery_from_json(args.from_json, args.out)
        print(f"[discover] wrote {args.out}/discover.md, discover.json")
        return 0
    cfg = _config(args, augment=args.augment)
    result = run_discover(args.data, cfg, kinds=args.kinds, penalty_weight=args.penalty_weight, tol=args.tol,
                          control=args.control)
    print((Path(cfg.out) / "discover.md").read_text())
    print(f"[discover] wrote {cfg.out}/discover.md, discover.json ({len(result['results'])} runs)")
    return 0
