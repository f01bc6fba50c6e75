"""Pyro distributions built from samples."""

from pyro_disco.distributions.learned_score import LearnedScore

__all__ = ["LearnedScore"]
