"""pyro_disco: density and score from samples with a pretrained transformer, for Pyro.

The layers, from the bottom up (``tests/test_layers.py`` checks that imports only point down):

- :mod:`pyro_disco.nn` — the networks (per-dimension and universal DiScoFormer);
- :mod:`pyro_disco.estimators` — the estimator protocol (``logdensity``/``score``), the
  DiScoFormer estimator, Gaussian KDE, SD-KDE, Emp-SD-KDE; :mod:`pyro_disco.pretrained` — shipped
  weights; :mod:`pyro_disco.factory` — an estimator by name;
- :mod:`pyro_disco.distributions` — ``LearnedScore``, a Pyro distribution from samples;
- :mod:`pyro_disco.infer` — Langevin (ULA/MALA) kernels, SVGD, score-based particle flows, arviz;
- :mod:`pyro_disco.stein`, :mod:`pyro_disco.fisher` — kernel Stein discrepancy, Fisher information, entropy;
- :mod:`pyro_disco.pde` — particle solvers for Fokker–Planck and Landau equations;
- :mod:`pyro_disco.training` — the training pipeline.
"""

from pyro_disco._validation import DegenerateSamplesError, NormalizationWarning, OutlierWarning
from pyro_disco.distributions import LearnedScore
from pyro_disco.estimators import (
    SDKDE,
    DiScoFormerEstimator,
    EmpSDKDE,
    Estimator,
    GaussianKDE,
    as_logdensity_fn,
    as_score_fn,
)
from pyro_disco.factory import build_estimator
from pyro_disco.fisher import (
    Estimate,
    entropy,
    fisher_information,
    fisher_matrix,
    relative_fisher_information,
)
from pyro_disco.infer import MALA, ULA
from pyro_disco.pretrained import available_dims, pretrained_estimator
from pyro_disco.stein import KSDTestResult, ksd, ksd_test
from pyro_disco.targets import ExactDistribution, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "DegenerateSamplesError",
    "NormalizationWarning",
    "OutlierWarning",
    "Estimator",
    "DiScoFormerEstimator",
    "GaussianKDE",
    "SDKDE",
    "EmpSDKDE",
    "build_estimator",
    "as_score_fn",
    "as_logdensity_fn",
    "available_dims",
    "pretrained_estimator",
    "LearnedScore",
    "ULA",
    "MALA",
    "ksd",
    "ksd_test",
    "KSDTestResult",
    "fisher_information",
    "fisher_matrix",
    "relative_fisher_information",
    "entropy",
    "Estimate",
    "GaussianMixture",
    "ExactDistribution",
]
