r"""The study: model kinds compared on the same data, and symmetry discovery with relaxed kinds.

Two entry points (``steerable-sr compare``, ``steerable-sr discover``; also ``scripts/compare.py``):

* :func:`run_compare` trains every kind of ``kinds`` with its preset (matched parameter budgets, see
  ``configs/presets``) on the same dataset, with the same seeds, crops, batches, optimiser and
  epochs, then writes to ``out``:

  - ``results.json``: every run (per kind and seed: test metrics, validation curve, step time,
    spectra) and the aggregate (mean, std, min, max over seeds);
  - ``results.md``: one table, mean +- std over seeds: parameters, cold / warm build time, step
    time, test MAE, RMSE, relative L2, spectrum error, divergence residual, equivariance error
    (plus the trilinear baseline and the truth's divergence floor);
  - ``val_curves.png`` (validation MAE per epoch, mean over seeds, band = min..max) and
    ``spectra.png`` (test-set energy spectra of the predictions, the truth and trilinear).

* :func:`run_discover` trains relaxed kinds (``rgcnn``, ``rsteer``) with an equivariance penalty on
  one or more datasets (typically an anisotropic one, forcing axis x, and an isotropic one) and
  writes, per dataset and kind, the :func:`steerable_sr.symmetry.symmetry_report` of the learned
  relaxed weights (``discover.md`` / ``discover.json``).

Kinds are the model kinds of :data:`steerable_sr.models.KINDS`, or ``<kind>_separable`` for the
separable regular kinds (``gcnn_separable``, ``rgcnn_separable``: ``build_model(kind,
separable=True)`` with the preset's ``<kind>_separable`` widths).

Timings: *cold build* is ``build_model`` in a fresh Python process with an empty kernel-basis cache
(``STEERABLE_SR_CACHE`` pointing to a new directory; escnn's own group cache in site-packages is
assumed present, as after installation); *warm build* is the same in a second fresh process that
finds the cache filled. *Step time* is the median wall time of a training step (forward, loss,
backward, optimiser step), the first two steps of each run excluded. All metrics are on the test
split, in the data's normalised units (velocity / training rms), as logged by
:class:`steerable_sr.training.SuperResolutionModule` (definitions: :mod:`steerable_sr.metrics`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_output
from .models import KINDS, RELAXED_KINDS, SEPARABLE_KINDS

DEFAULT_KINDS = KINDS
SEPARABLE_SUFFIX = "_separable"

#: Test metrics of the table: (key logged by SuperResolutionModule, column title, format).
TABLE_METRICS = (
    ("mae", "MAE", "{:.4f}"),
    ("rmse", "RMSE", "{:.4f}"),
    ("rel_l2", "rel L2", "{:.4f}"),
    ("spec_err", "spectrum err", "{:.4f}"),
    ("div", "divergence", "{:.4f}"),
    ("equiv_err", "equiv err", "{:.2e}"),
)


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class CompareConfig:
    """Settings of a comparison (defaults: the small CPU run of ``docs/results.md``)."""

    data: str = "data/iso_n32.h5"
    out: str = "runs/compare"
    kinds: Sequence[str] = DEFAULT_KINDS
    seeds: Sequence[int] = (0, 1, 2)
    group: str = "Oh"
    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    crop: int | None = 16
    batch_size: int = 4
    crops_per_window: int = 2
    max_epochs: int = 6
    max_steps: int = -1
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    lr: float = 2e-3
    weight_decay: float = 4e-4
    gamma: float = 0.95
    penalty_weight: float = 1e-4
    test_equivariance_elements: int | None = None
    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = "32-true"
    build_time: bool = True
    augment: str | None = None
    threads: int | None = 1
    progress: bool = False

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.kinds:
            raise ValueError("no model kinds to compare")
        if not self.seeds:
            raise ValueError("no seeds")
        for spec in self.kinds:
            parse_kind(spec)


def parse_kind(spec: str) -> tuple[str, dict[str, Any]]:
    """``"gcnn"`` -> ``("gcnn", {})``; ``"gcnn_separable"`` -> ``("gcnn", {"separable": True})``."""
    kind, overrides = spec, {}
    if spec.endswith(SEPARABLE_SUFFIX):
        kind, overrides = spec[: -len(SEPARABLE_SUFFIX)], {"separable": True}
        if kind not in SEPARABLE_KINDS:
            raise ValueError(f"{spec!r}: separable models are not available for kind {kind!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {spec!r}; allowed values: {', '.join(available_kinds())}")
    return kind, overrides


def available_kinds() -> tuple[str, ...]:
    """Every kind of the registry, plus ``<kind>_separable`` for the kinds that allow it."""
    return KINDS + tuple(k + SEPARABLE_SUFFIX for k in SEPARABLE_KINDS)


# ------------------------------------------------------------------------------------------------
# Build time (fresh processes)
# ------------------------------------------------------------------------------------------------

_BUILD_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
from steerable_sr.models import build_model
t1 = time.perf_counter()
model = build_model({kind!r}, group={group!r}, preset={preset!r}, **{overrides!r})
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "build_s": t2 - t1,
                  "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}}))
"""


