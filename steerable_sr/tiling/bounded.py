"""A network applied to batches of whole volumes within a memory budget (``steerable-sr evaluate``)."""
from __future__ import annotations

import torch
from torch import nn

from .memory import TileMemory, auto_tile, tile_memory
from .predict import predict_tiled
from .receptive import upscale_of


class BoundedNetwork:
    """``model(x)`` for batches ``(B, C_in, n, n, n)`` whose forward pass stays within ``max_memory``.

    A batch whose estimated peak (:func:`~.memory.tile_memory`: ``B`` boxes of edge ``n``) fits the
    budget goes through the model in one pass, as ``model(x)``; any other is predicted sample by sample,
    each in the tiles of :func:`~.memory.auto_tile` (one tile when the sample fits) by
    :func:`~.predict.predict_tiled`: the same values to float round-off, the volume's boundary
    included (the tiles are not periodic, like the whole-volume pass). The memory of the model is
    measured on the first batch.

    Calling it returns ``(B, 3, s n, s n, s n)`` on the model's device, like ``model(x)``; it is
    equivariant exactly as the model is (tiling changes no value beyond round-off).

    Parameters
    ----------
    model : nn.Module
        A super-resolution network in eval mode, ``(B, C_in, n, n, n) -> (B, 3, s n, s n, s n)``
        (:func:`~.receptive.tileable`).
    max_memory : int
        Bytes that one forward pass may use at its peak.
    """

    def __init__(self, model: nn.Module, max_memory: int) -> None:
        self.model, self.max_memory = model, max_memory
        self.upscale = upscale_of(model)
        self._memory: TileMemory | None = None
        self._tiles: dict[int, int] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, n = x.shape[0], x.shape[1], x.shape[-1]
        if self._memory is None:
            self._memory = tile_memory(self.model, channels)
        if batch * self._memory.peak(n) <= self.max_memory:
            return self.model(x)
        if n not in self._tiles:
            self._tiles[n] = auto_tile(self.model, channels, n, self.max_memory, memory=self._memory)
        size = self.upscale * n
        out = x.new_empty((batch, 3, size, size, size))
        for sample, target in zip(x, out):
            predict_tiled(self.model, sample, target, tile=self._tiles[n])
        return out
