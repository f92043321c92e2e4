r"""``steerable-sr``: the one command-line entry point.

Subcommands::

    steerable-sr fit       --config configs/default.yaml [--model.kind cnn] [--trainer.max_epochs 5] ...
    steerable-sr validate  --config configs/default.yaml --ckpt_path CKPT
    steerable-sr test      --config configs/default.yaml --ckpt_path CKPT
    steerable-sr predict   MODEL INPUT OUTPUT [--downsample]       (MODEL: checkpoint or exported module)
    steerable-sr evaluate  CKPT --data PATH --out DIR               (report: metrics, plots, symmetry)
    steerable-sr export    CKPT OUT                                 (TorchScript + OUT.json metadata)
    steerable-sr generate  ...                                      (steerable_sr.data.generate)
    steerable-sr info      --kind rsteer [--preset small]           (parameter count, layer table)

``fit``/``validate``/``test`` are Lightning's (:class:`lightning.pytorch.cli.LightningCLI`, YAML configs in
``configs/``, every Trainer option on the command line). The others are plain argparse commands.
Errors in the input (unknown kind, bad value, missing file, checkpoint of another model, wrong input
resolution, existing output) print one ``steerable-sr: error: ...`` line and exit with status 2
(argument parsing) or 1 (everything else); outputs are written to a temporary file and renamed into
place, so nothing is overwritten by a failing command. Set ``STEERABLE_SR_DEBUG=1`` for tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test")
COMMANDS = {
    "fit": "train a model (LightningCLI; --help for every option)",
    "validate": "run the validation set on a checkpoint (LightningCLI)",
    "test": "run the test set on a checkpoint (LightningCLI)",
    "predict": "super-resolve a JHTDB-layout HDF5 file or a saved tensor (.pt)",
    "evaluate": "write an evaluation report (metrics table, spectra and slice plots, symmetry report)",
    "export": "export a checkpoint's network as a TorchScript module (+ metadata json)",
    "generate": "generate a synthetic turbulence dataset (steerable_sr.data.generate)",
    "info": "print a model's parameter count and layer table",
    "compare": "train model kinds on the same data and seeds; table + plots (steerable_sr.compare)",
    "discover": "train relaxed kinds and report the symmetry they kept (steerable_sr.compare)",
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _fail(msg: str) -> None:
    raise CLIError(msg)


# ================================================================================================
# Lightning subcommands
# ================================================================================================


def _lightning_cli(argv: Sequence[str]):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from .data.dataset import TurbulenceDataModule
    from .training import SuperResolutionModule

    class SteerableSRCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
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
            _link_model_and_data(parser)

        def _parse_ckpt_path(self):
            # Lightning replaces the model section by the checkpoint's hyperparameters. Refuse when the
            # command line or config file explicitly asks for another model than the checkpoint holds.
            sub = self.config.get("subcommand")
            cfg = self.config.get(sub) if sub else None
            ckpt = cfg.get("ckpt_path") if cfg is not None else None
            if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
                if not os.path.isfile(ckpt):
                    _fail(f"checkpoint not found: {ckpt}")
                requested = _namespace_dict(cfg.get("model"))
                defaults = _namespace_dict(self._subcommand_parsers[sub].get_defaults().get("model"))
                explicit = {k: v for k, v in requested.items() if defaults.get(k, object()) != v}
                _check_ckpt_against_model(ckpt, explicit)
            super()._parse_ckpt_path()

        def before_instantiate_classes(self):
            from .data.dataset import FACTOR, WINDOW

            cfg = self.config.get(self.subcommand, self.config)
            _check_data_paths(cfg.get("data"))
            model = _namespace_dict(cfg.get("model"))
            if model.get("frames", WINDOW) != WINDOW or model.get("upscale", FACTOR) != FACTOR:
                _fail(f"the turbulence datamodule serves {WINDOW} frames and {FACTOR}x super-resolution; "
                      f"got model.frames={model.get('frames')}, model.upscale={model.get('upscale')}")

        def after_fit(self):
            if not self.trainer.is_global_zero:
                return
            for cb in self.trainer.checkpoint_callbacks:
                label = "best checkpoint" if cb.monitor else "last checkpoint"
                print(f"{label}: {cb.best_model_path or '-'}")

    import warnings

    args = list(argv)
    if args == sys.argv[1:]:
        args = None  # parse the real command line (LightningCLI warns when given both)
    else:
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    return SteerableSRCLI(
        SuperResolutionModule,
        TurbulenceDataModule,
        args=args,
        seed_everything_default=0,
        trainer_defaults={
            "accelerator": "auto",
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            "log_every_n_steps": 10,
            "deterministic": False,
        },
        parser_kwargs={"prog": "steerable-sr", "description": "steerable-sr: train and evaluate"},
        save_config_kwargs={"overwrite": False},
    )


def _namespace_dict(ns) -> dict[str, Any]:
    if ns is None:
        return {}
    if hasattr(ns, "as_dict"):
        return ns.as_dict()
    return dict(ns)


def _link_model_and_data(parser) -> None:
    """Keep the data's frame count and upscale factor in step with the model's, when the datamodule
    has such arguments (the model is the single place to set them)."""
    try:
        from .data.dataset import TurbulenceDataModule
        import inspect

        params = inspect.signature(TurbulenceDataModule.__init__).parameters
    except Exception:  # pragma: no cover - the datamodule is always importable in a full install
        return
    for name in ("frames", "upscale"):
        if name in params:
            parser.link_arguments(f"model.{name}", f"data.{name}")


def _check_data_paths(data_cfg) -> None:
    if not data_cfg:
        return
    init = data_cfg.get("init_args", data_cfg) if hasattr(data_cfg, "get") else data_cfg
    for key in ("path", "data_path", "train_path", "val_path", "test_path"):
        value = init.get(key) if hasattr(init, "get") else None
        for item in ([value] if isinstance(value, (str, os.PathLike)) else list(value or [])):
            text = os.fspath(item)
            if any(ch in text for ch in "*?["):
                import glob

                if not glob.glob(text):
                    _fail(f"data path pattern matches no file: {text}")
            elif not os.path.exists(text):
                _fail(f"data path not found: {text} (generate a dataset with `steerable-sr generate`)")


def _check_ckpt_against_model(path: str, model_cfg) -> None:
    from .training import CheckpointMismatchError, check_checkpoint_compatible

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        _fail(f"cannot read checkpoint {path}: {exc}")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        _fail(f"{path} is not a Lightning checkpoint")
    expected = _namespace_dict(model_cfg)
    try:
        check_checkpoint_compatible(ckpt, expected)
    except CheckpointMismatchError as exc:
        _fail(f"{path}: {exc}")


# ================================================================================================
# Model loading helpers (checkpoint or exported module)
# ================================================================================================


def export_metadata_path(out: str | os.PathLike) -> Path:
    """``model.pt`` -> ``model.json``: the metadata written next to an exported module."""
    return Path(out).with_suffix(".json")


def _atomic_target(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        _fail(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        _fail(f"{out} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the output the usual permissions
    return Path(tmp)


class LoadedModel:
    """A network ready for inference, from a checkpoint or an exported TorchScript module."""

    def __init__(self, net, meta: dict[str, Any], source: str):
        self.net = net
        self.meta = meta
        self.source = source

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def upscale(self) -> int:
        return int(self.meta["upscale"])

    @property
    def input_size(self) -> int | None:
        n = self.meta.get("input_size")
        return int(n) if n else None

    @property
    def velocity_scale(self) -> float:
        return float(self.meta.get("velocity_scale") or 1.0)


def _module_meta(module) -> dict[str, Any]:
    hp = dict(module.hparams)
    meta = {k: hp.get(k) for k in ("kind", "group", "frames", "upscale", "preset", "model_overrides")}
    meta["config"] = _config_dict(getattr(module.model, "config", None))
    meta["parameters"] = int(sum(p.numel() for p in module.model.parameters()))
    n = int(module.train_input_size) if hasattr(module, "train_input_size") else 0
    meta["input_size"] = n or None
    meta["velocity_scale"] = float(module.velocity_scale) if hasattr(module, "velocity_scale") else 1.0
    return meta


def _config_dict(config) -> dict[str, Any]:
    import dataclasses

    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def load_any(path: str, device: str = "cpu") -> LoadedModel:
    """Load a Lightning checkpoint (``.ckpt``) or an exported TorchScript module."""
    import torch

    if not os.path.isfile(path):
        _fail(f"model file not found: {path}")
    try:
        extra = {"metadata.json": ""}
        net = torch.jit.load(path, map_location=device, _extra_files=extra)
        meta = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
        side = export_metadata_path(path)
        if not meta and side.is_file():
            meta = json.loads(side.read_text())
        if "frames" not in meta or "upscale" not in meta:
            _fail(f"{path}: exported module without steerable-sr metadata (frames, upscale)")
        net.eval()
        return LoadedModel(net, meta, "export")
    except CLIError:
        raise
    except Exception:
        pass
    from .training import load_module

    try:
        module = load_module(path, map_location=device)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    return LoadedModel(module.model.eval(), _module_meta(module), "checkpoint")


# ================================================================================================
# predict
# ================================================================================================


def _read_input(path: str) -> tuple[Any, str, dict[str, Any]]:
    """Returns (velocity tensor, layout, extra). layout 'jhtdb': (T, 3, n, n, n) plus times/coords in
    extra; layout 'pt': whatever tensor the file holds."""
    import torch

    if not os.path.exists(path):
        _fail(f"input file not found: {path}")
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf", ".he5") or os.path.isdir(path):
        from .data.jhtdb import read_jhtdb

        cut = read_jhtdb(path)  # FileNotFoundError / ValueError with a clear message
        return cut.velocity.float(), "jhtdb", {"times": cut.times, "coords": cut.coords}
    if suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            _fail(f"cannot read tensor file {path}: {exc}")
        if isinstance(obj, dict):
            for key in ("lr", "velocity", "x"):
                if key in obj:
                    obj = obj[key]
                    break
        if not isinstance(obj, torch.Tensor):
            _fail(f"{path} must hold a tensor (or a dict with key 'lr' or 'velocity')")
        return obj.float(), "pt", {}
    _fail(f"unknown input format {suffix!r} for {path}; use a JHTDB HDF5 file (.h5/.hdf5) or a tensor (.pt)")


def _windows(velocity, frames: int, layout: str):
    """(T,3,n,n,n) sequence -> (T-frames+1, 3*frames, n,n,n) windows; also accepts ready windows."""
    import torch

    v = velocity
    if v.dim() == 4:
        if v.shape[0] == 3 * frames:
            return v.unsqueeze(0), "window"
        if v.shape[0] == 3 and frames == 1:
            return v.unsqueeze(0), "window"
        _fail(f"input of shape {tuple(v.shape)}: expected (T, 3, n, n, n) frames or (3*{frames}, n, n, n)")
    if v.dim() != 5:
        _fail(f"input of shape {tuple(v.shape)}: expected (T, 3, n, n, n) frames")
    if v.shape[1] == 3:
        T = v.shape[0]
        if T < frames:
            _fail(f"the input holds {T} time steps; the model needs at least {frames}")
        return torch.stack([v[t : t + frames].reshape(3 * frames, *v.shape[2:]) for t in range(T - frames + 1)]), \
            "sequence"
    if v.shape[1] == 3 * frames and layout == "pt":
        return v, "batch"
    _fail(f"input of shape {tuple(v.shape)}: expected (T, 3, n, n, n) frames")


def cmd_predict(args) -> int:
    import numpy as np
    import torch

    model = load_any(args.model, args.device)
    out = Path(args.output)
    out_suffix = out.suffix.lower()
    if out_suffix not in (".h5", ".hdf5", ".hdf", ".pt"):
        _fail(f"unknown output format {out_suffix!r}; use .h5/.hdf5 (JHTDB layout) or .pt")
    if out.exists() and not args.overwrite:
        _fail(f"{out} exists; pass --overwrite to replace it")
    velocity, layout, extra = _read_input(args.input)
    if velocity.dim() < 4:
        _fail(f"input of shape {tuple(velocity.shape)}: expected (T, 3, n, n, n)")
    spatial = tuple(velocity.shape[-3:])
    if len(set(spatial)) != 1:
        _fail(f"input grid {spatial} is not cubic; the octahedral models need n x n x n")
    s = model.upscale
    coords = extra.get("coords")
    if args.downsample:
        from .data.dataset import downsample

        if spatial[0] % s:
            _fail(f"--downsample: grid size {spatial[0]} is not divisible by the upscale factor {s}")
        flat = velocity.reshape(-1, *velocity.shape[-4:])
        velocity = downsample(flat, s).reshape(*velocity.shape[:-3], *(n // s for n in spatial))
        spatial = tuple(velocity.shape[-3:])
        hr_coords = coords  # the high-resolution file's own grid
    elif coords is not None:
        # block-average convention: low-res point i is the mean of high-res points s i .. s i + s - 1
        hr_coords = []
        for c in coords:
            d = float(c[1] - c[0]) / s if len(c) > 1 else 2 * np.pi / (len(c) * s)
            hr_coords.append(c[0] - 0.5 * (s - 1) * d + d * np.arange(len(c) * s))
    else:
        hr_coords = None
    n = spatial[0]
    if model.input_size and n != model.input_size and not args.any_size:
        _fail(f"input resolution {n}^3 does not match the model's training input {model.input_size}^3 "
              f"(it maps {model.input_size}^3 -> {model.input_size * s}^3); pass --downsample for a "
              f"high-resolution file, or --any-size to run anyway")
    x, kind = _windows(velocity, model.frames, layout)
    scale = model.velocity_scale
    preds = []
    with torch.no_grad():
        for i in range(0, x.shape[0], args.batch_size):
            xb = (x[i : i + args.batch_size] / scale).to(args.device)
            preds.append(model.net(xb).float().cpu() * scale)
    y = torch.cat(preds)
    if out_suffix == ".pt":
        tmp = _atomic_target(out, args.overwrite)
        try:
            torch.save(y[0] if kind == "window" else y, tmp)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        from .data.jhtdb import save_jhtdb

        times = extra.get("times")
        start = times[model.frames // 2] if (times and kind == "sequence") else 1
        save_jhtdb(out, y, coords=hr_coords, start=start, overwrite=args.overwrite)
    print(f"wrote {out}: {tuple(y.shape)} ({model.source}, {model.meta.get('kind')}, {n}^3 -> {n * s}^3)")
    return 0


# ================================================================================================
# export
# ================================================================================================


def cmd_export(args) -> int:
    import torch

    from . import __version__
    from .training import load_module

    out = Path(args.out)
    meta_path = export_metadata_path(out)
    if meta_path == out:
        _fail(f"the export file needs a suffix other than .json (got {out})")
    if out.exists() and not args.overwrite:
        _fail(f"{out} exists; pass --overwrite to replace it")
    if meta_path.exists() and not args.overwrite:
        _fail(f"{meta_path} exists; pass --overwrite to replace it")
    try:
        module = load_module(args.ckpt)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    plain = module.model.export() if hasattr(module.model, "export") else module.model
    plain = plain.eval()
    try:
        scripted = torch.jit.script(plain)
    except Exception as exc:
        _fail(f"TorchScript export failed: {exc}")
    meta = _module_meta(module)
    meta.update({
        "format": "steerable-sr-export/1",
        "source_checkpoint": os.path.abspath(args.ckpt),
        "torch_version": torch.__version__,
        "steerable_sr_version": __version__,
        "input": "(B, 3*frames, n, n, n) float32, public convention (DESIGN.md), divided by velocity_scale",
        "output": "(B, 3, upscale*n, upscale*n, upscale*n), multiply by velocity_scale",
    })
    text = json.dumps(meta, indent=2, default=str) + "\n"
    tmp = _atomic_target(out, args.overwrite)
    tmp_meta = _atomic_target(meta_path, True)
    try:
        torch.jit.save(scripted, os.fspath(tmp), _extra_files={"metadata.json": text})
        tmp_meta.write_text(text)
        os.replace(tmp, out)
        os.replace(tmp_meta, meta_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise
    print(f"wrote {out} and {meta_path} ({meta['kind']}, {meta['parameters']} parameters)")
    return 0


# ================================================================================================
# evaluate
# ================================================================================================


def cmd_evaluate(args) -> int:
    from . import report
    from .models import RELAXED_KINDS
    from .training import load_module

    try:
        module = load_module(args.ckpt, map_location=args.device)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        _fail(f"report directory {out} exists; pass --overwrite to replace it")
    dm = _datamodule_for(args, module)
    dm.prepare_data()
    stage = "test" if args.split == "test" else "validate"
    dm.setup(stage)
    loader = dm.test_dataloader() if args.split == "test" else dm.val_dataloader()
    hp = module.hparams
    result = report.evaluate_model(module.model, loader, group=hp.group, upscale=hp.upscale,
                                   equivariance_elements=args.equivariance_elements, device=args.device,
                                   max_batches=args.max_batches, divergence_periodic=hp.divergence_periodic)
    symmetry = None
    if hp.kind in RELAXED_KINDS:
        from .symmetry import symmetry_report

        symmetry = symmetry_report(module.model)
    info = {"kind": hp.kind, "group": hp.group, "preset": hp.preset, "checkpoint": os.path.abspath(args.ckpt),
            "data": os.path.abspath(args.data) if args.data else "(from checkpoint)", "split": args.split,
            "parameters": int(sum(p.numel() for p in module.model.parameters()))}
    path = report.write_report(out, result, info, symmetry, overwrite=args.overwrite)
    m = result["metrics"]
    print(f"wrote {path}: MAE {m['model']['mae']:.4g} (trilinear {m['trilinear']['mae']:.4g}), "
          f"equivariance error {result['equivariance']['max']:.3g}")
    return 0


def _datamodule_for(args, module):
    """The datamodule the checkpoint was trained with (its saved hyperparameters), pointed at --data."""
    import torch

    from .data.dataset import TurbulenceDataModule

    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    hp = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if args.data:
        if not os.path.exists(args.data):
            _fail(f"data path not found: {args.data}")
        hp["path"] = args.data
    if not hp.get("path"):
        _fail("no data: pass --data PATH (the checkpoint does not record a dataset)")
    if not os.path.exists(os.fspath(hp["path"])):
        _fail(f"data path not found: {hp['path']} (pass --data PATH)")
    if args.batch_size:
        hp["batch_size"] = args.batch_size
    hp["num_workers"] = args.num_workers
    import inspect

    params = inspect.signature(TurbulenceDataModule.__init__).parameters
    hp = {k: v for k, v in hp.items() if k in params}
    try:
        dm = TurbulenceDataModule(**hp)
    except (TypeError, ValueError) as exc:
        _fail(f"cannot build the datamodule: {exc}")
    # normalise with the training data's velocity scale (the units the network was trained in)
    if hp.get("normalize", True) and hasattr(dm, "load_state_dict"):
        dm.load_state_dict({"velocity_scale": float(module.velocity_scale)})
    return dm


# ================================================================================================
# info
# ================================================================================================


def cmd_info(args) -> int:
    from .models import KINDS

    if args.ckpt:
        loaded = load_any(args.ckpt)
        if loaded.source != "checkpoint":
            _fail("info --ckpt needs a training checkpoint (exported modules: see their .json)")
        net = loaded.net
        kind, frames = loaded.meta["kind"], loaded.frames
    else:
        if args.kind not in KINDS:
            _fail(f"unknown model kind {args.kind!r}; allowed values: {', '.join(KINDS)}")
        from .models import build_model

        overrides = json.loads(args.overrides) if args.overrides else {}
        try:
            net = build_model(args.kind, group=args.group, frames=args.frames, upscale=args.upscale,
                              preset=args.preset, **overrides)
        except (TypeError, ValueError, KeyError) as exc:
            _fail(f"cannot build model: {exc}")
        kind, frames = args.kind, args.frames
    print(layer_table(net, frames, args.input_size, kind))
    if hasattr(net, "layer_table"):
        print()
        print(net.layer_table())
    return 0


def layer_table(net, frames: int, input_size: int, title: str = "") -> str:
    """Parameter count and a table of the top-level layers with their output shapes."""
    import torch

    rows = []
    hooks = []
    shapes: dict[str, str] = {}
    children = list(net.named_children()) or [("(model)", net)]

    def hook(name):
        def fn(mod, inp, out):
            t = getattr(out, "tensor", out)
            if isinstance(t, torch.Tensor):
                shapes[name] = "x".join(str(s) for s in t.shape[1:])
        return fn

    for name, child in children:
        hooks.append(child.register_forward_hook(hook(name)))
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3 * frames, input_size, input_size, input_size))
    except Exception as exc:  # shapes are informative only
        shapes["(forward failed)"] = str(exc)
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    total = sum(p.numel() for p in net.parameters())
    w = max([len(n) for n, _ in children] + [5])
    lines = [f"{title} model: {total:,} parameters", "",
             f"{'layer':<{w}}  {'type':<28} {'params':>10}  output (C x N^3, input {input_size}^3)"]
    for name, child in children:
        n = sum(p.numel() for p in child.parameters())
        lines.append(f"{name:<{w}}  {type(child).__name__:<28} {n:>10,}  {shapes.get(name, '-')}")
    if "(forward failed)" in shapes:
        lines.append(f"(forward failed: {shapes['(forward failed)']})")
    del rows
    return "\n".join(lines)


# ================================================================================================
# generate
# ================================================================================================


def cmd_generate(argv: Sequence[str]) -> int:
    from .data import generate

    rc = generate.main(list(argv))
    return int(rc or 0)


# ================================================================================================
# main
# ================================================================================================


def _custom_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {k:<10} {v}" for k, v in COMMANDS.items())
    p = argparse.ArgumentParser(prog="steerable-sr", description="Octahedral-equivariant super-resolution of "
                                "3D turbulence.", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pp = sub.add_parser("predict", help=COMMANDS["predict"], description=COMMANDS["predict"] + ". MODEL is a "
                        "training checkpoint (.ckpt) or a module from `steerable-sr export`. A JHTDB input of T time "
                        "steps gives T - frames + 1 predicted steps (the middle frame of every window), written "
                        "in the same layout (.h5) or as a tensor (.pt).")
    pp.add_argument("model", help="checkpoint (.ckpt) or exported TorchScript module")
    pp.add_argument("input", help="JHTDB HDF5 file (.h5/.hdf5) or tensor (.pt): (T,3,n,n,n) or (B,3*frames,n,n,n)")
    pp.add_argument("output", help="output file: .h5/.hdf5 (JHTDB layout) or .pt")
    pp.add_argument("--downsample", action="store_true",
                    help="block-average a high-resolution input by the upscale factor first")
    pp.add_argument("--any-size", action="store_true", help="allow an input resolution other than the training one")
    pp.add_argument("--batch-size", type=_positive_int, default=4)
    pp.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    pp.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    pe = sub.add_parser("evaluate", help=COMMANDS["evaluate"], description=COMMANDS["evaluate"])
    pe.add_argument("ckpt", help="training checkpoint (.ckpt)")
    pe.add_argument("--data", help="dataset path (default: the one the checkpoint was trained on)")
    pe.add_argument("--out", required=True, help="report directory (written atomically)")
    pe.add_argument("--split", choices=("test", "val"), default="test")
    pe.add_argument("--batch-size", type=_positive_int, default=None)
    pe.add_argument("--num-workers", type=int, default=0)
    pe.add_argument("--max-batches", type=_positive_int, default=None)
    pe.add_argument("--equivariance-elements", type=int, default=None,
                    help="group elements for the equivariance error (default: all)")
    pe.add_argument("--device", default="cpu")
    pe.add_argument("--overwrite", action="store_true")

    px = sub.add_parser("export", help=COMMANDS["export"], description=COMMANDS["export"] + ": OUT is loadable "
                        "with torch.jit.load alone (no escnn, no steerable_sr); metadata goes to OUT with suffix .json "
                        "and inside the module (extra file metadata.json).")
    px.add_argument("ckpt")
    px.add_argument("out")
    px.add_argument("--overwrite", action="store_true")

    pi = sub.add_parser("info", help=COMMANDS["info"], description=COMMANDS["info"])
    pi.add_argument("--kind", default="rsteer")
    pi.add_argument("--group", default="Oh", choices=("Oh", "O"))
    pi.add_argument("--preset", default="small")
    pi.add_argument("--frames", type=_positive_int, default=3)
    pi.add_argument("--upscale", type=_positive_int, default=4)
    pi.add_argument("--input-size", type=_positive_int, default=16)
    pi.add_argument("--overrides", help='JSON dict of build_model overrides, e.g. \'{"width": 8}\'')
    pi.add_argument("--ckpt", help="describe the model of a checkpoint instead")

    sub.add_parser("generate", help=COMMANDS["generate"], add_help=False)
    sub.add_parser("compare", help=COMMANDS["compare"], add_help=False)
    sub.add_parser("discover", help=COMMANDS["discover"], add_help=False)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=COMMANDS[name], add_help=False)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("STEERABLE_SR_DEBUG"))
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            _lightning_cli(argv)
            return 0
        if argv and argv[0] == "generate":
            return cmd_generate(argv[1:])
        if argv and argv[0] in ("compare", "discover"):
            from . import compare

            run = compare.main_compare if argv[0] == "compare" else compare.main_discover
            return run(argv[1:], prog=f"steerable-sr {argv[0]}")
        parser = _custom_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        handler = {"predict": cmd_predict, "evaluate": cmd_evaluate, "export": cmd_export, "info": cmd_info}
        return handler[args.command](args)
    except SystemExit as exc:  # argparse / jsonargparse
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print("steerable-sr: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, (CLIError, FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError)) or \
                type(exc).__name__ in ("MisconfigurationException", "CheckpointMismatchError"):
            msg = str(exc).strip() or type(exc).__name__
            print(f"steerable-sr: error: {msg}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
