"""One run of a study: a kind trained with a seed (:func:`train_one`), and the build time of a kind in
fresh processes (:func:`measure_build_time`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import groups, metrics
from ..data.dataset import TurbulenceDataModule
from ..groups import subgroup_elements
from ..nn.relaxed import hold_at_invariants, relaxed_layers
from ..symmetry import block_significance, symmetry_report
from ..training import SuperResolutionModule
from .config import StudyConfig, parse_kind, split_held

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
    """Cold and warm ``build_model`` time of a kind, each in a fresh process (:mod:`steerable_sr.study`).

    Parameters
    ----------
    spec : str
        A study kind (:func:`~steerable_sr.study.config.parse_kind`).
    group, preset
        Passed to ``build_model``.
    timeout : float
        Seconds per process.

    Returns
    -------
    dict of str to float
        ``build_cold_s``, ``build_warm_s`` and the import times ``import_cold_s``, ``import_warm_s``.
    """
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


class Recorder(pl.Callback):
    """Records the wall time of every training step and a row per validation epoch.

    Attributes
    ----------
    step_times : list of float
        Seconds per training step.
    curve : list of dict
        Per validation epoch: epoch, step, the ``val/`` metrics and training losses; for relaxed
        models also the symmetry read-out (``symmetry``: the subgroup kept with confidence,
        ``at_most``: the largest without a broken element, ``significance``: the
        largest block significance, ``largest_block``: its layer, irrep and bank).
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.curve: list[dict[str, Any]] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_times.append(time.perf_counter() - self._t0)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") or key in ("train/l1_epoch", "train/l1", "train/penalty"):
                row[key] = float(value)
        model = pl_module.model
        if model.config.relaxed:
            report = symmetry_report(model)
            row["symmetry"], row["at_most"] = report.stabilizer_name, report.at_most_name
            row["significance"] = report.significance
            best = max(((name, irrep, int(s.argmax()), float(s.max())) for name, layer in relaxed_layers(model)
                        for irrep, s in block_significance(layer.relaxed_weights_on_group().detach(),
                                                           layer.group).items()), key=lambda t: t[3])
            row["largest_block"] = f"{best[0]} {best[1]} bank {best[2]}"
        self.curve.append(row)


class Augment(pl.Callback):
    """Symmetrises training by a subgroup: each training batch, input and target alike, is
    transformed by a random element of ``subgroup`` (global RNG: seeded), so the training
    distribution becomes exactly ``subgroup``-symmetric.

    Parameters
    ----------
    subgroup : str
        A named subgroup of O_h (:func:`steerable_sr.groups.named_subgroups`), e.g. ``"Oh"``,
        ``"D2h"``, ``"D4h, axis x"``.

    Attributes
    ----------
    drawn : list of int
        The element indices applied, batch after batch.
    """

    def __init__(self, subgroup: str) -> None:
        self.subgroup = subgroup
        self.elements = subgroup_elements(subgroup, "Oh")
        self.drawn: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        k = self.elements[int(torch.randint(len(self.elements), ()))]
        self.drawn.append(k)
        R = groups.group_matrices("Oh")[k]
        for key in ("low_res", "high_res"):
            batch[key] = groups.act(batch[key], R, "vector")


@torch.no_grad()
def mean_spectra(module: SuperResolutionModule, loader: DataLoader, max_batches: int | None = None
                 ) -> dict[str, list[float]]:
    """Mean energy spectra over a loader's samples.

    Parameters
    ----------
    module : SuperResolutionModule
    loader : DataLoader
        Batches ``{"low_res", "high_res"}``.
    max_batches : int, optional

    Returns
    -------
    dict of str to list of float
        ``E(k)`` of the ``prediction``, the ``truth`` and the ``trilinear`` baseline, mean over samples.
    """
    sums: dict[str, torch.Tensor] = {}
    count = 0
    module.eval()
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = batch["low_res"].to(module.device), batch["high_res"].to(module.device)
        fields = {"prediction": module(x), "truth": y, "trilinear": metrics.trilinear(x, module.hparams.upscale)}
        for name, u in fields.items():
            e = metrics.energy_spectrum(u.float()).sum(0).cpu()
            sums[name] = e if name not in sums else sums[name] + e
        count += x.shape[0]
    return {name: (s / max(count, 1)).tolist() for name, s in sums.items()}


def set_threads(cfg: StudyConfig) -> None:
    """Torch's CPU threads for a study (``cfg.threads``; ``None``: torch's default)."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def train_one(spec: str, seed: int, cfg: StudyConfig, data: str | None = None, penalty_weight: float | None = None,
              keep_model: bool = False) -> dict[str, Any]:
    """Train one kind with one seed and test it.

    Parameters
    ----------
    spec : str
        A study kind (:func:`~steerable_sr.study.config.parse_kind`).
    seed : int
        Seeds the weights, the training crops and the batches (the test crops are the same for every
        seed).
    cfg : StudyConfig
    data : str, optional
        The dataset (default ``cfg.data``).
    penalty_weight : float, optional
        Default ``cfg.penalty_weight``.
    keep_model : bool
        Return the trained network too.

    Returns
    -------
    dict
        ``kind``, ``seed``, ``params`` (trained ones: a held kind's frozen deviations are left out),
        ``build_in_process_s``, ``fit_s``, ``steps``, ``step_s``
        (median step time, the first two excluded), ``curve`` (:class:`Recorder`), ``test``
        (metrics), ``spectra`` (:func:`mean_spectra` of the test split), and ``model`` with
        ``keep_model``.
    """
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
    if split_held(spec)[1]:
        hold_at_invariants(module.model)
    build_in_process = time.perf_counter() - t0
    recorder = Recorder()
    callbacks = [recorder] + ([Augment(cfg.augment)] if cfg.augment else [])
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
    max_batches = cfg.limit_test_batches if isinstance(cfg.limit_test_batches, int) else None
    spectra = mean_spectra(module, dm.test_dataloader(), max_batches)
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
    del trainer  # release what the trainer holds before emptying the CUDA cache
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result
