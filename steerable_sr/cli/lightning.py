"""``steerable-sr fit | validate | test``: Lightning's command line for
:class:`~steerable_sr.training.SuperResolutionModule` on :class:`~steerable_sr.data.dataset.TurbulenceDataModule`.

Every option of the module, the datamodule and the Trainer is on the command line or in a YAML
config (``configs/``). Added to Lightning's defaults: two checkpoints (the best by ``val/mae`` and
the latest, every epoch), a CSV logger under ``runs/``, checkpoints read as data only
(:class:`~steerable_sr.checkpoint.CheckpointReader`), and checks that fail before any work with one
line (exit status 2 for what the parser rejects, 1 otherwise): a config file that is not valid YAML
or holds an unknown key or a bad value (named with the file and the key, :func:`parse_error`), a
missing dataset, a checkpoint that is not there or that contradicts a model option given, a model
whose frame count or upscale factor the datamodule does not serve, a ``fit`` that would train
nothing, a log folder that cannot be written. A run that fails before writing a checkpoint removes
the log directory it created.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..checkpoint import TRUST_OPTION, CheckpointReader
from ..data.dataset import FACTOR, WINDOW, TurbulenceDataModule
from ..io import check_writable
from ..training import CheckpointMismatchError, SuperResolutionModule, check_checkpoint_compatible, quiet_lightning
from . import CLIError, UsageError
from .arguments import check_data_path

#: ``ckpt_path`` values Lightning resolves itself (no file to check).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class ParseError(argparse.ArgumentError):
    """What Lightning's parser rejects (its message), raised instead of a usage dump and an exit (as
    jsonargparse does with ``exit_on_error=False``)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class Parser(LightningArgumentParser):
    """Lightning's parser, whose errors are :class:`ParseError` (turned into one line by
    :func:`parse_error`)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise ParseError(message)


class SteerableSRCLI(LightningCLI):
    """Lightning's command line, with every checkpoint read by :class:`CheckpointReader` (data only
    unless ``trust_checkpoint``), once; parse errors as one line (:func:`parse_error`)."""

    def __init__(self, *args: Any, trust_checkpoint: bool = False, **kwargs: Any) -> None:
        self.checkpoint_reader = CheckpointReader(trust=trust_checkpoint)
        self.checkpoint: dict[str, Any] | None = None
        super().__init__(*args, parser_class=Parser, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        raw = sys.argv[1:] if args is None else [str(a) for a in args]
        config_files = check_config_files(raw)
        self.command_line_model_keys = model_keys_on_command_line(raw)
        try:
            super().parse_arguments(parser, args)
        except ParseError as exc:
            raise UsageError(parse_error(str(exc), raw, config_files, self._accepted_keys)) from None

    def _accepted_keys(self, subcommand: str) -> list[str]:
        return list(self._subcommand_parsers[subcommand].get_defaults().keys())

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
        # Lightning's step between parsing and seeding: the model section from the checkpoint, then
        # every check of the request, so that a refused run prints its one error line and nothing else.
        sub = self.config.get("subcommand")
        if not sub:
            return
        path = self.config[sub].get("ckpt_path")
        if path and path not in SPECIAL_CKPT_PATHS:
            self._take_model_from_checkpoint(sub, path)
        cfg = self.config[sub]
        check_data_path(cfg.get("data").get("path"))
        model = _as_dict(cfg.get("model"))
        if model.get("frames", WINDOW) != WINDOW or model.get("upscale", FACTOR) != FACTOR:
            raise CLIError(f"the turbulence datamodule serves {WINDOW} frames and {FACTOR}x super-resolution; "
                           f"got model.frames={model.get('frames')}, model.upscale={model.get('upscale')}")
        if sub == "fit":
            check_trains_something(_as_dict(cfg.get("trainer")), self.checkpoint, path)

    def _take_model_from_checkpoint(self, sub: str, path: str) -> None:
        """Read the checkpoint (data only, once: the Trainer gets it from the reader) and take the model
        section from it, as Lightning does. Refuse when the command line (any value, the default
        included) or a config file (a value other than the default) asks for a model option the
        checkpoint contradicts."""
        self.checkpoint = checkpoint = self.checkpoint_reader.preload(path)
        requested = _as_dict(self.config[sub].get("model"))
        defaults = _as_dict(self._subcommand_parsers[sub].get_defaults().get("model"))
        explicit = {k: v for k, v in requested.items()
                    if k in self.command_line_model_keys or defaults.get(k, object()) != v}
        try:
            check_checkpoint_compatible(checkpoint, explicit)
        except CheckpointMismatchError as exc:
            raise CLIError(f"{path}: {exc}; with --ckpt_path the model is the checkpoint's: leave these options "
                           "out") from None
        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "_instantiator"}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except ParseError as exc:
            raise CLIError(f"{path}: hyperparameters that {sub} does not accept: {' '.join(str(exc).split())}"
                           ) from None

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.strategy.checkpoint_io = self.checkpoint_reader
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        log_dirs = [Path(logger.log_dir) for logger in self.trainer.loggers if logger.log_dir]
        for log_dir in log_dirs or [Path(self.trainer.default_root_dir)]:
            check_writable(log_dir / "config.yaml")
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


def check_trains_something(trainer: dict[str, Any], checkpoint: dict[str, Any] | None, ckpt_path: str | None) -> None:
    """Refuse a ``fit`` that would train nothing: ``max_epochs``, ``max_steps`` or
    ``limit_train_batches`` 0, or a checkpoint to resume that has already trained the epochs or
    steps asked for (Lightning would end at once, keep a run folder with only its configs and report
    the old checkpoints as this run's)."""
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(key) == 0:
            raise CLIError(f"--trainer.{key} 0 trains nothing")
    if checkpoint is None:
        return
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    epochs = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("total", {}).get("processed")
    if max_epochs is not None and max_epochs > 0 and epochs is not None and epochs >= max_epochs:
        raise CLIError(f"{ckpt_path} has trained {epochs} epoch{'s' * (epochs != 1)}; --trainer.max_epochs "
                       f"{max_epochs} trains nothing more: pass a larger --trainer.max_epochs to continue")
    steps = checkpoint.get("global_step")
    if max_steps is not None and max_steps > 0 and steps is not None and steps >= max_steps:
        raise CLIError(f"{ckpt_path} has trained {steps} steps; --trainer.max_steps {max_steps} trains nothing "
                       f"more: pass a larger --trainer.max_steps to continue")


def parse_error(message: str, argv: Sequence[str], config_files: Sequence[str],
                accepted_keys: Callable[[str], list[str]]) -> str:
    """One line for a message of Lightning's parser: where the value came from (the config file that
    sets the key, or the command-line option), the key, and what is wrong (for an unknown key, the
    closest accepted one). ``accepted_keys(subcommand)`` lists the keys of a subcommand."""
    unrecognized = re.match(r"unrecognized arguments: --([\w.-]+)", message)
    key_match = re.search(r"Parser key \"([^\"]+)\"", message) or re.search(r"option '([^']+)'", message)
    if unrecognized is not None and argv and argv[0] in ("fit", "validate", "test"):
        key, subcommand = unrecognized.group(1), argv[0]
    elif key_match is not None:
        key, subcommand = key_match.group(1), re.search(r"Subcommand '(\w+)' does not accept option", message)
        subcommand = subcommand and subcommand.group(1)
    else:
        return " ".join(message.split())
    if subcommand:
        close = difflib.get_close_matches(key, accepted_keys(subcommand), n=1)
        text = f"not an option of `steerable-sr {subcommand}`" + (f" (did you mean {close[0]}?)" if close else "")
    else:
        text = _what_is_wrong(message)
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") or arg.startswith(f"--{key}.") for arg in argv):
        return f"--{key}: {text}"
    source = next((path for path in reversed(config_files) if _sets_key(path, key)), None)
    return f"{source}: {key}: {text}" if source else f"{key}: {text}"


def _what_is_wrong(message: str) -> str:
    """'expected a float, got 'fast'' from jsonargparse's several-line message on a value."""
    nested = re.search(r"Option '([^']+)' is not accepted", message)
    if nested:
        return f"option {nested.group(1)!r} is not accepted"
    given = re.search(r"Given value: (.*)", message) or re.search(r"Got value: (.*)", message)
    types = re.search(r"Subtypes: \[(.*)\]", message) or re.search(r"Expected an? (.+?)\. Got value", message)
    if given is None or types is None:
        return " ".join(message.split())
    names = [_type_name(t) for t in re.findall(r"<class '[^']+'>|typing\.Literal\[[^\]]*\]|[\w.]+\[[^\]]*\]",
                                               types.group(1))] or [types.group(1)]
    return f"expected {' or '.join(names)}, got {given.group(1).strip()!r}"


def _type_name(text: str) -> str:
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    name = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return {"int": "an int", "float": "a float", "str": "a string", "bool": "true or false", "NoneType": "null",
            "dict": "a mapping"}.get(name.split("[")[0], name)


def _sets_key(path: str, key: str) -> bool:
    """Whether the YAML file at ``path`` sets the dotted ``key``."""
    node: Any = yaml.safe_load(Path(path).read_text())
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_config_files(argv: Sequence[str]) -> list[str]:
    """The ``--config`` / ``-c`` files of ``argv``; refuse one that is missing or not valid YAML,
    naming the file and the place (the parser's own message names neither)."""
    files = []
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
        files.append(path)
    return files


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
    quiet_lightning()
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
