"""``steerable-sr info``: a model's layer table (:meth:`SuperResolutionNet.layer_table`) with its
parameter counts and output shapes, for a kind and preset or for the model of a checkpoint."""
from __future__ import annotations

import argparse

from .arguments import add_trust_option, json_object, positive_int

HELP = "print a model's parameter count and layer table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..groups import GROUPS

    parser.add_argument("--kind", default="rsteer", help="model kind (steerable_sr.models.KINDS)")
    parser.add_argument("--group", default="Oh", choices=GROUPS)
    parser.add_argument("--preset", default="small", help="model widths, steerable_sr/presets/<preset>.yaml")
    parser.add_argument("--frames", type=positive_int, default=3)
    parser.add_argument("--upscale", type=positive_int, default=4)
    parser.add_argument("--input-size", type=positive_int, default=16, help="edge n of the input for the shapes")
    parser.add_argument("--overrides", type=json_object, default={},
                        help='JSON object of build_model options, e.g. \'{"hidden": 4}\'')
    parser.add_argument("--ckpt", help="describe the model of a checkpoint instead")
    add_trust_option(parser)


def run(args: argparse.Namespace) -> int:
    if args.ckpt:
        from ..checkpoint import load_module

        net = load_module(args.ckpt, trust=args.trust_checkpoint).model
    else:
        from ..models import build_model

        net = build_model(args.kind, group=args.group, frames=args.frames, upscale=args.upscale,
                          preset=args.preset, **args.overrides)
    print(net.layer_table(input_size=args.input_size))
    return 0
