"""Data-parallel training (DDP): each process reads its own samples, and with ``sync_batchnorm`` a step
of two processes, each holding half a batch, is the step of one process holding the whole batch.

* The training sampler (:class:`~steerable_sr.data.dataset.EpochSampler`) under two processes.
* The wiring (:func:`~steerable_sr.training.share_batch_statistics`): which field batch norms share
  their statistics for which Trainer.
* End to end: Lightning's ``strategy="ddp"`` on two gloo processes started as a launcher (torchrun,
  SLURM) starts them (this file is their script), one training step of a tiny ``gcnn`` and ``rsteer``
  (group O, one hidden field, 16^3 generated data: 4^3 -> 16^3 samples, 2 per process), against
  one process with the batch of 4. In float64 (``precision="64-true"``), as the layer test
  (test_shared_statistics.py): in float32 the round-off of these gradients alone is ~1e-6 relative.
"""
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from steerable_sr.data.dataset import EpochSampler, SuperResolutionDataset, TurbulenceDataModule
from steerable_sr.testing import relative_error
from steerable_sr.training import SuperResolutionModule

pytestmark = pytest.mark.usefixtures("single_thread")

WORLD = 2
BATCH = 4  # the whole batch; BATCH // WORLD per process
KINDS = ("gcnn", "rsteer")
# The same sums in another order, in float64 but for a few float32 accumulations (the norms'
# per-channel gradient sums): round-off up to ~1e-7 relative (test_shared_statistics.py; measured
# here: up to 5e-8). Processes that normalise with their half batch's statistics are off by 1e-4
# (parameters) to 0.9 (running statistics).
TOL = 1e-6


# ---------------------------------------------------------------------------------------- sampler
def _shares(samples: int, epoch: int, world: int = WORLD) -> list[list[int]]:
    """The sample indices each of ``world`` processes reads in ``epoch``, in order."""
    frames = torch.zeros(samples + 2, 3, 4, 4, 4)  # ``samples`` windows of 3 consecutive frames
    dataset = SuperResolutionDataset(frames, range(samples + 2))
    shares = []
    for rank in range(world):
        sampler = EpochSampler(dataset, seed=3, num_replicas=world, rank=rank)
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert {e for e, _ in keys} == {epoch}
        shares.append([index for _, index in keys])
    return shares


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_the_processes_read_disjoint_shares_that_cover_the_epoch(epoch):
    shares = _shares(12, epoch)
    assert [len(share) for share in shares] == [6, 6]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(12))


def test_an_uneven_epoch_is_padded_with_its_first_samples():
    # Every process runs the same number of steps (else the gradient all-reduce would wait for
    # ever): 13 samples make 7 per process, the 14th being the first sample of the epoch's order.
    shares = _shares(13, 2)
    order = _shares(13, 2, world=1)[0]
    assert [len(share) for share in shares] == [7, 7]
    assert sorted(shares[0] + shares[1]) == sorted(order + order[:1])


def test_a_step_of_the_processes_reads_the_batch_of_one_process():
    # Per-process batch b: step s of the two processes reads the samples of step s of one
    # process with batch 2 b (as sets: the batch statistics and the mean loss do not see the order).
    b = 2
    shares, order = _shares(12, 4), _shares(12, 4, world=1)[0]
    for step in range(12 // (WORLD * b)):
        together = shares[0][step * b:(step + 1) * b] + shares[1][step * b:(step + 1) * b]
        assert sorted(together) == sorted(order[step * WORLD * b:(step + 1) * WORLD * b])


# ---------------------------------------------------------------------------------------- wiring
def _field_norms(module: SuperResolutionModule) -> list:
    from steerable_sr.nn import FieldBatchNorm

    return [layer for layer in module.modules() if isinstance(layer, FieldBatchNorm)]


def _set_up(kind: str, **trainer_options) -> SuperResolutionModule:
    """A module with the Trainer of ``trainer_options`` at Lightning's ``setup("fit")`` (no process
    is started)."""
    module = SuperResolutionModule(kind=kind, group="O", model_overrides={"hidden": 1})
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, **trainer_options)
    module.setup("fit")
    return module


@pytest.fixture
def lightning_info(caplog):
    """The INFO lines Lightning logs (its logger propagates to the root's only if the root had a
    handler when Lightning was imported)."""
    logger = logging.getLogger("lightning.pytorch")
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    own = not logger.propagate
    if own:
        logger.addHandler(caplog.handler)
    yield caplog
    if own:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("kind", KINDS)
def test_sync_batchnorm_shares_the_statistics_of_every_field_batch_norm(kind, lightning_info):
    module = _set_up(kind, strategy="ddp", devices=WORLD, sync_batchnorm=True)
    norms = _field_norms(module)
    assert len(norms) == 9
    assert all(layer.statistics_group is not None for layer in norms)
    assert "per process" not in lightning_info.text
    module.teardown("fit")  # after fitting: per process again
    assert all(layer.statistics_group is None for layer in norms)


