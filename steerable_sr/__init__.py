"""steerable_sr: exactly and relaxed octahedral-equivariant super-resolution of 3D turbulence."""
__version__ = "0.1.0"
