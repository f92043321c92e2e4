"""``steerable-sr info``: a model's layer table (:meth:`SuperResolutionNet.layer_table`) with its
parameter counts and output shapes, for a kind and preset or for the model of a checkpoint."""
from __future__ import annotations

import argparse

from . import UsageError
from .arguments import add_trust_option, json_object, positive_int

HELP = "print a model's parameter count and layer table"

#: The options that describe a model (refused with ``--ckpt``: the model is the checkpoint's), with
#: their defaults.
MODEL_OPTIONS = {"kind": "rsteer", "group": "Oh", "preset": "small", "frames": 3, "upscale": 4, "overrides": {}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..groups import GROUPS

    d = MODEL_OPTIONS
    parser.add_argument("--kind", help=f"model kind, steerable_sr.models.KINDS (default: {d['kind']})")
    parser.add_argument("--group", choices=GROUPS, help=f"symmetry group (default: {d['group']})")
    parser.add_argument("--preset", help=f"model widths, steerable_sr/presets/<preset>.yaml (default: {d['preset']})")
    parser.add_argument("--frames", type=positive_int, help=f"input frames (default: {d['frames']})")
    parser.add_argument("--upscale", type=positive_int, help=f"upscale factor (default: {d['upscale']})")
    parser.add_argument("--overrides", type=json_object,
                        help='JSON object of build_model options, e.g. \'{"hidden": 4}\' (default: none)')
    parser.add_argument("--input-size", type=positive_int, default=16, help="edge n of the input for the shapes")
    parser.add_argument("--ckpt", help="describe the model of a checkpoint instead")
    add_trust_option(parser)


def run(args: argparse.Namespace) -> int:
    given = [name for name in MODEL_OPTIONS if getattr(args, name) is not None]
    if args.ckpt:
        if given:
            raise UsageError(f"info: --{given[0]} describes a model; with --ckpt the model is the checkpoint's")
        from ..checkpoint import load_module

        net = load_module(args.ckpt, trust=args.trust_checkpoint).model
    else:
        from ..models import build_model

        options = {**MODEL_OPTIONS, **{name: getattr(args, name) for name in given}}
        net = build_model(options["kind"], group=options["group"], frames=options["frames"],
                          upscale=options["upscale"], preset=options["preset"], **options["overrides"])
    print(net.layer_table(input_size=args.input_size))
    return 0
