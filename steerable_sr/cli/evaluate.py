"""``steerable-sr evaluate``: the report (:mod:`steerable_sr.report`) of a checkpoint or an export on a
dataset split. The model file is read once (:func:`steerable_sr.export.load_for_inference`): the
network, its training units and its datamodule's settings all come from it. An export holds no
relaxed weights: its report has no symmetry section, and says so."""
from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import CLIError
from .arguments import add_trust_option, check_data_path, positive_int

if TYPE_CHECKING:
    from ..data.dataset import TurbulenceDataModule

HELP = "write an evaluation report (metrics table, spectra and slice plots, symmetry report)"
#: The line an export's report of a relaxed kind holds instead of the symmetry report.
NO_SYMMETRY_NOTE = ("not reported: an export holds no relaxed weights; evaluate the checkpoint for the symmetry "
                    "report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="training checkpoint (.ckpt) or export (.pt2, .onnx, .pt)")
    parser.add_argument("--data", help="dataset path (default: the one the model was trained on)")
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
    from ..devices import check_device
    from ..export import load_for_inference
    from ..io import check_writable
    from ..models import RELAXED_KINDS
    from ..symmetry import symmetry_report

    check_device(args.device)
    out = Path(args.out)
    report.check_report_destination(out, args.overwrite)
    check_writable(out / "metrics.json")
    model = load_for_inference(args.model, args.device, trust=args.trust_checkpoint)
    meta = model.meta
    dm = datamodule_for(meta.get("datamodule") or {}, model.velocity_scale, args.data, args.batch_size,
                        args.num_workers)
    dm.prepare_data()
    dm.setup("test" if args.split == "test" else "validate")
    loader = dm.test_dataloader() if args.split == "test" else dm.val_dataloader()
    result = report.evaluate_model(model.net, loader, group=meta["group"], upscale=model.upscale,
                                   equivariance_elements=args.equivariance_elements, device=args.device,
                                   max_batches=args.max_batches,
                                   divergence_periodic=bool(meta.get("divergence_periodic")))
    relaxed = meta["kind"] in RELAXED_KINDS
    symmetry = symmetry_report(model.net) if relaxed and model.source == "checkpoint" else None
    info = {"kind": meta["kind"], "group": meta["group"], "preset": meta.get("preset"),
            "model": f"{os.path.abspath(args.model)} ({model.source})",
            "data": os.path.abspath(args.data) if args.data else "(from the model file)", "split": args.split,
            "parameters": meta["parameters"]}
    if relaxed and symmetry is None:
        info["symmetry"] = NO_SYMMETRY_NOTE
    path = report.write_report(out, result, info, symmetry, overwrite=args.overwrite)
    m = result["metrics"]
    print(f"wrote {path}: MAE {m['model']['mae']:.4g} (trilinear {m['trilinear']['mae']:.4g}), "
          f"equivariance error {result['equivariance']['max']:.3g}")
    return 0


def datamodule_for(settings: Mapping[str, Any], velocity_scale: float, data: str | None, batch_size: int | None,
                   num_workers: int) -> TurbulenceDataModule:
    """The datamodule a model was trained with (``settings``: its saved hyperparameters, from the
    checkpoint or the export's metadata), pointed at ``data`` when given, normalised with the
    training data's ``velocity_scale`` (the network's units)."""
    from ..data.dataset import TurbulenceDataModule

    hp = dict(settings)
    if data:
        check_data_path(data)
        hp["path"] = data
    if not hp.get("path"):
        raise CLIError("no data: pass --data PATH (the model file records no dataset)")
    check_data_path(hp["path"], "pass --data PATH")
    if batch_size:
        hp["batch_size"] = batch_size
    hp["num_workers"] = num_workers
    params = inspect.signature(TurbulenceDataModule.__init__).parameters
    dm = TurbulenceDataModule(**{k: v for k, v in hp.items() if k in params})
    if hp.get("normalize", True):
        dm.load_state_dict({"velocity_scale": velocity_scale})
    return dm
