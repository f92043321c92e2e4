"""``steerable-sr export``: a checkpoint's network as a file that runs without escnn or this package
(:func:`steerable_sr.export.write_export`; the format follows the suffix of ``OUT``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .arguments import add_trust_option, check_output

HELP = "export a checkpoint's network: OUT.pt2 (torch.export, recommended), OUT.onnx (ONNX) or OUT.pt (TorchScript)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"{HELP}. The file runs without escnn or steerable_sr (torch.export.load, onnxruntime, "
                          "torch.jit.load) and holds its metadata (metadata.json: kind, frames, upscale, training "
                          "input size, velocity scale, ...); it is loaded back and compared with the network before "
                          "it is written.")
    parser.add_argument("ckpt", help="training checkpoint (.ckpt)")
    parser.add_argument("out", help="export file: .pt2 (ExportedProgram), .onnx (ONNX; needs the extra 'export') "
                                    "or .pt (TorchScript, legacy)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_trust_option(parser)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import module_from_checkpoint, read_checkpoint
    from ..export import export_format, write_export

    out = Path(args.out)
    fmt = export_format(out)
    check_output(out, args.overwrite, inputs=[args.ckpt])
    checkpoint = read_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    module = module_from_checkpoint(checkpoint, source=args.ckpt)
    meta = write_export(module, out, source=os.path.abspath(args.ckpt),
                        datamodule=checkpoint.get("datamodule_hyper_parameters"), overwrite=True)
    print(f"wrote {out} ({fmt.name}, {meta['kind']}, {meta['parameters']} parameters)")
    return 0
