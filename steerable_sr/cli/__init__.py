r"""``steerable-sr``: the one command-line entry point (``main``), its commands and their arguments.

Subcommands::

    steerable-sr fit       --config configs/default.yaml [--model.kind cnn] [--trainer.max_epochs 5] ...
    steerable-sr validate  --config configs/default.yaml --ckpt_path CKPT
    steerable-sr test      --config configs/default.yaml --ckpt_path CKPT
    steerable-sr predict   MODEL INPUT OUTPUT [--downsample]       (MODEL: checkpoint or exported module)
    steerable-sr evaluate  CKPT --data PATH --out DIR               (report: metrics, plots, symmetry)
    steerable-sr export    CKPT OUT                                 (TorchScript + OUT.json metadata)
    steerable-sr generate  ...                                      (steerable_sr.data.generate)
    steerable-sr info      --kind rsteer [--preset small]           (parameter count, layer table)
    steerable-sr compare   ...                                      (steerable_sr.study)
    steerable-sr discover  ...                                      (steerable_sr.study)

``fit``/``validate``/``test`` are Lightning's (:mod:`steerable_sr.cli.lightning`: YAML configs in
``configs/``, every Trainer option on the command line); ``generate``, ``compare`` and ``discover``
parse their own arguments too. The arguments of the others are defined here, their work in
:mod:`~steerable_sr.cli.predict` (predict, export), :mod:`~steerable_sr.cli.evaluate` and
:mod:`~steerable_sr.cli.info`.

Errors in the input (unknown kind, bad value, missing file, checkpoint of another model, wrong input
resolution, existing output) print one ``steerable-sr: error: ...`` line and exit with status 2
(argument parsing) or 1 (everything else); outputs are written atomically
(:mod:`steerable_sr.io`), so nothing is overwritten by a failing command. Set
``STEERABLE_SR_DEBUG=1`` for tracebacks.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

COMMANDS = {
    "fit": "train a model (LightningCLI; --help for every option)",
    "validate": "run the validation set on a checkpoint (LightningCLI)",
    "test": "run the test set on a checkpoint (LightningCLI)",
    "predict": "super-resolve a JHTDB-layout HDF5 file or a saved tensor (.pt)",
    "evaluate": "write an evaluation report (metrics table, spectra and slice plots, symmetry report)",
    "export": "export a checkpoint's network as a TorchScript module (+ metadata json)",
    "generate": "generate a synthetic turbulence dataset (steerable_sr.data.generate)",
    "info": "print a model's parameter count and layer table",
    "compare": "train model kinds on the same data and seeds; table + plots (steerable_sr.study)",
    "discover": "train relaxed kinds and report the symmetry they kept (steerable_sr.study)",
}

#: The function that runs each command, as ``module:function``. Commands that parse their own
#: arguments get the arguments after the command name (the Lightning ones the whole line, their
#: subcommand included); the others the namespace of :func:`parser`.
HANDLERS = {
    "fit": "steerable_sr.cli.lightning:main",
    "validate": "steerable_sr.cli.lightning:main",
    "test": "steerable_sr.cli.lightning:main",
    "generate": "steerable_sr.data.generate:main",
    "compare": "steerable_sr.cli.study:main_compare",
    "discover": "steerable_sr.cli.study:main_discover",
    "predict": "steerable_sr.cli.predict:run_predict",
    "evaluate": "steerable_sr.cli.evaluate:run_evaluate",
    "export": "steerable_sr.cli.predict:run_export",
    "info": "steerable_sr.cli.info:run_info",
}
#: What the help of a command adds to its line in :data:`COMMANDS`.
DETAILS = {
    "predict": ". MODEL is a training checkpoint (.ckpt) or a module from `steerable-sr export`. A JHTDB input of "
               "T time steps gives T - frames + 1 predicted steps (the middle frame of every window), written in "
               "the same layout (.h5) or as a tensor (.pt).",
    "export": ": OUT is loadable with torch.jit.load alone (no escnn, no steerable_sr); metadata goes to OUT with "
              "suffix .json and inside the module (extra file metadata.json).",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test")
OWN_PARSER_COMMANDS = (*LIGHTNING_COMMANDS, "generate", "compare", "discover")

#: The exceptions that report a problem with the user's input: one error line, exit status 1.
USER_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, ValueError, KeyError, TypeError)
USER_ERROR_NAMES = ("MisconfigurationException",)


#: escnn's functions cached with a joblib ``Memory(verbose=2)``, which print a "[Memory] ... Loading"
#: line on every cache hit.
ESCNN_VERBOSE_CACHES = {"escnn.group.groups.octa": "_build_octa_irrep_picklable",
                        "escnn.group.groups.ico": "_build_ico_irrep_picklable"}


#: The option that reads a checkpoint holding more than data (steerable_sr.checkpoint.TRUST_OPTION).
TRUST_OPTION = "--trust-checkpoint"
TRUST_HELP = ("read a checkpoint that holds more than tensors and plain data (refused by default: reading it runs "
              "code from the file); only for files you made yourself")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like ``KeyboardInterrupt``, so temporary outputs are removed."""


