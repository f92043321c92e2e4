r"""Super-resolution networks (Wang et al. 2024, Sec. 5.5): one topology, five model kinds.

Public convention in and out: ``(B, 3 T, n, n, n)`` (``T`` velocity frames) ->
``(B, 3, s n, s n, s n)`` (one velocity frame, ``s`` = ``upscale``, a power of two)::

    input_map -> lift -> [UpBlock(x2), ResBlock] x log2(s) -> head -> output_map

* ``lift``: conv k=3 (velocity frames -> hidden) + norm + nonlinearity;
* ``UpBlock``: transposed conv (k=4, s=2, p=1: exact on the grid) + norm + nonlinearity + conv,
  added to the trilinear upsampling of its input (align_corners=False: exact), then norm + nonlinearity;
* ``ResBlock``: two convs with a residual;
* ``head``: conv k=3, hidden -> one velocity field;
* ``trilinear_skip`` (default on): the trilinear upsampling of the middle input frame is added to
  the output, so the network learns the correction to the trilinear baseline (exact on the grid).

Kinds (``KIND_SPECS``; docs/conventions.md, "Network topology"): ``cnn`` (plain Conv3d), ``gcnn``
(regular fields, :class:`~steerable_sr.nn.OctahedralConv`), ``rgcnn`` (regular fields, relaxed),
``steer`` (bands of irreps with a Fourier ReLU), ``rsteer`` (steer, relaxed). ``separable=True``
(``gcnn``/``rgcnn`` only) swaps every convolution into the regular hidden fields (lift, blocks) for
a :class:`~steerable_sr.nn.SeparableGroupConv`; the head stays a full convolution. ``input_map`` /
``output_map`` convert between the public convention and escnn's (:mod:`steerable_sr.fields`).
Every equivariant kind is exactly equivariant to the whole group in
eval mode (relaxed kinds: while their relaxed weights are trivial), and :meth:`export` returns the
same network as plain torch layers.
"""
from __future__ import annotations

import copy
import importlib.resources
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import fields, groups


