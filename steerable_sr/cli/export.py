"""``steerable-sr export``: a checkpoint's network as a file that runs without escnn or this package
(:func:`steerable_sr.export.write_export`; the format follows the suffix of ``OUT``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import CLIError
from .arguments import add_trust_option, check_output

HELP = "export a checkpoint's network as a TorchScript module (+ metadata json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"{HELP}: OUT.pt is loadable with torch.jit.load alone (no escnn, no steerable_sr); "
                          "metadata goes to OUT with suffix .json and inside the module (extra file metadata.json).")
    parser.add_argument("ckpt", help="training checkpoint (.ckpt)")
    parser.add_argument("out", help="export file (.pt: TorchScript)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing OUT and OUT.json")
    add_trust_option(parser)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_module
    from ..export import export_format, metadata_path, write_export

    out = Path(args.out)
    export_format(out)
    meta_path = metadata_path(out)
    if meta_path == out:
        raise CLIError(f"the export file needs a suffix other than .json (got {out})")
    for path in (out, meta_path):
        check_output(path, args.overwrite, inputs=[args.ckpt])
    module = load_module(args.ckpt, trust=args.trust_checkpoint)
    meta = write_export(module, out, source=os.path.abspath(args.ckpt), overwrite=True)
    print(f"wrote {out} and {meta_path} ({meta['kind']}, {meta['parameters']} parameters)")
    return 0
