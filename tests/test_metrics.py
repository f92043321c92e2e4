import math

import pytest
import torch

from steerable_sr import groups, metrics


def _grid(n):
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.meshgrid(x, x, x, indexing="ij")


def test_pointwise_errors_known_values():
    t = torch.zeros(2, 3, 4, 4, 4)
    p = t.clone()
    p[0] += 1.0  # sample 0 off by 1 everywhere, sample 1 exact
    assert metrics.mae(p, t).item() == pytest.approx(0.5)
    assert metrics.rmse(p, t).item() == pytest.approx(math.sqrt(0.5))
    t2 = torch.ones(2, 3, 4, 4, 4)
    p2 = 2 * t2
    p2[1] = t2[1]
    # sample 0: ||p - t|| / ||t|| = 1; sample 1: 0 -> mean 0.5
    assert metrics.relative_l2(p2, t2).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.mae(p, t[:1])


def test_single_mode_spectrum_sits_in_one_shell_and_sums_to_half_mean_square():
    n = 16
    X, Y, Z = _grid(n)
    # wavevector kappa = (3, 4, 0): |kappa| = 5; a divergence-free mode with amplitude 2 along x_2.
    u = torch.zeros(3, n, n, n, dtype=torch.float64)
    u[2] = 2.0 * torch.cos(3 * X + 4 * Y)
    E = metrics.energy_spectrum(u)
    assert E.shape == (metrics.num_shells(n),)
    half_mean_sq = 0.5 * (u ** 2).sum(0).mean()
    assert E[5].item() == pytest.approx(half_mean_sq.item(), rel=1e-12)
    assert E.sum().item() == pytest.approx(half_mean_sq.item(), rel=1e-12)
    assert (E.sum() - E[5]).abs().item() < 1e-12
    assert half_mean_sq.item() == pytest.approx(1.0)  # 1/2 * 4 * 1/2


def test_spectrum_parseval_random_field_and_batch_axes():
    torch.manual_seed(0)
    u = torch.randn(2, 5, 3, 8, 8, 8, dtype=torch.float64)
    E = metrics.energy_spectrum(u)
    assert E.shape == (2, 5, metrics.num_shells(8))
    torch.testing.assert_close(E.sum(-1), 0.5 * (u ** 2).sum(-4).mean((-3, -2, -1)))


def test_spectrum_error_bands():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 16, 16, 16)
    se = metrics.spectrum_error(t, t)
    assert set(se) == {"all", "low", "mid", "high"}
    assert all(v.item() == 0 for v in se.values())
    # scaling the field by 10 multiplies E by 100: log10 error 2 in every band
    se = metrics.spectrum_error(10 * t, t)
    for v in se.values():
        assert v.item() == pytest.approx(2.0, abs=1e-5)
    assert metrics.band_edges(16) == {"low": (1, 4), "mid": (4, 6), "high": (6, 9)}
    # a low-pass prediction is wrong only at high k
    uh = torch.fft.fftn(t, dim=(-3, -2, -1))
    k = torch.fft.fftfreq(16, 1 / 16)
    KX, KY, KZ = torch.meshgrid(k, k, k, indexing="ij")
    keep = (KX ** 2 + KY ** 2 + KZ ** 2).sqrt() < 3.5
    low = torch.fft.ifftn(uh * keep, dim=(-3, -2, -1)).real
    se = metrics.spectrum_error(low + 1e-3 * torch.randn_like(low), t)
    assert se["low"] < 0.05 and se["high"] > 1.0


def _curl_spectral(A):
    return metrics.vorticity(A, method="spectral")


