"""Physics of the pseudo-spectral Navier-Stokes solver (small grids, float64)."""
import math

import pytest
import torch

from steerable_sr.cli import main
from steerable_sr.data.spectral import (SpectralSolver, default_viscosity, energy_spectrum, forcing_label,
                                       forcing_symmetry, kinetic_energy)
from steerable_sr.groups import act, group_matrices, named_subgroups, subgroup_name


pytestmark = pytest.mark.usefixtures("single_thread")


def test_spectrum_sums_to_energy_exactly():
    u = SpectralSolver(16, 0.0, None).initial_field(energy=0.7, k_peak=3.0)
    # A field with every Fourier mode occupied (incl. Nyquist planes), batched.
    rough = torch.randn(2, 3, 12, 12, 12, dtype=torch.float64)
    k, E = energy_spectrum(rough)
    assert E.shape == (2, len(k)) and int(k[-1]) == round(math.sqrt(3) * 6)
    torch.testing.assert_close(E.sum(-1), kinetic_energy(rough), rtol=1e-13, atol=0)
    assert math.isclose(float(energy_spectrum(u)[1].sum()), 0.7, rel_tol=1e-13)


def test_spectrum_of_a_single_mode():
    # u = (0, cos(3 x_0), 0): energy 1/4, all of it in shell k = 3.
    x = torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16
    u = torch.zeros(3, 16, 16, 16, dtype=torch.float64)
    u[1] = torch.cos(3 * x).view(16, 1, 1)
    k, E = energy_spectrum(u)
    assert math.isclose(float(E[3]), 0.25, rel_tol=1e-13)
    assert float(E.sum() - E[3]) < 1e-28


def test_initial_field_is_divergence_free_band_limited_and_seeded():
    solver = SpectralSolver(16, 0.01, "isotropic", seed=3)
    u = solver.initial_field(energy=0.5)
    assert u.shape == (3, 16, 16, 16) and u.dtype == torch.float64
    assert math.isclose(solver.energy(u), 0.5, rel_tol=1e-13)
    assert float(solver.divergence(u).abs().max()) < 1e-13
    u_hat = solver.to_spectral(u)
    assert float(u_hat.abs()[:, 6:11].max()) < 1e-15  # |k_0| >= 16/3 removed by the 2/3 rule
    assert torch.equal(u, solver.initial_field(energy=0.5))
    assert not torch.equal(u, solver.initial_field(energy=0.5, seed=4))


def test_stays_divergence_free_under_forcing():
    solver = SpectralSolver(16, default_viscosity(16), "anisotropic", axis=2)
    u = solver.advance(solver.initial_field(), 1.0)
    scale = float(u.abs().max()) * 16 / 3  # |k| |u|: the size of one derivative
    assert float(solver.divergence(u).abs().max()) < 1e-13 * scale


def test_free_decay_rate_matches_spectral_dissipation():
    """Unforced: dE/dt = -2 nu sum |kappa|^2 E(kappa) exactly for the truncated equations.

    The measured rate is a central difference over [-h, h], whose truncation error is
    h^2 E3 / 6 with E3 the third time derivative of E (RK4's own error is O(h^5)). E3 is
    estimated independently on a wider stencil, so the tolerance is the predicted error itself,
    and the mismatch must shrink as h^2.
    """
    solver = SpectralSolver(16, 0.05, None)
    u = solver.advance(solver.initial_field(k_peak=3.0), 0.3)
    eps = solver.dissipation(u)

    def energy_at(t: float) -> float:
        return solver.energy(solver.step(u, t))

    w = 1e-2
    third = (energy_at(2 * w) - 2 * energy_at(w) + 2 * energy_at(-w) - energy_at(-2 * w)) / (2 * w ** 3)
    errors = []
    for h in (4e-3, 2e-3, 1e-3):
        rate = (energy_at(h) - energy_at(-h)) / (2 * h)
        predicted = h ** 2 * abs(third) / 6
        assert 0.8 * predicted < abs(rate + eps) < 1.2 * predicted
        errors.append(abs(rate + eps) / eps)
    assert errors[-1] < 1e-6  # measured 2.7e-7 at h = 1e-3
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


def test_free_decay_is_monotonic():
    solver = SpectralSolver(16, 0.02, None)
    u = solver.initial_field()
    energies = [solver.energy(u)]
    for _ in range(20):
        u = solver.step(u, solver.stable_dt(u))
        energies.append(solver.energy(u))
    assert all(b < a for a, b in zip(energies, energies[1:]))
    assert energies[-1] < 0.95 * energies[0]


