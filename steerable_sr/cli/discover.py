"""``steerable-sr discover``: train the relaxed kinds with an equivariance penalty on each dataset and
read out the symmetry they kept (:func:`steerable_sr.study.discover.run_discover`); the options of
:mod:`steerable_sr.cli.study`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import UsageError
from .study import add_study_arguments, study_defaults, study_settings

HELP = "train relaxed kinds and report the symmetry they kept (steerable_sr.study)"


def discover_defaults() -> dict[str, Any]:
    """The study's defaults for discovery: narrow models without the trilinear skip
    (:data:`~steerable_sr.study.config.DISCOVERY_OVERRIDES`), the relaxed kinds, and the same budget
    on every dataset whatever its length (12 epochs of 20 batches of 4 crops). The datasets are the
    command's arguments (``data``: ``data.path`` of a config file when there are none)."""
    from ..models import RELAXED_KINDS
    from ..study.config import DISCOVERY_OVERRIDES

    return study_defaults(data=None, out="runs/discover", kinds=RELAXED_KINDS, seeds=(0, 1, 2), max_epochs=12,
                          crops_per_window=4, limit_train_batches=20, limit_val_batches=8, limit_test_batches=8,
                          model_overrides=DISCOVERY_OVERRIDES, penalty_weight=1e-3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = discover_defaults()
    parser.description = ("Train relaxed kinds with an equivariance penalty on each dataset and write the symmetry "
                          "reports of the learned relaxed weights (discover.md/json).")
    parser.add_argument("datasets", nargs="*",
                        help="datasets, e.g. data/aniso_n32.h5 data/iso_n32_long.h5 (default: data.path of --config)")
    parser.add_argument("--kinds", nargs="+", default=argparse.SUPPRESS,
                        help="relaxed kinds (and <kind>_separable where allowed) "
                             f"(default: {' '.join(defaults['kinds'])})")
    parser.add_argument("--from-json", nargs="+", metavar="DISCOVER_JSON",
                        help="only merge saved discover.json files (same settings) and render their summary and "
                             "reports into --out")
    parser.add_argument("--control", action="store_true",
                        help="also train on batches of every generated dataset symmetrised by the group its forcing "
                             "keeps (O_h, D4h about the axis, D2h for Kolmogorov): a control, which also calibrates "
                             "the noise of every run's read-out")
    parser.add_argument("--score-blocks", type=int, default=0, metavar="B",
                        help="also run the score test of each plain run (steerable_sr.score_test): the training "
                             "data's loss gradient on the relaxed weights over B time blocks of the record, which "
                             "finds breaking the penalty holds at zero; blocks must outlast the flow's correlation "
                             "time (8 for the 118- and 478-frame records, docs/results.md) (default: 0, none)")
    parser.add_argument("--tol", type=float, default=None,
                        help="strict stabilizer tolerance (default: the robust criterion of steerable_sr.symmetry)")
    parser.add_argument("--augment", default=argparse.SUPPRESS,
                        help="apply a random element of this named subgroup of O_h (e.g. Oh, O, D2h, 'D4h, axis x') "
                             "to every training batch (a symmetrised control)")
    add_study_arguments(parser, defaults)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..score_test import MIN_BLOCKS
    from ..study.config import StudyConfig
    from ..study.discover import render_discovery_from_json, run_discover

    settings = study_settings(args, discover_defaults())
    configured = settings.pop("data")
    datasets = args.datasets or ([configured] if isinstance(configured, str) else list(configured or []))
    if args.from_json and args.datasets:
        raise UsageError("discover: give either datasets to train on or --from-json, not both")
    if not datasets and not args.from_json:
        raise UsageError("discover: give the datasets to train on (or --from-json)")
    if args.score_blocks != 0 and args.score_blocks < MIN_BLOCKS:
        raise UsageError(f"discover: --score-blocks must be 0 (no score test) or at least {MIN_BLOCKS}, "
                         f"got {args.score_blocks}")
    if args.score_blocks and args.from_json:
        raise UsageError("discover: --score-blocks needs training (the data's gradients), not --from-json")
    check_writable(Path(settings["out"]) / "discover.json")
    if args.from_json:
        render_discovery_from_json(args.from_json, settings["out"], overwrite=settings["overwrite"])
        print(f"[discover] wrote {settings['out']}/discover.md, discover.json")
        return 0
    cfg = StudyConfig(**settings)
    result = run_discover(datasets, cfg, kinds=cfg.kinds, penalty_weight=cfg.penalty_weight, tol=args.tol,
                          control=args.control, score_blocks=args.score_blocks)
    print((Path(cfg.out) / "discover.md").read_text())
    print(f"[discover] wrote {cfg.out}/discover.md, discover.json ({len(result['results'])} runs)")
    return 0
