"""Shared helpers for the specification tests.

Tolerances: an exactly equivariant float32 network differs from its transformed copy only by
summation order, ~1e-7 relative per operation over a few dozen layers, so 1e-5 relative is the
bar for "equivariant"; "clearly not" means 1e-2 or more.
"""
import pytest
import torch

EQUIVARIANT_TOL = 1e-5
BROKEN_TOL = 1e-2


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def single_thread():
    """One intra-op thread: small FFTs and convolutions are faster so, and a second process on the
    2 cores does not stall OpenMP. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
