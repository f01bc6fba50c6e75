r"""Weighted draws (importance sampling, SMC): an exactly weighted Gaussian KDE, and resampling
for estimators that only take equally weighted samples (the transformer).

.. math:: \hat f(y) = \sum_j w_j\, \mathcal N(y; x_j, H), \qquad \sum_j w_j = 1,

with scipy's ``gaussian_kde`` conventions for weights: the kernel covariance is
:math:`H = \text{factor}^2\, \mathrm{Cov}_w(X)`, the weighted covariance with the unbiased
correction :math:`1/(1 - \sum_j w_j^2)`, and the bandwidth rule takes the effective sample size
:math:`n_\text{eff} = 1 / \sum_j w_j^2` in place of ``n``.

Example:
    >>> x = torch.randn(400, 2, dtype=torch.float64)
    >>> kde = WeightedGaussianKDE(x, torch.rand(400, dtype=torch.float64))
    >>> kde.logdensity(torch.zeros(3, 2, dtype=torch.float64)).shape
    torch.Size([3])
"""

from __future__ import annotations

import math

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from pyro_disco._stats import weighted_covariance
from pyro_disco._validation import DegenerateSamplesError, as_samples
from pyro_disco.estimators.base import SampleEstimator
from pyro_disco.estimators.kde import bandwidth_factor

__all__ = ["WeightedGaussianKDE", "normalized_weights", "effective_sample_size", "resample"]


def normalized_weights(weights: Tensor | ArrayLike, samples: Tensor) -> Tensor:
    """Check ``weights`` ``(n,)`` against ``samples`` ``(n, d)``: finite, non-negative, not all
    zero; returned normalised to sum 1, in the samples' dtype and device."""
    w = torch.as_tensor(weights).to(dtype=samples.dtype, device=samples.device)
    if w.shape != samples.shape[:1]:
        raise ValueError(
            f"weights must have shape ({samples.shape[0]},) to match the samples, got {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if not total > 0:
        raise ValueError("weights must not all be zero")
    return w / total


def effective_sample_size(weights: Tensor) -> float:
    """Kish's :math:`n_\\text{eff} = (\\sum w)^2 / \\sum w^2`."""
    return float(weights.sum() ** 2 / (weights**2).sum())


def resample(samples: Tensor, weights: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws with replacement, index ``j`` with probability ``w_j`` (multinomial
    resampling): equally weighted samples of the same distribution, for estimators without
    weights. Duplicates carry no new information: the estimate behaves like one from about
    :func:`effective_sample_size` distinct points."""
    w = normalized_weights(weights, samples)
    idx = torch.multinomial(w, samples.shape[0], replacement=True, generator=generator)
    return samples[idx]


class WeightedGaussianKDE(SampleEstimator):
    r"""Gaussian KDE of weighted draws (scipy's ``gaussian_kde(..., weights=)``), exact density
    and score, differentiable in the queries to any order (plain torch ops).

    .. math:: \nabla \log \hat f(y) = H^{-1}\Big(\sum_j r_j(y)\, x_j - y\Big), \quad
              r = \mathrm{softmax}_j\big(\log w_j - \tfrac12 \|y - x_j\|^2_{H^{-1}}\big)

    Args:
        samples: ``(n, d)``.
        weights: ``(n,)``, non-negative, any scale.
        bandwidth: ``"scott"`` (default), ``"silverman"`` or a positive factor, applied with
            :math:`n_\text{eff}` in place of ``n``.
        covariance: an explicit kernel covariance ``(d, d)``, overriding ``bandwidth``.
        block_size: queries per block (memory ``O(block_size · n)``).
    """

    def __init__(
        self,
        samples: Tensor,
        weights: Tensor | ArrayLike,
        bandwidth: str | float = "scott",
        *,
        covariance: Tensor | None = None,
        block_size: int | None = None,
    ) -> None:
        x = as_samples(samples)
        n, d = x.shape
        self.samples, self.dim, self.dtype, self.device, self.num_samples = x, d, x.dtype, x.device, n
        w = normalized_weights(weights, x)
        self.weights = w  # n, sums to 1
        xd, wd = x.detach().double(), w.double()
        self._centre = wd @ xd  # d, float64: distances are formed on centred coordinates
        xc = xd - self._centre
        self._covariance_arg = covariance
        if covariance is None:
            self.bandwidth = bandwidth_factor(bandwidth, effective_sample_size(wd), d)
            cov = weighted_covariance(xd, wd) * self.bandwidth**2
        else:
            self.bandwidth = None
            cov = torch.as_tensor(covariance, dtype=torch.float64, device=x.device)
            if cov.shape != (d, d):
                raise ValueError(f"covariance must be ({d}, {d}), got {tuple(cov.shape)}")
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise DegenerateSamplesError("the kernel covariance is singular: the samples are degenerate")
        self.covariance = cov.to(x.dtype)  # d d
        self._chol = chol  # d d, float64
        self._u = torch.linalg.solve_triangular(chol, xc.T, upper=False).T  # n d, L^{-1}(x_j - c)
        self._u_sq = (self._u**2).sum(-1)  # n
        self._log_w = wd.log()  # n; -inf drops zero-weight kernels
        self._log_norm = -chol.diagonal().log().sum().item() - 0.5 * d * math.log(2 * math.pi)
        self.block_size = block_size or max(1, (1 << 20) // n)

    def _logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = torch.linalg.solve_triangular(self._chol, (x.double() - self._centre).T, upper=False).T  # m d
        logps, scores = [], []
        for vb in v.split(self.block_size):
            # squared distances by expansion (cdist's gradient is NaN at a zero distance)
            sq = (vb**2).sum(-1, keepdim=True) + self._u_sq - 2.0 * vb @ self._u.T  # b n
            logk = self._log_w - 0.5 * sq.clamp_min(0.0)
            lse = torch.logsumexp(logk, dim=-1, keepdim=True)  # b 1
            shift = (logk - lse).exp() @ self._u - vb  # b d, in L^{-1} coordinates
            scores.append(torch.linalg.solve_triangular(self._chol.T, shift.T, upper=True).T)
            logps.append(lse.squeeze(-1) + self._log_norm)
        return torch.cat(logps).to(x.dtype), torch.cat(scores).to(x.dtype)

    def _logdensity(self, x: Tensor) -> Tensor:
        return self._logdensity_and_score(x)[0]

    def _score(self, x: Tensor) -> Tensor:
        return self._logdensity_and_score(x)[1]
