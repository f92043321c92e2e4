"""Figures: the figure setup and PNG save every plot uses, and the energy-spectrum plot shared by the
evaluation report (:mod:`steerable_sr.report`) and the study (:mod:`steerable_sr.study`).

Figures are :class:`matplotlib.figure.Figure` objects, not pyplot's: no display, no global backend
or figure state, nothing to close.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .io import atomic_output

#: Line styles of the reference curves; every other curve (a model) gets the next colour of the cycle.
REFERENCE_STYLES = {
    "truth": {"color": "k", "lw": 2},
    "trilinear": {"color": "k", "ls": "--", "lw": 1},
    "input": {"color": "0.5", "ls": ":", "lw": 1},
}


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Lay out ``fig`` and write it to ``path`` as PNG, atomically (replacing an existing file).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike
    dpi : int
    """
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def plot_spectra(path: str | os.PathLike, spectra: Mapping[str, Sequence[float]], title: str = "",
                 mark_k: int | None = None) -> None:
    """Plot energy spectra on log-log axes and save them as PNG.

    Parameters
    ----------
    path : str or os.PathLike
        The PNG file.
    spectra : mapping of str to sequence of float
        ``E(k)`` by name, indexed by shell ``k = 0, 1, ...``; the shells ``k >= 1`` with ``E > 0``
        are drawn (a spectrum with none draws no line). The reference curves of
        :data:`REFERENCE_STYLES` (truth, trilinear, input) get fixed styles.
    title : str
    mark_k : int, optional
        A vertical line at that shell.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, energy in spectra.items():
        energy = np.asarray(energy, dtype=float)
        k = np.arange(len(energy))
        keep = (k >= 1) & (energy > 0)
        ax.loglog(k[keep], energy[keep], label=name, **REFERENCE_STYLES.get(name, {"lw": 1}))
    if mark_k is not None:
        ax.axvline(mark_k, color="0.7", lw=0.8)
    ax.set_xlabel("k (shell)")
    ax.set_ylabel("E(k)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    save_png(fig, path)
