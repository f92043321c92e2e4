"""SuperResolutionModule: fit, logged metrics, checkpoint rebuild, exact resume, relaxed penalty.

Tiny: a 16^3 generated dataset (4^3 -> 16^3 samples), narrow models, a few steps each.
"""
import math

import lightning.pytorch as pl
import pytest
import torch

from steerable_sr.checkpoint import load_module
from steerable_sr.data.dataset import TurbulenceDataModule
from steerable_sr.training import CheckpointMismatchError, NonFiniteLossError, SuperResolutionModule


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from steerable_sr.data.generate import generate_dataset

    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    generate_dataset(path, n=16, frames=16, spinup=0.5, splits=(0.5, 0.25, 0.25), progress=False)
    return path


def _dm(path, **kw):
    kw = {"batch_size": 2, "crops_per_window": 2, "seed": 0, **kw}
    return TurbulenceDataModule(str(path), crop=None, **kw)


def _trainer(root, epochs, **kw):
    cb = pl.callbacks.ModelCheckpoint(dirpath=str(root), save_last=True, save_top_k=0)
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[cb],
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="unknown model kind"):
        SuperResolutionModule(kind="transformer")
    with pytest.raises(ValueError, match="lr must be > 0"):
        SuperResolutionModule(kind="cnn", lr=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        SuperResolutionModule(kind="cnn", gamma=1.5)


def test_fit_logs_metrics_and_checkpoint_rebuilds_model(dataset, tmp_path):
    pl.seed_everything(0)
    module = SuperResolutionModule(kind="cnn", model_overrides={"hidden": 2}, val_equivariance_elements=2)
    dm = _dm(dataset)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(module, dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/loss", "train/l1", "train/penalty", "val/mae", "val/rmse", "val/rel_l2", "val/spec_err",
                "val/spec_err_low", "val/spec_err_mid", "val/spec_err_high", "val/div", "val/div_true",
                "val/trilinear_mae", "val/trilinear_spec_err", "val/equiv_err"):
        assert key in m and math.isfinite(m[key]), key
    assert m["train/penalty"] == 0.0  # not relaxed
    assert m["val/equiv_err"] > 1e-3  # a plain CNN is not equivariant
    # The truth's divergence floor: interior central differences of a solenoidal field give, per Fourier
    # mode, div = sum_j sin(k_j h) / h u_j = -(h^2 / 6) sum_j k_j^3 u_j + O(h^4), at most (|k| h)^2 / 6 of
    # |grad u|. On h = 2 pi / 16 with the gradient energy in the forcing band |k| <= 2 that is
    # (2 * 2 pi / 16)^2 / 6 = 0.10 (measured: 0.04); trilinear fields from 4^3 obey no such bound (0.29).
    assert m["val/div_true"] < 0.1
    assert m["val/div_true"] < m["val/trilinear_div"]
    assert trainer.global_step == 4  # 4 windows x 2 crops / batch 2
    assert float(module.velocity_scale) == pytest.approx(dm.velocity_scale)
    assert int(module.train_input_size) == 4

    ckpt = tmp_path / "last.ckpt"
    loaded = load_module(ckpt)
    assert loaded.hparams.kind == "cnn" and loaded.hparams.model_overrides == {"hidden": 2}
    x = torch.randn(1, 9, 4, 4, 4)
    module.eval()
    torch.testing.assert_close(loaded(x), module(x))
    assert float(loaded.velocity_scale) == pytest.approx(dm.velocity_scale)
    with pytest.raises(CheckpointMismatchError, match="'cnn' model, expected 'steer'"):
        load_module(ckpt, expect_kind="steer")
    with pytest.raises(FileNotFoundError):
        load_module(tmp_path / "missing.ckpt")

    # resuming with a model of another kind: a clear error before any weight is loaded
    other = SuperResolutionModule(kind="steer", model_overrides={"hidden": 1})
    with pytest.raises(CheckpointMismatchError, match="kind: checkpoint has 'cnn'"):
        _trainer(tmp_path / "other", 2).fit(other, _dm(dataset), ckpt_path=str(ckpt))


def _run(dataset, root, epochs, ckpt=None, kind="cnn"):
    pl.seed_everything(123)
    module = SuperResolutionModule(kind=kind, model_overrides={"hidden": 2}, val_equivariance_elements=0, lr=3e-3)
    trainer = _trainer(root, epochs, limit_val_batches=1)
    trainer.fit(module, _dm(dataset), ckpt_path=None if ckpt is None else str(ckpt))
    return module, trainer


def test_resume_reproduces_an_uninterrupted_run(dataset, tmp_path):
    straight, t1 = _run(dataset, tmp_path / "straight", 3)
    _, t_part = _run(dataset, tmp_path / "part", 1)  # "killed" after the first epoch (4 steps)
    assert t_part.global_step == 4
    resumed, t2 = _run(dataset, tmp_path / "resumed", 3, ckpt=tmp_path / "part" / "last.ckpt")
    assert t1.global_step == t2.global_step == 12
    diff = max((a - b).abs().max().item() for a, b in zip(straight.parameters(), resumed.parameters()))
    assert diff <= 1e-6
    # batch-norm running statistics and the learning-rate schedule too
    for (name, a), (_, b) in zip(straight.named_buffers(), resumed.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert t1.optimizers[0].param_groups[0]["lr"] == pytest.approx(t2.optimizers[0].param_groups[0]["lr"])
    assert t2.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-3 * 0.95 ** 3)


def test_relaxed_model_fit_penalty_and_test_metrics(dataset, tmp_path):
    pl.seed_everything(0)
    module = SuperResolutionModule(kind="rsteer", model_overrides={"hidden": 1}, penalty_weight=0.5, lr=1e-2,
                                   val_equivariance_elements=2)
    assert float(module.penalty().detach()) == 0.0  # relaxed weights start trivial: exactly equivariant
    dm = _dm(dataset, crops_per_window=1)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(module, dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["train/penalty"] > 0.0  # training moved the relaxed weights off the trivial irrep
    assert m["train/loss"] > m["train/l1"]
    out = trainer.test(module, dm, verbose=False)[0]
    assert "test/equiv_err" in out and math.isfinite(out["test/equiv_err"])
    assert "test/trilinear_mae" in out and "test/div_true" in out


@pytest.mark.parametrize("kind", ["cnn", "rsteer"])
def test_bf16_mixed_precision_fit(dataset, tmp_path, kind):
    pl.seed_everything(0)
    module = SuperResolutionModule(kind=kind, model_overrides={"hidden": 1}, val_equivariance_elements=1)
    trainer = _trainer(tmp_path, 1, precision="bf16-mixed", limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, _dm(dataset, crops_per_window=1))
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert math.isfinite(m["train/loss"]) and math.isfinite(m["val/mae"]) and math.isfinite(m["val/equiv_err"])


def test_diverging_fit_stops_with_an_error_before_any_checkpoint(dataset, tmp_path):
    pl.seed_everything(0)
    module = SuperResolutionModule(kind="cnn", model_overrides={"hidden": 2}, lr=1e30)  # one step overflows
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at training step 1 \(epoch 0, batch 1\) "
                                                 r"\(l1 = nan, penalty = 0\)"):
        _trainer(tmp_path, 1).fit(module, _dm(dataset))
    assert list(tmp_path.iterdir()) == []


def test_training_shows_no_warning_from_lightnings_internals(dataset, tmp_path, recwarn):
    pl.seed_everything(0)
    module = SuperResolutionModule(kind="cnn", model_overrides={"hidden": 2}, val_equivariance_elements=0)
    _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=1).fit(module, _dm(dataset))
    assert [str(w.message) for w in recwarn if "LeafSpec" in str(w.message)] == []
