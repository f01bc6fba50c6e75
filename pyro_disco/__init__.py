"""pyro_disco: density and score from samples with a pretrained transformer, for Pyro."""

from pyro_disco._validation import DegenerateSamplesError
from pyro_disco.estimators import (
    SDKDE,
    EmpSDKDE,
    Estimator,
    GaussianKDE,
    as_logdensity_fn,
    as_score_fn,
)
from pyro_disco.targets import ExactDistribution, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "DegenerateSamplesError",
    "Estimator",
    "GaussianKDE",
    "SDKDE",
    "EmpSDKDE",
    "as_score_fn",
    "as_logdensity_fn",
    "GaussianMixture",
    "ExactDistribution",
]
