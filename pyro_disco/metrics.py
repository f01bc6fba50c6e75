r"""Error metrics of an estimated density against the truth, one home for each formula.

The demo, the training loop's validation, the PDE diagnostics and every benchmark report
these numbers: the relative score error and the log-density MSE,

.. math:: \mathrm{rel}(\hat s, s) = \frac{\sum_i \|\hat s(x_i) - s(x_i)\|^2}{\sum_i \|s(x_i)\|^2},
          \qquad
          \mathrm{MSE}(\log\hat f, \log f) = \frac1m \sum_i \big(\log\hat f(x_i) - \log f(x_i)\big)^2,

and, for any other quantity (a covariance, a moment, an equivariance check), the relative error
:math:`\|\hat a - a\|_F / \|a\|_F`.

The log-density MSE is raw: no offset is removed, so an estimator that is not normalised pays
for its log-normaliser squared.

Example:
    >>> import torch
    >>> s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> relative_score_error(s + 0.1, s)
    tensor(0.0080)
    >>> logdensity_mse(torch.tensor([0.5, -1.0]), torch.tensor([0.0, -1.0]))
    tensor(0.1250)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["relative_score_error", "logdensity_mse", "relative_error"]


def relative_score_error(score: Tensor, exact_score: Tensor) -> Tensor:
    r"""Relative score MSE :math:`\sum\|\hat s - s\|^2 / \sum\|s\|^2`, summed over every point
    (and batch) of ``score`` and ``exact_score`` ``(..., d)``; a 0-dim tensor."""
    return (score - exact_score).square().sum() / exact_score.square().sum()


def logdensity_mse(logdensity: Tensor, exact_logdensity: Tensor) -> Tensor:
    r"""Mean squared error of log-densities ``(...)``, raw (no offset removed); a 0-dim tensor."""
    return (logdensity - exact_logdensity).square().mean()


def relative_error(estimate: Tensor, exact: Tensor) -> Tensor:
    r""":math:`\|\hat a - a\|_F / \|a\|_F` over all entries (absolute when :math:`a = 0`); a 0-dim tensor."""
    diff = torch.linalg.norm(torch.as_tensor(estimate - exact).flatten())
    scale = torch.linalg.norm(torch.as_tensor(exact).flatten())
    return diff / scale if float(scale) > 0 else diff
