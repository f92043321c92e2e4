r"""``steerable-sr``: the registry of commands, the error handling and :func:`main`.

Commands::

    steerable-sr fit       --config configs/default.yaml [--model.kind cnn] [--trainer.max_epochs 5] ...
    steerable-sr validate  --config configs/default.yaml --ckpt_path CKPT
    steerable-sr test      --config configs/default.yaml --ckpt_path CKPT
    steerable-sr predict   MODEL INPUT OUTPUT [--downsample]       (MODEL: checkpoint or exported module)
    steerable-sr evaluate  MODEL --out DIR [--data PATH]            (report: metrics, plots, symmetry)
    steerable-sr export    CKPT OUT.pt2|OUT.onnx|OUT.pt             (network + metadata in one file)
    steerable-sr generate  OUT.h5 [--n 64] [--frames 20] ...        (simulated turbulence dataset)
    steerable-sr check     DATA                                     (a dataset's values: NaN / Inf)
    steerable-sr info      --kind rsteer [--preset small]           (parameter count, layer table)
    steerable-sr compare   [--config FILE] ...                      (steerable_sr.study)
    steerable-sr discover  [--config FILE] DATA ...                 (steerable_sr.study)

``fit`` / ``validate`` / ``test`` are Lightning's (:mod:`steerable_sr.cli.lightning`: YAML configs,
every Trainer option on the command line). Every other command is a module
``steerable_sr.cli.<command>`` (:data:`COMMANDS`) that defines

* ``HELP: str``: one line, shown in the list of commands and atop the command's help;
* ``add_arguments(parser: argparse.ArgumentParser) -> None``: its options;
* ``run(args: argparse.Namespace) -> int``: its work, returning the exit status.

A command module imports torch, escnn and lightning inside its functions, never at import time, so
``steerable-sr --help`` and argument errors are instant.

Errors in the input (unknown kind, bad value, missing file, checkpoint of another model, wrong input
resolution, existing output, unwritable output) print one ``steerable-sr: error: ...`` line and exit
with status 2 (arguments and config files) or 1 (everything else); outputs are written atomically
(:mod:`steerable_sr.io`), so nothing is overwritten by a failing command. Bugs show their traceback;
``STEERABLE_SR_DEBUG=1`` shows it for user errors too.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Iterator, NoReturn, Sequence

#: Lightning's commands (:mod:`steerable_sr.cli.lightning` parses their whole command line) and their help.
LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI; --help for every option)",
    "validate": "run the validation set on a checkpoint (LightningCLI)",
    "test": "run the test set on a checkpoint (LightningCLI)",
}
#: Every other command: the module that defines its ``HELP``, ``add_arguments`` and ``run``.
COMMANDS = {
    "predict": "steerable_sr.cli.predict",
    "evaluate": "steerable_sr.cli.evaluate",
    "export": "steerable_sr.cli.export",
    "generate": "steerable_sr.cli.generate",
    "check": "steerable_sr.cli.check",
    "info": "steerable_sr.cli.info",
    "compare": "steerable_sr.cli.compare",
    "discover": "steerable_sr.cli.discover",
}
#: Commands that never build a model (no escnn to quiet).
DATA_COMMANDS = ("generate", "check")

#: The exceptions that report a problem with the user's input: one error line, exit status 1.
#: (TypeError, KeyError and the like are bugs: they show their traceback.)
USER_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
               ValueError)
#: The same for exceptions of other packages, by class name (Lightning's Trainer options).
USER_ERROR_NAMES = ("MisconfigurationException",)

#: escnn's functions cached with a joblib ``Memory(verbose=2)``, which print a "[Memory] ... Loading"
#: line on every cache hit.
ESCNN_VERBOSE_CACHES = {"escnn.group.groups.octa": "_build_octa_irrep_picklable",
                        "escnn.group.groups.ico": "_build_ico_irrep_picklable"}


class CLIError(Exception):
    """A user-facing error: printed as one line; exit status :attr:`status`."""

    status = 1


class UsageError(CLIError):
    """An argument or a config file the parser rejects: one line, exit status 2 (no usage dump)."""

    status = 2


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like ``KeyboardInterrupt``, so temporary outputs are removed."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are :class:`UsageError` (one line naming the command) instead of a
    usage dump and ``SystemExit``."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


def quiet_escnn() -> None:
    """Silence the joblib lines of escnn's caches (:data:`ESCNN_VERBOSE_CACHES`); escnn's files are left
    as they are. Imports those escnn modules (a fraction of a second once torch is loaded)."""
    for module_name, function in ESCNN_VERBOSE_CACHES.items():
        getattr(importlib.import_module(module_name), function)._verbose = 0


def parser(command: str | None = None) -> ArgumentParser:
    """The parser of ``steerable-sr``, with the options of ``command`` (a key of :data:`COMMANDS`);
    without one, the list of commands (each command module is imported for its ``HELP``)."""
    p = ArgumentParser(prog="steerable-sr", description="Octahedral-equivariant super-resolution of 3D turbulence.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    for name in [command] if command in COMMANDS else COMMANDS:
        module = importlib.import_module(COMMANDS[name])
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if name == command:
            module.add_arguments(command_parser)
    return p


def _run(argv: list[str]) -> int:
    command = argv[0] if argv else None
    if command in LIGHTNING_COMMANDS:
        quiet_escnn()
        from .lightning import main as lightning_main

        return lightning_main(argv)
    p = parser(command)
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    if args.command not in DATA_COMMANDS:
        quiet_escnn()
    return importlib.import_module(COMMANDS[args.command]).run(args)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds(command: str | None) -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (the Lightning commands keep Lightning's
    own handling), so the atomic writers of :mod:`steerable_sr.io` remove their temporary files."""
    if command in LIGHTNING_COMMANDS or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``steerable-sr`` with ``argv`` (default: the process's arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _sigterm_unwinds(argv[0] if argv else None):
            return _run(argv)
    except SystemExit as exc:  # --help, and Lightning's own exits
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print("steerable-sr: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("steerable-sr: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as exc:
        if os.environ.get("STEERABLE_SR_DEBUG"):
            raise
        if isinstance(exc, (CLIError, *USER_ERRORS)) or type(exc).__name__ in USER_ERROR_NAMES:
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"steerable-sr: error: {message}", file=sys.stderr)
            return exc.status if isinstance(exc, CLIError) else 1
        raise
