"""Pyro distributions built from samples."""

from pyro_disco.distributions.learned_score import LearnedScore, build_estimator

__all__ = ["LearnedScore", "build_estimator"]
