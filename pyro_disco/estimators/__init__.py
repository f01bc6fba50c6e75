"""Estimators of density and score from samples, all behind one protocol."""

from pyro_disco.estimators.base import Estimator, SampleEstimator, ScoreLike, as_logdensity_fn, as_score_fn
from pyro_disco.estimators.kde import SDKDE, EmpSDKDE, GaussianKDE, bandwidth_factor
from pyro_disco.estimators.transformer import DiScoFormerEstimator

__all__ = [
    "Estimator",
    "SampleEstimator",
    "ScoreLike",
    "as_score_fn",
    "as_logdensity_fn",
    "GaussianKDE",
    "SDKDE",
    "EmpSDKDE",
    "bandwidth_factor",
    "DiScoFormerEstimator",
]