def test_inviscid_energy_conservation_converges_at_fourth_order():
    """nu = 0, no forcing: the Galerkin-truncated dynamics conserve energy; only RK4 errs."""
    solver = SpectralSolver(16, 0.0, None)
    u0 = solver.initial_field(energy=0.5)
    errors = [abs(solver.energy(solver.advance(u0, 1.0, dt=dt)) - 0.5) / 0.5 for dt in (0.04, 0.02, 0.01)]
    assert errors[0] < 1e-6 and errors[-1] < 1e-9  # measured 2.2e-7, 8.3e-9, 3.4e-10
    assert errors[0] / errors[1] > 12 and errors[1] / errors[2] > 12  # ~2^4.6


def test_cfl_time_step():
    solver = SpectralSolver(16, 0.0, None, cfl=0.4, dt_max=1.0)
    u = solver.initial_field()
    assert math.isclose(solver.stable_dt(u), 0.4 * (2 * math.pi / 16) / float(u.norm(dim=0).max()), rel_tol=1e-12)
    assert SpectralSolver(16, 0.0, None, dt_max=1e-3).stable_dt(u) == 1e-3


def test_forcing_injects_the_prescribed_power():
    """With nu = 0 the nonlinear term conserves energy, so the forced run gains exactly power * h."""
    for forcing in ("isotropic", "anisotropic"):
        solver = SpectralSolver(16, 0.0, forcing, power=0.3)
        no_forcing = SpectralSolver(16, 0.0, None)
        u = solver.initial_field()
        h = 1e-3
        gain = solver.energy(solver.step(u, h)) - no_forcing.energy(no_forcing.step(u, h))
        assert math.isclose(gain / h, 0.3, rel_tol=1e-9), forcing  # measured 3e-13


def _equivariance_errors(solver: SpectralSolver, u: torch.Tensor, dt: float) -> list[float]:
    stepped = solver.step(u, dt)
    scale = float(stepped.abs().max())
    return [float((solver.step(act(u, R), dt) - act(stepped, R)).abs().max()) / scale for R in group_matrices("Oh")]


def test_isotropic_forcing_commutes_with_all_of_Oh():
    """The forced equations commute with all 48 elements, so the steady statistics are O_h-symmetric."""
    solver = SpectralSolver(16, default_viscosity(16), "isotropic")
    u = solver.advance(solver.initial_field(), 0.5)
    assert max(_equivariance_errors(solver, u, 0.05)) < 1e-13  # measured 7e-16
    assert forcing_symmetry({"forcing": "isotropic"}) == "Oh"


@pytest.mark.parametrize("axis", [0, 2])
def test_anisotropic_forcing_keeps_exactly_D4h(axis):
    solver = SpectralSolver(16, default_viscosity(16), "anisotropic", axis=axis)
    u = solver.advance(solver.initial_field(), 0.5)
    errors = _equivariance_errors(solver, u, 0.05)
    keeps_axis = [abs(float(R[axis, axis])) == 1.0 for R in group_matrices("Oh")]
    assert sum(keeps_axis) == 16
    assert max(e for e, keep in zip(errors, keeps_axis) if keep) < 1e-13  # measured 6e-16
    assert min(e for e, keep in zip(errors, keeps_axis) if not keep) > 1e-3  # measured 1.5e-2
    kept = [k for k, keep in enumerate(keeps_axis) if keep]
    keeps = forcing_symmetry({"forcing": "anisotropic", "axis": axis})
    assert subgroup_name(kept) == keeps == f"D4h, axis {'xyz'[axis]}"


def test_anisotropic_forcing_breaks_component_isotropy():
    """After spin-up the axis component carries far more energy than the others; not so when isotropic."""
    nu = default_viscosity(16)
    ratios = {}
    for forcing in ("isotropic", "anisotropic"):
        solver = SpectralSolver(16, nu, forcing, axis=1)
        u = solver.advance(solver.initial_field(), 8.0)
        components = u.square().mean(dim=(1, 2, 3))
        ratios[forcing] = float(components[1] / components[[0, 2]].mean())
        assert 0.5 * 0.1 < solver.dissipation(u) < 2 * 0.1  # statistically steady: dissipation ~ power
    assert ratios["anisotropic"] > 5.0
    assert 1 / 3 < ratios["isotropic"] < 3.0


