"""Pyro distributions built from samples, and posterior draws turned into the next prior."""

from pyro_disco.distributions.learned_score import LearnedScore
from pyro_disco.distributions.posterior import PosteriorPrior, SiteMap, posterior_prior

__all__ = ["LearnedScore", "PosteriorPrior", "SiteMap", "posterior_prior"]
