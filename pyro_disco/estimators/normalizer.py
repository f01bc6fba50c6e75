r"""How far from 1 an estimate's density integrates: log-normaliser by importance sampling.

.. math:: \log Z = \log \int \hat f = \log \mathbb E_q\big[\hat f(z) / q(z)\big]
          \approx \log \frac1M \sum_i e^{\log\hat f(z_i) - \log q(z_i)}, \qquad z_i \sim q,

with the proposal :math:`q` an equal mixture of three parts that cover the bulk, the fine
structure and the tails of the samples: the BIC Gaussian-mixture fit, Scott's KDE, and a
Gaussian with the samples' mean and :math:`1.5^2` times their covariance. The standard error
is the delta method's, :math:`\mathrm{sd}(w) / (\sqrt M\, \bar w)`, and the effective sample
size Kish's, :math:`(\sum w)^2 / \sum w^2`; a small ESS means the estimate is not to be trusted.

Example:
    >>> from pyro_disco.estimators.kde import GaussianKDE
    >>> x = torch.randn(500, 2, dtype=torch.float64)
    >>> z = log_normalizer(GaussianKDE(x), x, generator=torch.Generator().manual_seed(0))
    >>> abs(z.value) < 4 * z.std_error + 1e-3  # a KDE integrates to one
    True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco.estimators.base import Estimator
from pyro_disco.estimators.kde import GaussianKDE
from pyro_disco.estimators.mixture import GaussianMixtureEstimator
from pyro_disco.estimators.whitening import fit_whitening, quiet_outliers, robust_covariance

__all__ = ["LogNormalizer", "log_normalizer"]


class LogNormalizer(NamedTuple):
    """``value`` :math:`\\log Z`, its ``std_error``, the proposal draws' effective sample size
    ``ess`` and their number ``num_draws``."""

    value: float
    std_error: float
    ess: float
    num_draws: int


def _gaussian_logpdf(z: Tensor, mean: Tensor, chol: Tensor) -> Tensor:
    """log N(z; mean, chol cholᵀ) ``(m,)`` (no ``torch.distributions``: its first use imports
    torch.fx, a second per process)."""
    u = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False)  # d m
    half_logdet = chol.diagonal().log().sum()
    return -0.5 * u.square().sum(0) - half_logdet - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def log_normalizer(
    estimator: Estimator,
    samples: Tensor,
    *,
    num_draws: int = 4096,
    generator: torch.Generator | None = None,
    whitening: str = "standard",
    min_ess: float = 0.0,
) -> LogNormalizer:
    """Importance-sampling estimate of :math:`\\log\\int \\exp(\\text{estimator.logdensity})` for
    an estimator built on ``samples`` ``(n, d)`` (see the module docstring). With
    ``whitening="robust"`` the proposal's parts take the samples' robust location and scatter
    (:mod:`pyro_disco.estimators.whitening`), as the estimator did.

    The proposal's mixture part is first a cheap fit (at most 4 components, one EM start).
    Where that gives an effective sample size below ``min_ess``, the estimate is redone once
    with the full :class:`GaussianMixtureEstimator` fit and twice the draws, and the result
    with the larger ESS is returned (in high d a cheap mixture covers a sharper estimate
    badly: for our GMM on a random 10-D mixture, n = 1024, the ESS went from 77 to 1,495 of
    4,096 draws)."""
    x = samples.detach().double()
    with quiet_outliers():  # the estimator warned about these samples already
        # a proposal needs cover, not the best fit: few components, one start, few iterations
        cheap = GaussianMixtureEstimator(
            x, whitening=whitening, max_components=4, split_init=False, num_iters=25
        )
    out = _importance_estimate(estimator, x, cheap, num_draws, generator, whitening)
    if out.ess < min_ess:
        with quiet_outliers():
            full = GaussianMixtureEstimator(x, whitening=whitening)
        again = _importance_estimate(estimator, x, full, 2 * num_draws, generator, whitening)
        out = again if again.ess > out.ess else out
    return out


def _importance_estimate(
    estimator: Estimator,
    x: Tensor,
    gmm: GaussianMixtureEstimator,
    num_draws: int,
    generator: torch.Generator | None,
    whitening: str,
) -> LogNormalizer:
    """One importance-sampling estimate with the proposal ⅓ ``gmm`` + ⅓ Scott KDE + ⅓ wide Gaussian."""
    n, d = x.shape
    with quiet_outliers():
        kde = GaussianKDE(x, whitening=whitening)
    if whitening == "robust":
        mean, cov = fit_whitening(x, whitening).mean, robust_covariance(x)
    else:
        mean, cov = x.mean(0), torch.cov(x.T).reshape(d, d)
    wide_chol = 1.5 * torch.linalg.cholesky(cov)
    kernel_chol = torch.linalg.cholesky(cov * kde.bandwidth**2)
    per = num_draws // 3
    where = generator.device if generator is not None else x.device  # draw there, then move
    idx = torch.randint(n, (per,), generator=generator, device=where).to(x.device)
    eps = torch.randn(per, d, generator=generator, dtype=torch.float64, device=where).to(x.device)
    z = torch.cat(
        [
            gmm.sample(per, generator=generator).to(x.dtype),
            x[idx] + eps @ kernel_chol.T,
            mean
            + torch.randn(per, d, generator=generator, dtype=torch.float64, device=where).to(x.device)
            @ wide_chol.T,
        ]
    )
    log_q = torch.logsumexp(
        torch.stack([gmm.logdensity(z), kde.logdensity(z), _gaussian_logpdf(z, mean, wide_chol)]), dim=0
    ) - math.log(3)
    with torch.no_grad():
        log_p = estimator.logdensity(z.to(getattr(estimator, "dtype", z.dtype))).double()
    log_w = log_p - log_q
    top = log_w.max()
    w = (log_w - top).exp()
    value = float(top + w.mean().log())
    std_error = float(w.std() / (math.sqrt(w.numel()) * w.mean()))
    ess = float(w.sum() ** 2 / w.square().sum())
    return LogNormalizer(value, std_error, ess, int(w.numel()))
