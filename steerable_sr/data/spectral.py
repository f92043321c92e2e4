r"""Pseudo-spectral solver for forced incompressible Navier-Stokes on the periodic cube [0, 2 pi)^3.

The equations, with unit density and the pressure eliminated by the Leray projection ``P``::

    du/dt = P[u x omega] + nu lap(u) + f,      div u = 0,      omega = curl u.

**Discretisation.** ``n^3`` collocation points ``x_i = 2 pi i / n``; the state is the half spectrum
``u_hat = rfftn(u) / n^3`` (so ``u_hat`` is the Fourier coefficient of the spectrum convention of
:func:`steerable_sr.metrics.energy_spectrum`). The nonlinear term is evaluated in rotational form:
``u`` and ``omega`` are transformed to the grid, their cross product is formed pointwise,
transformed back, projected onto divergence-free fields (``a -> a - k (k . a) / |k|^2``) and
truncated by the 2/3 rule (every wavevector component ``|k_i| < n/3``; the cubic truncation keeps
the O_h symmetry of the grid).
Time stepping is classical RK4 on ``v = exp(nu k^2 t) u_hat`` (integrating factor: the viscous
term is integrated exactly), with ``dt = cfl * dx / max|u|`` capped at ``dt_max``.

**Forcing.** The two band forcings fix the injected power ``power`` (= the mean dissipation rate
in the steady state); the Kolmogorov forcing fixes the force itself:

* ``"isotropic"``: linear band forcing ``f_hat = power / (2 E_f) u_hat`` on the shells
  ``0 < |k| <= k_f`` (``E_f``: kinetic energy in that band). The band is a union of spheres and the
  prefactor depends only on ``E_f``, so the forced equations commute with every element of O_h
  (and with translations): the statistics of the steady state are O_h-symmetric.
* ``"anisotropic"``: the same band, but only the velocity component along ``axis`` is amplified:
  ``f_hat = power / (2 E_a) P[e_a (e_a . u_hat)]`` with ``E_a`` the energy of that component in the
  band. Since ``u`` is divergence-free and ``P`` self-adjoint, the injected power is still exactly
  ``power``. The operator ``u -> e_a e_a^T u`` commutes with ``R`` iff ``R e_a = +-e_a``, so the
  equations are equivariant exactly under D4h (the 16 cube symmetries that keep the axis), not
  under the rest of O_h: the steady state has ``<u_a^2>`` larger than the two other components.
  The forced modes include those with ``k_a = 0``: jets ``u_a(x_b, x_c)`` along the axis, exact
  nonlinear solutions that grow until their shear instabilities break them down, so this steady
  state takes longer to reach (docs/data.md, "Forcing").
* ``"kolmogorov"``: a constant shear force ``f = amplitude * sin(wavenumber * x_b) e_a`` (component
  ``a = axis``, coordinate ``b = shear_axis``, by default ``(axis + 1) mod 3``: ``sin(k x_1) e_0``).
  It is divergence-free (``b != a``) and does not depend on ``u``; ``U(x_b) e_a`` with
  ``U = amplitude / (nu k^2) sin(k x_b)`` is an exact steady solution (the laminar Kolmogorov flow),
  unstable at the solver's usual viscosities, so the flow becomes turbulent around a mean shear
  profile; the injected power ``<f . u>`` follows the flow. An element ``R`` of O_h maps ``f`` to
  ``R f(R^-1 p) = +-sin(k x_b') e_a'``, a translate of ``f`` iff ``R e_a = +-e_a`` and
  ``R e_b = +-e_b``, i.e. ``R`` is diagonal (``-f`` is ``f`` shifted by ``pi / k`` along ``x_b``):
  up to translations (which the solver commutes with) the equations keep exactly D2h, the 8 sign
  flips of the axes, and break the other 40 elements of O_h.
* ``None``: free decay (or inviscid evolution with ``nu = 0``).

Fields are tensors ``(3, n, n, n)`` in the public convention (spatial axis ``a`` = coordinate
``x_a``, channel ``a`` = component ``u_a``), on the solver's device and dtype.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..groups import AXES

__all__ = [
    "FORCINGS",
    "FORCING_SYMMETRY",
    "KOLMOGOROV_AMPLITUDE",
    "SOLVER_VERSION",
    "SpectralSolver",
    "default_viscosity",
    "energy_spectrum",
    "forcing_label",
    "forcing_symmetry",
    "kinetic_energy",
]

#: Bumped whenever a change alters the fields the solver produces for a given seed.
SOLVER_VERSION = "1"
#: Default amplitude of the Kolmogorov force (see :class:`SpectralSolver`; the choice is explained in
#: docs/data.md, "Forcing").
KOLMOGOROV_AMPLITUDE = 0.2
FORCINGS = ("isotropic", "anisotropic", "kolmogorov", None)
#: The subgroup of O_h (a name of :func:`steerable_sr.groups.named_subgroups`) that the equations
#: of each forcing keep up to translations (module docstring); ``{axis}`` is the letter of the
#: forcing's axis. Free decay (``None``) has no steady state and no entry.
FORCING_SYMMETRY = {"isotropic": "Oh", "anisotropic": "D4h, axis {axis}", "kolmogorov": "D2h"}

_DIMS = (-3, -2, -1)


def forcing_symmetry(parameters: Mapping[str, Any]) -> str | None:
    """The subgroup of O_h that a forcing's equations keep, up to translations.

    Parameters
    ----------
    parameters : mapping
        The forcing's keyword arguments of :class:`SpectralSolver` (``forcing``, ``axis``), e.g. the
        attributes of a generated dataset.

    Returns
    -------
    str or None
        The subgroup's name (:data:`FORCING_SYMMETRY`): ``"Oh"``, ``"D4h, axis x"``, ``"D2h"``;
        ``None`` for free decay or an unknown forcing.
    """
    name = FORCING_SYMMETRY.get(parameters.get("forcing"))
    return None if name is None else name.format(axis=AXES[int(parameters.get("axis", 0))])


def forcing_label(parameters: Mapping[str, Any]) -> str:
    """A forcing in words, e.g. ``"anisotropic, axis x"``, ``"kolmogorov 0.2 sin(1 x_1) e_0"``.

    Parameters
    ----------
    parameters : mapping
        The forcing's keyword arguments of :class:`SpectralSolver` (``forcing``, ``axis``,
        ``shear_axis``, ``amplitude``, ``wavenumber``), e.g. the attributes of a generated dataset.

    Returns
    -------
    str
        ``"forcing unknown"`` when ``parameters`` name no forcing.
    """
    forcing = parameters.get("forcing")
    if forcing == "anisotropic" and parameters.get("axis") is not None:
        return f"anisotropic, axis {AXES[int(parameters['axis'])]}"
    if forcing == "kolmogorov":
        a = int(parameters.get("axis", 0))
        b = int(parameters["shear_axis"]) if parameters.get("shear_axis") is not None else (a + 1) % 3
        return (f"kolmogorov {parameters.get('amplitude', KOLMOGOROV_AMPLITUDE):g} "
                f"sin({parameters.get('wavenumber', 1):g} x_{b}) e_{a}")
    return forcing or "forcing unknown"


def kinetic_energy(u: torch.Tensor) -> torch.Tensor:
    """Mean kinetic energy ``1/2 <u . u>`` of velocity fields.

    Parameters
    ----------
    u : torch.Tensor
        ``(..., 3, X, Y, Z)`` velocity fields (public convention).

    Returns
    -------
    torch.Tensor
        ``(...)``: the grid average of ``1/2 |u|^2``.
    """
    return 0.5 * u.square().sum(dim=-4).mean(dim=_DIMS)


def energy_spectrum(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell-summed energy spectrum of periodic velocity fields on a cube.

    ``u_hat = fftn(u) / N^3`` and ``E(k) = sum_{k - 1/2 <= |kappa| < k + 1/2} 1/2 |u_hat(kappa)|^2``,
    with integer wavevectors ``kappa`` (domain ``[0, 2 pi)^3``). Every mode lies in exactly one shell,
    so ``E.sum(-1) == kinetic_energy(u)`` up to round-off (Parseval).

    Parameters
    ----------
    u : torch.Tensor
        ``(..., 3, N, N, N)`` velocity fields.

    Returns
    -------
    k : torch.Tensor
        ``(K,)`` shell wavenumbers ``0, 1, ..., K - 1`` (``K - 1 = round(sqrt(3) N / 2)``).
    E : torch.Tensor
        ``(..., K)`` energy per shell.
    """
    n = u.shape[-1]
    if u.dim() < 4 or u.shape[-4] != 3 or tuple(u.shape[-3:]) != (n, n, n):
        raise ValueError(f"expected velocity fields (..., 3, N, N, N), got shape {tuple(u.shape)}")
    grid = _Wavenumbers(n, u.device, u.dtype)
    u_hat = torch.fft.rfftn(u, dim=_DIMS, norm="forward")
    density = 0.5 * grid.weight * u_hat.abs().square().sum(dim=-4)
    shell = torch.floor(grid.k2.sqrt() + 0.5).long()
    n_shells = int(shell.max()) + 1
    flat = density.reshape(*density.shape[:-3], -1)
    E = torch.zeros(*flat.shape[:-1], n_shells, dtype=u.dtype, device=u.device)
    E.index_add_(-1, shell.reshape(-1), flat)
    return torch.arange(n_shells, dtype=u.dtype, device=u.device), E


