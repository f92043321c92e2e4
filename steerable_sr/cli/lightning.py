"""``steerable-sr fit | validate | test``: Lightning's command line for
:class:`~steerable_sr.training.SuperResolutionModule` on :class:`~steerable_sr.data.dataset.TurbulenceDataModule`.

Every option of the module, the datamodule and the Trainer is on the command line or in a YAML
config (``configs/``). Added to Lightning's defaults: two checkpoints (the best by ``val/mae`` and
the latest, every epoch), a CSV logger under ``runs/``, and checks that fail before any work with
one clear line: a config file that is not valid YAML, a missing dataset, a checkpoint that is not
there or holds another model than the one asked for, a model whose frame count or upscale factor
the datamodule does not serve. A run that fails before writing a checkpoint removes the log
directory it created.
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from ..data.dataset import FACTOR, WINDOW, TurbulenceDataModule
from ..checkpoint import TRUST_OPTION, CheckpointReader
from ..training import CheckpointMismatchError, SuperResolutionModule, check_checkpoint_compatible
from . import CLIError
from .arguments import check_data_path

#: ``ckpt_path`` values Lightning resolves itself (no file to check).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class SteerableSRCLI(LightningCLI):
    """Lightning's command line, with every checkpoint read by :class:`CheckpointReader` (data only
    unless ``trust_checkpoint``), once."""

    def __init__(self, *args: Any, trust_checkpoint: bool = False, **kwargs: Any) -> None:
        self.checkpoint_reader = CheckpointReader(trust=trust_checkpoint)
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        raw = sys.argv[1:] if args is None else [str(a) for a in args]
        check_config_files(raw)
        self.command_line_model_keys = model_keys_on_command_line(raw)
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        # Two checkpoint callbacks: the best by a validation metric, and the latest (every epoch).
        # (Lightning's save_last only writes last.ckpt on epochs where a top-k save happened.)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/mae",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": False,
            "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({
            "last_checkpoint.monitor": None,
            "last_checkpoint.save_top_k": 1,
            "last_checkpoint.every_n_epochs": 1,
            "last_checkpoint.filename": "last",
            "last_checkpoint.enable_version_counter": False,
        })

    def _parse_ckpt_path(self) -> None:
        # Read the checkpoint (data only, once: the Trainer gets it from the reader) and take the
        # model section from it, as Lightning does. Refuse when the command line (any value, the
        # default included) or a config file (a value other than the default) asks for another
        # model than the checkpoint holds.
        sub = self.config.get("subcommand")
        cfg = self.config.get(sub) if sub else None
        path = cfg.get("ckpt_path") if cfg is not None else None
        if not path or path in SPECIAL_CKPT_PATHS:
            return
        checkpoint = self.checkpoint_reader.preload(path)
        requested = _as_dict(cfg.get("model"))
        defaults = _as_dict(self._subcommand_parsers[sub].get_defaults().get("model"))
        explicit = {k: v for k, v in requested.items()
                    if k in self.command_line_model_keys or defaults.get(k, object()) != v}
        try:
            check_checkpoint_compatible(checkpoint, explicit)
        except CheckpointMismatchError as exc:
            raise CLIError(f"{path}: {exc}")
        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "_instantiator"}
        self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.strategy.checkpoint_io = self.checkpoint_reader
        return trainer

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand, self.config)
        check_data_path(cfg.get("data").get("path"))
        model = _as_dict(cfg.get("model"))
        if model.get("frames", WINDOW) != WINDOW or model.get("upscale", FACTOR) != FACTOR:
            raise CLIError(f"the turbulence datamodule serves {WINDOW} frames and {FACTOR}x super-resolution; "
                           f"got model.frames={model.get('frames')}, model.upscale={model.get('upscale')}")

    def _run_subcommand(self, subcommand: str) -> None:
        log_dirs = [Path(logger.log_dir) for logger in self.trainer.loggers if logger.log_dir]
        created = [d for log_dir in log_dirs for d in (log_dir, *log_dir.parents[:2]) if not d.exists()]
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.is_global_zero:
                for log_dir in log_dirs:
                    remove_failed_log_dir(log_dir, created)
            raise

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        for cb in self.trainer.checkpoint_callbacks:
            label = "best checkpoint" if cb.monitor else "last checkpoint"
            print(f"{label}: {cb.best_model_path or '-'}")


def _as_dict(ns: Namespace | None) -> dict[str, Any]:
    return {} if ns is None else ns.as_dict()


def model_keys_on_command_line(argv: Sequence[str]) -> set[str]:
    """The ``--model.KEY`` options given in ``argv`` (``--model.kind cnn`` or ``--model.kind=cnn``)."""
    return {arg.removeprefix("--model.").split("=", 1)[0] for arg in argv if arg.startswith("--model.")}


def check_config_files(argv: Sequence[str]) -> None:
    """Refuse a ``--config`` / ``-c`` file of ``argv`` that is not valid YAML, naming the file and the
    place (the parser's own message names neither)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        else:
            continue
        if not os.path.isfile(path):
            raise CLIError(f"config file not found: {path}")
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise CLIError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def remove_failed_log_dir(log_dir: Path, created: Sequence[Path]) -> None:
    """After a failed run: remove ``log_dir`` (``runs/NAME/version_N``: the run's config, hparams and
    metrics files) if the run created it and it holds no checkpoint, then its two parents if the run
    created them and they are empty. Nothing that existed before the run is touched."""
    if log_dir in created and log_dir.is_dir() and not any(log_dir.rglob("*.ckpt")):
        shutil.rmtree(log_dir)
    for parent in log_dir.parents[:2]:
        if parent in created and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def main(argv: Sequence[str]) -> int:
    """Run the Lightning command line; ``argv`` starts with the subcommand (fit, validate, test).
    ``--trust-checkpoint`` anywhere in ``argv`` lets the checkpoint of ``--ckpt_path`` hold more
    than data (:func:`steerable_sr.checkpoint.read_checkpoint`)."""
    trust = TRUST_OPTION in argv
    args: list[str] | None = [arg for arg in argv if arg != TRUST_OPTION]
    if args == sys.argv[1:]:
        args = None  # parse the real command line (LightningCLI warns when given both)
    else:
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    SteerableSRCLI(
        SuperResolutionModule,
        TurbulenceDataModule,
        trust_checkpoint=trust,
        args=args,
        seed_everything_default=0,
        trainer_defaults={
            "accelerator": "auto",
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            "log_every_n_steps": 10,
            "deterministic": False,
        },
        parser_kwargs={"prog": "steerable-sr", "description": "steerable-sr: train and evaluate. "
                       f"{TRUST_OPTION}: read a --ckpt_path that holds more than tensors and plain data "
                       "(refused by default: reading it runs code from the file); only for files you made"},
        save_config_kwargs={"overwrite": False},
    )
    return 0
