"""Physics metrics (steerable_sr.metrics), each checked against a value known in closed form."""
import math

import pytest
import torch

from steerable_sr import groups, metrics
from steerable_sr.groups import generated_subgroup
from steerable_sr.testing import BROKEN_TOL, EQUIVARIANT_TOL

# float64 FFTs of a few thousand points are exact to ~1e-15 relative (round-off grows like
# eps * log2(N^3) ~ 2e-16 * 12); 1e-12 leaves three orders of magnitude of margin.
FFT_TOL = 1e-12


def _grid(n):
    """Coordinates ``2 pi i / n`` of an ``n^3`` periodic grid, float64."""
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.meshgrid(x, x, x, indexing="ij")


def _known_difference():
    """Target zero, prediction off by +3 on sample 0 and by -4 on sample 1 (float32, exact values)."""
    target = torch.zeros(2, 3, 4, 4, 4)
    pred = target.clone()
    pred[0] = 3.0
    pred[1] = -4.0
    return pred, target


# ------------------------------------------------------------------------------ pointwise errors


def test_mae_is_the_mean_absolute_difference():
    pred, target = _known_difference()
    # half the entries off by 3, half by 4: (3 + 4) / 2; the mean of 384 small integers is exact in float32
    assert metrics.mae(pred, target).item() == 3.5


def test_rmse_is_the_root_mean_square_difference():
    pred, target = _known_difference()
    # sqrt((9 + 16) / 2) = sqrt(12.5); float32 sqrt is correctly rounded: 1 ulp ~ 1e-7 relative
    assert metrics.rmse(pred, target).item() == pytest.approx(math.sqrt(12.5), rel=1e-6)


def test_relative_l2_is_averaged_over_samples():
    target = torch.ones(2, 3, 4, 4, 4)
    pred = target.clone()
    pred[0] *= 2.0  # sample 0: ||2t - t|| / ||t|| = 1; sample 1 exact: 0
    # (1 + 0) / 2, exact: the norms of equal entries are equal to the last bit
    assert metrics.relative_l2(pred, target).item() == pytest.approx(0.5, rel=1e-6)


def test_pointwise_errors_refuse_different_shapes():
    pred, target = _known_difference()
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.mae(pred, target[:1])


# ------------------------------------------------------------------------------ energy spectrum


def test_a_single_fourier_mode_puts_its_energy_in_its_shell():
    n = 16
    X, Y, Z = _grid(n)
    # kappa = (3, 4, 0), |kappa| = 5; u_2 = 2 cos(3x + 4y) is divergence-free (u_2 does not depend
    # on x_2). Energy: 1/2 <u.u> = 1/2 * 4 * <cos^2> = 1, all of it in shell 5.
    u = torch.zeros(3, n, n, n, dtype=torch.float64)
    u[2] = 2.0 * torch.cos(3 * X + 4 * Y)
    E = metrics.energy_spectrum(u)
    expected = torch.zeros(metrics.num_shells(n), dtype=torch.float64)
    expected[5] = 1.0
    torch.testing.assert_close(E, expected, rtol=0, atol=FFT_TOL)


@pytest.mark.parametrize("kappa, shell", [((1, 0, 0), 1), ((1, 1, 0), 1), ((1, 1, 1), 2), ((2, 2, 1), 3),
                                          ((0, 6, 8), 10)])
def test_shell_of_a_mode_is_its_rounded_wavenumber(kappa, shell):
    # shell k holds k - 1/2 <= |kappa| < k + 1/2: |(1,1,0)| = 1.41 -> 1, |(1,1,1)| = 1.73 -> 2,
    # |(2,2,1)| = 3, |(0,6,8)| = 10.
    n = 32
    X, Y, Z = _grid(n)
    u = torch.zeros(3, n, n, n, dtype=torch.float64)
    u[0] = torch.sin(kappa[0] * X + kappa[1] * Y + kappa[2] * Z)  # 1/2 <sin^2> = 1/4
    E = metrics.energy_spectrum(u)
    assert int(E.argmax()) == shell
    assert E[shell].item() == pytest.approx(0.25, rel=FFT_TOL)


def test_spectrum_sums_to_half_the_mean_square_velocity_with_batch_axes():
    # Parseval for u_hat = fftn(u) / N^3: sum_kappa |u_hat|^2 = <|u|^2>; every shell up to the cube's
    # corner is kept, so nothing is lost. float64 round-off only (FFT_TOL).
    u = torch.randn(2, 5, 3, 8, 8, 8, dtype=torch.float64)
    E = metrics.energy_spectrum(u)
    assert E.shape == (2, 5, metrics.num_shells(8))
    torch.testing.assert_close(E.sum(-1), 0.5 * (u ** 2).sum(-4).mean((-3, -2, -1)), rtol=FFT_TOL, atol=0)


# ------------------------------------------------------------------------------ spectrum error


