"""Build an estimator by name: the one switch the CLI, ``LearnedScore`` and benchmarks share."""

from __future__ import annotations

from torch import Tensor

from pyro_disco._validation import as_samples
from pyro_disco.estimators.kde import SDKDE, EmpSDKDE, GaussianKDE

__all__ = ["build_estimator", "ESTIMATORS"]

ESTIMATORS = ("auto", "transformer", "kde", "silverman-kde", "sdkde", "emp-sdkde")


def build_estimator(samples: Tensor, estimator: str = "auto", **kwargs):
    """An estimator on ``samples`` ``(n, d)``.

    ``"auto"``: the pretrained transformer when weights for ``d`` ship with the package, else
    Scott KDE. ``"transformer"``: the pretrained transformer (error if none for ``d``).
    ``"kde"``: Scott KDE; ``"silverman-kde"``; ``"sdkde"``: SD-KDE shifted by the pretrained
    transformer's score (``"auto"`` fallback: Emp-SD-KDE); ``"emp-sdkde"``.
    Extra keyword arguments go to the estimator's constructor.
    """
    from pyro_disco.pretrained import available_dims, pretrained_estimator

    x = as_samples(samples)
    has_model = x.shape[1] in available_dims()
    if estimator == "auto":
        estimator = "transformer" if has_model else "kde"
    if estimator == "transformer":
        return pretrained_estimator(x, **kwargs)
    if estimator == "kde":
        return GaussianKDE(x, kwargs.pop("bandwidth", "scott"), **kwargs)
    if estimator == "silverman-kde":
        return GaussianKDE(x, "silverman", **kwargs)
    if estimator == "sdkde":
        if not has_model:
            return EmpSDKDE(x, **kwargs)
        return SDKDE(x, pretrained_estimator(x), **kwargs)
    if estimator == "emp-sdkde":
        return EmpSDKDE(x, **kwargs)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS} or pass an estimator object")
