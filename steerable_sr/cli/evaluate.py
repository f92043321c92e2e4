"""``steerable-sr evaluate``: a checkpoint's report on a dataset split (:mod:`steerable_sr.report`)."""
from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path

from .. import report
from ..data.dataset import TurbulenceDataModule
from ..models import RELAXED_KINDS
from ..symmetry import symmetry_report
from ..checkpoint import module_from_checkpoint, read_checkpoint
from . import CLIError
from ..devices import check_device


def run_evaluate(args: argparse.Namespace) -> int:
    check_device(args.device)
    out = Path(args.out)
    report.check_report_destination(out, args.overwrite)
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


def datamodule_for(checkpoint: dict, velocity_scale: float, data: str | None, batch_size: int | None,
                   num_workers: int) -> TurbulenceDataModule:
    """The datamodule the checkpoint was trained with (its saved hyperparameters), pointed at ``data``
    when given, normalised with the training data's ``velocity_scale`` (the network's units)."""
    hp = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if data:
        if not os.path.exists(data):
            raise CLIError(f"data path not found: {data}")
        hp["path"] = data
    if not hp.get("path"):
        raise CLIError("no data: pass --data PATH (the checkpoint does not record a dataset)")
    if not os.path.exists(os.fspath(hp["path"])):
        raise CLIError(f"data path not found: {hp['path']} (pass --data PATH)")
    if batch_size:
        hp["batch_size"] = batch_size
    hp["num_workers"] = num_workers
    params = inspect.signature(TurbulenceDataModule.__init__).parameters
    hp = {k: v for k, v in hp.items() if k in params}
    try:
        dm = TurbulenceDataModule(**hp)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"cannot build the datamodule: {exc}")
    if hp.get("normalize", True):
        dm.load_state_dict({"velocity_scale": velocity_scale})
    return dm
