"""Estimators of density and score from samples, all behind one protocol."""

from pyro_disco.estimators.base import (
    Estimator,
    EstimatorFactory,
    SampleEstimator,
    ScoreFn,
    ScoreLike,
    as_estimator_factory,
    as_logdensity_and_score_fn,
    as_logdensity_fn,
    as_score_fn,
)
from pyro_disco.estimators.grouped import GroupedEstimator
from pyro_disco.estimators.io import load_estimator, save_estimator  # also enables est.save/.load/.to
from pyro_disco.estimators.kde import SDKDE, EmpSDKDE, GaussianKDE, bandwidth_factor
from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.estimators.weighted import WeightedGaussianKDE

__all__ = [
    "Estimator",
    "SampleEstimator",
    "ScoreFn",
    "ScoreLike",
    "EstimatorFactory",
    "as_score_fn",
    "as_logdensity_fn",
    "as_logdensity_and_score_fn",
    "as_estimator_factory",
    "GaussianKDE",
    "SDKDE",
    "EmpSDKDE",
    "bandwidth_factor",
    "DiScoFormerEstimator",
    "WeightedGaussianKDE",
    "GroupedEstimator",
    "save_estimator",
    "load_estimator",
]
