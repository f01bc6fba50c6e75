r"""Fisher information and differential entropy from samples, with any score estimator.

Plug-in Monte Carlo estimates over the samples themselves:

.. math::
    J(p) = \mathbb E_p \|\nabla \log p\|^2, \qquad
    \mathcal J(p) = \mathbb E_p[\nabla \log p\, \nabla \log p^\top], \qquad
    I(p\,|\,q) = \mathbb E_p \|\nabla \log p - \nabla \log q\|^2, \qquad
    H(p) = -\mathbb E_p \log p.

Each function takes ``estimator``: either an already-built estimator (anything with
``.score(x)`` / ``.logdensity(x)``: a KDE, the transformer, an exact
:class:`~pyro_disco.targets.ExactDistribution`), or a *factory* ``samples -> estimator`` such
as the class ``GaussianKDE`` itself, ``lambda s: GaussianKDE(s, "silverman")`` or
``pyro_disco.pretrained.pretrained_estimator``. A factory is called on the samples (with
``cross_fit=True``: on one half, evaluated on the other, and the other way round, which removes
the self-influence bias of estimators such as KDE evaluated at their own samples).

The returned ``stderr`` is the Monte Carlo standard error of the average over the samples
*given the estimated score / log-density*: exact for exact distributions, and it does not
include the estimator's own bias or variance.

References:
    Cover & Thomas, *Elements of Information Theory*, §17.7 (de Bruijn's identity).
    Johnson, *Information Theory and the Central Limit Theorem* (2004) — relative Fisher
    information. Epstein et al., arXiv:2511.05924 (DiScoFormer).

Example:
    >>> from pyro_disco import GaussianKDE
    >>> x = torch.randn(1000, 2, dtype=torch.float64)
    >>> est, se = fisher_information(x, GaussianKDE)
    >>> est.shape, se.shape
    (torch.Size([]), torch.Size([]))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._validation import as_samples
from pyro_disco.estimators.base import Estimator, EstimatorFactory
from pyro_disco.estimators.kde import GaussianKDE

__all__ = ["Estimate", "fisher_information", "fisher_matrix", "relative_fisher_information", "entropy"]

EstimatorLike = Estimator | EstimatorFactory  # a fitted estimator, or a factory samples -> estimator


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (same shape)."""

    estimate: Tensor
    stderr: Tensor


def _is_built(obj: object) -> bool:
    return hasattr(obj, "score") and callable(obj.score) and not isinstance(obj, type)


def _build(estimator: EstimatorLike, samples: Tensor, what: str) -> Estimator:
    """Turn ``estimator`` (built or factory) into a built estimator for ``samples``."""
    if _is_built(estimator):
        return estimator
    if not callable(estimator):
        raise TypeError(
            f"estimator must be an estimator (with .{what}) or a factory samples -> estimator, "
            f"got {type(estimator).__name__}"
        )
    built = estimator(samples)
    if not (hasattr(built, what) and callable(getattr(built, what))):
        raise TypeError(
            f"the estimator factory returned {type(built).__name__}, which has no .{what}(x); a bare "
            f"score function is not a factory: wrap it, e.g. ExactDistribution(...) or an object with .{what}"
        )
    return built


def _check_dim(est: Estimator, d: int) -> None:
    dim = getattr(est, "dim", None)
    if dim is not None and int(dim) != d:
        raise ValueError(f"the estimator has dimension {dim} but the samples have d = {d}")


def _evaluate(estimator: EstimatorLike, build_on: Tensor, at: Tensor, what: str) -> Tensor:
    est = _build(estimator, build_on, what)
    _check_dim(est, at.shape[-1])
    out = getattr(est, what)(at)
    expected = at.shape if what == "score" else at.shape[:-1]
    if not isinstance(out, Tensor) or out.shape != expected:
        raise ValueError(
            f"{what} at the samples must have shape {tuple(expected)}, got {tuple(getattr(out, 'shape', ()))}"
        )
    out = out.detach()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the estimated {what} is not finite at some samples")
    return out


def _per_sample(samples: Tensor, estimator: EstimatorLike, what: str, cross_fit: bool) -> Tensor:
    """``what`` ('score' or 'logdensity') of the estimator at every sample, ``(n, d)`` or ``(n,)``."""
    x = samples.detach()
    if not cross_fit:
        return _evaluate(estimator, x, x, what)
    if _is_built(estimator):
        raise ValueError(
            "cross_fit=True needs an estimator factory (samples -> estimator), not a built estimator"
        )
    n, d = x.shape
    half = n // 2
    if min(half, n - half) <= d:
        raise ValueError(f"cross_fit needs more than d samples in each half, got n={n}, d={d}")
    first = _evaluate(estimator, x[:half], x[half:], what)  # built on the first half, at the second
    second = _evaluate(estimator, x[half:], x[:half], what)
    return torch.cat([second, first])