@dataclass(frozen=True)
class KindSpec:
    """What a model kind puts in the common topology.

    Attributes:
        fields: hidden field family: ``"plain"`` (channels of a Conv3d, no symmetry), ``"regular"``
            (regular fields of the group) or ``"irreps"`` (bands of all irreps, Fourier ReLU).
        relaxed: relaxed convolutions (filter banks and relaxed weights) instead of exact ones.
        separable: whether ``separable=True`` is allowed (regular hidden fields only).
    """

    fields: str
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
HEAD_INIT_SCALE = 0.01  # with the trilinear skip, the head's initial filters are scaled by this
#: The package's preset files (``<preset>.yaml``), shipped as package data.
PRESETS = importlib.resources.files("steerable_sr") / "presets"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (saved in checkpoints and exports)."""

    kind: str = "rgcnn"
    group: str = "Oh"
    frames: int = 3
    upscale: int = 4
    hidden: int = 2
    num_filter_banks: int = 2
    separable: bool = False
    trilinear_skip: bool = True
    #: Activation checkpointing in training: the lift and every block keep only their input for
    #: backward and run their forward again there (same loss, gradients and running statistics).
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
        return KIND_SPECS[self.kind]

    @property
    def relaxed(self) -> bool:
        return self.spec.relaxed


def load_preset(preset: str, kind: str) -> dict:
    """The widths of ``kind`` in the preset file ``steerable_sr/presets/<preset>.yaml``."""
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
                **overrides) -> "SuperResolutionNet":
    """Build a model of ``kind`` with the widths of ``preset`` (``overrides`` win: ``hidden``,
    ``num_filter_banks``, ``separable``, ``trilinear_skip``, ``checkpoint_blocks``; a separable model takes
    the preset's ``<kind>_separable`` widths)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; allowed values: {', '.join(KINDS)}")
    unknown = set(overrides) - set(MODEL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown model options {sorted(unknown)}; allowed: {', '.join(MODEL_OPTIONS)}")
    entry = f"{kind}_separable" if overrides.get("separable") is True and kind in SEPARABLE_KINDS else kind
    options = {**load_preset(preset, entry), **overrides}
    return SuperResolutionNet(ModelConfig(kind=kind, group=group, frames=frames, upscale=upscale, **options))


# ---------------------------------------------------------------------------------------------
# Layers: what each kind puts at the leaves of the common topology
# ---------------------------------------------------------------------------------------------


class TensorOp(nn.Module):
    """Runs an escnn ``EquivariantModule`` on plain tensors ``(B, in_type.size, ...)`` (wraps the input
    in a ``GeometricTensor`` of the module's input type and unwraps the result)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from escnn.nn import GeometricTensor

        return self.module(GeometricTensor(x, self.module.in_type)).tensor

    def export(self) -> nn.Module:
        return self.module.export()


class PlainLayers:
    """Leaves of the ``cnn`` kind: ``hidden`` channels, Conv3d / ConvTranspose3d / BatchNorm3d / ReLU."""

    def __init__(self, config: ModelConfig):
        self.input, self.hidden, self.output = 3 * config.frames, config.hidden, 3

    def conv(self, c_in: int, c_out: int) -> nn.Module:
        return nn.Conv3d(c_in, c_out, 3, padding=1)

    def up(self, c: int) -> nn.Module:
        return nn.ConvTranspose3d(c, c, 4, stride=2, padding=1)

    def norm(self, c: int) -> nn.Module:
        return nn.BatchNorm3d(c)

    def act(self, c: int) -> nn.Module:
        return nn.ReLU()

    def input_map(self) -> nn.Module:
        return nn.Identity()

    output_map = input_map


#: The escnn field type of each equivariant hidden field family of :class:`KindSpec`.
HIDDEN_TYPES = {"regular": fields.regular_type, "irreps": fields.irrep_type}


class EquivariantLayers:
    """Leaves of the equivariant kinds over escnn field types: velocity in and out, regular
    (``gcnn``/``rgcnn``) or irrep-band (``steer``/``rsteer``) hidden fields."""

    def __init__(self, config: ModelConfig):
        from .nn import FieldBatchNorm, FourierReLU, OctahedralConv, SeparableGroupConv

        self._conv, self._norm, self._act = OctahedralConv, FieldBatchNorm, FourierReLU
        self._separable = SeparableGroupConv if config.separable else None
        self.banks = config.num_filter_banks if config.relaxed else None
        self.input = fields.velocity_type(config.group, config.frames)
        self.output = fields.velocity_type(config.group, 1)
        self.hidden = HIDDEN_TYPES[config.spec.fields](config.group, config.hidden)

    def conv(self, t_in, t_out) -> nn.Module:
        return TensorOp(self._conv_into(t_out)(t_in, t_out, 3, num_filter_banks=self.banks))

    def up(self, t) -> nn.Module:
        return TensorOp(self._conv_into(t)(t, t, 4, stride=2, transposed=True, num_filter_banks=self.banks))

    def _conv_into(self, t_out):
        """The convolution class into ``t_out``: separable into the (regular) hidden type of a separable model."""
        return self._separable if self._separable is not None and t_out == self.hidden else self._conv

    def norm(self, t) -> nn.Module:
        return TensorOp(self._norm(t))

    def act(self, t) -> nn.Module:
        return TensorOp(self._act(t))

    def input_map(self) -> nn.Module:
        return fields.FrameAdapter("to_escnn")

    def output_map(self) -> nn.Module:
        return fields.FrameAdapter("to_public")


# ---------------------------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------------------------


class UpBlock(nn.Module):
    """``x (B, C, n^3) -> act(norm(conv(act(norm(up(x))))) + trilinear(x)) (B, C, (2n)^3)``."""

    def __init__(self, layers, t):
        super().__init__()
        self.up, self.norm1, self.act1 = layers.up(t), layers.norm(t), layers.act(t)
        self.conv, self.norm2, self.act2 = layers.conv(t, t), layers.norm(t), layers.act(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.pre_activation(x))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its last nonlinearity ``act2``."""
        h = self.conv(self.act1(self.norm1(self.up(x))))
        skip = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        return self.norm2(h + skip)

    def slab_block(self) -> "SlabBlock | None":
        """``pre_activation`` for :func:`~steerable_sr.nn.recompute.checkpoint_in_slabs` (None: not supported)."""
        return _slab_block(self.up, self.norm1, self.act1, self.conv, self.norm2, upsample=True)


class ResBlock(nn.Module):
    """``x -> act(x + norm(conv(act(norm(conv(x))))))``, shapes unchanged."""

    def __init__(self, layers, t):
        super().__init__()
        self.conv1, self.norm1, self.act1 = layers.conv(t, t), layers.norm(t), layers.act(t)
        self.conv2, self.norm2, self.act2 = layers.conv(t, t), layers.norm(t), layers.act(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.pre_activation(x))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its last nonlinearity ``act2``."""
        return x + self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))

    def slab_block(self) -> "SlabBlock | None":
        """``pre_activation`` for :func:`~steerable_sr.nn.recompute.checkpoint_in_slabs` (None: not supported)."""
        return _slab_block(self.conv1, self.norm1, self.act1, self.conv2, self.norm2, upsample=False)


def _slab_block(first, norm1, act, second, norm2, upsample: bool) -> "SlabBlock | None":
    """The block's layers as a :class:`~steerable_sr.nn.recompute.SlabBlock` if they are escnn layers with
    one dense filter per convolution (``OctahedralConv``: the kinds gcnn, rgcnn, steer, rsteer without
    ``separable``), else None."""
    from .nn import FieldBatchNorm, OctahedralConv
    from .nn.recompute import SlabBlock

    layers = [getattr(layer, "module", None) for layer in (first, norm1, act, second, norm2)]
    convs, norms = (layers[0], layers[3]), (layers[1], layers[4])
    if not all(isinstance(c, OctahedralConv) for c in convs) or not all(isinstance(n, FieldBatchNorm) for n in norms):
        return None
    return SlabBlock(*layers, upsample=upsample)


class SuperResolutionNet(nn.Module):
    """``(B, 3 T, n, n, n) -> (B, 3, s n, s n, s n)`` in the public convention (see module docstring)."""

    #: With ``checkpoint_blocks``: the largest float32 depth slab of one activation that a block's
    #: backward computes at once (:func:`~steerable_sr.nn.recompute.checkpoint_in_slabs`).
    slab_bytes = 4 * 2 ** 20

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layers = PlainLayers(config) if config.spec.fields == "plain" else EquivariantLayers(config)
        self.in_channels, self.out_channels = 3 * config.frames, 3
        self.upscale = config.upscale
        self.checkpoint_blocks = config.checkpoint_blocks
        t = layers.hidden
        self.input_map = layers.input_map()
        self.lift = nn.Sequential(layers.conv(layers.input, t), layers.norm(t), layers.act(t))
        stages = []
        for _ in range(int(math.log2(config.upscale))):
            stages += [UpBlock(layers, t), ResBlock(layers, t)]
        self.stages = nn.Sequential(*stages)
        self.head = layers.conv(t, layers.output)
        self.output_map = layers.output_map()
        # Channels of the middle input frame, upsampled and added to the output (None: no skip).
        self.skip_frame = 3 * (config.frames // 2) if config.trilinear_skip else None
        if config.trilinear_skip:
            # Start close to the trilinear baseline: a small correction (relaxed weights stay at 1).
            with torch.no_grad():
                for name, p in self.head.named_parameters():
                    if "relaxed" not in name:
                        p.mul_(HEAD_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, n, n, n), got {list(x.shape)}")
        if x.shape[2] != x.shape[3] or x.shape[2] != x.shape[4] or x.shape[2] < 2:
            raise ValueError(f"expected a cubic input volume (B, {self.in_channels}, n, n, n) with n >= 2, "
                             f"got {list(x.shape)}")
        h = self.input_map(x)
        if self.checkpoint_blocks and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            h = self._checkpointed_blocks(h)
        else:
            h = self.stages(self.lift(h))
        y = self.output_map(self.head(h))
        if self.skip_frame is not None:
            middle = x[:, self.skip_frame:self.skip_frame + 3]
            y = y + F.interpolate(middle, scale_factor=float(self.upscale), mode="trilinear", align_corners=False)
        return y

    @torch.jit.unused
    def _checkpointed_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """``stages(lift(h))`` with every block checkpointed up to its last nonlinearity, which runs
        outside: the nonlinearity keeps its output for backward, and that output is the next block's
        input (kept anyway), so the recomputation in backward makes no second copy of it.

        Up/ResBlocks of OctahedralConv layers (gcnn, rgcnn, steer, rsteer) are recomputed in depth
        slabs (:func:`~steerable_sr.nn.recompute.checkpoint_in_slabs`: at most two activations of the
        block's size besides its input and gradient); the lift, and the blocks of cnn and separable
        models, with :func:`_checkpointed` (``torch.utils.checkpoint``, autograd's own backward)."""
        from .nn.recompute import checkpoint_in_slabs

        for block in (self.lift, *self.stages):
            pre_activation, activation = _split_activation(block)
            slabs = block.slab_block() if hasattr(block, "slab_block") else None
            if slabs is not None:
                h = activation(checkpoint_in_slabs(h, slabs, self.slab_bytes))
            else:
                h = activation(_checkpointed(pre_activation, block, h))
        return h

    # ---- relaxed layers -----------------------------------------------------------------------

    def relaxed_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, layer)`` for every relaxed convolution, in forward order."""
        from .symmetry import relaxed_layers

        yield from relaxed_layers(self)

    def equivariance_penalty(self) -> torch.Tensor:
        """Sum over relaxed layers of the non-trivial irrep norms of their relaxed weights."""
        penalties = [layer.equivariance_penalty() for _, layer in self.relaxed_layers()]
        return torch.stack(penalties).sum() if penalties else next(self.parameters()).new_zeros(())

    # ---- summaries and export ------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def layer_table(self, input_size: int | None = None) -> str:
        """A Markdown table: every leaf layer, its shape summary and parameter count; with
        ``input_size`` n also its output shape ``C x N x N x N`` on a ``(1, 3 T, n, n, n)`` input."""
        leaves = []
        for name, module in self.named_modules():
            inside_op = ".module" in name
            is_leaf = isinstance(module, TensorOp) or (not list(module.children()) and not inside_op)
            if is_leaf and not isinstance(module, (fields.FrameAdapter, nn.Identity)):
                leaves.append((name, module))
        shapes: dict[str, str] = {}
        if input_size is not None:
            hooks = [module.register_forward_hook(
                lambda _, __, out, name=name: shapes.__setitem__(name, "x".join(map(str, out.shape[1:]))))
                for name, module in leaves]
            was_training = self.training
            try:
                with torch.no_grad():
                    self.eval()(torch.zeros(1, self.in_channels, input_size, input_size, input_size))
            finally:
                self.train(was_training)
                for hook in hooks:
                    hook.remove()
        output = f" output (input {input_size}^3) |" if shapes else ""
        rows = [f"| layer | module | parameters |{output}", "| --- | --- | ---: |" + (" --- |" if shapes else "")]
        for name, module in leaves:
            leaf = module.module if isinstance(module, TensorOp) else module
            count = sum(p.numel() for p in module.parameters())
            shape = f" {shapes[name]} |" if shapes else ""
            rows.append(f"| {name} | {type(leaf).__name__}({leaf.extra_repr()}) | {count:,} |{shape}")
        total = f"| **total** | {self.config.kind}, {self.config.group} | **{self.num_parameters():,}** |"
        return "\n".join(rows + [total + (" |" if shapes else "")])

    def export(self) -> nn.Module:
        """The same network with plain torch leaves (Conv3d, ConvTranspose3d, BatchNorm3d, ReLU,
        1x1 Conv3d): no escnn object inside; ``torch.jit.script`` accepts it. Same output in eval mode."""
        return _export(self).eval()


#: Buffers that a forward pass in training mode updates (batch-norm running statistics).
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _split_activation(block: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """``(pre_activation, activation)`` with ``block(x) == activation(pre_activation(x))``: the lift
    (``conv, norm, act``) or an Up/ResBlock."""
    if isinstance(block, nn.Sequential):
        return block[:-1], block[-1]
    return block.pre_activation, block.act2


def _checkpointed(function: Callable[[torch.Tensor], torch.Tensor], block: nn.Module,
                  x: torch.Tensor) -> torch.Tensor:
    """``function(x)``, a part of ``block``, keeping only ``x`` for backward (``torch.utils.checkpoint``,
    non-reentrant): backward runs ``function`` again. That second run computes the same tensors (in
    training mode the norms use batch statistics, not running ones) but would update the running
    statistics a second time, so it runs with ``block``'s restored to their values before it: the
    result is exactly the step without checkpointing."""
    first = True

    def run(x: torch.Tensor) -> torch.Tensor:
        nonlocal first
        if first:
            first = False
            return function(x)
        running = [b for name, b in block.named_buffers() if name.rsplit(".", 1)[-1] in RUNNING_STATISTICS]
        saved = [b.clone() for b in running]
        try:
            return function(x)
        finally:
            for b, value in zip(running, saved):
                b.copy_(value)

    return torch.utils.checkpoint.checkpoint(run, x, use_reentrant=False)


def _export(module: nn.Module) -> nn.Module:
    if isinstance(module, TensorOp):
        return module.export()
    if not list(module.children()):
        return copy.deepcopy(module)
    clone = copy.copy(module)
    clone._modules = {name: _export(child) for name, child in module.named_children()}
    clone._parameters = {name: copy.deepcopy(p) for name, p in module._parameters.items()}
    clone._buffers = {name: copy.deepcopy(b) for name, b in module._buffers.items()}
    return clone
