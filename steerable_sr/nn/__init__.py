"""Equivariant layers over O_h / O: exact and relaxed convolutions, normalisation, nonlinearities."""
from .conv import GridR3Conv, GridR3ConvTransposed, OctahedralConv, RelaxedR3Conv, RelaxedR3ConvTransposed
from .separable import (RelaxedSeparableR3Conv, RelaxedSeparableR3ConvTransposed, SeparableGroupConv, SeparableR3Conv,
                        SeparableR3ConvTransposed)

__all__ = ["OctahedralConv", "GridR3Conv", "GridR3ConvTransposed", "RelaxedR3Conv", "RelaxedR3ConvTransposed",
           "SeparableGroupConv", "SeparableR3Conv", "SeparableR3ConvTransposed", "RelaxedSeparableR3Conv",
           "RelaxedSeparableR3ConvTransposed"]
