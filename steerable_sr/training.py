r"""The LightningModule that trains every model kind: L1 loss + the relaxed layers' penalty.

``SuperResolutionModule`` builds its network with :func:`steerable_sr.models.build_model` from its
own hyperparameters (saved with ``save_hyperparameters``), so a checkpoint alone rebuilds the model:
:func:`steerable_sr.checkpoint.load_module` (which reads it as data only).

A batch from :class:`steerable_sr.data.dataset.TurbulenceDataModule` is a dict ``{"low_res": (B, 3 T, n, n, n),
"high_res": (B, 3, 4 n, 4 n, 4 n)}`` (the public convention, ``docs/conventions.md``, "Axes and vectors"):
``training_step`` predicts ``model(low_res)`` and minimises ``L1(prediction, high_res) + penalty_weight x
model.equivariance_penalty()`` (the penalty is zero for exactly equivariant kinds). Bare ``low_res``
tensors are accepted for prediction.

Logged (``stage`` = ``train``, ``val``, ``test``; epoch means over batches):

* ``{stage}/loss`` (L1 + ``penalty_weight`` x penalty), ``train/l1``, ``train/penalty``;
* ``{stage}/mae, rmse, rel_l2, spec_err, spec_err_{low,mid,high}, div`` for the model,
  ``{stage}/div_true`` (the truth's divergence residual: the floor),
  ``{stage}/trilinear_{mae, rmse, rel_l2, spec_err, ...}`` for the trilinear baseline;
* ``val/equiv_err``: relative equivariance error on the first validation batch of each epoch over
  ``val_equivariance_elements`` group elements (generators first; cheap); ``test/equiv_err`` over
  every element of the group.

Exact resume: the training order and crops of an epoch follow from ``(data seed, epoch)``
(:class:`~steerable_sr.data.dataset.EpochSampler`); when a seed was set (``seed_everything``), the
global RNGs are reseeded from ``(PL_GLOBAL_SEED, epoch, rank)`` at the start of every training epoch,
so that what draws from them during training (a random augmentation,
:class:`steerable_sr.study.runs.Augment`) draws the same after a resume from an end-of-epoch
checkpoint as in an uninterrupted run (the optimizer and LR-scheduler states are in the checkpoint).

Data-parallel training (:func:`share_batch_statistics`): with ``Trainer(sync_batchnorm=True)`` every
batch norm normalises with the statistics of the whole batch over the processes: Lightning converts
torch's (``cnn``), this module the :class:`~steerable_sr.nn.FieldBatchNorm` of the equivariant
kinds; otherwise each process normalises with its own batch (logged once).
"""
from __future__ import annotations

import logging
import os
import random
import warnings
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.utilities import rank_zero_info

from . import metrics
from .groups import GROUPS
from .models import KINDS, build_model

Kind = Literal[KINDS]
Group = Literal[GROUPS]


def _not_litlogger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence what Lightning 2.6 prints on every run that concerns no user of this package:

    * the "Tip: ... try installing litlogger" line (an advertisement, logged when a Trainer starts);
    * torch's ``FutureWarning`` "``isinstance(treespec, LeafSpec)`` is deprecated", raised inside
      Lightning's own ``_pytree`` helpers on every dataloader (Lightning's to fix, not ours);
    * jsonargparse's deprecation warnings on the calls ``LightningCLI`` makes (``skip_none``,
      ``add_instantiator``, ``instantiate_classes``; Lightning's to fix).

    Called by the Lightning commands (:mod:`steerable_sr.cli.lightning`) and by every
    :class:`SuperResolutionModule` (every run builds one before its Trainer); idempotent.
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_litlogger_tip)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")


class CheckpointMismatchError(ValueError):
    """A checkpoint that was written for another model (kind, group, frames, upscale)."""


class NonFiniteLossError(ValueError):
    """The loss became NaN or Inf: training stops before such weights are checkpointed."""