def test_spectrum_error_of_a_field_against_itself_is_zero():
    t = torch.randn(2, 3, 16, 16, 16, dtype=torch.float64)
    # identical inputs go through identical arithmetic: exactly 0 in every band
    assert {name: v.item() for name, v in metrics.spectrum_error(t, t).items()} == {
        "all": 0.0, "low": 0.0, "mid": 0.0, "high": 0.0}


def test_spectrum_error_of_ten_times_the_amplitude_is_two():
    t = torch.randn(2, 3, 16, 16, 16, dtype=torch.float64)
    # 10 u has 100 times the energy in every shell: |log10 100| = 2. 10 * t rounds each entry by
    # 1e-16 relative, so the logs are off by ~1e-16 / ln 10: 1e-12 is ample.
    for name, value in metrics.spectrum_error(10 * t, t).items():
        assert value.item() == pytest.approx(2.0, abs=FFT_TOL), name


def test_spectrum_bands_are_the_thirds_of_the_resolved_shells():
    # k = 1 .. 8 for a 16^3 grid, cut at 1 + round(8 i / 3) = 1, 4, 6, 9
    assert metrics.band_edges(16) == {"low": (1, 4), "mid": (4, 6), "high": (6, 9)}


def test_a_low_pass_prediction_is_wrong_only_in_the_high_band():
    t = torch.randn(2, 3, 16, 16, 16)
    uh = torch.fft.fftn(t, dim=(-3, -2, -1))
    k = torch.fft.fftfreq(16, 1 / 16)
    KX, KY, KZ = torch.meshgrid(k, k, k, indexing="ij")
    low = torch.fft.ifftn(uh * ((KX ** 2 + KY ** 2 + KZ ** 2).sqrt() < 3.5), dim=(-3, -2, -1)).real
    # the 1e-3 noise has 1e-6 of the unit white field's energy per shell: log10 error ~6 in the high
    # band (shells 6..8, all removed), ~1e-6 / ln 10 in the low band (shells 1..3, all kept)
    se = metrics.spectrum_error(low + 1e-3 * torch.randn_like(low), t)
    assert se["low"] < 0.01 and se["high"] > 1.0


# ------------------------------------------------------------------------------ divergence


def _central_gradient(phi):
    """The metrics' stencil, written out: ``(phi(x + e_j) - phi(x - e_j)) / 2`` on a periodic grid."""
    return torch.stack([0.5 * (phi.roll(-1, j) - phi.roll(1, j)) for j in range(3)])


def test_divergence_residual_of_a_central_difference_curl_is_zero():
    A = torch.randn(2, 3, 16, 16, 16, dtype=torch.float64)
    u = metrics.vorticity(A, method="central", periodic=True)
    # div curl A = sum of D_i D_j A_k - D_j D_i A_k, and periodic difference operators commute
    # (circulant): zero up to float64 round-off (~1e-16 of |grad u| ~ 1).
    assert metrics.divergence_residual(u, method="central", periodic=True).item() < FFT_TOL


def test_divergence_residual_of_a_spectral_curl_is_zero():
    A = torch.randn(2, 3, 16, 16, 16, dtype=torch.float64)
    u = metrics.vorticity(A, method="spectral")
    # k . (k x A_hat) = 0 mode by mode; float64 FFT round-off only
    assert metrics.divergence_residual(u, method="spectral", periodic=True).item() < FFT_TOL


def test_divergence_residual_of_a_gradient_field_is_one():
    X, Y, Z = _grid(16)
    u = _central_gradient(torch.sin(X) * torch.sin(Y) * torch.sin(Z))
    # u = D phi with the same stencil, so grad u = D D phi = sin(h)^2 * Hessian(phi) entry by entry
    # (D D sin = -sin(h)^2 sin, D sin = sin(h) cos). On the grid: ||div u||^2 = 9 <phi^2> = 9/8 and
    # ||grad u||^2 = 3 <phi^2> + 6 <cos^2 cos^2 sin^2> = 3/8 + 6/8: ratio exactly 1 (the discrete
    # means of these products are exactly 1/8 for n >= 3). The maximum for a smooth field is sqrt(3).
    assert metrics.divergence_residual(u, method="central", periodic=True).item() == pytest.approx(1.0, rel=FFT_TOL)


def test_divergence_residual_ignores_the_boundary_of_a_crop():
    X, Y, Z = _grid(32)
    # each u_i independent of x_i: every discrete d u_i / d x_i is exactly 0, interior or not
    u = torch.stack([torch.sin(Y) * torch.cos(Z), torch.sin(Z + X), torch.cos(X) * torch.sin(Y)])
    assert metrics.divergence_residual(u, periodic=False).item() == 0.0


