"""Inference with learned scores: Langevin kernels, SVGD, score-based particle flows, arviz."""

from pyro_disco.infer.langevin import MALA, ULA

__all__ = ["ULA", "MALA"]