def measure_build_time(spec: str, group: str = "Oh", preset: str = "small", timeout: float = 600) -> dict[str, float]:
    """Cold and warm ``build_model`` time of ``spec`` in fresh processes (see the module docstring)."""
    kind, overrides = parse_kind(spec)
    code = _BUILD_SNIPPET.format(kind=kind, group=group, preset=preset, overrides=overrides)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="steerable_sr_cache_") as cache:
        env = {**os.environ, "STEERABLE_SR_CACHE": cache, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        for label in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
            if res.returncode != 0:
                raise RuntimeError(f"building {spec} in a subprocess failed:\n{res.stderr[-2000:]}")
            info = json.loads(res.stdout.strip().splitlines()[-1])
            out[f"build_{label}_s"] = info["build_s"]
            out[f"import_{label}_s"] = info["import_s"]
    return out


# ------------------------------------------------------------------------------------------------
# One training run
# ------------------------------------------------------------------------------------------------


def _recorder_class():
    import lightning.pytorch as pl

    class Recorder(pl.Callback):
        """Step wall times and the validation metrics of every epoch."""

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.curve: list[dict[str, float]] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.step_times.append(time.perf_counter() - self._t0)

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            row = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
            for key, value in trainer.callback_metrics.items():
                if key.startswith("val/") or key in ("train/l1_epoch", "train/l1", "train/penalty"):
                    row[key] = float(value)
            model = getattr(pl_module, "model", None)
            if getattr(getattr(model, "config", None), "relaxed", False):
                # the symmetry read-out along training: kept subgroup, largest block significance,
                # and the largest block (layer, irrep, bank)
                from .symmetry import block_significance, relaxed_layers, symmetry_report

                report = symmetry_report(model)
                row["symmetry"] = report.stabilizer_name
                row["significance"] = report.significance
                best = max(((name, irrep, int(s.argmax()), float(s.max())) for name, layer in relaxed_layers(model)
                            for irrep, s in block_significance(layer.relaxed_weights_on_group().detach(),
                                                               layer.group).items()), key=lambda t: t[3])
                row["largest_block"] = f"{best[0]} {best[1]} bank {best[2]}"
            self.curve.append(row)

    return Recorder


def _augment_class():
    import lightning.pytorch as pl

    class Augment(pl.Callback):
        """Applies one random element of ``group`` (global RNG: seeded) to each training batch, input and
        target alike: the training distribution becomes exactly ``group``-symmetric."""

        def __init__(self, group: str) -> None:
            self.group = group

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            import torch

            from . import groups

            mats = groups.group_matrices(self.group)
            R = mats[int(torch.randint(len(mats), ()))]
            for key in ("lr", "hr"):
                batch[key] = groups.act(batch[key], R, "vector")

    return Augment


def _spectra(module, loader, max_batches: int | None = None) -> dict[str, list[float]]:
    """Mean test-set energy spectra of the prediction, the truth and the trilinear baseline."""
    import torch

    from . import metrics

    sums: dict[str, Any] = {}
    count = 0
    module.eval()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = batch["lr"].to(module.device), batch["hr"].to(module.device)
            fields_ = {"prediction": module(x), "truth": y, "trilinear": metrics.trilinear(x, module.hparams.upscale)}
            for name, u in fields_.items():
                e = metrics.energy_spectrum(u.float()).sum(0).cpu()
                sums[name] = e if name not in sums else sums[name] + e
            count += x.shape[0]
    return {name: (s / max(count, 1)).tolist() for name, s in sums.items()}


def train_one(spec: str, seed: int, cfg: CompareConfig, data: str | None = None, penalty_weight: float | None = None,
              keep_model: bool = False) -> dict[str, Any]:
    """Train ``spec`` with ``seed`` under ``cfg``; return params, step time, curve, test metrics, spectra."""
    import lightning.pytorch as pl
    import torch

    from .data.dataset import TurbulenceDataModule
    from .training import SuperResolutionModule

    kind, overrides = parse_kind(spec)
    overrides = {**overrides, **(cfg.model_overrides or {})}
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = TurbulenceDataModule(data or cfg.data, crop=cfg.crop, batch_size=cfg.batch_size, seed=seed,
                              crops_per_window=cfg.crops_per_window)
    t0 = time.perf_counter()
    module = SuperResolutionModule(kind=kind, group=cfg.group, preset=cfg.preset, model_overrides=overrides or None,
                                   lr=cfg.lr, weight_decay=cfg.weight_decay, gamma=cfg.gamma,
                                   penalty_weight=cfg.penalty_weight if penalty_weight is None else penalty_weight,
                                   val_equivariance_elements=0,
                                   test_equivariance_elements=cfg.test_equivariance_elements)
    build_in_process = time.perf_counter() - t0
    recorder = _recorder_class()()
    callbacks = [recorder] + ([_augment_class()(cfg.augment)] if cfg.augment else [])
    limits = {k: getattr(cfg, k) for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
              if getattr(cfg, k) is not None}
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
                         max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=cfg.progress, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=callbacks, deterministic=False, **limits)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    loader = dm.test_dataloader()
    max_batches = cfg.limit_test_batches if isinstance(cfg.limit_test_batches, int) else None
    spectra = _spectra(module, loader, max_batches)
    steps = recorder.step_times[2:] or recorder.step_times
    result = {
        "kind": spec, "seed": seed,
        "params": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
        "build_in_process_s": build_in_process,
        "fit_s": fit_s, "steps": int(trainer.global_step),
        "step_s": float(np.median(steps)) if steps else float("nan"),
        "curve": recorder.curve,
        "test": {k.removeprefix("test/"): float(v) for k, v in test.items()},
        "spectra": spectra,
    }
    if keep_model:
        result["model"] = module.model
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return result


