r"""Physics-aware metrics for 3D velocity super-resolution, and the trilinear baseline.

All functions use the public tensor convention (``docs/conventions.md``, "Axes and vectors"): a velocity frame is
``(3, N, N, N)``, spatial axis ``a`` is the coordinate ``x_a`` and channel ``a`` the component
``u_a``; batches are ``(B, 3, N, N, N)``; ``T`` stacked input frames are ``(B, 3 T, n, n, n)``.

Definitions (each returns a 0-dim tensor unless stated otherwise):

* :func:`mae`, :func:`rmse`: over every entry of the batch.
* :func:`relative_l2`: ``||pred - true|| / ||true||`` per sample (norm over components and voxels),
  averaged over the batch.
* :func:`energy_spectrum`: ``u_hat = fftn(u) / N^3``; ``E(k) = sum over the shell
  k - 1/2 <= |kappa| < k + 1/2 of 1/2 |u_hat(kappa)|^2`` with integer wavenumbers ``kappa``
  (``fftfreq * N``). Every shell up to the cube's corner is kept, so ``sum_k E(k) = 1/2 <u.u>``
  exactly (Parseval).
* :func:`spectrum_error`: **mean absolute log10 ratio** of the batch-averaged spectra,
  ``mean_k |log10 E_pred(k) - log10 E_true(k)|`` over the shells ``k = 1 .. N // 2`` (the shells
  that the cube resolves in every direction), overall and per band: ``low``/``mid``/``high`` are
  the thirds of that range of ``k``. A value of 0.1 means the predicted spectrum is off by a factor
  ``10^0.1 = 1.26`` on average. The log is used (not the relative L1 of ``E``) because ``E`` falls
  by decades over the range and the relative L1 would only see the largest scales.
* :func:`divergence_residual`: ``||div u|| / ||grad u||`` with the same derivative stencil for both
  (so the grid spacing cancels; 0 for a solenoidal field; at most ``sqrt(3)``; about ``1/sqrt(3)`` for
  white noise). ``method="central"`` (second-order central differences) with ``periodic=True``
  wraps around the box; with ``periodic=False`` only interior voxels are used (use this for crops of
  a periodic field, which are not periodic themselves). ``method="spectral"`` differentiates in
  Fourier space (periodic fields only; the Nyquist mode of odd derivatives is dropped).
* :func:`equivariance_error`: ``max_R ||f(R.x) - R.f(x)|| / ||f(x)||`` over group elements, in eval
  mode.
* :func:`trilinear`: the baseline, the middle input frame upsampled with trilinear interpolation
  (``align_corners=False``, exactly O_h-equivariant on the grid).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

BANDS = ("low", "mid", "high")


def _check_velocity(u: torch.Tensor, name: str = "u") -> None:
    if u.dim() < 4 or u.shape[-4] != 3:
        raise ValueError(f"{name}: expected a velocity tensor (..., 3, N, N, N), got shape {tuple(u.shape)}")


def _check_same(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")


# ------------------------------------------------------------------------------------------------
# Pointwise errors
# ------------------------------------------------------------------------------------------------


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all entries.

    Parameters
    ----------
    pred, target : torch.Tensor
        Tensors of the same shape.

    Returns
    -------
    torch.Tensor
        0-dim. Invariant under any common transformation of ``pred`` and ``target`` that permutes
        entries and flips their signs (e.g. :func:`steerable_sr.groups.act`).
    """
    _check_same(pred, target)
    return (pred - target).abs().mean()


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error over all entries.

    Parameters
    ----------
    pred, target : torch.Tensor
        Tensors of the same shape.

    Returns
    -------
    torch.Tensor
        0-dim; invariant like :func:`mae`.
    """
    _check_same(pred, target)
    return (pred - target).pow(2).mean().sqrt()


def relative_l2(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``||pred - target|| / ||target||`` per sample, averaged over the batch.

    Parameters
    ----------
    pred, target : torch.Tensor
        ``(B, ...)`` of the same shape; norms over everything but the first axis.
    eps : float
        Floor of ``||target||``.

    Returns
    -------
    torch.Tensor
        0-dim.
    """
    _check_same(pred, target)
    diff = (pred - target).reshape(pred.shape[0], -1).norm(dim=1)
    ref = target.reshape(target.shape[0], -1).norm(dim=1)
    return (diff / ref.clamp_min(eps)).mean()


