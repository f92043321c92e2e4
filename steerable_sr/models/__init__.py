"""Super-resolution networks (Wang et al. 2024, Sec. 5.5): one topology, five model kinds.

* :mod:`.registry`: the kinds (:data:`KIND_SPECS`), :class:`ModelConfig`, the presets and
  :func:`build_model`;
* :mod:`.layers`: what each kind puts at the leaves (:class:`PlainLayers`, :class:`EquivariantLayers`);
* :mod:`.network`: the topology (:class:`SuperResolutionNet`, :class:`UpBlock`, :class:`ResBlock`);
* :mod:`.table`: the layer table; :mod:`.export`: the conversion to plain torch modules.

escnn is imported when an equivariant model is built, not with this package.
"""
from .layers import EquivariantLayers, PlainLayers
from .network import HEAD_INIT_SCALE, ResBlock, SuperResolutionNet, UpBlock
from .registry import (KIND_SPECS, KINDS, MODEL_OPTIONS, PRESETS, RELAXED_KINDS, SEPARABLE_KINDS, KindSpec,
                       ModelConfig, build_model, load_preset)

__all__ = ["KIND_SPECS", "KINDS", "MODEL_OPTIONS", "PRESETS", "RELAXED_KINDS", "SEPARABLE_KINDS", "KindSpec",
           "ModelConfig", "build_model", "load_preset", "SuperResolutionNet", "UpBlock", "ResBlock",
           "HEAD_INIT_SCALE", "PlainLayers", "EquivariantLayers"]