# ------------------------------------------------------------------------------------------------
# Aggregation and output
# ------------------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def aggregate(runs: Sequence[dict], build: dict[str, dict] | None = None) -> dict[str, dict]:
    """Per kind: statistics over seeds of the test metrics, step time, and the build times."""
    table: dict[str, dict] = {}
    for spec in dict.fromkeys(r["kind"] for r in runs):
        mine = [r for r in runs if r["kind"] == spec]
        row: dict[str, Any] = {"params": mine[0]["params"], "seeds": [r["seed"] for r in mine],
                               "step_s": _stats([r["step_s"] for r in mine])}
        keys = sorted({k for r in mine for k in r["test"]})
        for key in keys:
            row[key] = _stats([r["test"].get(key) for r in mine])
        if build and spec in build:
            row.update(build[spec])
        table[spec] = row
    return table


def _pm(stats: dict | None, fmt: str) -> str:
    if not stats or not stats.get("n"):
        return "–"
    text = fmt.format(stats["mean"])
    if stats["n"] > 1:
        text += " ± " + fmt.format(stats["std"])
    return text


def table_markdown(table: dict[str, dict], cfg: CompareConfig | None = None) -> str:
    """The comparison table (mean ± sample std over seeds)."""
    cols = ["kind", "params", "build cold (s)", "build warm (s)", "step (ms)"] + [t for _, t, _ in TABLE_METRICS]
    lines = ["| " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) - 1)]
    for spec, row in table.items():
        step = row["step_s"]
        step_ms = {**step, "mean": step["mean"] * 1e3, "std": step["std"] * 1e3}
        cells = [spec, f"{row['params']:,}",
                 f"{row['build_cold_s']:.2f}" if "build_cold_s" in row else "–",
                 f"{row['build_warm_s']:.2f}" if "build_warm_s" in row else "–",
                 _pm(step_ms, "{:.0f}")]
        cells += [_pm(row.get(key), fmt) for key, _, fmt in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    if table:
        ref = next(iter(table.values()))
        cells = ["trilinear", "0", "–", "–", "–"] + [
            _pm(ref.get("trilinear_" + key), fmt) if key not in ("equiv_err",) else "0 (exact)"
            for key, _, fmt in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
        if "div_true" in ref:
            lines.append("")
            lines.append(f"Divergence residual of the truth (the floor of the central-difference stencil on crops): "
                         f"{ref['div_true']['mean']:.4f}.")
    if cfg is not None:
        seeds = ", ".join(str(s) for s in cfg.seeds)
        lines.append("")
        lines.append(f"Data `{cfg.data}`, crops {cfg.crop}^3 (input {cfg.crop // 4 if cfg.crop else 'whole'}^3), "
                     f"batch {cfg.batch_size}, {cfg.max_epochs} epochs"
                     + (f" of {cfg.limit_train_batches} batches" if cfg.limit_train_batches else "")
                     + (f" (at most {cfg.max_steps} steps)" if cfg.max_steps and cfg.max_steps > 0 else "")
                     + f", Adam lr {cfg.lr} (weight decay "
                     f"{cfg.weight_decay}, StepLR {cfg.gamma}), penalty weight {cfg.penalty_weight} (relaxed kinds), "
                     f"preset `{cfg.preset}`, group {cfg.group}, seeds {seeds}: mean ± sample std over seeds; "
                     "test split; equivariance error over "
                     f"{'all' if cfg.test_equivariance_elements is None else cfg.test_equivariance_elements} group elements.")
    return "\n".join(lines)


def plot_curves(path: str | os.PathLike, runs: Sequence[dict], key: str = "val/mae") -> None:
    fig, ax = _new_figure()
    for spec in dict.fromkeys(r["kind"] for r in runs):
        curves = [[row.get(key, np.nan) for row in r["curve"]] for r in runs if r["kind"] == spec]
        n = min(len(c) for c in curves) if curves else 0
        if n == 0:
            continue
        arr = np.asarray([c[:n] for c in curves], dtype=float)
        epochs = np.arange(1, n + 1)
        line, = ax.plot(epochs, arr.mean(0), marker="o", ms=3, label=spec)
        if arr.shape[0] > 1:
            ax.fill_between(epochs, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
    tri = [r["curve"][-1].get("val/trilinear_mae") for r in runs if r["curve"]]
    tri = [t for t in tri if t is not None]
    if tri:
        ax.axhline(float(np.mean(tri)), color="k", ls="--", lw=1, label="trilinear")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key + " (normalised units)")
    ax.set_title("validation MAE (mean over seeds, band = min..max)")
    _save_figure(fig, ax, path)


def plot_spectra(path: str | os.PathLike, runs: Sequence[dict]) -> None:
    fig, ax = _new_figure()
    first = runs[0]["spectra"]
    k = np.arange(len(first["truth"]))
    sel = slice(1, None)
    ax.loglog(k[sel], np.asarray(first["truth"])[sel], "k-", lw=2, label="truth")
    ax.loglog(k[sel], np.asarray(first["trilinear"])[sel], "k--", lw=1, label="trilinear")
    for spec in dict.fromkeys(r["kind"] for r in runs):
        arr = np.mean([r["spectra"]["prediction"] for r in runs if r["kind"] == spec], axis=0)
        ax.loglog(k[sel], arr[sel], lw=1, label=spec)
    # k = N/2, the largest shell resolved in every direction (num_shells(N) = round(sqrt(3) N/2) + 1)
    ax.axvline(round((len(k) - 1) / math.sqrt(3)), color="0.7", lw=0.8)
    ax.set_xlabel("k")
    ax.set_ylabel("E(k)")
    ax.set_title("test-set energy spectra (mean over samples and seeds)")
    _save_figure(fig, ax, path)


def _new_figure():
    """A 6 x 4 inch figure and its axes, with the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def _save_figure(fig, ax, path: str | os.PathLike) -> None:
    """Add the legend, lay out, write ``fig`` to ``path`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


def _threads(cfg) -> None:
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))


def run_compare(cfg: CompareConfig, log=print) -> dict[str, Any]:
    """Train every kind of ``cfg`` with every seed; write results.{json,md}, val_curves.png, spectra.png."""
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"dataset not found: {cfg.data} (make one with `steerable-sr generate`)")
    _threads(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    build: dict[str, dict] = {}
    if cfg.build_time:
        for spec in cfg.kinds:
            build[spec] = measure_build_time(spec, cfg.group, cfg.preset)
            log(f"[compare] build {spec}: cold {build[spec]['build_cold_s']:.2f} s, "
                f"warm {build[spec]['build_warm_s']:.2f} s")
    runs = []
    for spec in cfg.kinds:
        for seed in cfg.seeds:
            r = train_one(spec, seed, cfg)
            runs.append(r)
            log(f"[compare] {spec} seed {seed}: {r['params']:,} params, {r['steps']} steps in {r['fit_s']:.1f} s "
                f"(step {r['step_s'] * 1e3:.0f} ms), test MAE {r['test'].get('mae', float('nan')):.4f}, "
                f"equiv err {r['test'].get('equiv_err', float('nan')):.2e}")
            # Written after every run: a long comparison that is interrupted keeps what it has
            # (`--from-json OUT/results.json` renders the table and plots of what is there).
            _write_text(out / "results.json", json.dumps({"config": asdict(cfg), "build": build, "runs": runs},
                                                         indent=1, default=_json_default))
    return render(cfg, runs, build, log)


def render(cfg: CompareConfig, runs: Sequence[dict], build: dict[str, dict] | None = None, log=print) -> dict[str, Any]:
    """Aggregate ``runs`` and write results.json, results.md, val_curves.png and spectra.png to ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(runs, build)
    result = {"config": asdict(cfg), "build": build or {}, "table": table, "runs": list(runs)}
    _write_text(out / "results.json", json.dumps(result, indent=1, default=_json_default))
    md = table_markdown(table, cfg)
    _write_text(out / "results.md", md + "\n")
    plot_curves(out / "val_curves.png", runs)
    plot_spectra(out / "spectra.png", runs)
    log(md)
    return result


def render_from_json(path: str | os.PathLike, out: str | None = None, log=print) -> dict[str, Any]:
    """Re-render a (possibly partial) ``results.json`` of :func:`run_compare`."""
    saved = json.loads(Path(path).read_text())
    config = dict(saved["config"])
    if out is not None:
        config["out"] = out
    cfg = CompareConfig(**{k: v for k, v in config.items() if k in CompareConfig.__dataclass_fields__})
    kinds = list(dict.fromkeys(r["kind"] for r in saved["runs"]))
    cfg.kinds = tuple(kinds) or cfg.kinds
    return render(cfg, saved["runs"], saved.get("build") or {}, log)


# ------------------------------------------------------------------------------------------------
# Symmetry discovery
# ------------------------------------------------------------------------------------------------


#: Discovery models: narrow, and without the trilinear skip. The skip is an exactly equivariant path
#: that already carries the input's large-scale anisotropy to the output, so a relaxed network with it
#: never needs to break the symmetry and reads O_h on any data (docs/results.md); without it the
#: relaxed weights must carry whatever anisotropy the map has, which is what the read-out is for.
DISCOVERY_OVERRIDES: dict[str, Any] = {"hidden": 1, "trilinear_skip": False}


def run_discover(datasets: Sequence[str], cfg: CompareConfig, kinds: Sequence[str] = RELAXED_KINDS,
                 penalty_weight: float = 1e-3, tol: float | None = None, control: bool = False,
                 log=print) -> dict[str, Any]:
    """Train relaxed ``kinds`` on each dataset and write the symmetry reports of the learned weights.

    ``control``: for every dataset with isotropic forcing, also train on its batches symmetrised by a
    random O_h element each (``cfg.augment = "Oh"``): a training distribution that is exactly O_h
    symmetric, whatever the finite sample's anisotropy.

    Writes to ``cfg.out`` (:func:`write_discovery`, after every run): ``discover.json`` (config,
    summary per dataset and kind with the consensus over seeds, and per run: report, read-out per
    epoch, test metrics), ``discover.md`` (the summary table, then every run's report) and the
    trained weights.
    """
    import torch

    from .symmetry import symmetry_report

    if not datasets or not kinds or not cfg.seeds:
        raise ValueError("symmetry discovery needs at least one dataset, one relaxed kind and one seed")
    for spec in kinds:
        if parse_kind(spec)[0] not in RELAXED_KINDS:
            raise ValueError(f"symmetry discovery needs a relaxed kind ({', '.join(RELAXED_KINDS)}), got {spec!r}")
    _threads(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results, jobs = [], []
    for data in datasets:
        if not Path(data).exists():
            raise FileNotFoundError(f"dataset not found: {data} (make one with `steerable-sr generate`)")
        jobs.append((data, cfg))
        if control and _dataset_attrs(data).get("forcing") == "isotropic":
            jobs.append((data, replace(cfg, augment="Oh")))
    base = cfg
    for data, cfg in jobs:
        attrs = _dataset_attrs(data)
        try:
            stats = dataset_statistics(data)
        except Exception:  # JHTDB cutouts and other layouts: no statistics
            stats = {}
        for spec in kinds:
            for seed in cfg.seeds:
                r = train_one(spec, seed, cfg, data=data, penalty_weight=penalty_weight, keep_model=True)
                model = r.pop("model")
                tag = f"_aug{cfg.augment}" if cfg.augment else ""
                with atomic_output(out / f"{Path(data).stem}{tag}_{spec}_seed{seed}.pt", overwrite=True) as tmp:
                    torch.save(model.state_dict(), tmp)
                report = symmetry_report(model, **({} if tol is None else {"tol": tol}))
                results.append({"data": data, "forcing": attrs.get("forcing"), "axis": attrs.get("axis"),
                                "kind": spec, "augment": cfg.augment, "data_statistics": stats, "seed": seed,
                                "penalty_weight": penalty_weight, "steps": r["steps"], "fit_s": r["fit_s"],
                                "test": r["test"], "curve": r["curve"], "report": report.to_dict()})
                log(f"[discover] {spec} on {data}{' (' + cfg.augment + '-symmetrised)' if cfg.augment else ''} "
                    f"seed {seed}: kept {report.stabilizer_name} (order {len(report.stabilizer)})")
                result = write_discovery(out, {"config": asdict(base), "results": results})
    for row in result["summary"]:
        log(f"[discover] {row['kind']} on {row['data']}{' (' + row['augment'] + '-symmetrised)' if row['augment'] else ''}: "
            f"kept {', '.join(row['per_seed'])}; consensus {row['consensus']}")
    return result


def write_discovery(out: str | os.PathLike, result: dict[str, Any]) -> dict[str, Any]:
    """Add the summary to ``result`` (``{"config", "results"}``) and write ``discover.json`` and
    ``discover.md`` to ``out``, each atomically."""
    result = {"config": result["config"], "summary": discovery_summary(result["results"]),
              "results": list(result["results"])}
    md = summary_markdown(result["summary"])
    for entry in result["results"]:
        md += run_markdown(entry)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "discover.json", json.dumps(result, indent=1, default=_json_default))
    _write_text(out / "discover.md", "\n".join(md) + "\n")
    return result


def render_discovery_from_json(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                               log=print) -> dict[str, Any]:
    """Merge the runs of one or more saved ``discover.json`` files (e.g. one per kind or dataset,
    made with the same settings) and write their summary and reports to ``out``."""
    saved = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"discovery results not found: {path}")
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not {"config", "results"} <= data.keys():
            raise ValueError(f"{path} is not a discover.json of `steerable-sr discover` (no config and results)")
        saved.append(data)
    result = write_discovery(out, {"config": saved[0]["config"],
                                   "results": [entry for s in saved for entry in s["results"]]})
    log("\n".join(summary_markdown(result["summary"])))
    return result


def run_markdown(entry: dict[str, Any]) -> list[str]:
    """One discovery run (an entry of ``discover.json``) as Markdown lines: the data, the full
    symmetry report, the read-out after each epoch and the test metrics."""
    from .symmetry import SymmetryReport

    axis = f", axis {'xyz'[int(entry['axis'])]}" if entry["forcing"] == "anisotropic" else ""
    md = [f"### {entry['kind']} on `{entry['data']}` (forcing {entry['forcing']}{axis}), seed {entry['seed']}, "
          f"penalty {entry['penalty_weight']}, {entry['steps']} steps"
          + (f", training batches symmetrised by random {entry['augment']} elements" if entry["augment"] else ""), ""]
    stats = entry.get("data_statistics")
    if stats:
        md += ["Training frames: energy fractions (x, y, z) = ("
               + ", ".join(f"{v:.3f}" for v in stats["energy_fractions"])
               + f"), relative helicity {stats['relative_helicity']:.3f}.", ""]
    md += [SymmetryReport.from_dict(entry["report"]).to_markdown(), ""]
    along = [f"{row['epoch'] + 1}: {row['symmetry']} (s = {row['significance']:.2g}, {row['largest_block']})"
             for row in entry["curve"] if "symmetry" in row]
    if along:
        md += ["Read-out after each epoch (epoch: kept symmetry, largest significance, its block): "
               + "; ".join(along) + ".", ""]
    return md + [f"Test MAE {entry['test'].get('mae', float('nan')):.4f}, equivariance error "
                 f"{entry['test'].get('equiv_err', float('nan')):.2e}.", ""]


def discovery_summary(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Per dataset, training (plain or symmetrised) and kind: the symmetry each seed kept and the
    consensus over seeds (:func:`steerable_sr.symmetry.consensus_stabilizer`)."""
    from .symmetry import consensus_stabilizer, subgroup_name

    runs: dict[tuple, list[dict]] = {}
    for r in results:
        runs.setdefault((r["data"], r["augment"], r["kind"]), []).append(r)
    summary = []
    for (data, augment, kind), rows in runs.items():
        group = rows[0]["report"]["group"]
        consensus = consensus_stabilizer([r["report"]["stabilizer"] for r in rows], group)
        summary.append({"data": data, "augment": augment, "kind": kind, "forcing": rows[0]["forcing"],
                        "axis": rows[0]["axis"], "seeds": [r["seed"] for r in rows],
                        "per_seed": [r["report"]["stabilizer_name"] for r in rows],
                        "significance": [r["report"]["significance"] for r in rows],
                        "consensus": subgroup_name(consensus, group), "consensus_stabilizer": consensus})
    return summary


def summary_markdown(summary: Sequence[dict]) -> list[str]:
    """The summary table of :func:`discovery_summary` as Markdown lines."""
    lines = ["## Summary", "",
             "| data | training | kind | kept symmetry per seed (largest significance s) | consensus over seeds |",
             "| --- | --- | --- | --- | --- |"]
    for row in summary:
        forcing = row["forcing"] or "forcing unknown"
        if row["forcing"] == "anisotropic" and row["axis"] is not None:
            forcing += f", axis {'xyz'[int(row['axis'])]}"
        training = f"batches symmetrised by random {row['augment']} elements" if row["augment"] else "plain"
        seeds = "; ".join(f"{seed}: {name} ({s:.2g})"
                          for seed, name, s in zip(row["seeds"], row["per_seed"], row["significance"]))
        lines.append(f"| `{row['data']}` ({forcing}) | {training} | {row['kind']} | {seeds} | **{row['consensus']}** |")
    return lines + [""]


def dataset_statistics(path: str, split: str = "train") -> dict[str, Any]:
    """Anisotropy and chirality of a generated dataset's ``split`` frames: the fraction of the kinetic
    energy in each component (1/3 each for isotropic statistics) and the relative helicity
    ``<u.w> / (rms|u| rms|w|)`` (0 for mirror-symmetric statistics)."""
    import h5py
    import torch

    from .metrics import vorticity

    with h5py.File(path, "r") as f:
        frames = np.sort(f[f"splits/{split}"][:]) if f"splits/{split}" in f else np.arange(f["velocity"].shape[0])
        u = torch.from_numpy(f["velocity"][frames.tolist()]).double()
    w = vorticity(u, method="spectral")
    energy = u.pow(2).mean(dim=(2, 3, 4)).mean(0)
    helicity = (u * w).sum(1).mean(dim=(1, 2, 3)) / (u.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()
                                                     * w.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt())
    return {"frames": len(frames), "energy_fractions": (energy / energy.sum()).tolist(),
            "relative_helicity": float(helicity.mean()), "relative_helicity_range": [float(helicity.min()),
                                                                                    float(helicity.max())]}


def _dataset_attrs(path: str) -> dict[str, Any]:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                    if k in ("forcing", "axis", "n")}
    except Exception:
        return {}


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "all") else int(text)


def _limit(text: str) -> int | float | None:
    if text.lower() in ("none", "null"):
        return None
    return float(text) if "." in text else int(text)


def _common_args(p: argparse.ArgumentParser, defaults: CompareConfig) -> None:
    p.add_argument("--out", default=defaults.out, help="output directory (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="training seeds")
    p.add_argument("--group", default=defaults.group, choices=("Oh", "O"))
    p.add_argument("--preset", default=defaults.preset, help="model widths, configs/presets/<preset>.yaml")
    p.add_argument("--overrides", type=json.loads, default=defaults.model_overrides,
                   help='JSON dict of build_model overrides for every kind, e.g. \'{"hidden": 1}\'')
    p.add_argument("--crop", type=_opt_int, default=defaults.crop, help="high-res crop edge (multiple of 4; none = whole)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--crops-per-window", type=int, default=defaults.crops_per_window)
    p.add_argument("--epochs", type=int, default=defaults.max_epochs, help="training epochs")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="stop after this many steps (-1: off)")
    for split in ("train", "val", "test"):
        p.add_argument(f"--limit-{split}-batches", type=_limit, default=getattr(defaults, f"limit_{split}_batches"),
                       help=f"{split} batches per epoch (an int, a fraction, or none = all)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--gamma", type=float, default=defaults.gamma)
    p.add_argument("--equivariance-elements", type=_opt_int, default=None,
                   help="group elements for the test equivariance error (default: all)")
    p.add_argument("--accelerator", default=defaults.accelerator, help="cpu, gpu, auto")
    p.add_argument("--devices", default=defaults.devices)
    p.add_argument("--precision", default=defaults.precision, help="32-true, bf16-mixed, ...")
    p.add_argument("--threads", type=_opt_int, default=defaults.threads,
                   help="torch CPU threads (default 1: shared machines; none = torch's default)")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bars")


def _config(args, **extra) -> CompareConfig:
    devices = args.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return CompareConfig(out=args.out, seeds=args.seeds, group=args.group, preset=args.preset, crop=args.crop,
                         model_overrides=args.overrides,
                         batch_size=args.batch_size, crops_per_window=args.crops_per_window, max_epochs=args.epochs,
                         max_steps=args.max_steps, limit_train_batches=args.limit_train_batches,
                         limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
                         lr=args.lr, weight_decay=args.weight_decay, gamma=args.gamma,
                         test_equivariance_elements=args.equivariance_elements, accelerator=args.accelerator,
                         devices=devices, precision=args.precision, threads=args.threads, progress=args.progress,
                         **extra)


def compare_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = CompareConfig()
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train model kinds with matched budgets on the same data and seeds; write "
                                "a table (results.md/json: parameters, build and step time, test metrics, mean ± std "
                                "over seeds) and plots (val_curves.png, spectra.png) to --out.")
    p.add_argument("--data", default=d.data, help="dataset (.h5 from `steerable-sr generate`, or JHTDB cutouts)")
    p.add_argument("--kinds", nargs="+", default=list(d.kinds),
                   help="model kinds: cnn gcnn rgcnn steer rsteer, and gcnn_separable rgcnn_separable")
    p.add_argument("--penalty-weight", type=float, default=d.penalty_weight, help="relaxed kinds' penalty weight")
    p.add_argument("--no-build-time", action="store_true", help="skip the cold/warm build-time measurement")
    p.add_argument("--from-json", metavar="RESULTS_JSON",
                   help="only render the table and plots of a saved (possibly partial) results.json into --out")
    _common_args(p, d)
    return p


def discover_parser(prog: str | None = None) -> argparse.ArgumentParser:
    # the same budget on every dataset, whatever its length: 12 epochs of 20 batches of 4 crops
    d = CompareConfig(out="runs/discover", seeds=(0, 1, 2), max_epochs=12, crops_per_window=4,
                      limit_train_batches=20, limit_val_batches=8, limit_test_batches=8,
                      model_overrides=DISCOVERY_OVERRIDES)
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train relaxed kinds with an equivariance penalty on each dataset and "
                                "write the symmetry reports of the learned relaxed weights (discover.md/json).")
    p.add_argument("data", nargs="*", help="datasets, e.g. data/aniso_n32.h5 data/iso_n32_long.h5")
    p.add_argument("--kinds", nargs="+", default=list(RELAXED_KINDS),
                   help=f"relaxed kinds: {', '.join(RELAXED_KINDS)} (and <kind>_separable where allowed)")
    p.add_argument("--from-json", nargs="+", metavar="DISCOVER_JSON",
                   help="only merge saved discover.json files (same settings) and render their summary and "
                   "reports into --out")
    p.add_argument("--penalty-weight", type=float, default=1e-3, help="weight of the equivariance penalty")
    p.add_argument("--control", action="store_true",
                   help="also train on O_h-symmetrised batches of every isotropic dataset (a control)")
    p.add_argument("--tol", type=float, default=None,
                   help="strict stabilizer tolerance (default: the robust criterion of steerable_sr.symmetry)")
    p.add_argument("--augment", choices=("Oh", "O"), default=None,
                   help="apply a random element of this group to every training batch (a symmetrised control)")
    _common_args(p, d)
    return p


def main_compare(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = compare_parser(prog).parse_args(argv)
    if args.from_json:
        render_from_json(args.from_json, args.out)
        print(f"[compare] wrote {args.out}/results.md, results.json, val_curves.png, spectra.png")
        return 0
    cfg = _config(args, data=args.data, kinds=args.kinds, penalty_weight=args.penalty_weight,
                  build_time=not args.no_build_time)
    run_compare(cfg)
    print(f"[compare] wrote {cfg.out}/results.md, results.json, val_curves.png, spectra.png")
    return 0


def main_discover(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = discover_parser(prog)
    args = parser.parse_args(argv)
    if args.from_json and args.data:
        parser.error("give either datasets to train on or --from-json, not both")
    if args.from_json:
        render_discovery_from_json(args.from_json, args.out)
        print(f"[discover] wrote {args.out}/discover.md, discover.json")
        return 0
    if not args.data:
        parser.error("give the datasets to train on (or --from-json)")
    cfg = _config(args, augment=args.augment)
    result = run_discover(args.data, cfg, kinds=args.kinds, penalty_weight=args.penalty_weight, tol=args.tol,
                          control=args.control)
    print((Path(cfg.out) / "discover.md").read_text())
    print(f"[discover] wrote {cfg.out}/discover.md, discover.json ({len(result['results'])} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main_compare())
