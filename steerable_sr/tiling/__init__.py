"""Tiled prediction: volumes of any size through a super-resolution network with bounded memory.

* :mod:`.receptive`: the halo a tile needs, read from the network's convolutions
  (:func:`receptive_field`);
* :mod:`.predict`: the tiles and their boxes, :func:`predict_tiled` from a source volume to a target
  volume (numpy, torch, ``h5py``), equal to the whole-volume prediction to float round-off, and the
  work it does over the whole-volume pass (:func:`work_ratio`);
* :mod:`.memory`: memory sizes (:func:`parse_memory`), the peak memory of a tile
  (:func:`tile_memory`) and the tile edge that fits a budget (:func:`auto_tile`).
"""
from .memory import available_memory, auto_tile, format_memory, parse_memory, tile_memory
from .predict import predict_tiled, work_ratio
from .receptive import receptive_field, upscale_of

__all__ = ["auto_tile", "available_memory", "format_memory", "parse_memory", "predict_tiled", "receptive_field",
           "tile_memory", "upscale_of", "work_ratio"]
