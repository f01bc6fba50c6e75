r"""Formulas every layer shares: Scott's bandwidth factor, the weighted covariance, and the
score of a log-density by autograd.

Plain tensor maths on the bottom floor, so the networks (:mod:`pyro_disco.nn`), the estimators,
the exact targets, the samplers and the Pyro distribution use one formula each.

Example:
    >>> import torch
    >>> scott_factor(64, 2)  # n^(-1/(d+4))
    0.5
    >>> weighted_covariance(torch.tensor([[0.0], [2.0]]), torch.tensor([0.5, 0.5]))
    tensor([[2.]])
    >>> logdensity_and_autograd_score(lambda x: -0.5 * x.square().sum(-1), torch.tensor([[1.0, -2.0]]))
    (tensor([-2.5000]), tensor([[-1.,  2.]]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["scott_factor", "weighted_covariance", "logdensity_and_autograd_score"]


def scott_factor(n: float, d: int) -> float:
    r"""Scott's rule :math:`n^{-1/(d+4)}`: the factor multiplying :math:`\mathrm{Cov}(X)^{1/2}`
    (or, in whitened coordinates, the bandwidth itself); ``n`` may be an effective sample size."""
    return n ** (-1.0 / (d + 4))


def weighted_covariance(x: Tensor, weights: Tensor) -> Tensor:
    r"""Unbiased weighted covariance ``(d, d)`` of ``x`` ``(n, d)`` with ``weights`` ``(n,)``
    summing to one (reliability weights; uniform weights give the ``1/(n-1)`` covariance):

    .. math:: \hat\Sigma = \frac{\sum_i w_i (x_i - \bar x)(x_i - \bar x)^\top}{1 - \sum_i w_i^2},
              \qquad \bar x = \sum_i w_i x_i.
    """
    xc = x - weights @ x
    return (xc.T * weights) @ xc / (1.0 - (weights**2).sum())


def logdensity_and_autograd_score(
    logdensity_fn: Callable[[Tensor], Tensor], x: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The log-density ``(...)`` at ``x`` ``(..., d)`` and its score
    :math:`\nabla_x \log p(x)` ``(..., d)`` by autograd (each point's log-density depends on that
    point only, so the gradient of the sum is the per-point score). Works under ``no_grad``;
    ``x`` is not modified and both results are detached."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logp = logdensity_fn(xr)
        (grad,) = torch.autograd.grad(logp.sum(), xr)
    return logp.detach(), grad