def check_finite_loss(where: str, **terms: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLossError` naming ``where`` and the loss terms unless all are finite."""
    if all(bool(torch.isfinite(t).all()) for t in terms.values()):
        return
    values = ", ".join(f"{name} = {float(t.detach()):.4g}" for name, t in terms.items())
    raise NonFiniteLossError(f"non-finite loss at {where} ({values}): the weights diverged (try a lower "
                             "--model.lr) or the data holds NaN/Inf")


def syncs_batch_norm(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` synchronises batch norm across its processes (``Trainer(sync_batchnorm=True)``
    with a parallel strategy, e.g. DDP).

    Lightning keeps the request only as its parallel strategy's layer sync, a
    ``TorchSyncBatchNorm`` that the strategy applies when fitting (a single-device strategy has none):
    read from there, so that this is true exactly when Lightning converts torch's batch norms.
    """
    return isinstance(getattr(trainer.strategy, "_layer_sync", None), TorchSyncBatchNorm)


def share_batch_statistics(model: torch.nn.Module, trainer: pl.Trainer) -> None:
    """Make every batch norm of ``model`` normalise as ``trainer`` asks, before it fits.

    With ``sync_batchnorm`` (:func:`syncs_batch_norm`), every
    :class:`~steerable_sr.nn.FieldBatchNorm` normalises in training mode with the statistics of the
    union of the processes' batches (:meth:`~steerable_sr.nn.FieldBatchNorm.convert_sync`, on the
    default process group, as Lightning's conversion of torch's batch norms): a step of ``P``
    processes holding ``B`` samples each computes the running statistics and the (averaged)
    gradients of one process holding all ``P B``. Nothing changes with one process. Without
    ``sync_batchnorm`` and with several processes, each normalises with its own batch: said in one
    line of the log.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place.
    trainer : lightning.pytorch.Trainer
        Its strategy set up to the process group (as in Lightning's ``setup`` hooks).
    """
    if syncs_batch_norm(trainer):
        from .nn import FieldBatchNorm  # escnn: loaded here, not with this module (a cnn needs none)

        FieldBatchNorm.convert_sync(model)
    elif trainer.world_size > 1:
        rank_zero_info(f"Batch-norm statistics are per process ({trainer.world_size} processes, each "
                       "normalising with its own batch); sync_batchnorm (--trainer.sync_batchnorm true) "
                       "shares them")


def unshare_batch_statistics(model: torch.nn.Module, trainer: pl.Trainer) -> None:
    """Undo :func:`share_batch_statistics` after fitting: every :class:`~steerable_sr.nn.FieldBatchNorm`
    of ``model`` normalises with its process's batch again (as Lightning reverts torch's synchronised
    batch norms)."""
    if syncs_batch_norm(trainer):
        from .nn import FieldBatchNorm

        for layer in model.modules():
            if isinstance(layer, FieldBatchNorm):
                layer.statistics_group = None


class SuperResolutionModule(pl.LightningModule):
    """Super-resolution of ``frames`` low-res velocity frames to the middle frame at ``upscale`` x.

    The network (:attr:`model`, :func:`steerable_sr.models.build_model`) maps ``(B, 3 frames, n, n, n)``
    to ``(B, 3, upscale n, upscale n, upscale n)``, equivariant to ``group`` (exactly, or to the
    stabilizer of its relaxed weights for the relaxed kinds).

    Parameters
    ----------
    kind : {"cnn", "gcnn", "rgcnn", "steer", "rsteer"}
        Model family (:data:`steerable_sr.models.KINDS`).
    group : {"Oh", "O"}
        Symmetry group of the equivariant kinds (:data:`steerable_sr.groups.GROUPS`): 48 or 24 elements.
    frames : int
        Number of input frames (stacked as ``3 * frames`` channels).
    upscale : int
        Super-resolution factor.
    preset : str
        Size preset of :func:`steerable_sr.models.build_model` (e.g. ``"small"``).
    model_overrides : dict, optional
        Extra keyword arguments of ``build_model`` (e.g. ``{"hidden": 4}``).
    lr : float
        Adam learning rate.
    weight_decay : float
        Adam weight decay (4e-4, as Wang et al.).
    gamma : float
        StepLR decay per epoch (0.95, as Wang et al.).
    penalty_weight : float
        Weight of ``model.equivariance_penalty()`` in the loss (relaxed kinds).
    val_equivariance_elements : int
        Group elements checked on one validation batch per epoch (0 disables it).
    test_equivariance_elements : int, optional
        Elements checked in test (``None``: the whole group).
    divergence_periodic : bool
        Treat samples as whole periodic boxes for the divergence residual (default ``False``:
        interior central differences, right for crops).
    """

    def __init__(
        self,
        kind: Kind = "rsteer",
        group: Group = "Oh",
        frames: int = 3,
        upscale: int = 4,
        preset: str = "small",
        model_overrides: Optional[dict[str, Any]] = None,
        lr: float = 1e-3,
        weight_decay: float = 4e-4,
        gamma: float = 0.95,
        penalty_weight: float = 0.0,
        val_equivariance_elements: int = 4,
        test_equivariance_elements: Optional[int] = None,
        divergence_periodic: bool = False,
    ) -> None:
        super().__init__()
        quiet_lightning()
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; allowed values: {', '.join(KINDS)}")
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; allowed values: {', '.join(GROUPS)}")
        for name, value, lo in (("frames", frames, 1), ("upscale", upscale, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0 or penalty_weight < 0:
            raise ValueError("weight_decay and penalty_weight must be >= 0")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.save_hyperparameters()
        self.model = build_model(kind, group=group, frames=frames, upscale=upscale, preset=preset,
                                 **(model_overrides or {}))
        # Velocity scale of the training data (set from the datamodule when it exposes one); kept in
        # the checkpoint so prediction on raw data can normalise the same way.
        self.register_buffer("velocity_scale", torch.ones(()), persistent=True)
        # Input resolution n seen in training (0 until the first batch): prediction checks against it.
        self.register_buffer("train_input_size", torch.zeros((), dtype=torch.long), persistent=True)

    # ------------------------------------------------------------------ model
    def forward(self, low_res: torch.Tensor) -> torch.Tensor:
        return self.model(low_res)

    def penalty(self) -> torch.Tensor:
        return self.model.equivariance_penalty()

    # ------------------------------------------------------------------ setup / RNG
    def setup(self, stage: str) -> None:
        """Take the datamodule's velocity scale and, when fitting, share the batch statistics across
        the processes as the trainer asks (:func:`share_batch_statistics`)."""
        if self._trainer is None or stage != "fit":
            return
        scale = getattr(getattr(self.trainer, "datamodule", None), "velocity_scale", None)
        if scale is not None:
            self.velocity_scale.fill_(float(scale))
        share_batch_statistics(self.model, self.trainer)

    def teardown(self, stage: str) -> None:
        """After fitting, undo :func:`share_batch_statistics`."""
        if stage == "fit" and self._trainer is not None:
            unshare_batch_statistics(self.model, self.trainer)

    def on_train_epoch_start(self) -> None:
        """Reseed the global RNGs from ``(PL_GLOBAL_SEED, epoch, rank)`` (exact resume: module docstring)."""
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is None:
            return
        s = (int(seed) * 1_000_003 + self.current_epoch * 7919 + self.global_rank) % (2 ** 31 - 1)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_compatible(checkpoint, {k: self.hparams[k] for k in ARCHITECTURE_KEYS})

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _split(batch):
        if isinstance(batch, dict):
            return batch["low_res"], batch.get("high_res")
        if isinstance(batch, (list, tuple)):
            return batch[0], (batch[1] if len(batch) > 1 else None)
        return batch, None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self._split(batch)
        if int(self.train_input_size) == 0:
            self.train_input_size.fill_(int(x.shape[-1]))
        pred = self(x)
        l1 = F.l1_loss(pred, y)
        pen = self.penalty()
        loss = l1 + self.hparams.penalty_weight * pen
        check_finite_loss(f"training step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})",
                          l1=l1, penalty=pen)
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("train/l1", l1, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("train/penalty", pen.detach().float(), on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def _eval_step(self, batch, batch_idx: int, stage: str, elements) -> None:
        x, y = self._split(batch)
        pred = self(x)
        bs = x.shape[0]
        l1, pen = F.l1_loss(pred, y), self.penalty()
        check_finite_loss(f"{stage} batch {batch_idx} (epoch {self.current_epoch})", l1=l1, penalty=pen)
        loss = l1 + self.hparams.penalty_weight * pen
        logs: dict[str, float] = {f"{stage}/loss": float(loss)}
        periodic = self.hparams.divergence_periodic
        for key, value in metrics.field_metrics(pred, y, periodic=periodic).items():
            logs[f"{stage}/{key}"] = value
        logs[f"{stage}/div_true"] = float(metrics.divergence_residual(y.float(), periodic=periodic))
        base = metrics.trilinear(x.float(), self.hparams.upscale)
        for key, value in metrics.field_metrics(base, y, periodic=periodic).items():
            logs[f"{stage}/trilinear_{key}"] = value
        mae = logs.pop(f"{stage}/mae")
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log(f"{stage}/mae", mae, prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=bs, sync_dist=True)
        if batch_idx == 0 and (elements is None or elements > 0):
            with torch.autocast(device_type=x.device.type, enabled=False):
                err = metrics.equivariance_error(self.model, x.float(), self.hparams.group, elements)
            self.log(f"{stage}/equiv_err", float(err), on_step=False, on_epoch=True, reduce_fx="max",
                     batch_size=bs, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val", self.hparams.val_equivariance_elements)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test", self.hparams.test_equivariance_elements)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x, _ = self._split(batch)
        return self(x)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=self.hparams.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch", "frequency": 1}}


#: The hyperparameters that define the network: a checkpoint's weights fit only the same values.
ARCHITECTURE_KEYS = ("kind", "group", "frames", "upscale", "preset", "model_overrides")


def check_checkpoint_compatible(checkpoint: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming every hyperparameter of ``expected`` that the
    checkpoint holds with another value (``None`` and ``{}`` are the same ``model_overrides``)."""
    found = checkpoint.get("hyper_parameters") or {}
    diffs = [f"{k}: checkpoint has {found[k]!r}, the config asks for {v!r}" for k, v in expected.items()
             if k in found and _normalised(found[k]) != _normalised(v)]
    if diffs:
        raise CheckpointMismatchError("the checkpoint does not hold the model asked for (" + "; ".join(diffs) + ")")


def _normalised(value: Any) -> Any:
    return {} if value is None else value