def default_viscosity(n: int, power: float = 0.1, kmax_eta: float = 1.0) -> float:
    """Viscosity that resolves the Kolmogorov scale on an ``n^3`` grid.

    Chooses ``nu`` so that ``k_max eta = kmax_eta`` where ``eta = (nu^3 / power)^(1/4)`` is the
    Kolmogorov length of the steady state (whose dissipation rate equals the forcing ``power``) and
    ``k_max`` the largest wavenumber kept by the 2/3 rule. ``kmax_eta >= 1`` is the usual DNS
    resolution criterion.
    """
    kmax = math.ceil(n / 3) - 1
    eta = kmax_eta / kmax
    return (eta ** 4 * power) ** (1.0 / 3.0)


class _Wavenumbers:
    """Integer wavevectors of the half spectrum of an ``n^3`` grid (``rfftn`` layout).

    Attributes
    ----------
    k : torch.Tensor
        ``(3, n, n, n//2+1)``.
    k2 : torch.Tensor
        ``|k|^2``, ``(n, n, n//2+1)``.
    weight : torch.Tensor
        1 on the planes ``k_2 = 0`` and ``k_2 = n/2`` that the half spectrum stores once, 2 elsewhere.
    dealias : torch.Tensor
        The modes the 2/3 rule keeps, the mean mode excluded (bool).
    """

    def __init__(self, n: int, device: torch.device | str, dtype: torch.dtype) -> None:
        full = torch.fft.fftfreq(n, 1.0 / n, dtype=dtype, device=device)
        half = torch.fft.rfftfreq(n, 1.0 / n, dtype=dtype, device=device)
        k0, k1, k2 = torch.meshgrid(full, full, half, indexing="ij")
        self.k = torch.stack((k0, k1, k2))
        self.k2 = self.k.square().sum(0)
        self.weight = torch.full_like(k2, 2.0)
        self.weight[..., 0] = 1.0
        if n % 2 == 0:
            self.weight[..., -1] = 1.0
        self.dealias = (self.k.abs() < n / 3.0).all(0) & (self.k2 > 0)


