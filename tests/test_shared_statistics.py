"""Batch statistics shared across processes (``FieldBatchNorm.convert_sync``): two gloo processes, each
holding half a batch, compute what one process computes with the whole batch.

Each case runs a training-mode forward pass and the backward of a fixed linear loss ``sum(y * w)``;
the processes' outputs and input gradients are joined along the batch, their parameter gradients
summed (what data-parallel training all-reduces), and compared with one process on the whole batch.
Tiny inputs: a layer on 4^3 grids, models 2^3 -> 8^3 (group O, one hidden field), in float64: in
float32 the round-off of these gradients alone is ~1e-6 relative (float32 against float64 of the
same step), and the comparison is of the sharing."""
import functools

import pytest
import torch
import torch.multiprocessing as mp

from steerable_sr import fields
from steerable_sr.nn import FieldBatchNorm
from steerable_sr.testing import relative_error

pytestmark = pytest.mark.usefixtures("single_thread")

WORLD = 2
BATCH = 4
# The same sums in another order, in float64 but for a few float32 accumulations (the norms'
# per-channel gradient sums, the slab recomputation's filter gradients): round-off up to ~1e-7
# relative. Processes that normalised with their half batch's statistics are off by 1e-4 to 1e-2.
TOL = 1e-6


def _cases() -> dict:
    """``name -> (build, input shape)``; ``build()`` returns a float64 module in training mode."""
    from steerable_sr.models import build_model

    def model(kind: str) -> torch.nn.Module:
        net = build_model(kind, group="O", hidden=1, checkpoint_blocks=True).double()
        net.slab_bytes = 1  # blocks recomputed one depth plane at a time
        return net

    return {
        "irrep-norm": (lambda: FieldBatchNorm(fields.irrep_type("O", 2)).double(), (BATCH, 20, 4, 4, 4)),
        "regular-norm": (lambda: FieldBatchNorm(fields.regular_type("O", 1)).double(), (BATCH, 24, 4, 4, 4)),
        "rsteer-checkpointed": (functools.partial(model, "rsteer"), (BATCH, 9, 2, 2, 2)),
        "gcnn-checkpointed": (functools.partial(model, "gcnn"), (BATCH, 9, 2, 2, 2)),
    }


def _forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from escnn import nn as enn

    if isinstance(module, enn.EquivariantModule):
        return module(enn.GeometricTensor(x, module.in_type)).tensor
    return module(x)


def _run(module: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict:
    """Output, input gradient, parameter gradients and running statistics of one training step."""
    x = x.clone().requires_grad_()
    y = _forward(module.train(), x)
    (y * w).sum().backward()
    running = {name: b.clone() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var"))}
    return {"output": y.detach(), "input_grad": x.grad,
            "parameter_grads": torch.cat([p.grad.flatten() for p in module.parameters()]), **running}


def _worker(rank: int, directory: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank,
                                         world_size=WORLD)
    try:
        data = torch.load(f"{directory}/data.pt")
        results = {}
        for name, (build, _) in _cases().items():
            module = build()
            module.load_state_dict(data[name]["state"])
            FieldBatchNorm.convert_sync(module)
            part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            results[name] = _run(module, data[name]["x"][part], data[name]["w"][part])
        torch.save(results, f"{directory}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def shared_and_whole(tmp_path_factory) -> dict:
    """Per case: the two processes' results, and one process's on the whole batch."""
    directory = tmp_path_factory.mktemp("shared_statistics")
    torch.manual_seed(0)
    data, modules = {}, {}
    for name, (build, shape) in _cases().items():
        module = build()
        x = torch.randn(shape, dtype=torch.float64)
        with torch.no_grad():
            w = torch.randn_like(_forward(module.eval(), x))
        data[name], modules[name] = {"state": module.state_dict(), "x": x, "w": w}, module
    torch.save(data, directory / "data.pt")
    mp.spawn(_worker, args=(str(directory),), nprocs=WORLD, join=True)
    ranks = [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD)]
    for module in modules.values():
        # The processes normalise regular fields by the general formulas (the fused native batch norm
        # cannot share statistics); so does the whole-batch reference, so that only the sharing is
        # compared (the two paths agree to round-off: test_pointwise).
        for layer in module.modules():
            if isinstance(layer, FieldBatchNorm):
                layer.regular = False
    return {name: ([r[name] for r in ranks], _run(module, data[name]["x"], data[name]["w"]))
            for name, module in modules.items()}


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES)
def test_outputs_are_those_of_the_whole_batch(case, shared_and_whole):
    ranks, whole = shared_and_whole[case]
    assert relative_error(torch.cat([r["output"] for r in ranks]), whole["output"]) < TOL


@pytest.mark.parametrize("case", CASES)
def test_running_statistics_are_those_of_the_whole_batch_on_every_process(case, shared_and_whole):
    ranks, whole = shared_and_whole[case]
    names = [key for key in whole if key.endswith(("running_mean", "running_var"))]
    assert names
    for rank in ranks:
        for name in names:
            assert relative_error(rank[name], whole[name]) < TOL, name


@pytest.mark.parametrize("case", CASES)
def test_gradients_are_those_of_the_whole_batch(case, shared_and_whole):
    # Input gradients joined along the batch; parameter gradients summed over the processes (the
    # loss of the whole batch is the sum of the processes' losses).
    ranks, whole = shared_and_whole[case]
    assert relative_error(torch.cat([r["input_grad"] for r in ranks]), whole["input_grad"]) < TOL
    assert relative_error(sum(r["parameter_grads"] for r in ranks), whole["parameter_grads"]) < TOL