def test_divergence_residual_of_white_noise_is_one_over_sqrt_three():
    # independent unit-variance voxels: each D_j u_i has variance 1/2, div sums 3 independent ones
    # (variance 3/2), |grad u|^2 has 9 (mean 9/2): ratio sqrt(1/3) = 0.577. With 4 x 14^3 interior
    # voxels the sample ratio has a relative spread well below 1%; 5% is a safe margin.
    r = metrics.divergence_residual(torch.randn(4, 3, 16, 16, 16, dtype=torch.float64))
    assert r.item() == pytest.approx(1 / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("n", [1, 2])
def test_interior_differences_of_a_volume_without_interior_voxels_are_refused(n):
    with pytest.raises(ValueError, match="at least 3 voxels per axis"):
        metrics.vorticity(torch.randn(3, n, n, n), periodic=False)


def test_vorticity_of_a_shear_flow():
    n = 32
    X, Y, Z = _grid(n)
    u = torch.stack([torch.sin(Y), torch.zeros_like(X), torch.zeros_like(X)])
    w = metrics.vorticity(u, method="spectral")
    # w = curl u = (0, 0, -du_0/dx_1) = (0, 0, -cos(y) * 2 pi / n) in grid units (spacing 1)
    expected = torch.stack([torch.zeros_like(X), torch.zeros_like(X), -torch.cos(Y) * (2 * math.pi / n)])
    torch.testing.assert_close(w, expected, rtol=0, atol=FFT_TOL)


# ------------------------------------------------------------------------------ baseline, equivariance


def test_trilinear_baseline_upsamples_the_middle_frame():
    lr = torch.zeros(2, 9, 4, 4, 4)
    lr[:, 0:3] = -5.0
    lr[:, 3:6] = 1.0  # the middle one of 3 frames
    lr[:, 6:9] = 7.0
    up = metrics.trilinear(lr)
    # interpolating a constant gives that constant exactly (weights sum to 1, powers of two)
    torch.testing.assert_close(up, torch.ones(2, 3, 16, 16, 16), rtol=0, atol=0)


class _Trilinear(torch.nn.Module):
    def forward(self, x):
        return metrics.trilinear(x)


def test_equivariance_error_of_an_exact_map_is_round_off():
    # trilinear upsampling with align_corners=False is exactly equivariant on the grid
    x = torch.randn(2, 9, 4, 4, 4)
    assert metrics.equivariance_error(_Trilinear(), x, "Oh").item() < EQUIVARIANT_TOL


def test_equivariance_error_of_a_random_conv_is_large_except_for_the_identity():
    conv = torch.nn.Conv3d(9, 3, 3, padding=1)
    errs = metrics.equivariance_errors(conv, torch.randn(2, 9, 4, 4, 4), "Oh")
    assert errs.shape == (48,)
    assert errs[0].item() == 0.0  # identity: the same computation twice
    assert errs[1:].min().item() > BROKEN_TOL


def test_equivariance_errors_restore_the_training_flag():
    conv = torch.nn.Conv3d(9, 3, 3, padding=1)
    conv.train()
    metrics.equivariance_errors(conv, torch.randn(1, 9, 4, 4, 4), "O", elements=3)
    assert conv.training


@pytest.mark.parametrize("group, count", [("Oh", 4), ("O", 2)])
def test_sampled_elements_start_with_generators_of_the_group(group, count):
    idx = metrics.sample_elements(group, count)
    mats = groups.group_matrices(group)
    assert 0 not in idx
    assert len(generated_subgroup(mats[idx], group)) == groups.group_order(group)


def test_sample_elements_without_a_count_is_the_whole_group():
    assert metrics.sample_elements("O", None) == list(range(24))
    assert sorted(metrics.sample_elements("O", 100)) == list(range(1, 24))  # capped: no identity


# ------------------------------------------------------------------------------ all at once


def test_field_metrics_of_a_constant_offset():
    # target entries on a 2^-10 grid below 8 in magnitude, so target + 0.5 is exact in float32:
    # the difference is exactly 0.5 everywhere.
    t = torch.round(torch.randn(2, 3, 16, 16, 16) * 1024) / 1024
    m = metrics.field_metrics(t + 0.5, t)
    assert set(m) == {"mae", "rmse", "rel_l2", "spec_err", "spec_err_low", "spec_err_mid", "spec_err_high", "div"}
    assert m["mae"] == 0.5 and m["rmse"] == pytest.approx(0.5, rel=1e-6)
    # ||0.5|| / ||t|| per sample, averaged; float32 norms: 1e-6 relative
    expected = (0.5 * math.sqrt(3 * 16 ** 3) / t.reshape(2, -1).double().norm(dim=1)).mean().item()
    assert m["rel_l2"] == pytest.approx(expected, rel=1e-6)
    # a constant only changes shell 0, which the spectrum error leaves out; the FFT of the offset
    # field differs from the target's by float64 round-off only
    assert max(m[k] for k in m if k.startswith("spec_err")) < FFT_TOL
    # differences of a constant vanish exactly: the divergence residual is the target's own
    assert m["div"] == pytest.approx(metrics.divergence_residual(t.double()).item(), rel=FFT_TOL)