def handler(command: str) -> Callable:
    """The function that runs ``command``. Its module is imported here, when the command runs, so
    that ``steerable-sr --help`` and argument errors stay instant (torch, escnn and lightning take
    seconds to import)."""
    module, name = HANDLERS[command].split(":")
    function = getattr(importlib.import_module(module), name)
    if command != "generate":  # the only command that never builds a model
        quiet_escnn()
    return function


def quiet_escnn() -> None:
    """Silence the joblib lines of escnn's caches (:data:`ESCNN_VERBOSE_CACHES`); escnn's files are left
    as they are. Imports those escnn modules (a fraction of a second once torch is loaded)."""
    for module_name, function in ESCNN_VERBOSE_CACHES.items():
        getattr(importlib.import_module(module_name), function)._verbose = 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The parser of ``steerable-sr`` and of the commands that do not parse their own arguments."""
    p = argparse.ArgumentParser(prog="steerable-sr", description="Octahedral-equivariant super-resolution of "
                                "3D turbulence.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=text, add_help=name not in OWN_PARSER_COMMANDS,
                                    description=text + DETAILS.get(name, ""))
               for name, text in COMMANDS.items()}

    pp = parsers["predict"]
    pp.add_argument("model", help="checkpoint (.ckpt) or exported TorchScript module")
    pp.add_argument("input", help="JHTDB HDF5 file (.h5/.hdf5) or tensor (.pt): (T,3,n,n,n) or (B,3*frames,n,n,n)")
    pp.add_argument("output", help="output file: .h5/.hdf5 (JHTDB layout) or .pt")
    pp.add_argument("--downsample", action="store_true",
                    help="block-average a high-resolution input by the upscale factor first")
    pp.add_argument("--any-size", action="store_true", help="allow an input resolution other than the training one")
    pp.add_argument("--batch-size", type=positive_int, default=4)
    pp.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    pp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    pp.add_argument(TRUST_OPTION, action="store_true", help=TRUST_HELP)

    pe = parsers["evaluate"]
    pe.add_argument("ckpt", help="training checkpoint (.ckpt)")
    pe.add_argument("--data", help="dataset path (default: the one the checkpoint was trained on)")
    pe.add_argument("--out", required=True, help="report directory (written atomically)")
    pe.add_argument("--split", choices=("test", "val"), default="test")
    pe.add_argument("--batch-size", type=positive_int, default=None)
    pe.add_argument("--num-workers", type=int, default=0)
    pe.add_argument("--max-batches", type=positive_int, default=None)
    pe.add_argument("--equivariance-elements", type=int, default=None,
                    help="group elements for the equivariance error (default: all)")
    pe.add_argument("--device", default="cpu")
    pe.add_argument("--overwrite", action="store_true",
                    help="update an existing report directory: replace the earlier report's files (metrics, plots, "
                         "symmetry) and keep every other file; a non-empty directory without a report is refused")
    pe.add_argument(TRUST_OPTION, action="store_true", help=TRUST_HELP)

    px = parsers["export"]
    px.add_argument("ckpt")
    px.add_argument("out")
    px.add_argument("--overwrite", action="store_true")
    px.add_argument(TRUST_OPTION, action="store_true", help=TRUST_HELP)

    pi = parsers["info"]
    pi.add_argument("--kind", default="rsteer")
    pi.add_argument("--group", default="Oh", choices=("Oh", "O"))
    pi.add_argument("--preset", default="small")
    pi.add_argument("--frames", type=positive_int, default=3)
    pi.add_argument("--upscale", type=positive_int, default=4)
    pi.add_argument("--input-size", type=positive_int, default=16)
    pi.add_argument("--overrides", help='JSON dict of build_model overrides, e.g. \'{"width": 8}\'')
    pi.add_argument("--ckpt", help="describe the model of a checkpoint instead")
    pi.add_argument(TRUST_OPTION, action="store_true", help=TRUST_HELP)
    return p


def _run(argv: list[str]) -> int:
    command = argv[0] if argv else None
    if command in LIGHTNING_COMMANDS:
        return int(handler(command)(argv) or 0)
    if command in OWN_PARSER_COMMANDS:
        return int(handler(command)(argv[1:]) or 0)
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    return handler(args.command)(args)


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
    except SystemExit as exc:  # argparse / jsonargparse
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
            print(f"steerable-sr: error: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
            return 1
        raise
