r"""Low-order statistics of velocity records and the symmetry of a finite sample.

A relaxed network's read-out (:mod:`steerable_sr.symmetry`) is the symmetry of the map learned from
*one sample* of a flow; these statistics say which symmetry that sample itself has.

* :func:`frame_moments`: per frame, raw voxel means of velocity and velocity-gradient products;
* :func:`moment_statistics`: dimensionless statistics of any set of frames, each with a known law
  under an element ``R`` of O_h (:func:`transform_statistics`);
* :func:`odd_parts`: per element, the part of each statistic that the element reverses;
* :func:`sample_symmetry`: the elements whose odd parts are within the sampling noise, estimated
  from the spread over consecutive time blocks, and the largest subgroup among them;
* :func:`resolved_part`: the part of a field that a low-resolution input shows (the trilinear
  upsampling of its block average); the rest, what a super-resolution network must add, can be
  given to every function above in its place;
* :func:`dataset_statistics`: all of it for a split of a generated dataset, for the whole field or
  either part.

Velocity records are ``(T, 3, n, n, n)`` periodic frames in the public convention
(``docs/conventions.md``, "Axes and vectors"); the group acts by ``(R.u)(p) = R u(R^-1 p)``.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import groups
from ..metrics import velocity_gradient, vorticity
from .dataset import FACTOR, downsample, load_generated

__all__ = [
    "NOISE_BLOCKS",
    "NOISE_FACTOR",
    "PARTS",
    "dataset_statistics",
    "frame_moments",
    "moment_statistics",
    "odd_parts",
    "resolved_part",
    "sample_symmetry",
    "transform_statistics",
]

#: Time blocks of the frames from whose spread the sampling noise of a statistic is estimated.
NOISE_BLOCKS = 4
#: A statistic's odd part under an element is noise up to this many block standard errors.
NOISE_FACTOR = 3.0
#: The parts of a field :func:`dataset_statistics` describes.
PARTS = ("whole", "resolved", "unresolved")


def resolved_part(u: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """The part of periodic frames that their low-resolution version shows.

    The block average by ``factor`` (:func:`steerable_sr.data.dataset.downsample`, the input of the
    networks) upsampled back trilinearly (``align_corners=False``, the trilinear skip of the
    networks), with periodic wrap-around instead of the clamped edges of a crop. ``u -
    resolved_part(u)`` is what a super-resolution network must add to the trilinear baseline.

    Both steps commute with the action of O_h on vector fields (a signed permutation of the axes
    maps blocks to blocks and the interpolation weights to themselves), so each part of a field has
    the field's symmetry.

    Parameters
    ----------
    u : torch.Tensor
        ``(T, 3, n, n, n)`` periodic frames, ``n`` a multiple of ``factor``.
    factor : int
        Block size.

    Returns
    -------
    torch.Tensor
        ``(T, 3, n, n, n)``, the dtype of ``u``.
    """
    low = F.pad(downsample(u, factor), (1,) * 6, mode="circular")  # one low cell of wrap-around per side
    up = F.interpolate(low, scale_factor=factor, mode="trilinear", align_corners=False)
    return up[..., factor:-factor, factor:-factor, factor:-factor]


def frame_moments(u: torch.Tensor, chunk: int = 8) -> dict[str, torch.Tensor]:
    """Per frame, the raw voxel means from which :func:`moment_statistics` combines its statistics.

    Parameters
    ----------
    u : torch.Tensor
        ``(T, 3, n, n, n)`` periodic velocity frames.
    chunk : int
        Frames processed at a time (memory).

    Returns
    -------
    dict of str to torch.Tensor
        Double precision: ``u2`` ``<u_a u_b>`` ``(T, 3, 3)``; ``u3`` ``<u_a u_b u_c>``
        ``(T, 3, 3, 3)``; ``g2`` and ``g3`` ``<g_ab^2>``, ``<g_ab^3>`` of the spectral gradient
        ``g_ab = d u_a / d x_b`` ``(T, 3, 3)``; ``helicity`` the relative helicity
        ``<u.w> / (rms|u| rms|w|)`` ``(T,)``.
    """
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("u2", "u3", "g2", "g3", "helicity")}
    for start in range(0, u.shape[0], chunk):
        x = u[start:start + chunk].to(torch.float64)
        parts["u2"].append(torch.einsum("tapqr,tbpqr->tab", x, x) / x[0, 0].numel())
        u3 = torch.zeros(x.shape[0], 3, 3, 3, dtype=torch.float64)
        for a, b, c in itertools.combinations_with_replacement(range(3), 3):
            value = (x[:, a] * x[:, b] * x[:, c]).mean(dim=(1, 2, 3))
            for i, j, k in set(itertools.permutations((a, b, c))):
                u3[:, i, j, k] = value
        parts["u3"].append(u3)
        g = velocity_gradient(x, method="spectral")  # (t, 3, 3, n, n, n)
        parts["g2"].append(g.pow(2).mean(dim=(3, 4, 5)))
        parts["g3"].append(g.pow(3).mean(dim=(3, 4, 5)))
        w = vorticity(x, method="spectral")
        parts["helicity"].append((x * w).sum(1).mean(dim=(1, 2, 3)) / (x.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()
                                                                       * w.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()))
    return {k: torch.cat(v) for k, v in parts.items()}


def moment_statistics(moments: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dimensionless low-order statistics of a set of frames, averaged over frames and voxels.

    Parameters
    ----------
    moments : dict of str to torch.Tensor
        :func:`frame_moments` of the frames.

    Returns
    -------
    dict of str to torch.Tensor
        * ``second_moment`` ``(3, 3)``: ``<u_a u_b> / (<|u|^2> / 3)`` (the identity for isotropic
          statistics; its diagonal is 3 times the energy fractions);
        * ``third_moment`` ``(3, 3, 3)``: ``<u_a u_b u_c> / (s_a s_b s_c)``, ``s_a^2 = <u_a^2>``
          (its diagonal is the skewness of each component);
        * ``derivative_skewness`` ``(3, 3)``: ``<g_ab^3> / <g_ab^2>^(3/2)`` of ``g_ab = d u_a / d x_b``;
        * ``relative_helicity`` ``()``: the frames' mean.

        The moments are raw (about zero), so the group acts on them linearly
        (:func:`transform_statistics`).
    """
    u2, u3 = moments["u2"].mean(0), moments["u3"].mean(0)
    s = torch.diagonal(u2).sqrt()
    return {"second_moment": u2 / (torch.trace(u2) / 3),
            "third_moment": u3 / torch.einsum("a,b,c->abc", s, s, s),
            "derivative_skewness": moments["g3"].mean(0) / moments["g2"].mean(0).pow(1.5),
            "relative_helicity": moments["helicity"].mean()}