def test_divergence_of_a_curl_is_zero():
    torch.manual_seed(0)
    A = torch.randn(2, 3, 16, 16, 16, dtype=torch.float64)
    # spectral curl -> spectral divergence: zero to round-off
    u = _curl_spectral(A)
    assert metrics.divergence_residual(u, method="spectral", periodic=True) < 1e-12
    # central-difference curl -> central-difference divergence (periodic): the stencils commute
    uc = metrics.vorticity(A, method="central", periodic=True)
    assert metrics.divergence_residual(uc, method="central", periodic=True) < 1e-12
    # interior (non-periodic) stencil on a smooth solenoidal field: second-order small
    X, Y, Z = _grid(32)
    smooth = torch.stack([torch.sin(Y) * torch.cos(Z), torch.sin(Z + X), torch.cos(X) * torch.sin(Y)])
    assert metrics.divergence_residual(smooth, periodic=False) < 1e-12  # each u_i independent of x_i
    # white noise: about 1/sqrt(3)
    r = metrics.divergence_residual(torch.randn(4, 3, 16, 16, 16))
    assert 0.45 < r < 0.7


def test_divergence_of_a_gradient_and_float32_input():
    X, Y, Z = _grid(32)
    phi = torch.sin(X) * torch.sin(Y) * torch.sin(Z)
    u = torch.stack([torch.cos(X) * torch.sin(Y) * torch.sin(Z), torch.sin(X) * torch.cos(Y) * torch.sin(Z),
                     torch.sin(X) * torch.sin(Y) * torch.cos(Z)])  # grad phi (continuous)
    # for this potential flow |div| / |grad u| = |lap phi| / |Hess phi| = 3 / 3 = 1 (up to the grid)
    r = metrics.divergence_residual(u.float(), method="spectral", periodic=True)
    assert r.item() == pytest.approx(1.0, rel=1e-4)
    assert phi.shape == u.shape[1:]


def test_vorticity_of_a_shear_flow():
    n = 32
    X, Y, Z = _grid(n)
    u = torch.stack([torch.sin(Y), torch.zeros_like(X), torch.zeros_like(X)])
    w = metrics.vorticity(u, method="spectral")
    # w_2 = d u_1/dx_0 - d u_0/dx_1 = -cos(y) * (2 pi / n)  (grid units)
    torch.testing.assert_close(w[2], -torch.cos(Y) * (2 * math.pi / n), atol=1e-12, rtol=0)
    assert w[0].abs().max() < 1e-12 and w[1].abs().max() < 1e-12


def test_trilinear_baseline_middle_frame_and_shape():
    lr = torch.zeros(2, 9, 4, 4, 4)
    lr[:, 3:6] = 1.0
    up = metrics.trilinear(lr)
    assert up.shape == (2, 3, 16, 16, 16)
    torch.testing.assert_close(up, torch.ones_like(up))


class _Trilinear(torch.nn.Module):
    def forward(self, x):
        return metrics.trilinear(x)


def test_equivariance_error_exact_map_and_random_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4, 4, 4)
    err = metrics.equivariance_error(_Trilinear(), x, "Oh")
    assert err < 1e-6
    conv = torch.nn.Conv3d(9, 3, 3, padding=1)
    conv.train()
    errs = metrics.equivariance_errors(conv, x, "Oh")
    assert errs.shape == (48,)
    assert errs[0] < 1e-7  # identity
    assert errs.max() > 0.3
    assert conv.training  # training flag restored
    assert metrics.equivariance_error(conv, x, "O", elements=3) > 0.3


def test_sample_elements_generators_first():
    idx = metrics.sample_elements("Oh", 4)
    mats = groups.group_matrices("Oh")
    assert len(set(idx)) == 4 and 0 not in idx
    assert torch.equal(mats[idx[2]], -torch.eye(3, dtype=torch.float64))
    assert metrics.sample_elements("O", None) == list(range(24))
    assert len(metrics.sample_elements("O", 100)) == 23


def test_field_metrics_keys():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 16, 16, 16)
    m = metrics.field_metrics(t + 0.1 * torch.randn_like(t), t)
    assert set(m) == {"mae", "rmse", "rel_l2", "spec_err", "spec_err_low", "spec_err_mid", "spec_err_high", "div"}
    assert all(isinstance(v, float) for v in m.values())
