"""The options shared by ``steerable-sr compare`` and ``steerable-sr discover``: the settings of a
:class:`~steerable_sr.study.config.StudyConfig`, from the command line, from ``--config FILE`` (the
YAML of ``fit``: its ``model``, ``data`` and ``trainer`` sections, :data:`CONFIG_KEYS`) and from the
study's defaults, in that order of precedence.

Every option that a config file can set is declared with ``default=argparse.SUPPRESS``: an option
absent from the command line is absent from the parsed arguments, so the file's value, then the
default, takes its place (:func:`study_settings`).
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, Mapping

from . import UsageError
from .arguments import json_object

#: The keys of a ``fit`` config file that set a study setting: (section, key) -> StudyConfig field.
#: fit's other keys (``model.kind``: the study trains its ``--kinds``; ``data.num_workers``,
#: ``trainer.logger``, the checkpoint sections, ``seed_everything``: the study's ``--seeds``) are
#: accepted and not used.
CONFIG_KEYS = {
    ("model", "group"): "group", ("model", "preset"): "preset", ("model", "model_overrides"): "model_overrides",
    ("model", "lr"): "lr", ("model", "weight_decay"): "weight_decay", ("model", "gamma"): "gamma",
    ("model", "penalty_weight"): "penalty_weight",
    ("model", "test_equivariance_elements"): "test_equivariance_elements",
    ("data", "path"): "data", ("data", "crop"): "crop", ("data", "batch_size"): "batch_size",
    ("data", "crops_per_window"): "crops_per_window",
    ("trainer", "max_epochs"): "max_epochs", ("trainer", "max_steps"): "max_steps",
    ("trainer", "limit_train_batches"): "limit_train_batches", ("trainer", "limit_val_batches"): "limit_val_batches",
    ("trainer", "limit_test_batches"): "limit_test_batches", ("trainer", "accelerator"): "accelerator",
    ("trainer", "devices"): "devices", ("trainer", "precision"): "precision",
}


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "all") else int(text)


def _limit(text: str) -> int | float | None:
    if text.lower() in ("none", "null"):
        return None
    return float(text) if "." in text else int(text)


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def add_study_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """The options of both studies; ``defaults`` (StudyConfig fields) are shown in the help."""
    from ..groups import GROUPS

    def option(flag: str, dest: str, text: str, **kwargs: Any) -> None:
        parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS,
                            help=f"{text} (default: {defaults[dest]!r})", **kwargs)

    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="a YAML config of `steerable-sr fit` (e.g. configs/default.yaml): its model, data and "
                             "trainer sections set the options below; the command line wins; several files merge "
                             "left to right")
    option("--out", "out", "output directory")
    option("--seeds", "seeds", "training seeds", type=int, nargs="+")
    option("--group", "group", "symmetry group", choices=GROUPS)
    option("--preset", "preset", "model widths, steerable_sr/presets/<preset>.yaml")
    option("--overrides", "model_overrides", 'JSON object of build_model options for every kind, e.g. '
           '\'{"hidden": 1}\'', type=json_object)
    option("--crop", "crop", "high-res crop edge (multiple of 4; none = whole)", type=_opt_int)
    option("--batch-size", "batch_size", "batch size", type=int)
    option("--crops-per-window", "crops_per_window", "random crops per window and epoch", type=int)
    option("--epochs", "max_epochs", "training epochs", type=int)
    option("--max-steps", "max_steps", "stop after this many steps (-1: off)", type=int)
    for split in ("train", "val", "test"):
        option(f"--limit-{split}-batches", f"limit_{split}_batches",
               f"{split} batches per epoch (an int, a fraction, or none = all)", type=_limit)
    option("--lr", "lr", "Adam learning rate", type=float)
    option("--weight-decay", "weight_decay", "Adam weight decay", type=float)
    option("--gamma", "gamma", "StepLR decay per epoch", type=float)
    option("--penalty-weight", "penalty_weight", "weight of the relaxed kinds' equivariance penalty", type=float)
    option("--equivariance-elements", "test_equivariance_elements",
           "group elements for the test equivariance error (none = all)", type=_opt_int)
    option("--accelerator", "accelerator", "cpu, gpu, auto")
    option("--devices", "devices", "devices per run", type=_devices)
    option("--precision", "precision", "32-true, bf16-mixed, ...")
    option("--threads", "threads", "torch CPU threads (none = torch's default)", type=_opt_int)
    parser.add_argument("--progress", action="store_true", default=argparse.SUPPRESS,
                        help="show Lightning's progress bars")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="replace the results of an earlier study in --out (refused otherwise, before any "
                             "training)")


def read_config_file(path: str) -> dict[str, Any]:
    """The study settings a ``fit`` config file sets (:data:`CONFIG_KEYS`). A file that is not a YAML
    mapping, or a key of the model, data or trainer section that ``fit`` does not know, is refused
    naming the file and the key."""
    import inspect

    import lightning.pytorch as pl
    import yaml

    from ..data.dataset import TurbulenceDataModule
    from ..training import SuperResolutionModule

    if not Path(path).is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a mapping with sections model, data, trainer; got {type(content).__name__}")
    accepted = {"model": SuperResolutionModule.__init__, "data": TurbulenceDataModule.__init__,
                "trainer": pl.Trainer.__init__}
    settings: dict[str, Any] = {}
    for section, function in accepted.items():
        values = content.get(section) or {}
        if not isinstance(values, dict):
            raise UsageError(f"{path}: section {section}: expected a mapping, got {values!r}")
        known = [name for name in inspect.signature(function).parameters if name != "self"]
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
                raise UsageError(f"{path}: {section}.{key}: not an option of `steerable-sr fit`{hint}")
            if (section, key) in CONFIG_KEYS:
                settings[CONFIG_KEYS[section, key]] = value
    return settings


def study_settings(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The study's settings: ``defaults``, overridden by the ``--config`` files (left to right), then
    by the options given on the command line."""
    settings = dict(defaults)
    for path in args.config:
        settings.update(read_config_file(path))
    settings.update({k: v for k, v in vars(args).items() if k in defaults})
    return settings


def study_defaults(**changes: Any) -> dict[str, Any]:
    """The fields of a default :class:`~steerable_sr.study.config.StudyConfig`, with ``changes``."""
    import dataclasses

    from ..study.config import StudyConfig

    return {**{f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
               for f in dataclasses.fields(StudyConfig)}, **changes}