def test_without_sync_batchnorm_the_statistics_are_per_process_and_logged(lightning_info):
    module = _set_up("gcnn", strategy="ddp", devices=WORLD)
    assert all(layer.statistics_group is None for layer in _field_norms(module))
    lines = [r.getMessage() for r in lightning_info.records if "per process" in r.getMessage()]
    assert lines == ["Batch-norm statistics are per process (2 processes, each normalising with its own batch); "
                     "sync_batchnorm (--trainer.sync_batchnorm true) shares them"]


def test_one_process_is_left_as_it_is(lightning_info):
    module = _set_up("gcnn", devices=1, sync_batchnorm=True)
    assert all(layer.statistics_group is None for layer in _field_norms(module))
    assert "per process" not in lightning_info.text


# ---------------------------------------------------------------------------------------- end to end
class _Gradients(pl.Callback):
    """The parameters' gradients of the step, as the optimizer reads them (averaged over the
    processes by DDP)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.gradients = torch.cat([p.grad.flatten() for p in pl_module.parameters()])


def _step(kind: str, data: str, state: dict, devices: int, **trainer_options) -> dict:
    """Gradients, parameters after the step and running statistics of one training step of
    ``devices`` processes with batch ``BATCH // devices`` each, from the weights ``state``."""
    module = SuperResolutionModule(kind=kind, group="O", model_overrides={"hidden": 1}, val_equivariance_elements=0)
    module.load_state_dict(state)
    recorder = _Gradients()
    trainer = pl.Trainer(accelerator="cpu", devices=devices, precision="64-true", max_steps=1, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[recorder], **trainer_options)
    trainer.fit(module, TurbulenceDataModule(data, batch_size=BATCH // devices))
    running = {name: b.clone() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var"))}
    return {"gradients": recorder.gradients,
            "parameters": torch.cat([p.detach().flatten() for p in module.parameters()]), **running}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def processes_and_one(tmp_path_factory) -> dict:
    """Per kind: the two processes' steps, and one process's step on the whole batch."""
    from steerable_sr.data.generate import generate_dataset

    directory = tmp_path_factory.mktemp("ddp")
    data = generate_dataset(directory / "tiny.h5", n=16, frames=16, spinup=0.0, splits=(0.5, 0.25, 0.25),
                            progress=False)
    torch.manual_seed(0)
    states = {kind: SuperResolutionModule(kind=kind, group="O", model_overrides={"hidden": 1}).state_dict()
              for kind in KINDS}
    torch.save({"data": str(data), **states}, directory / "initial.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD), "NODE_RANK": "0"}
    procs = [subprocess.Popen([sys.executable, __file__, str(directory)], env={**env, "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(WORLD)]
    try:
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    assert "Batch-norm statistics are per process" not in outputs[0]
    ranks = [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD)]
    return {kind: ([r[kind] for r in ranks], _step(kind, str(data), states[kind], devices=1)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_running_statistics_are_those_of_the_whole_batch_on_every_process(kind, processes_and_one):
    ranks, one = processes_and_one[kind]
    names = [key for key in one if key.endswith(("running_mean", "running_var"))]
    assert len(names) == 2 * 9
    for rank in ranks:
        for name in names:
            assert relative_error(rank[name], one[name]) < TOL, name


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_those_of_the_whole_batch(kind, processes_and_one):
    # The loss of each process is the mean over its half batch and DDP averages the gradients: the
    # gradient of the mean over the whole batch. (Without shared statistics: off by ~1e-3.)
    ranks, one = processes_and_one[kind]
    for rank in ranks:
        assert relative_error(rank["gradients"], one["gradients"]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_after_the_step_are_those_of_the_whole_batch(kind, processes_and_one):
    # Adam's first step moves every entry by lr g / (|g| + eps), lr = 1e-3, eps = 1e-8: a round-off
    # dg of an entry whose gradient is 0 (the norms' biases outside the invariant subspace; dg up
    # to ~5e-12 here) moves it by up to lr dg / eps ~ 5e-7; over a few hundred such entries ~1e-6
    # against parameters of norm ~20: ~5e-8 relative (measured: 4e-8, 5e-8). (The steps themselves
    # differ by 1e-5 relative so: not compared.) Without shared statistics: off by ~2e-4.
    ranks, one = processes_and_one[kind]
    for rank in ranks:
        assert relative_error(rank["parameters"], one["parameters"]) < TOL


def _process_main(directory: Path) -> None:
    """One of the two processes: the steps with ``strategy="ddp"`` and ``sync_batchnorm``, saved."""
    torch.set_num_threads(1)
    initial = torch.load(directory / "initial.pt")
    results = {kind: _step(kind, initial["data"], initial[kind], devices=WORLD, strategy="ddp", sync_batchnorm=True)
               for kind in KINDS}
    torch.save(results, directory / f"rank{os.environ['LOCAL_RANK']}.pt")


if __name__ == "__main__":
    _process_main(Path(sys.argv[1]))
