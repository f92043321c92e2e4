"""Fixtures shared by the specification tests (tolerances, equivariance assertions and random inputs
live in :mod:`steerable_sr.testing`)."""
import pytest
import torch

from steerable_sr.models import build_model


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


@pytest.fixture(params=[{"kernel_size": 3}, {"kernel_size": 4, "stride": 2, "transposed": True}],
                ids=["conv", "transposed"])
def spatial(request) -> dict:
    """The two exact geometries of a grid convolution: ``k = 3`` 'same', and ``k = 4, s = 2`` upsampling."""
    return request.param


@pytest.fixture(scope="session")
def model_with_statistics():
    """``make(kind, **options)``: ``build_model(kind, trilinear_skip=False, **options)`` whose batch-norm
    statistics come from one training-mode pass on a random 4^3 batch, in eval mode. Without the
    trilinear skip, the errors measured are those of the learned network alone; ``options`` may turn
    it on where the whole network is compared (tiles, stages)."""
    def make(kind: str, **options):
        model = build_model(kind, **{"trilinear_skip": False, **options})
        with torch.no_grad():
            model(torch.randn(2, model.in_channels, 4, 4, 4))
        return model.eval()

    return make


class _CreatesFile:
    """Unpickling this object opens ``target`` for writing: it creates the file (what code hidden in a
    checkpoint could do)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


@pytest.fixture(scope="session")
def code_in_pickle():
    """``make(target)``: an object whose unpickling creates the file ``target``: put into a genuine
    checkpoint, it stands for code that reading the checkpoint would run."""
    return _CreatesFile
