"""The score test (steerable_sr.score_test): what the block-mean gradients break, and the gradients
themselves."""
import numpy as np
import pytest
import torch

from escnn import nn as enn

from steerable_sr import fields, groups
from steerable_sr.models import build_model
from steerable_sr.nn import OctahedralConv
from steerable_sr.nn.fourier import peter_weyl_basis
from steerable_sr.nn.relaxed import relaxed_layers
from steerable_sr.score_test import relaxed_gradients, score_test
from steerable_sr.testing import random_invariant_weights

D4H_X = set(groups.subgroup_elements("D4h, axis x"))
D2H = set(groups.subgroup_elements("D2h"))


@pytest.mark.parametrize("H", [D4H_X, D2H])
def test_an_H_invariant_mean_over_noisy_blocks_is_broken_exactly_outside_H(H):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    mean = random_invariant_weights(H, banks=3).double().numpy()  # constant on the cosets H g
    mean -= mean.mean(axis=1, keepdims=True)
    gradients = mean[None] + 0.3 * rng.standard_normal((12, 3, 48))
    result = score_test(gradients)
    assert set(result.broken) == set(range(48)) - H
    assert set(result.keeps) == H


def test_pure_noise_gives_uniform_p_values():
    """White noise keeps every element: the p-value of each element is uniform on [0, 1], so 5% of
    them fall below 0.05. Over 100 draws x 47 elements (not independent within a draw: the elements
    share the draw's scatter), the fraction is within 0.05 +- 0.02 (3 binomial standard errors of 100
    independent draws, 0.022, bound the draw-to-draw part)."""
    rng = np.random.default_rng(1)
    p = np.array([score_test(rng.standard_normal((8, 4, 48))).p_value[1:] for _ in range(100)])
    assert abs((p < 0.05).mean() - 0.05) < 0.02
    assert abs(p.mean() - 0.5) < 0.05


def test_noise_breaks_nothing_at_the_family_wise_level():
    rng = np.random.default_rng(2)
    assert all(score_test(rng.standard_normal((8, 4, 48))).broken == [] for _ in range(20))


@pytest.mark.parametrize("shape", [(2, 2, 48), (4, 48), (4, 2, 24)])
def test_gradients_of_a_wrong_shape_are_refused(shape):
    with pytest.raises(ValueError, match="shape"):
        score_test(np.zeros(shape))


def test_nan_gradients_are_refused():
    g = np.zeros((4, 2, 48))
    g[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score_test(g)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("rgcnn", group="Oh", frames=3, upscale=4, preset="small", hidden=1, trilinear_skip=False)


class VelocityConv(torch.nn.Module):
    """One relaxed convolution, vector field to vector field, on public tensors ``(N, 3, n, n, n)``."""

    def __init__(self) -> None:
        super().__init__()
        velocity = fields.velocity_type("Oh")
        self.conv = OctahedralConv(velocity, velocity, num_filter_banks=2, kernel_size=3)
        self.to_escnn, self.to_public = fields.FrameAdapter("to_escnn"), fields.FrameAdapter("to_public")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_public(self.conv(enn.GeometricTensor(self.to_escnn(x), self.conv.in_type)).tensor)


def orbit_blocks(elements, samples: int, seed: int, shapes=((1, 9, 4, 4, 4), (1, 3, 16, 16, 16))):
    """Per block, one random sample moved by every element: ``(k.x, k.y)`` for ``k`` in ``elements``."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(samples):
        x, y = (torch.randn(*shape, generator=g) for shape in shapes)
        blocks.append([(groups.act(x, groups.group_matrices("Oh")[k], "vector"),
                        groups.act(y, groups.group_matrices("Oh")[k], "vector")) for k in sorted(elements)])
    return blocks


@pytest.mark.parametrize("H", [D4H_X, D2H])
def test_the_gradient_over_an_H_orbit_of_the_data_is_H_invariant(H):
    """The basis of the test: with weights that keep H, data whose distribution keeps H give an
    H-invariant expected gradient; over the orbit of a sample it is exactly so (a layer without
    nonlinearity, so that no kink of an activation sits within round-off of the moved input).
    float32 sums of ~1e4 products: round-off ~1e-6 relative."""
    torch.manual_seed(1)
    layer = VelocityConv()
    layer.conv.set_relaxed_weights_on_group(random_invariant_weights(H))
    shapes = ((1, 3, 6, 6, 6),) * 2
    gradients = relaxed_gradients(layer, orbit_blocks(H, samples=2, seed=0, shapes=shapes), block_tol=float("inf"))
    table, inv = groups.cayley_table("Oh"), groups.inverses("Oh")
    scale = np.abs(gradients).max()
    defect = {k: np.abs(gradients - gradients[:, :, table[inv[k]]]).max() / scale for k in range(48)}
    assert max(defect[k] for k in H) < 1e-5
    assert min(defect[k] for k in set(range(48)) - H) > 1e-2


def test_relaxed_gradients_leave_the_model_as_it_was(model):
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gradients = relaxed_gradients(model, orbit_blocks({0}, samples=3, seed=1))
    banks = sum(layer.relaxed.num_filter_banks for _, layer in relaxed_layers(model))
    assert gradients.shape == (3, banks, 48)
    assert not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_significant_blocks_of_the_weights_are_left_out(model):
    """Where the weights hold a block significant, the gradient balances the penalty: the test reads
    only the other blocks. Weights broken everywhere leave no gradient to test."""
    phi, _ = peter_weyl_basis("Oh")
    coefficients = np.ones(48)
    coefficients[0] = np.sqrt(48)  # mean 1; every other block's significance 1 / sqrt(48) >> BLOCK_TOL
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for _, layer in relaxed_layers(model):
            banks = layer.relaxed.num_filter_banks
            layer.set_relaxed_weights_on_group(torch.from_numpy(coefficients @ phi).float().expand(banks, 48))
        gradients = relaxed_gradients(model, orbit_blocks({0}, samples=2, seed=2))
        assert np.abs(gradients).max() < 1e-12
    finally:
        model.load_state_dict(state)


def test_a_model_without_relaxed_layers_is_refused():
    exact = build_model("gcnn", group="Oh", frames=3, upscale=4, preset="small", hidden=1, trilinear_skip=False)
    with pytest.raises(ValueError, match="no relaxed layers"):
        relaxed_gradients(exact, [[(torch.zeros(1, 9, 4, 4, 4), torch.zeros(1, 3, 16, 16, 16))]])
