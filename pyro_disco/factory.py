"""Build an estimator by name: the one switch the CLI, ``LearnedScore`` and benchmarks share.

It sits above both :mod:`pyro_disco.estimators` and :mod:`pyro_disco.pretrained` (it picks
between them), so neither of those imports it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from pyro_disco._validation import checked_once
from pyro_disco.estimators.base import Estimator
from pyro_disco.estimators.kde import SDKDE, EmpSDKDE, GaussianKDE
from pyro_disco.estimators.mixture import GaussianMixtureEstimator
from pyro_disco.estimators.selection import select_estimator
from pyro_disco.estimators.transformer import MIN_ESS
from pyro_disco.estimators.whitening import check_samples, quiet_outliers
from pyro_disco.pretrained import auto_dims, available_dims, pretrained_estimator

__all__ = ["build_estimator", "resolve_estimator", "auto_candidates", "ESTIMATORS"]

ESTIMATORS = ("auto", "transformer", "gmm", "kde", "silverman-kde", "sdkde", "emp-sdkde")


def resolve_estimator(
    samples: Tensor, estimator: str | Estimator = "auto", **estimator_kwargs: Any
) -> tuple[Estimator, str]:
    """Build an estimator on ``samples`` ``(n, d)``; returns ``(estimator, name)``.

    - ``"auto"``: chosen on the samples themselves by a 2-fold held-out Hyvärinen score
      (:func:`~pyro_disco.estimators.selection.select_estimator`) among the Gaussian mixture
      (``"gmm"``), Scott's KDE and — where the registry's ``auto`` list covers ``d`` — the
      pretrained transformer (``pretrained.default_model_name(d)``); ties (within a quarter
      of a paired standard error) go to the simpler, in that order. The winner is refitted on
      all samples and carries the report as ``.selection``; the returned name is the winner's.
      It costs about two fits of each candidate on half the samples plus ``d`` backward passes
      over at most 1024 held-out points (512 from d = 10). Where the transformer wins but its
      log-density cannot be normalised (:attr:`DiScoFormerEstimator.normalized
      <pyro_disco.estimators.transformer.DiScoFormerEstimator.normalized>` is false, which happens
      at d ≳ 13), the best of the others is taken instead and ``.selection.note`` says so;
      ``require_normalized=False`` keeps the transformer (its scores are unaffected, its
      ``log_prob`` is then off by an unknown constant);
    - ``"transformer"``: the pretrained transformer (error naming the shipped dimensions if none);
    - ``"gmm"``: :class:`GaussianMixtureEstimator` (EM, k by BIC);
    - ``"kde"``: :class:`GaussianKDE` (Scott); ``"silverman-kde"``: Silverman's rule;
    - ``"sdkde"``: :class:`SDKDE` shifted by ``score=`` (default: the pretrained transformer's);
    - ``"emp-sdkde"``: :class:`EmpSDKDE`;
    - any object with callable ``logdensity`` and ``score`` is used as is (name ``"custom"``).

    ``estimator_kwargs`` go to the chosen constructor. Every built-in estimator takes
    ``whitening="standard"`` (default) or ``"robust"`` (:mod:`pyro_disco.estimators.whitening`:
    a robust location and scatter that give far outliers no weight; ``"auto"`` passes it to every
    candidate, ``"sdkde"`` to the transformer whose score shifts it). With ``"standard"``,
    samples whose standard deviation in some direction exceeds 10 robust scales raise an
    :class:`~pyro_disco._validation.OutlierWarning` (once, from the estimator finally built).
    """
    if not isinstance(estimator, str):
        for attr in ("logdensity", "score"):
            if not callable(getattr(estimator, attr, None)):
                raise TypeError(
                    f"estimator object must have a callable .{attr}(x); got {type(estimator).__name__}"
                )
        if getattr(estimator, "dim", samples.shape[-1]) != samples.shape[-1]:
            raise ValueError(f"estimator has dim={estimator.dim} but the samples have d={samples.shape[-1]}")
        return estimator, "custom"
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS} or an estimator object")
    # checked here once: the constructors (and auto's candidates) skip the repeat check
    with checked_once(samples) as x:
        return _build_by_name(x, estimator, **estimator_kwargs)


def auto_candidates(dim: int, whitening: str | None = None) -> dict[str, Any]:
    """``"auto"``'s candidates for dimension ``dim``, simplest first: name -> ``samples -> estimator``
    (the transformer only where the registry's ``auto`` list covers ``dim``); ``whitening``, if
    given, goes to every candidate (they whiten as the winner will)."""
    builders: dict[str, Any] = {"gmm": GaussianMixtureEstimator, "kde": GaussianKDE}
    if dim in auto_dims():
        builders["transformer"] = pretrained_estimator
    if whitening is not None:
        builders = {k: partial(b, whitening=whitening) for k, b in builders.items()}
    return builders


def _build_by_name(x: Tensor, estimator: str, **estimator_kwargs: Any) -> tuple[Estimator, str]:
    has_model = x.shape[1] in available_dims()
    if estimator == "auto":
        # the candidates would fail one by one on degenerate folds: give the shared clear error
        check_samples(x.detach(), estimator_kwargs.get("whitening", "standard"))
        require_normalized = estimator_kwargs.pop("require_normalized", True)
        builders = auto_candidates(x.shape[1], estimator_kwargs.get("whitening"))
        selection = select_estimator(x.detach(), builders)
        est, name = resolve_estimator(x, selection.chosen, **estimator_kwargs)
        if require_normalized and name == "transformer" and not est.normalized:
            # a log-density off by an unknown constant is not the density `auto` promises:
            # the best of the others, re-picked from the same held-out terms
            ess = est.normalization.ess
            selection = selection.without(
                "transformer",
                note=f"the transformer ranked first but its log-density could not be normalised "
                f"(importance-sampling ESS {ess:.0f} < {MIN_ESS:.0f}), so the best of the others was "
                "chosen; pass require_normalized=False to keep the transformer's scores anyway",
            )
            with quiet_outliers():  # the first refit warned about these samples already
                est, name = resolve_estimator(x, selection.chosen, **estimator_kwargs)
        est.selection = selection
        return est, name
    if estimator == "gmm":
        return GaussianMixtureEstimator(x, **estimator_kwargs), "gmm"
    if estimator == "transformer":
        return pretrained_estimator(x, **estimator_kwargs), "transformer"
    if estimator == "kde":
        return GaussianKDE(x, **estimator_kwargs), "kde"
    if estimator == "silverman-kde":
        return GaussianKDE(x, "silverman", **estimator_kwargs), "silverman-kde"
    if estimator == "emp-sdkde":
        return EmpSDKDE(x, **estimator_kwargs), "emp-sdkde"
    kwargs = dict(estimator_kwargs)
    score = kwargs.pop("score", None)
    if score is None:
        if not has_model:
            raise ValueError(
                "estimator='sdkde' needs a score for the shift and no pretrained model covers "
                f"d={x.shape[1]}: "
                "pass score=<estimator or score_fn>, or use 'emp-sdkde' (the KDE's own score)"
            )
        with quiet_outliers():  # the SD-KDE checks the same samples itself
            score = pretrained_estimator(x, **{k: v for k, v in kwargs.items() if k == "whitening"})
    return SDKDE(x, score, **kwargs), "sdkde"


def build_estimator(
    samples: Tensor, estimator: str | Estimator = "auto", **estimator_kwargs: Any
) -> Estimator:
    """Like :func:`resolve_estimator`, without the name."""
    return resolve_estimator(samples, estimator, **estimator_kwargs)[0]
