"""``steerable-sr compare``: train model kinds with matched budgets on the same data and seeds
(:func:`steerable_sr.study.compare.run_compare`); the options of :mod:`steerable_sr.cli.study`."""
from __future__ import annotations

import argparse
from pathlib import Path

from .study import add_study_arguments, study_defaults, study_settings

HELP = "train model kinds on the same data and seeds; table + plots (steerable_sr.study)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = study_defaults()
    parser.description = ("Train model kinds with matched budgets on the same data and seeds; write a table "
                          "(results.md/json: parameters, build and step time, test metrics, mean ± std over seeds) "
                          "and plots (val_curves.png, spectra.png) to --out.")
    parser.add_argument("--data", default=argparse.SUPPRESS,
                        help=f"dataset (.h5 from `steerable-sr generate`, or JHTDB cutouts) "
                             f"(default: {defaults['data']!r})")
    parser.add_argument("--kinds", nargs="+", default=argparse.SUPPRESS,
                        help="model kinds: cnn gcnn rgcnn steer rsteer, gcnn_separable rgcnn_separable, and a relaxed "
                             "kind held equivariant: rgcnn_held rsteer_held rgcnn_separable_held "
                             f"(default: {' '.join(defaults['kinds'])})")
    parser.add_argument("--no-build-time", dest="build_time", action="store_false", default=argparse.SUPPRESS,
                        help="skip the cold/warm build-time measurement")
    parser.add_argument("--from-json", nargs="+", metavar="RESULTS_JSON",
                        help="only render the table and plots of saved (possibly partial) results.json files into "
                             "--out, merging their runs (same settings, other kinds or seeds)")
    add_study_arguments(parser, defaults)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..study.compare import render_from_json, run_compare
    from ..study.config import StudyConfig

    settings = study_settings(args, study_defaults())
    check_writable(Path(settings["out"]) / "results.json")
    if args.from_json:
        render_from_json(args.from_json, settings["out"], overwrite=settings["overwrite"])
    else:
        run_compare(StudyConfig(**settings))
    print(f"[compare] wrote {settings['out']}/results.md, results.json, val_curves.png, spectra.png")
    return 0
