"""Turbulence data: a pseudo-spectral solver, dataset generation, JHTDB cutout I/O and datasets."""
