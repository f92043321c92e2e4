"""Tiled prediction: volumes of any size through a super-resolution network with bounded memory.

* :mod:`.receptive`: the halo a tile needs, read from the network's convolutions
  (:func:`receptive_field`), and whether a network can be tiled (:func:`tileable`);
* :mod:`.predict`: the tiles and their boxes, :func:`predict_tiled` from a source volume to a target
  volume (numpy, torch, ``h5py``), equal to the whole-volume prediction to float round-off, and the
  work it does over the whole-volume pass (:func:`work_ratio`);
* :mod:`.memory`: memory sizes (:func:`parse_memory`), the peak memory of a tile
  (:func:`tile_memory`), the tile edge that fits a budget (:func:`auto_tile`) and the default budget
  (:func:`default_max_memory`);
* :mod:`.staged`: :func:`predict_staged`, the network stage by stage, each stage in tiles with its own
  halo and the fields between stages in scratch files: about the whole-volume pass's time, for disk
  (:func:`scratch_bytes`);
* :mod:`.bounded`: :class:`BoundedNetwork`, batches of whole volumes within a budget (``evaluate``);
* :mod:`.volumes`: the volumes of velocity files read and written box by box, and the network in
  physical units (``predict``; imported on its own, it needs the data package).
"""
from .bounded import BoundedNetwork
from .memory import (available_memory, auto_tile, default_max_memory, format_memory, parse_memory,
                     tile_memory)
from .predict import predict_tiled, work_ratio
from .receptive import TileGeometry, receptive_field, tileable, upscale_of
from .staged import network_stages, predict_staged, scratch_bytes

__all__ = ["BoundedNetwork", "TileGeometry", "auto_tile", "available_memory", "default_max_memory", "format_memory",
           "network_stages", "parse_memory", "predict_staged", "predict_tiled", "receptive_field", "scratch_bytes",
           "tile_memory", "tileable", "upscale_of", "work_ratio"]