def transform_statistics(stats: dict[str, torch.Tensor], R: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics of the transformed field ``(R.u)(p) = R u(R^-1 p)``.

    Parameters
    ----------
    stats : dict of str to torch.Tensor
        :func:`moment_statistics` of ``u``.
    R : torch.Tensor
        ``(3, 3)``, an element of O_h.

    Returns
    -------
    dict of str to torch.Tensor
        ``moment_statistics`` of ``R.u``: moment tensors as tensors (``M_ab -> R_ac R_bd M_cd``,
        likewise rank 3), the derivative skewness as ``R S R^T`` (exact for a signed permutation
        ``R``: it maps ``d u_a / d x_b`` to ``+-`` one entry of the gradient, and ``(+-1)^3 = +-1``),
        the relative helicity as a pseudoscalar (``det R``).
    """
    R = torch.as_tensor(R, dtype=torch.float64)
    return {"second_moment": R @ stats["second_moment"] @ R.T,
            "third_moment": torch.einsum("ad,be,cf,def->abc", R, R, R, stats["third_moment"]),
            "derivative_skewness": R @ stats["derivative_skewness"] @ R.T,
            "relative_helicity": torch.det(R) * stats["relative_helicity"]}


def odd_parts(stats: dict[str, torch.Tensor], group: str = "Oh") -> dict[str, np.ndarray]:
    """The part of each statistic that each element reverses.

    Parameters
    ----------
    stats : dict of str to torch.Tensor
        :func:`moment_statistics`.
    group : {"Oh", "O"}

    Returns
    -------
    dict of str to numpy.ndarray
        Per statistic ``X``, ``(|G|,)``: the largest entry of ``|T_g X - X| / 2`` for each element
        ``g`` (indices of ``group_matrices``): 0 for a symmetry; the skewness of ``u_a`` itself for
        the flip of axis ``a``.
    """
    mats = groups.group_matrices(group).to(torch.float64)
    out = {name: np.zeros(len(mats)) for name in stats}
    for k, R in enumerate(mats):
        for name, value in transform_statistics(stats, R).items():
            out[name][k] = float((value - stats[name]).abs().max()) / 2
    return out


def sample_symmetry(moments: dict[str, torch.Tensor], group: str = "Oh", blocks: int = NOISE_BLOCKS,
                    factor: float = NOISE_FACTOR) -> dict[str, Any]:
    """The symmetry of a sample's statistics.

    Per statistic, a tolerance of ``factor`` standard errors, from the spread of the statistic over
    ``blocks`` consecutive blocks of frames (rms over the entries); kept are the elements whose
    every odd part (:func:`odd_parts`) is within its tolerance. Frames correlated across blocks (a
    record shorter than its slowest fluctuations) make the tolerance small: the result is then the
    symmetry of *this* sample, not of the flow's statistics.

    Parameters
    ----------
    moments : dict of str to torch.Tensor
        :func:`frame_moments` of the frames, in time order.
    group : {"Oh", "O"}
    blocks : int
        Consecutive time blocks for the noise estimate.
    factor : float
        Standard errors within which an odd part counts as noise.

    Returns
    -------
    dict
        ``statistics`` and ``odd_parts`` (as lists), ``tolerance`` per statistic, ``noise_blocks``,
        ``noise_factor``, ``kept_elements``, and ``sample_keeps_elements`` / ``sample_keeps``: the
        largest subgroup among the kept elements and its name.
    """
    stats = moment_statistics(moments)
    parts = odd_parts(stats, group)
    frames = len(moments["helicity"])
    chunks = [moment_statistics({k: v[idx] for k, v in moments.items()})
              for idx in np.array_split(np.arange(frames), blocks) if len(idx)]
    tolerance = {}
    for name in stats:
        spread = torch.stack([c[name] for c in chunks]).std(dim=0) / math.sqrt(len(chunks))
        tolerance[name] = factor * float(spread.pow(2).mean().sqrt())
    kept = {k for k in range(groups.group_order(group)) if all(parts[name][k] <= tolerance[name] for name in stats)}
    keeps = groups.largest_subgroup_in(kept, group)
    return {"statistics": {name: value.tolist() for name, value in stats.items()},
            "odd_parts": {name: value.tolist() for name, value in parts.items()},
            "tolerance": tolerance, "noise_blocks": len(chunks), "noise_factor": factor,
            "kept_elements": sorted(kept), "sample_keeps_elements": keeps,
            "sample_keeps": groups.subgroup_name(keeps, group)}


def dataset_statistics(path: str, split: str = "train", part: str = "whole") -> dict[str, Any]:
    """Anisotropy, chirality and symmetry of the frames of a generated dataset's split.

    Parameters
    ----------
    path : str
        A file of :func:`steerable_sr.data.generate.generate_dataset`.
    split : {"train", "val", "test"}
    part : {"whole", "resolved", "unresolved"}
        The frames themselves, their :func:`resolved_part`, or the rest (what the networks add).

    Returns
    -------
    dict
        ``frames``; ``part``; ``energy_fractions`` (the fraction of the kinetic energy in each
        component, 1/3 each for isotropic statistics); ``anisotropy``, the Frobenius norm of
        ``<u_a u_b> / <|u|^2> - delta_ab / 3`` (0 for isotropic statistics, at most ``sqrt(2/3)``);
        ``relative_helicity`` ``<u.w> / (rms|u| rms|w|)`` (0 for mirror-symmetric statistics) and its range over frames; ``velocity_skewness`` of each
        component (0 if the flip of its axis is a symmetry); ``cross_correlation`` of ``u_x u_y``,
        ``u_x u_z``, ``u_y u_z`` (0 under the flip of either axis); ``derivative_skewness`` of each
        ``d u_a / d x_b`` ``(3, 3)``; and every entry of :func:`sample_symmetry`.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    data = load_generated(path)
    frames = np.sort(data["splits"][split])
    u = data["velocity"][torch.from_numpy(frames)].double()
    if part != "whole":
        resolved = resolved_part(u)
        u = resolved if part == "resolved" else u - resolved
    moments = frame_moments(u)
    symmetry = sample_symmetry(moments)
    stats = symmetry["statistics"]
    second = np.asarray(stats["second_moment"])
    helicity = moments["helicity"]
    return {"frames": len(frames), "part": part, "energy_fractions": (np.diag(second) / np.trace(second)).tolist(),
            "anisotropy": float(np.linalg.norm(second / np.trace(second) - np.eye(3) / 3)),
            "relative_helicity": stats["relative_helicity"],
            "relative_helicity_range": [float(helicity.min()), float(helicity.max())],
            "velocity_skewness": [stats["third_moment"][a][a][a] for a in range(3)],
            "cross_correlation": [float(second[a, b] / math.sqrt(second[a, a] * second[b, b]))
                                  for a, b in ((0, 1), (0, 2), (1, 2))],
            "derivative_skewness": stats["derivative_skewness"], **symmetry}
