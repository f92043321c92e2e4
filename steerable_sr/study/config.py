"""The settings of a study (:class:`StudyConfig`) and the model kinds it accepts.

Kinds are those of :data:`steerable_sr.models.KINDS`, or ``<kind>_separable`` for the separable
regular kinds (``gcnn_separable``, ``rgcnn_separable``: ``build_model(kind, separable=True)`` with
the preset's ``<kind>_separable`` widths), and ``<relaxed kind>_held`` (``rgcnn_held``,
``rsteer_held``, ``rgcnn_separable_held``): the relaxed network trained with its relaxed weights held
at the invariants (:func:`steerable_sr.nn.relaxed.hold_at_invariants`), exactly equivariant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..models import KINDS, RELAXED_KINDS, SEPARABLE_KINDS
from ..groups import subgroup_elements

SEPARABLE_SUFFIX = "_separable"
HELD_SUFFIX = "_held"

#: Discovery models: narrow, and without the trilinear skip. The skip is an exactly equivariant path
#: that already carries the input's large-scale anisotropy to the output, so a relaxed network with it
#: never needs to break the symmetry and reads O_h on any data (docs/results.md); without it the
#: relaxed weights must carry whatever anisotropy the map has, which is what the read-out is for.
DISCOVERY_OVERRIDES: dict[str, Any] = {"hidden": 1, "trilinear_skip": False}


@dataclass
class StudyConfig:
    """Settings of a study: the comparison of kinds and the symmetry discovery alike.

    The defaults are the small CPU comparison of ``docs/results.md``; the optimiser's (``lr``,
    ``weight_decay``, ``gamma``) are those of :class:`steerable_sr.training.SuperResolutionModule`.

    Attributes
    ----------
    data : str
        The dataset of a comparison (discovery takes its datasets as an argument).
    out : str
        The output directory.
    kinds : sequence of str
        Model kinds (:func:`parse_kind`).
    seeds : sequence of int
        One training run per seed and kind.
    group, preset, model_overrides
        Passed to :func:`steerable_sr.models.build_model` for every kind.
    crop, batch_size, crops_per_window
        Passed to :class:`steerable_sr.data.dataset.TurbulenceDataModule`.
    max_epochs, max_steps, limit_train_batches, limit_val_batches, limit_test_batches
        The training budget (Lightning's ``Trainer`` arguments).
    lr, weight_decay, gamma, penalty_weight
        Adam, StepLR and the relaxed kinds' penalty weight.
    test_equivariance_elements : int, optional
        Group elements of the test equivariance error (``None``: all).
    accelerator, devices, precision
        Lightning's ``Trainer`` arguments.
    build_time : bool
        Measure every kind's cold and warm build time in fresh processes.
    augment : str, optional
        Symmetrise the training batches by this named subgroup of O_h
        (:class:`steerable_sr.study.runs.Augment`).
    threads : int, optional
        Torch's CPU threads (``None``: torch's default).
    progress : bool
        Show Lightning's progress bars.
    overwrite : bool
        Replace the results of an earlier study in ``out`` (otherwise refused before any training).
    """

    data: str = "data/iso_n32.h5"
    out: str = "runs/compare"
    kinds: Sequence[str] = KINDS
    seeds: Sequence[int] = (0, 1, 2)
    group: str = "Oh"
    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    crop: int | None = 16
    batch_size: int = 4
    crops_per_window: int = 2
    max_epochs: int = 6
    max_steps: int = -1
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    lr: float = 1e-3
    weight_decay: float = 4e-4
    gamma: float = 0.95
    penalty_weight: float = 1e-4
    test_equivariance_elements: int | None = None
    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = "32-true"
    build_time: bool = True
    augment: str | None = None
    threads: int | None = 1
    progress: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.kinds:
            raise ValueError("no model kinds to compare")
        if not self.seeds:
            raise ValueError("no seeds")
        for spec in self.kinds:
            parse_kind(spec)
        if self.augment is not None:
            subgroup_elements(self.augment, "Oh")  # a ValueError now for an unknown name


def split_held(spec: str) -> tuple[str, bool]:
    """A study kind without its ``_held`` suffix, and whether it had one (``"rgcnn_held" -> ("rgcnn",
    True)``, ``"gcnn" -> ("gcnn", False)``)."""
    if spec.endswith(HELD_SUFFIX):
        return spec[: -len(HELD_SUFFIX)], True
    return spec, False


def parse_kind(spec: str) -> tuple[str, dict[str, Any]]:
    """The model kind of a study's kind name and its ``build_model`` overrides.

    Parameters
    ----------
    spec : str
        A kind (``"gcnn"``), a separable form (``"gcnn_separable"``), or a relaxed one held at the
        invariants (``"rgcnn_held"``, ``"rgcnn_separable_held"``; :func:`split_held` tells it apart,
        the model is built alike).

    Returns
    -------
    tuple of (str, dict)
        ``("gcnn", {})``, ``("gcnn", {"separable": True})``; ``ValueError`` for an unknown kind.
    """
    base, held = split_held(spec)
    kind, overrides = base, {}
    if base.endswith(SEPARABLE_SUFFIX):
        kind, overrides = base[: -len(SEPARABLE_SUFFIX)], {"separable": True}
        if kind not in SEPARABLE_KINDS:
            raise ValueError(f"{spec!r}: separable models are not available for kind {kind!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {spec!r}; allowed values: {', '.join(available_kinds())}")
    if held and kind not in RELAXED_KINDS:
        raise ValueError(f"{spec!r}: only relaxed kinds ({', '.join(RELAXED_KINDS)}) have weights to hold")
    return kind, overrides


def available_kinds() -> tuple[str, ...]:
    """Every kind of the registry, ``<kind>_separable`` for the kinds that allow it, and
    ``<kind>_held`` for the relaxed ones."""
    kinds = KINDS + tuple(k + SEPARABLE_SUFFIX for k in SEPARABLE_KINDS)
    return kinds + tuple(k + HELD_SUFFIX for k in kinds if parse_kind(k)[0] in RELAXED_KINDS)
