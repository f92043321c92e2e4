"""``steerable-sr info``: a model's layer table (:meth:`SuperResolutionNet.layer_table`) with its
parameter counts and output shapes, for a kind and preset or for the model of a checkpoint."""
from __future__ import annotations

import argparse
import json

from ..models import KINDS, build_model
from . import CLIError
from .predict import load_any


def run_info(args: argparse.Namespace) -> int:
    if args.ckpt:
        loaded = load_any(args.ckpt, trust=args.trust_checkpoint)
        if loaded.source != "checkpoint":
            raise CLIError("info --ckpt needs a training checkpoint (exported modules: see their .json)")
        net = loaded.net
    else:
        if args.kind not in KINDS:
            raise CLIError(f"unknown model kind {args.kind!r}; allowed values: {', '.join(KINDS)}")
        overrides = json.loads(args.overrides) if args.overrides else {}
        try:
            net = build_model(args.kind, group=args.group, frames=args.frames, upscale=args.upscale,
                              preset=args.preset, **overrides)
        except (TypeError, ValueError, KeyError) as exc:
            raise CLIError(f"cannot build model: {exc}")
    print(net.layer_table(input_size=args.input_size))
    return 0