def test_kolmogorov_force_is_the_prescribed_shear_and_drives_the_laminar_flow():
    """f = A sin(k x_b) e_a on the grid, whatever u; U = A / (nu k^2) sin(k x_b) e_a is steady.

    The laminar flow stays put up to RK4's error in integrating the constant force through the
    integrating factor, ``O((nu k^2 dt)^4)``: measured 3.2e-11 and 2.0e-12 (relative, after t = 1)
    for dt = 0.05 and 0.025 at nu k^2 = 0.45, and round-off (3e-15) at nu k^2 = 0.05.
    """
    x = torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16
    for axis, shear_axis, k in ((0, None, 1), (2, 0, 3)):
        solver = SpectralSolver(16, 0.05, "kolmogorov", axis=axis, shear_axis=shear_axis, amplitude=0.3,
                                wavenumber=k)
        b = (axis + 1) % 3 if shear_axis is None else shear_axis
        expected = torch.zeros(3, 16, 16, 16, dtype=torch.float64)
        expected[axis] = 0.3 * torch.sin(k * x).view([16 if i == b else 1 for i in range(3)])
        f = solver.force(solver.initial_field())
        assert float((f - expected).abs().max()) < 1e-15
        assert torch.equal(f, solver.force(torch.zeros_like(f)))
        laminar = expected / (0.05 * k ** 2)
        drift = [float((solver.advance(laminar, 1.0, dt=dt) - laminar).abs().max() / laminar.abs().max())
                 for dt in (0.05, 0.025)]
        if k == 1:
            assert max(drift) < 1e-13
        else:
            assert drift[0] < 1e-10 and 14 < drift[0] / drift[1] < 18  # fourth order


def test_kolmogorov_forcing_injects_f_dot_u():
    """nu = 0: the nonlinear term conserves energy, so the forced step gains ``<f . u> h + O(h^2)``
    over the unforced one (unlike the band forcings, the force does not follow u within the step);
    Richardson extrapolation of two steps removes the O(h) error of the rate."""
    solver = SpectralSolver(16, 0.0, "kolmogorov", amplitude=0.5)
    no_forcing = SpectralSolver(16, 0.0, None)
    u = solver.initial_field(k_peak=1.0)

    def rate(h: float) -> float:
        return (solver.energy(solver.step(u, h)) - no_forcing.energy(no_forcing.step(u, h))) / h

    power = float((solver.force(u) * u).sum(0).mean())
    assert abs(power) > 1e-2
    assert math.isclose(2 * rate(5e-4) - rate(1e-3), power, rel_tol=1e-6)  # measured 7e-8 (rate(1e-3): 2e-3)


def _nearest_translate(g: torch.Tensor, f: torch.Tensor) -> tuple[list[int], float]:
    """The grid shift ``s`` that brings ``g`` closest to ``f`` (both ``(3, n, n, n)``, ``||g|| = ||f||``)
    and the relative L2 distance ``||roll(g, s) - f|| / ||f||`` there.

    All n^3 circular shifts at once: ``c(s) = sum_p f(p) . g(p - s)`` is a circular cross-correlation,
    and ``||roll(g, s) - f||^2 = 2 ||f||^2 - 2 c(s)``.
    """
    dims = (-3, -2, -1)
    spectrum = torch.fft.fftn(f, dim=dims) * torch.fft.fftn(g, dim=dims).conj()
    correlation = torch.fft.ifftn(spectrum, dim=dims).real.sum(0)
    shift = [int(i) for i in torch.unravel_index(correlation.argmax(), correlation.shape)]
    return shift, float((torch.roll(g, shift, dims=dims) - f).norm() / f.norm())


