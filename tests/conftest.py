"""Fixtures shared by the specification tests (tolerances and equivariance assertions live in
:mod:`steerable_sr.testing`)."""
import pytest
import torch


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