class SpectralSolver:
    """Forced incompressible Navier-Stokes on ``[0, 2 pi)^3`` (see the module docstring).

    Parameters
    ----------
    n : int
        Grid points per direction (``n^3`` grid, ``dx = 2 pi / n``).
    nu : float
        Kinematic viscosity (``>= 0``).
    forcing : {"isotropic", "anisotropic", "kolmogorov", None}
        Band forcing that keeps O_h (``"isotropic"``), only D4h about ``axis`` (``"anisotropic"``),
        the shear force ``amplitude * sin(wavenumber * x_shear_axis) e_axis`` that keeps only D2h
        up to translations (``"kolmogorov"``), or none.
    axis : int
        Preferred axis (0, 1, 2) of the anisotropic forcing, forced velocity component of the
        Kolmogorov forcing; ignored otherwise.
    shear_axis : int, optional
        Coordinate (0, 1, 2; not ``axis``) along which the Kolmogorov force varies; default
        ``(axis + 1) % 3``. Ignored by the other forcings.
    amplitude : float
        Amplitude (``> 0``) of the Kolmogorov force.
    wavenumber : int
        Wavenumber of the Kolmogorov force, ``1 <= wavenumber < n / 3`` (kept by the 2/3 rule).
    power : float
        Injected power = steady-state dissipation rate of the band forcings (unused by
        ``"kolmogorov"``).
    forcing_kmax : float
        Forced band ``0 < |k| <= forcing_kmax``.
    cfl : float
        CFL number of the adaptive time step ``dt = cfl * dx / max|u|``.
    dt_max : float
        Upper bound of the adaptive time step.
    device, dtype
        Where and in which real precision fields live (float64 by default; float32 is fine on GPU).
    seed : int
        Default seed of :meth:`initial_field`.
    """

    def __init__(
        self,
        n: int,
        nu: float,
        forcing: str | None = "isotropic",
        *,
        axis: int = 0,
        shear_axis: int | None = None,
        amplitude: float = KOLMOGOROV_AMPLITUDE,
        wavenumber: int = 1,
        power: float = 0.1,
        forcing_kmax: float = 2.0,
        cfl: float = 0.5,
        dt_max: float = 0.05,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
    ) -> None:
        if n < 4:
            raise ValueError(f"the grid needs at least 4 points per direction, got n={n}")
        if nu < 0:
            raise ValueError(f"the viscosity must be >= 0, got nu={nu}")
        if forcing not in FORCINGS:
            raise ValueError(f"unknown forcing {forcing!r}; allowed values: {', '.join(map(repr, FORCINGS))}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        shear_axis = (axis + 1) % 3 if shear_axis is None else shear_axis
        if shear_axis not in {0, 1, 2} - {axis}:
            raise ValueError(f"shear_axis must be one of the axes other than axis={axis} "
                             f"({' or '.join(str(b) for b in range(3) if b != axis)}), got {shear_axis}")
        if not amplitude > 0:
            raise ValueError(f"amplitude must be > 0, got {amplitude}")
        if isinstance(wavenumber, bool) or int(wavenumber) != wavenumber or not 1 <= wavenumber < n / 3:
            raise ValueError(f"wavenumber must be an integer with 1 <= wavenumber < n/3 (kept by the 2/3 rule: "
                             f"1..{math.ceil(n / 3) - 1} at n={n}), got {wavenumber}")
        if not dtype.is_floating_point or dtype.is_complex:
            raise ValueError(f"dtype must be a real floating-point dtype, got {dtype}")
        self.n, self.nu, self.forcing, self.axis = n, float(nu), forcing, axis
        self.shear_axis, self.amplitude, self.wavenumber = shear_axis, float(amplitude), int(wavenumber)
        self.power, self.forcing_kmax = float(power), float(forcing_kmax)
        self.cfl, self.dt_max, self.seed = float(cfl), float(dt_max), seed
        self.device, self.dtype = torch.device(device), dtype
        self.dx = 2.0 * math.pi / n
        self._grid = _Wavenumbers(n, self.device, dtype)
        self._band = (self._grid.k2 > 0) & (self._grid.k2 <= self.forcing_kmax ** 2) & self._grid.dealias
        self._k2_safe = torch.where(self._grid.k2 > 0, self._grid.k2, torch.ones_like(self._grid.k2))
        self._ik = 1j * self._grid.k.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
        self._shear_hat = self._kolmogorov_hat() if forcing == "kolmogorov" else None

    # ---------------------------------------------------------------- transforms and diagnostics

    def to_spectral(self, u: torch.Tensor) -> torch.Tensor:
        """``(3, n, n, n)`` real field -> ``(3, n, n, n//2+1)`` coefficients ``rfftn(u) / n^3``."""
        self._check(u)
        return torch.fft.rfftn(u, dim=_DIMS, norm="forward")

    def to_physical(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_spectral`."""
        return torch.fft.irfftn(u_hat, s=(self.n,) * 3, dim=_DIMS, norm="forward")

    def energy(self, u: torch.Tensor) -> float:
        """Mean kinetic energy ``1/2 <u . u>`` of a field ``(3, n, n, n)``."""
        self._check(u)
        return float(kinetic_energy(u))

    def spectrum(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy spectrum ``(k, E(k))`` of a field ``(3, n, n, n)``; see :func:`energy_spectrum`."""
        self._check(u)
        return energy_spectrum(u)

    def dissipation(self, u: torch.Tensor) -> float:
        """Viscous dissipation rate ``nu <|grad u|^2> = 2 nu sum_kappa |kappa|^2 1/2 |u_hat(kappa)|^2``.

        For the unforced truncated equations this is exactly ``-dE/dt`` (the nonlinear term
        conserves energy mode-set-wise).
        """
        u_hat = self.to_spectral(u)
        modes = self._grid.weight * self._grid.k2 * u_hat.abs().square().sum(0)
        return float(self.nu * modes.sum())

    def force(self, u: torch.Tensor) -> torch.Tensor:
        """The forcing ``f`` ``(3, n, n, n)`` acting on the state ``u`` ``(3, n, n, n)`` (zero if unforced).

        The band forcings depend on ``u``; the Kolmogorov force does not.
        """
        if self.forcing is None:
            self._check(u)
            return torch.zeros_like(u)
        return self.to_physical(self._force(self.to_spectral(u)))

    def divergence(self, u: torch.Tensor) -> torch.Tensor:
        """Spectral divergence ``(n, n, n)`` of a field ``(3, n, n, n)``."""
        u_hat = self.to_spectral(u)
        div_hat = (self._ik * u_hat).sum(0)
        return torch.fft.irfftn(div_hat, s=(self.n,) * 3, dim=_DIMS, norm="forward")

    # ---------------------------------------------------------------------------- fields

    def initial_field(self, energy: float = 0.5, k_peak: float = 2.0, seed: int | None = None) -> torch.Tensor:
        """A random, divergence-free, band-limited field with a prescribed energy.

        Gaussian white noise (drawn on the CPU from ``seed``, so the field does not depend on the
        device) is shaped to the spectrum ``E(k) ~ k^4 exp(-2 (k / k_peak)^2)``, projected onto
        divergence-free fields, truncated by the 2/3 rule (zero mean) and rescaled.

        Returns
        -------
        torch.Tensor
            ``(3, n, n, n)`` with ``1/2 <u . u> = energy``.
        """
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        noise = torch.randn((3,) + (self.n,) * 3, generator=gen, dtype=torch.float64)
        u_hat = torch.fft.rfftn(noise.to(self.device, self.dtype), dim=_DIMS, norm="forward")
        # White noise has a flat modal density, i.e. E(k) ~ k^2; multiplying the amplitude by
        # k exp(-(k/k_peak)^2) gives E(k) ~ k^4 exp(-2 (k/k_peak)^2).
        k = self._grid.k2.sqrt()
        u_hat = self._project(u_hat * (k * torch.exp(-(k / k_peak) ** 2))) * self._grid.dealias
        u = self.to_physical(u_hat)
        current = float(kinetic_energy(u))
        if current == 0.0:
            raise ValueError(f"no mode survives the 2/3 rule for k_peak={k_peak} on a {self.n}^3 grid")
        return u * math.sqrt(energy / current)

    # ---------------------------------------------------------------------------- time stepping

    def stable_dt(self, u: torch.Tensor) -> float:
        """CFL time step ``min(cfl * dx / max|u|, dt_max)`` for a field ``(3, n, n, n)``."""
        self._check(u)
        return self._cfl_dt(float(u.square().sum(0).max().sqrt()))

    def step(self, u: torch.Tensor, dt: float) -> torch.Tensor:
        """One RK4 step of size ``dt``: ``(3, n, n, n)`` -> ``(3, n, n, n)``."""
        u_hat = self.to_spectral(u)
        rhs, _ = self._rhs(u_hat)
        return self.to_physical(self._rk4(u_hat, dt, rhs))

    def advance(self, u: torch.Tensor, duration: float, dt: float | None = None) -> torch.Tensor:
        """Integrate a field ``(3, n, n, n)`` over ``duration`` time units.

        Parameters
        ----------
        u : torch.Tensor
            ``(3, n, n, n)`` divergence-free field at the start.
        duration : float
            Time to integrate; the last step is shortened to land on it exactly.
        dt : float, optional
            Fixed step; by default the CFL step is recomputed before every step.

        Returns
        -------
        torch.Tensor
            ``(3, n, n, n)`` field at the end.
        """
        if duration < 0:
            raise ValueError(f"duration must be >= 0, got {duration}")
        u_hat = self.to_spectral(u)
        t = 0.0
        tol = 1e-12 * max(1.0, duration)
        while duration - t > tol:
            rhs, u_grid = self._rhs(u_hat)
            speed = float(u_grid.square().sum(0).max().sqrt())
            if not math.isfinite(speed):
                raise FloatingPointError(f"the velocity became non-finite at t={t:.6g} (time step too large?)")
            h = min(self._cfl_dt(speed) if dt is None else dt, duration - t)
            u_hat = self._rk4(u_hat, h, rhs)
            t += h
        return self.to_physical(u_hat)

    # ---------------------------------------------------------------------------- internals

    def _check(self, u: torch.Tensor) -> None:
        if tuple(u.shape) != (3,) + (self.n,) * 3:
            raise ValueError(f"expected a field of shape (3, {self.n}, {self.n}, {self.n}), got {tuple(u.shape)}")

    def _cfl_dt(self, speed: float) -> float:
        return self.dt_max if speed == 0.0 else min(self.cfl * self.dx / speed, self.dt_max)

    def _project(self, a_hat: torch.Tensor) -> torch.Tensor:
        k = self._grid.k
        return a_hat - k * ((k * a_hat).sum(0) / self._k2_safe)

    def _kolmogorov_hat(self) -> torch.Tensor:
        """Coefficients ``(3, n, n, n//2+1)`` of ``amplitude * sin(wavenumber * x_b) e_a``.

        ``sin(k x) = (e^{ikx} - e^{-ikx}) / 2i``: ``-i amplitude / 2`` at the wavevector ``k e_b`` and
        ``+i amplitude / 2`` at ``-k e_b`` (absent from the half spectrum when ``b = 2``).
        """
        k = self._grid.k
        b = self.shear_axis
        on_axis = (k[[c for c in range(3) if c != b]] == 0).all(0)
        sign = (k[b] == self.wavenumber).to(self.dtype) - (k[b] == -self.wavenumber).to(self.dtype)
        f_hat = torch.zeros((3,) + tuple(k.shape[1:]), dtype=self._ik.dtype, device=self.device)
        f_hat[self.axis] = -0.5j * self.amplitude * sign * on_axis
        return f_hat

    def _force(self, u_hat: torch.Tensor) -> torch.Tensor:
        if self._shear_hat is not None:
            return self._shear_hat
        band = self._band
        weight = self._grid.weight * band
        if self.forcing == "isotropic":
            band_energy = 0.5 * (weight * u_hat.abs().square().sum(0)).sum()
            return (self.power / (2.0 * band_energy.clamp_min(1e-30))) * u_hat * band
        component = torch.zeros_like(u_hat)
        component[self.axis] = u_hat[self.axis] * band
        band_energy = 0.5 * (weight * u_hat[self.axis].abs().square()).sum()
        return (self.power / (2.0 * band_energy.clamp_min(1e-30))) * self._project(component)

    def _rhs(self, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nonlinear term plus forcing at ``u_hat``, and the velocity on the grid ``(3, n, n, n)``."""
        omega_hat = torch.linalg.cross(self._ik, u_hat, dim=0)
        u = self.to_physical(u_hat)
        omega = self.to_physical(omega_hat)
        lamb = torch.fft.rfftn(torch.linalg.cross(u, omega, dim=0), dim=_DIMS, norm="forward")
        rhs = self._project(lamb) * self._grid.dealias
        if self.forcing is not None:
            rhs = rhs + self._force(u_hat)
        return rhs, u

    def _rk4(self, u_hat: torch.Tensor, dt: float, a: torch.Tensor) -> torch.Tensor:
        """Integrating-factor RK4 step; ``a`` is the right-hand side at ``u_hat``."""
        half = torch.exp(-0.5 * self.nu * dt * self._grid.k2)
        full = half * half
        b, _ = self._rhs(half * (u_hat + 0.5 * dt * a))
        c, _ = self._rhs(half * u_hat + 0.5 * dt * b)
        d, _ = self._rhs(full * u_hat + dt * half * c)
        return full * u_hat + (dt / 6.0) * (full * a + 2.0 * half * (b + c) + d)