@pytest.mark.parametrize("axis, shear_axis", [(0, 1), (2, 0)])
def test_kolmogorov_forcing_keeps_exactly_the_8_sign_flips_up_to_translations(axis, shear_axis):
    """An element of O_h maps the shear force to a translate of itself iff it is one of the 8 sign
    flips (D2h); the solver then commutes with it followed by that translation. The other 40 map
    the force to a field orthogonal to all its translates (relative distance sqrt(2))."""
    solver = SpectralSolver(16, default_viscosity(16), "kolmogorov", axis=axis, shear_axis=shear_axis,
                            amplitude=0.5, wavenumber=2)
    u = solver.advance(solver.initial_field(), 0.5)
    f = solver.force(u)
    stepped = solver.step(u, 0.05)
    kept, force_errors, step_errors, distances = [], [], [], []
    for index, R in enumerate(group_matrices("Oh")):
        shift, distance = _nearest_translate(act(f, R), f)
        if distance > 1e-12:
            distances.append(distance)
            continue

        def g(v: torch.Tensor) -> torch.Tensor:  # translation o R: keeps f, so commutes with a step
            return torch.roll(act(v, R), shift, dims=(-3, -2, -1))

        kept.append(index)
        force_errors.append(float((g(f) - f).abs().max()) / 0.5)
        step_errors.append(float((solver.step(g(u), 0.05) - g(stepped)).abs().max()) / float(stepped.abs().max()))
    diagonal = [bool(torch.equal(R.abs(), torch.eye(3, dtype=R.dtype))) for R in group_matrices("Oh")]
    assert kept == [i for i, d in enumerate(diagonal) if d]
    assert subgroup_name(kept) == forcing_symmetry({"forcing": "kolmogorov", "axis": axis}) == "D2h"
    assert max(force_errors) < 1e-15 and max(step_errors) < 1e-13  # measured 0 and 5e-16
    assert min(distances) > 1.41  # sqrt(2): orthogonal to every translate
    # The translation is needed: without it only the identity and the flip of the third axis
    # commute with a step (act reflects about the grid centre, half a cell off x_b = 0, so a flip
    # of x_b also shifts the force by one cell).
    b = solver.shear_axis
    untranslated = [float((solver.step(act(u, R), 0.05) - act(stepped, R)).abs().max()) / float(stepped.abs().max())
                    for R in group_matrices("Oh")[kept]]
    fixes = [bool(R[axis, axis] == 1 and R[b, b] == 1) for R in group_matrices("Oh")[kept]]
    assert sum(fixes) == 2 and max(e for e, fix in zip(untranslated, fixes) if fix) < 1e-13
    assert min(e for e, fix in zip(untranslated, fixes) if not fix) > 1e-3  # measured 1.0e-2


def test_kolmogorov_options_are_validated():
    for kwargs, match in (({"axis": 1, "shear_axis": 1}, r"shear_axis must be one of the axes other than axis=1 "
                                                         r"\(0 or 2\)"),
                          ({"shear_axis": 3}, "shear_axis"),
                          ({"amplitude": 0.0}, "amplitude must be > 0"),
                          ({"wavenumber": 0}, "1..5 at n=16"),
                          ({"wavenumber": 6}, "1..5 at n=16"),
                          ({"wavenumber": 1.5}, "must be an integer")):
        with pytest.raises(ValueError, match=match):
            SpectralSolver(16, 0.01, "kolmogorov", **kwargs)
    with pytest.raises(ValueError, match="allowed values: 'isotropic', 'anisotropic', 'kolmogorov', None"):
        SpectralSolver(16, 0.01, "shear")


@pytest.mark.parametrize("options, message", [
    (["--axis", "2", "--shear-axis", "2"], "--shear-axis must differ from --axis=2"),
    (["--amplitude", "-1"], "--amplitude must be > 0, got -1.0"),
    (["--wavenumber", "3"], "--wavenumber must be in 1..2 at --n 8"),
])
def test_generate_command_rejects_bad_kolmogorov_options(tmp_path, capsys, options, message):
    status = main(["generate", str(tmp_path / "k.h5"), "--n", "8", "--forcing", "kolmogorov", *options])
    assert status == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_float32_runs_and_keeps_its_dtype():
    solver = SpectralSolver(16, default_viscosity(16), "isotropic", dtype=torch.float32)
    u = solver.advance(solver.initial_field(), 0.5)
    assert u.dtype == torch.float32 and torch.isfinite(u).all()
    assert float(solver.divergence(u).abs().max()) < 1e-5 * float(u.abs().max()) * 16 / 3
    reference = SpectralSolver(16, default_viscosity(16), "isotropic")
    expected = reference.advance(reference.initial_field(), 0.5)
    assert float((u.double() - expected).abs().max()) < 1e-4 * float(expected.abs().max())


@pytest.mark.parametrize("attrs, keeps, label", [
    ({"forcing": "isotropic"}, "Oh", "isotropic"),
    ({"forcing": "anisotropic", "axis": 1}, "D4h, axis y", "anisotropic, axis y"),
    ({"forcing": "kolmogorov", "axis": 0, "shear_axis": 1, "amplitude": 0.2, "wavenumber": 1}, "D2h",
     "kolmogorov 0.2 sin(1 x_1) e_0"),
    ({}, None, "forcing unknown"),
])
def test_the_symmetry_a_forcing_keeps_from_the_file_attributes(attrs, keeps, label):
    assert forcing_symmetry(attrs) == keeps and forcing_label(attrs) == label
    assert keeps is None or keeps in dict(named_subgroups("Oh"))
