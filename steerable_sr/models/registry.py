"""The model kinds, their configuration and the size presets: what :func:`build_model` builds.

Kinds (:data:`KIND_SPECS`; docs/conventions.md, "Network topology"): ``cnn`` (plain ``Conv3d``),
``gcnn`` (regular fields, :class:`~steerable_sr.nn.conv.OctahedralConv`), ``rgcnn`` (regular fields,
relaxed), ``steer`` (bands of irreps with a Fourier ReLU), ``rsteer`` (steer, relaxed).
``separable=True`` (``gcnn``/``rgcnn`` only) swaps every convolution into the regular hidden fields
(lift, blocks) for a :class:`~steerable_sr.nn.separable.SeparableGroupConv`; the head stays a full
convolution. Every other list of kinds (CLI choices, studies, benchmarks) derives from
:data:`KIND_SPECS`.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

from .. import groups
from .network import SuperResolutionNet


@dataclass(frozen=True)
class KindSpec:
    """What a model kind puts in the common topology.

    Attributes
    ----------
    field_family : {"plain", "regular", "irreps"}
        The hidden fields: channels of a ``Conv3d`` (no symmetry), regular fields of the group, or
        bands of all irreps (with a Fourier ReLU).
    relaxed : bool
        Relaxed convolutions (filter banks and relaxed weights) instead of exact ones.
    separable : bool
        Whether ``separable=True`` is allowed (regular hidden fields only).
    """

    field_family: str
    relaxed: bool = False
    separable: bool = False


#: The registry of model kinds: everything else (CLI choices, studies, benchmarks) derives from it.
KIND_SPECS: dict[str, KindSpec] = {
    "cnn": KindSpec("plain"),
    "gcnn": KindSpec("regular", separable=True),
    "rgcnn": KindSpec("regular", relaxed=True, separable=True),
    "steer": KindSpec("irreps"),
    "rsteer": KindSpec("irreps", relaxed=True),
}
KINDS = tuple(KIND_SPECS)
RELAXED_KINDS = tuple(kind for kind, spec in KIND_SPECS.items() if spec.relaxed)
SEPARABLE_KINDS = tuple(kind for kind, spec in KIND_SPECS.items() if spec.separable)
#: The package's preset files (``<preset>.yaml``), shipped as package data.
PRESETS = importlib.resources.files("steerable_sr") / "presets"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (saved in checkpoints and exports).

    Attributes
    ----------
    kind : str
        A key of :data:`KIND_SPECS`.
    group : {"Oh", "O"}
        The symmetry group of the equivariant kinds.
    frames : int
        ``T``, the velocity frames of the input.
    upscale : int
        ``s``, a power of two >= 2.
    hidden : int
        Hidden width: channels (cnn) or fields (the equivariant kinds).
    num_filter_banks : int
        Filter banks of the relaxed kinds.
    separable : bool
        Separable group convolutions into the hidden fields (:data:`SEPARABLE_KINDS`).
    trilinear_skip : bool
        Add the trilinear upsampling of the middle input frame to the output.
    checkpoint_blocks : bool
        Activation checkpointing in training: the lift and every block keep only their input for
        backward and run their forward again there (same loss, gradients and running statistics).

    Raises
    ------
    ValueError
        For a value out of range, naming the field.
    """

    kind: str = "rgcnn"
    group: str = "Oh"
    frames: int = 3
    upscale: int = 4
    hidden: int = 2
    num_filter_banks: int = 2
    separable: bool = False
    trilinear_skip: bool = True
    checkpoint_blocks: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; allowed values: {', '.join(KINDS)}")
        groups.check_group(self.group)
        for name in ("frames", "hidden", "num_filter_banks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.upscale, int) or self.upscale < 2 or self.upscale & (self.upscale - 1):
            raise ValueError(f"upscale must be a power of two >= 2, got {self.upscale!r}")
        if not isinstance(self.trilinear_skip, bool):
            raise ValueError(f"trilinear_skip must be true or false, got {self.trilinear_skip!r}")
        for name in ("separable", "checkpoint_blocks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.separable and self.kind not in SEPARABLE_KINDS:
            raise ValueError(f"separable=True needs regular hidden fields: supported by kinds "
                             f"{', '.join(SEPARABLE_KINDS)}, not {self.kind!r}")

    @property
    def spec(self) -> KindSpec:
        """The kind's :class:`KindSpec`."""
        return KIND_SPECS[self.kind]

    @property
    def relaxed(self) -> bool:
        """Whether the kind's convolutions are relaxed."""
        return self.spec.relaxed


def load_preset(preset: str, kind: str) -> dict:
    """The widths of a kind in a preset file.

    Parameters
    ----------
    preset : str
        The file ``steerable_sr/presets/<preset>.yaml`` (package data).
    kind : str
        An entry of the file: a kind, or ``<kind>_separable``.

    Returns
    -------
    dict
        ``ModelConfig`` fields, e.g. ``{"hidden": 2, "num_filter_banks": 2}``.

    Raises
    ------
    ValueError
        For an unknown preset, a file that is not valid YAML, or a missing entry.
    """
    import yaml

    path = PRESETS / f"{preset}.yaml"
    if not path.is_file():
        available = sorted(p.name.removesuffix(".yaml") for p in PRESETS.iterdir() if p.name.endswith(".yaml"))
        raise ValueError(f"unknown preset {preset!r}; allowed values: {', '.join(available)}")
    try:
        table = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"preset file {path}: not valid YAML ({exc})") from exc
    if kind not in table:
        raise ValueError(f"preset {preset!r} has no entry for kind {kind!r}; it defines {', '.join(table)}")
    return dict(table[kind])


#: The ``build_model`` overrides (``ModelConfig`` fields that are not set by its arguments).
MODEL_OPTIONS = ("hidden", "num_filter_banks", "separable", "trilinear_skip", "checkpoint_blocks")


def build_model(kind: str = "rgcnn", group: str = "Oh", frames: int = 3, upscale: int = 4, preset: str = "small",
                **overrides) -> SuperResolutionNet:
    """Build a model of ``kind`` with the widths of ``preset``.

    Parameters
    ----------
    kind : str
        A key of :data:`KIND_SPECS`.
    group : {"Oh", "O"}
    frames : int
        ``T``, the velocity frames of the input.
    upscale : int
        ``s``, a power of two >= 2.
    preset : str
        Widths (:func:`load_preset`); a separable model takes the preset's ``<kind>_separable`` entry.
    **overrides
        :data:`MODEL_OPTIONS` that win over the preset.

    Returns
    -------
    SuperResolutionNet
        ``(B, 3 T, n, n, n) -> (B, 3, s n, s n, s n)``, in training mode.

    Raises
    ------
    ValueError
        For an unknown kind, option, preset, or a value out of range.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; allowed values: {', '.join(KINDS)}")
    unknown = set(overrides) - set(MODEL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown model options {sorted(unknown)}; allowed: {', '.join(MODEL_OPTIONS)}")
    entry = f"{kind}_separable" if overrides.get("separable") is True and kind in SEPARABLE_KINDS else kind
    options = {**load_preset(preset, entry), **overrides}
    return SuperResolutionNet(ModelConfig(kind=kind, group=group, frames=frames, upscale=upscale, **options))
