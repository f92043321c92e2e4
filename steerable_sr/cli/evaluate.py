"""``steerable-sr evaluate``: a checkpoint's report on a dataset split (:mod:`steerable_sr.report`).
The checkpoint is read once: the network, its training units and its datamodule all come from it."""
from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import CLIError
from .arguments import add_trust_option, check_data_path, positive_int

if TYPE_CHECKING:
    from ..data.dataset import TurbulenceDataModule

HELP = "write an evaluation report (metrics table, spectra and slice plots, symmetry report)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="training checkpoint (.ckpt)")
    parser.add_argument("--data", help="dataset path (default: the one the checkpoint was trained on)")
    parser.add_argument("--out", required=True, help="report directory (written atomically)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--max-batches", type=positive_int, default=None)
    parser.add_argument("--equivariance-elements", type=int, default=None,
                        help="group elements for the equivariance error (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true",
                        help="update an existing report directory: replace the earlier report's files (metrics, "
                             "plots, symmetry) and keep every other file; a non-empty directory without a report "
                             "is refused")
    add_trust_option(parser)


def run(args: argparse.Namespace) -> int:
    from .. import report
    from ..checkpoint import module_from_checkpoint, read_checkpoint
    from ..devices import check_device
    from ..io import check_writable
    from ..models import RELAXED_KINDS
    from ..symmetry import symmetry_report

    check_device(args.device)
    out = Path(args.out)
    report.check_report_destination(out, args.overwrite)
    check_writable(out / "metrics.json")
    checkpoint = read_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    module = module_from_checkpoint(checkpoint, args.device, source=args.ckpt)
    dm = datamodule_for(checkpoint, float(module.velocity_scale), args.data, args.batch_size, args.num_workers)
    dm.prepare_data()
    dm.setup("test" if args.split == "test" else "validate")
    loader = dm.test_dataloader() if args.split == "test" else dm.val_dataloader()
    hp = module.hparams
    result = report.evaluate_model(module.model, loader, group=hp.group, upscale=hp.upscale,
                                   equivariance_elements=args.equivariance_elements, device=args.device,
                                   max_batches=args.max_batches, divergence_periodic=hp.divergence_periodic)
    symmetry = symmetry_report(module.model) if hp.kind in RELAXED_KINDS else None
    info = {"kind": hp.kind, "group": hp.group, "preset": hp.preset, "checkpoint": os.path.abspath(args.ckpt),
            "data": os.path.abspath(args.data) if args.data else "(from checkpoint)", "split": args.split,
            "parameters": module.model.num_parameters()}
    path = report.write_report(out, result, info, symmetry, overwrite=args.overwrite)
    m = result["metrics"]
    print(f"wrote {path}: MAE {m['model']['mae']:.4g} (trilinear {m['trilinear']['mae']:.4g}), "
          f"equivariance error {result['equivariance']['max']:.3g}")
    return 0


def datamodule_for(checkpoint: dict[str, Any], velocity_scale: float, data: str | None, batch_size: int | None,
                   num_workers: int) -> TurbulenceDataModule:
    """The datamodule the checkpoint was trained with (its saved hyperparameters), pointed at ``data``
    when given, normalised with the training data's ``velocity_scale`` (the network's units)."""
    from ..data.dataset import TurbulenceDataModule

    hp = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if data:
        check_data_path(data)
        hp["path"] = data
    if not hp.get("path"):
        raise CLIError("no data: pass --data PATH (the checkpoint does not record a dataset)")
    check_data_path(hp["path"], "pass --data PATH")
    if batch_size:
        hp["batch_size"] = batch_size
    hp["num_workers"] = num_workers
    params = inspect.signature(TurbulenceDataModule.__init__).parameters
    dm = TurbulenceDataModule(**{k: v for k, v in hp.items() if k in params})
    if hp.get("normalize", True):
        dm.load_state_dict({"velocity_scale": velocity_scale})
    return dm
