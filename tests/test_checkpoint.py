"""Checkpoints are data (steerable_sr.checkpoint): what this version writes reads with weights_only;
a file that would run code is refused before anything in it runs, unless explicitly trusted.

Tiny: a 16^3 generated dataset, a narrow cnn trained for one step.
"""
import datetime

import lightning.pytorch as pl
import pytest
import torch

from steerable_sr.checkpoint import (SAFE_GLOBALS, CheckpointReader, TrustedCheckpointWarning, UntrustedCheckpointError,
                                     load_module, read_checkpoint)
from steerable_sr.data.dataset import TurbulenceDataModule
from steerable_sr.export import write_export
from steerable_sr.training import SuperResolutionModule

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A checkpoint written by this version (Trainer.save_checkpoint after one step), the module that
    wrote it, and the folder. The datamodule is given a pathlib.Path, which its hyperparameters keep."""
    from steerable_sr.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("checkpoint")
    generate_dataset(root / "tiny.h5", n=16, frames=16, spinup=0.5, splits=(0.5, 0.25, 0.25), progress=False)
    pl.seed_everything(0)
    module = SuperResolutionModule(kind="cnn", model_overrides={"hidden": 2}, val_equivariance_elements=0)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=1, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, TurbulenceDataModule(root / "tiny.h5", crop=None, batch_size=2))
    trainer.save_checkpoint(root / "genuine.ckpt")
    return root / "genuine.ckpt", module.eval(), root


def _with_entry(genuine_path, path, value):
    checkpoint = read_checkpoint(genuine_path)
    checkpoint["extra"] = value
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_of_this_version_is_data(genuine):
    path, module, root = genuine
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):  # the only types allowed beyond plain data
        checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["path"] == root / "tiny.h5"
    assert read_checkpoint(path)["hyper_parameters"]["model_overrides"] == {"hidden": 2}
    loaded = load_module(path)
    x = torch.randn(2, 9, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)
    assert float(loaded.velocity_scale) == float(module.velocity_scale) != 1.0


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(genuine, tmp_path, code_in_pickle):
    path, _, _ = genuine
    evil = _with_entry(path, tmp_path / "evil.ckpt", code_in_pickle(tmp_path / "created"))
    with pytest.raises(UntrustedCheckpointError, match=r"evil.ckpt: refused: the file holds io.open, .* pass "
                                                       r"--trust-checkpoint"):
        read_checkpoint(evil)
    assert not (tmp_path / "created").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]


def test_trust_reads_a_checkpoint_beyond_data_with_a_warning(genuine, tmp_path):
    path, _, _ = genuine
    dated = _with_entry(path, tmp_path / "dated.ckpt", datetime.date(2024, 7, 1))  # harmless, but not data
    with pytest.raises(UntrustedCheckpointError, match="holds datetime.date"):
        read_checkpoint(dated)
    with pytest.warns(TrustedCheckpointWarning, match="dated.ckpt: read with the full unpickler"):
        checkpoint = read_checkpoint(dated, trust=True)
    assert checkpoint["extra"] == datetime.date(2024, 7, 1)


def test_files_that_are_not_checkpoints_are_named(genuine, tmp_path):
    path, module, _ = genuine
    data = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.ckpt: truncated or damaged file: the beginning of a checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")
    write_export(module, tmp_path / "export.pt", source=str(path))
    exported = (tmp_path / "export.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(exported[: len(exported) // 2])
    with pytest.raises(ValueError, match="export.pt is an exported module"):
        read_checkpoint(tmp_path / "export.pt")
    with pytest.raises(ValueError, match="cut.pt: truncated or damaged file: the beginning of an exported module"):
        read_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.ckpt is not a training checkpoint"):
        read_checkpoint(tmp_path / "notes.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_lightning_reader_hands_over_a_preloaded_checkpoint_once(genuine):
    path, _, _ = genuine
    reader = CheckpointReader()
    checkpoint = reader.preload(path)
    assert reader.load_checkpoint(path) is checkpoint
    again = reader.load_checkpoint(path)
    assert again is not checkpoint and again["global_step"] == checkpoint["global_step"] == 1
