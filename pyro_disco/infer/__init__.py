"""Inference with learned scores: Langevin kernels, SVGD, score-based particle flows, arviz."""

from pyro_disco.infer.arviz import ess_rhat, from_mcmc, from_particles, to_inference_data
from pyro_disco.infer.langevin import run as langevin_run
from pyro_disco.infer.mcmc import MALA, ULA
from pyro_disco.infer.particles import flow_run
from pyro_disco.infer.svgd import score_factor, svgd_run

__all__ = [
    "ULA",
    "MALA",
    "langevin_run",
    "svgd_run",
    "score_factor",
    "flow_run",
    "to_inference_data",
    "from_mcmc",
    "from_particles",
    "ess_rhat",
]