# ------------------------------------------------------------------------------------------------
# Energy spectrum
# ------------------------------------------------------------------------------------------------


def _wavenumbers(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Integer wavenumbers of an ``n``-point periodic axis, in ``torch.fft`` order."""
    return torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)


def _kappa(shape: Sequence[int], device=None) -> tuple[torch.Tensor, ...]:
    axes = [_wavenumbers(n, device) for n in shape]
    return torch.meshgrid(*axes, indexing="ij")


def num_shells(n: int) -> int:
    """Number of spectrum shells ``k = 0, 1, ...`` that cover an ``n^3`` cube, corners included:
    ``round(sqrt(3) (n // 2)) + 1``."""
    kmax = math.sqrt(3.0) * (n // 2)
    return int(math.floor(kmax + 0.5)) + 1


def energy_spectrum(u: torch.Tensor) -> torch.Tensor:
    r"""Shell-summed kinetic-energy spectrum.

    Parameters
    ----------
    u : torch.Tensor
        ``(..., 3, N, N, N)`` velocity (any leading batch axes; a cube).

    Returns
    -------
    torch.Tensor
        ``(..., K)`` float64 with ``K = num_shells(N)``: entry ``k`` is the energy in the shell
        ``k - 1/2 <= |kappa| < k + 1/2``; ``sum_k E(k) = 1/2 <u.u>`` (mean over voxels). Invariant
        under O_h (a signed permutation of the axes maps every shell onto itself).
    """
    _check_velocity(u)
    shape = tuple(u.shape[-3:])
    if len(set(shape)) != 1:
        raise ValueError(f"energy_spectrum needs a cubic volume, got spatial shape {shape}")
    n = shape[0]
    uh = torch.fft.fftn(u.to(torch.float64), dim=(-3, -2, -1)) / float(n) ** 3
    dens = 0.5 * (uh.real ** 2 + uh.imag ** 2).sum(dim=-4)  # (..., N, N, N)
    kx, ky, kz = _kappa(shape, u.device)
    shell = torch.floor(torch.sqrt(kx ** 2 + ky ** 2 + kz ** 2) + 0.5).long().reshape(-1)
    K = num_shells(n)
    lead = dens.shape[:-3]
    flat = dens.reshape(-1, n ** 3)
    out = torch.zeros(flat.shape[0], K, dtype=torch.float64, device=u.device)
    out.index_add_(1, shell, flat)
    return out.reshape(*lead, K)


def band_edges(n: int) -> dict[str, tuple[int, int]]:
    """Shell ranges ``[k0, k1)`` of the low, mid and high thirds of ``k = 1 .. n // 2``.

    Parameters
    ----------
    n : int
        Grid points per direction, at least 6.

    Returns
    -------
    dict of str to (int, int)
        Keyed by :data:`BANDS`.
    """
    kmax = n // 2
    if kmax < 3:
        raise ValueError(f"a {n}^3 grid resolves fewer than 3 shells; spectrum bands need N >= 6")
    cuts = [1 + round(i * kmax / 3) for i in range(4)]
    return {name: (cuts[i], cuts[i + 1]) for i, name in enumerate(BANDS)}


def spectrum_error(pred: torch.Tensor, target: torch.Tensor, floor: float = 1e-30) -> dict[str, torch.Tensor]:
    """Mean absolute log10 ratio of batch-averaged spectra, overall and per band.

    Parameters
    ----------
    pred, target : torch.Tensor
        ``(..., 3, N, N, N)`` of the same shape, ``N >= 6``.
    floor : float
        Energies are clamped to it before the logarithm.

    Returns
    -------
    dict of str to torch.Tensor
        ``{"all", "low", "mid", "high"}``, 0-dim float64: the mean of
        ``|log10 E_pred(k) - log10 E_true(k)|`` over ``k = 1 .. N // 2`` and over each third
        (:func:`band_edges`).
    """
    _check_same(pred, target)
    n = pred.shape[-1]
    Ep = energy_spectrum(pred).reshape(-1, num_shells(n)).mean(0)
    Et = energy_spectrum(target).reshape(-1, num_shells(n)).mean(0)
    err = (torch.log10(Ep.clamp_min(floor)) - torch.log10(Et.clamp_min(floor))).abs()
    edges = band_edges(n)
    out = {"all": err[1 : n // 2 + 1].mean()}
    for name, (k0, k1) in edges.items():
        out[name] = err[k0:k1].mean()
    return out


# ------------------------------------------------------------------------------------------------
# Derivatives: divergence, vorticity
# ------------------------------------------------------------------------------------------------


def _central(f: torch.Tensor, axis: int, periodic: bool) -> torch.Tensor:
    """Central difference (f(x+1) - f(x-1)) / 2 along spatial ``axis`` (0, 1, 2) of ``(..., N, N, N)``.

    ``periodic=False`` drops one voxel on each side of *every* spatial axis, so all derivatives of a
    field share the interior grid ``(N-2)^3``.
    """
    dim = f.dim() - 3 + axis
    if periodic:
        return 0.5 * (torch.roll(f, -1, dims=dim) - torch.roll(f, 1, dims=dim))
    n = f.shape[dim]
    d = 0.5 * (f.narrow(dim, 2, n - 2) - f.narrow(dim, 0, n - 2))
    for other in range(3):
        if other != axis:
            od = f.dim() - 3 + other
            d = d.narrow(od, 1, d.shape[od] - 2)
    return d


def _spectral_derivs(u: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3, N, N, N)``: entry ``[i, j] = d u_i / d x_j`` (grid units), via FFT."""
    shape = tuple(u.shape[-3:])
    uh = torch.fft.fftn(u.to(torch.float64), dim=(-3, -2, -1))
    ks = list(_kappa(shape, u.device))
    for j, n in enumerate(shape):
        if n % 2 == 0:  # the Nyquist mode has no well-defined odd derivative
            ks[j] = torch.where(ks[j].abs() == n // 2, torch.zeros_like(ks[j]), ks[j])
    scale = [2 * math.pi / n for n in shape]
    d = torch.stack([uh * (1j * ks[j] * scale[j]) for j in range(3)], dim=-4)  # (..., 3 comp, 3 deriv, N..)
    return torch.fft.ifftn(d, dim=(-3, -2, -1)).real


def velocity_gradient(u: torch.Tensor, method: str = "central", periodic: bool = True) -> torch.Tensor:
    """The velocity gradient in grid units (spacing 1).

    Parameters
    ----------
    u : torch.Tensor
        ``(..., 3, N, N, N)`` velocity.
    method : {"central", "spectral"}
        Second-order central differences, or Fourier differentiation (periodic fields only; the
        Nyquist mode of odd derivatives is dropped).
    periodic : bool
        Central differences wrap around the box; without, only the interior voxels are kept.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3, M, M, M)`` float64, entry ``[i, j] = d u_i / d x_j``; ``M = N`` except for
        ``method="central", periodic=False`` (``M = N - 2``; ``ValueError`` for ``N < 3``).
    """
    _check_velocity(u)
    if method == "spectral":
        if not periodic:
            raise ValueError("spectral derivatives need a periodic field (periodic=True)")
        return _spectral_derivs(u)
    if method != "central":
        raise ValueError(f"unknown derivative method {method!r}; allowed values: central, spectral")
    if not periodic and min(u.shape[-3:]) < 3:
        raise ValueError(f"central differences on the interior voxels need at least 3 voxels per axis, "
                         f"got spatial shape {tuple(u.shape[-3:])}")
    u = u.to(torch.float64)
    rows = []
    for i in range(3):
        comp = u[..., i, :, :, :]
        rows.append(torch.stack([_central(comp, j, periodic) for j in range(3)], dim=-4))
    return torch.stack(rows, dim=-5)


def divergence(u: torch.Tensor, method: str = "central", periodic: bool = True) -> torch.Tensor:
    """The divergence ``(..., M, M, M)`` in grid units (arguments and ``M``:
    :func:`velocity_gradient`); a scalar field under O_h."""
    g = velocity_gradient(u, method, periodic)
    return g[..., 0, 0, :, :, :] + g[..., 1, 1, :, :, :] + g[..., 2, 2, :, :, :]


def vorticity(u: torch.Tensor, method: str = "central", periodic: bool = True) -> torch.Tensor:
    """The vorticity ``curl u`` ``(..., 3, M, M, M)`` in grid units, public component order
    (arguments and ``M``: :func:`velocity_gradient`); a pseudovector field under O_h (improper
    elements flip its sign)."""
    g = velocity_gradient(u, method, periodic)
    w0 = g[..., 2, 1, :, :, :] - g[..., 1, 2, :, :, :]
    w1 = g[..., 0, 2, :, :, :] - g[..., 2, 0, :, :, :]
    w2 = g[..., 1, 0, :, :, :] - g[..., 0, 1, :, :, :]
    return torch.stack([w0, w1, w2], dim=-4)


def divergence_residual(u: torch.Tensor, method: str = "central", periodic: bool = False,
                        eps: float = 1e-30) -> torch.Tensor:
    """``||div u|| / ||grad u||`` per sample, averaged over the batch.

    Parameters
    ----------
    u : torch.Tensor
        ``(B, 3, N, N, N)`` or one field ``(3, N, N, N)``.
    method, periodic
        As in :func:`velocity_gradient`. The default, central differences on the interior voxels,
        is right for crops of a periodic box; pass ``periodic=True`` for whole periodic boxes.
    eps : float
        Floor of ``||grad u||``.

    Returns
    -------
    torch.Tensor
        0-dim float64, between 0 (solenoidal) and ``sqrt(3)``; invariant under O_h.
    """
    g = velocity_gradient(u, method, periodic)
    div = g[..., 0, 0, :, :, :] + g[..., 1, 1, :, :, :] + g[..., 2, 2, :, :, :]
    if u.dim() == 4:
        return div.norm() / g.norm().clamp_min(eps)
    b = u.shape[0]
    num = div.reshape(b, -1).norm(dim=1)
    den = g.reshape(b, -1).norm(dim=1).clamp_min(eps)
    return (num / den).mean()


# ------------------------------------------------------------------------------------------------
# Baseline and equivariance
# ------------------------------------------------------------------------------------------------


def middle_frame(low_res: torch.Tensor) -> torch.Tensor:
    """The middle frame ``t = T // 2`` of ``T`` stacked frames: ``(B, 3 T, n, n, n) -> (B, 3, n, n, n)``."""
    c = low_res.shape[1]
    if c % 3:
        raise ValueError(f"stacked frames need a channel count divisible by 3, got {c}")
    t = c // 3
    return low_res[:, 3 * (t // 2) : 3 * (t // 2) + 3]


def trilinear(low_res: torch.Tensor, upscale: int = 4) -> torch.Tensor:
    """The baseline: the middle frame upsampled trilinearly.

    Parameters
    ----------
    low_res : torch.Tensor
        ``(B, 3 T, n, n, n)`` stacked frames.
    upscale : int
        Resolution factor.

    Returns
    -------
    torch.Tensor
        ``(B, 3, upscale n, upscale n, upscale n)`` (``align_corners=False``): exactly
        O_h-equivariant on the grid.
    """
    return F.interpolate(middle_frame(low_res), scale_factor=upscale, mode="trilinear", align_corners=False)


def sample_elements(group: str = "Oh", count: int | None = None) -> list[int]:
    """Group elements to test equivariance on, generators first.

    Parameters
    ----------
    group : {"Oh", "O"}
    count : int, optional
        How many non-identity elements; ``None``: every element, identity included.

    Returns
    -------
    list of int
        Indices into ``groups.group_matrices(group)``: first the generators (a 4-fold rotation
        about x_0, a 3-fold rotation about the body diagonal, and for O_h the inversion and the
        mirror x_0 -> -x_0), then the other elements in order.
    """
    from . import groups

    mats = groups.group_matrices(group).numpy()
    if count is None:
        return list(range(len(mats)))
    wanted = [
        [[1, 0, 0], [0, 0, -1], [0, 1, 0]],   # 90 deg about x_0
        [[0, 0, 1], [1, 0, 0], [0, 1, 0]],    # 120 deg about (1, 1, 1)
    ]
    if group == "Oh":
        wanted += [[[-1, 0, 0], [0, -1, 0], [0, 0, -1]], [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]]
    first = [groups.element_index(torch.tensor(w, dtype=torch.float64), group) for w in wanted]
    rest = [i for i in range(1, len(mats)) if i not in first]
    return (first + rest)[: max(0, count)]


@torch.no_grad()
def equivariance_errors(model, x, group: str = "Oh", elements: Iterable[int] | int | None = None,
                        eps: float = 1e-30, chunk: int = 1) -> torch.Tensor:
    """Per-element relative equivariance error ``||f(R.x) - R.f(x)|| / ||f(x)||``, in eval mode.

    Parameters
    ----------
    model : callable
        The network ``f``; its training flag is restored afterwards.
    x : torch.Tensor or escnn GeometricTensor
        Velocity frames in the public convention ``(B, 3 T, N, N, N)`` (``R`` acts by
        :func:`steerable_sr.groups.act`), or an escnn ``GeometricTensor`` on a voxel grid (``R``
        acts by :func:`steerable_sr.fields.transform` on input and output; ``group`` is then the
        tensor's own).
    group : {"Oh", "O"}
    elements : iterable of int or int, optional
        Indices into ``groups.group_matrices(group)``, or a count (:func:`sample_elements`), or
        ``None`` for all.
    eps : float
        Floor of ``||f(x)||``.
    chunk : int
        Transformed copies of ``x`` per forward pass (in eval mode the samples of a batch do not
        interact, so this changes only speed and memory: ``chunk`` times the batch).

    Returns
    -------
    torch.Tensor
        ``(len(elements),)`` float64; norms over the whole batch. 0 up to round-off for an exactly
        equivariant ``f``.
    """
    from . import fields, groups

    if isinstance(x, torch.Tensor):
        mats = groups.group_matrices(group)

        def move(t, i):
            return groups.act(t, mats[i], "vector")

        def values(t):
            return t

        def stack(ts):
            return torch.cat(ts)
    else:  # escnn GeometricTensor
        group = fields.group_of(x.type)

        def move(t, i):
            return fields.transform(t, i)

        def values(t):
            return t.tensor

        def stack(ts):
            return type(x)(torch.cat([t.tensor for t in ts]), x.type)
    if elements is None or isinstance(elements, int):
        elements = sample_elements(group, elements)
    elements = list(elements)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        y = model(x)
        ref = values(y).double().norm().clamp_min(eps)
        out = []
        for start in range(0, len(elements), chunk):
            part = elements[start:start + chunk]
            moved = values(model(stack([move(x, i) for i in part]))).split(len(values(x)))
            for i, m in zip(part, moved):
                out.append((m - values(move(y, i))).double().norm() / ref)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def equivariance_error(model, x: torch.Tensor, group: str = "Oh",
                       elements: Iterable[int] | int | None = None) -> torch.Tensor:
    """The largest of :func:`equivariance_errors`: ``max_R ||f(R.x) - R.f(x)|| / ||f(x)||``.

    Parameters
    ----------
    model, x, group, elements
        As in :func:`equivariance_errors` (default: every element of the group).

    Returns
    -------
    torch.Tensor
        0-dim float64 (0 for no elements).
    """
    errs = equivariance_errors(model, x, group, elements)
    return errs.max() if errs.numel() else torch.zeros((), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# All at once
# ------------------------------------------------------------------------------------------------


def field_metrics(pred: torch.Tensor, target: torch.Tensor, divergence_method: str = "central",
                  periodic: bool = False) -> dict[str, float]:
    """The pointwise, spectral and divergence metrics of one prediction against the truth.

    Parameters
    ----------
    pred, target : torch.Tensor
        ``(B, 3, N, N, N)``.
    divergence_method, periodic
        Of the divergence residual (:func:`divergence_residual`).

    Returns
    -------
    dict of str to float
        ``mae``, ``rmse``, ``rel_l2``; ``spec_err``, ``spec_err_low``, ``spec_err_mid``,
        ``spec_err_high`` when ``N >= 6``; ``div`` (of ``pred``) when ``N >= 3``.
    """
    pred = pred.detach().float()
    target = target.detach().float()
    out = {"mae": mae(pred, target), "rmse": rmse(pred, target), "rel_l2": relative_l2(pred, target)}
    if pred.shape[-1] >= 6:
        se = spectrum_error(pred, target)
        out["spec_err"] = se["all"]
        for b in BANDS:
            out[f"spec_err_{b}"] = se[b]
    if pred.shape[-1] >= 3:
        out["div"] = divergence_residual(pred, divergence_method, periodic)
    return {k: float(v) for k, v in out.items()}