def _mean_and_stderr(terms: Tensor) -> Estimate:
    n = terms.shape[0]
    if n < 2:
        raise ValueError("need at least 2 samples for a standard error")
    return Estimate(terms.mean(0), terms.std(0) / math.sqrt(n))


def fisher_information(
    samples: Tensor, estimator: EstimatorLike = GaussianKDE, *, cross_fit: bool = False
) -> Estimate:
    r"""Fisher information :math:`J(p) = \mathbb E_p \|\nabla_x \log p(x)\|^2` from samples of ``p``.

    Args:
        samples: ``(n, d)`` draws from :math:`p`.
        estimator: a built estimator or a factory ``samples -> estimator`` (default:
            ``GaussianKDE``, Scott's rule).
        cross_fit: evaluate a factory-built estimator only at samples it was not built on.

    Returns:
        :class:`Estimate` of 0-dim tensors.
        For :math:`N(\mu, \Sigma)`, :math:`J = \operatorname{tr}\Sigma^{-1}`.
    """
    x = as_samples(samples, min_per_dim=False)
    s = _per_sample(x, estimator, "score", cross_fit)
    return _mean_and_stderr((s * s).sum(-1))


def fisher_matrix(
    samples: Tensor, estimator: EstimatorLike = GaussianKDE, *, cross_fit: bool = False
) -> Estimate:
    r"""Fisher information matrix :math:`\mathbb E_p[s\, s^\top]`, :math:`s = \nabla_x \log p`.

    Returns:
        :class:`Estimate` of ``(d, d)`` tensors (elementwise standard errors). Its trace is
        :func:`fisher_information`; for :math:`N(\mu, \Sigma)` it is :math:`\Sigma^{-1}`.
    """
    x = as_samples(samples, min_per_dim=False)
    s = _per_sample(x, estimator, "score", cross_fit)
    return _mean_and_stderr(s.unsqueeze(-1) * s.unsqueeze(-2))  # n d d


def relative_fisher_information(
    samples_p: Tensor,
    samples_q: Tensor,
    estimator_p: EstimatorLike = GaussianKDE,
    estimator_q: EstimatorLike | None = None,
    *,
    cross_fit: bool = False,
) -> Estimate:
    r"""Relative Fisher information :math:`I(p\,|\,q) = \mathbb E_p\|\nabla \log p - \nabla \log q\|^2`.

    The score of :math:`p` comes from an estimator built on ``samples_p``, the score of
    :math:`q` from one built on ``samples_q``; both are evaluated at ``samples_p`` (for the
    transformer: context = samples of q, queries = samples of p, by cross-attention).
    Two isotropic Gaussians :math:`N(\mu_i, \sigma_i^2 I)`:
    :math:`d\,\sigma_1^2(1/\sigma_2^2 - 1/\sigma_1^2)^2 + \|\mu_1 - \mu_2\|^2/\sigma_2^4`.

    Args:
        samples_p: ``(n, d)`` draws from :math:`p` (the expectation is over these).
        samples_q: ``(m, d)`` draws from :math:`q` (only used by a factory ``estimator_q``).
        estimator_p: built estimator of :math:`p` or a factory (default ``GaussianKDE``).
        estimator_q: built estimator of :math:`q` or a factory (default: same as ``estimator_p``
            when that is a factory).
        cross_fit: for ``estimator_p`` only (see :func:`fisher_information`).

    Returns:
        :class:`Estimate` of 0-dim tensors.
    """
    xp = as_samples(samples_p, min_per_dim=False)
    xq = as_samples(samples_q, min_per_dim=False)
    if xp.shape[1] != xq.shape[1]:
        raise ValueError(
            f"samples_p and samples_q must have the same dimension, got {xp.shape[1]} and {xq.shape[1]}"
        )
    if estimator_q is None:
        if _is_built(estimator_p):
            raise ValueError("estimator_p is a built estimator of p; pass estimator_q for q as well")
        estimator_q = estimator_p
    sp = _per_sample(xp, estimator_p, "score", cross_fit)
    sq = _evaluate(estimator_q, xq.detach(), xp.detach(), "score")
    diff = sp - sq
    return _mean_and_stderr((diff * diff).sum(-1))


def entropy(samples: Tensor, estimator: EstimatorLike = GaussianKDE, *, cross_fit: bool = False) -> Estimate:
    r"""Differential entropy :math:`H(p) = -\mathbb E_p \log p(x)` (nats) from samples of ``p``.

    The estimator's log-density must be normalised (KDE, SD-KDE and exact distributions are;
    the transformer's density head is not normalised by construction).
    Gaussian: :math:`\tfrac12 \log\det(2\pi e\,\Sigma)`.

    Returns:
        :class:`Estimate` of 0-dim tensors.
    """
    x = as_samples(samples, min_per_dim=False)
    logp = _per_sample(x, estimator, "logdensity", cross_fit)
    return _mean_and_stderr(-logp)
