"""Several estimators side by side: one per group of draws, queried together.

``GroupedEstimator(estimators, group_shape)`` answers queries ``(..., *group_shape, d)``: the
point at group index ``g`` goes to estimator ``g``. This is what gives ``LearnedScore`` a batch
shape from per-group draws ``(*group_shape, n, d)``.

Example:
    >>> from pyro_disco.estimators.kde import GaussianKDE
    >>> x = torch.randn(3, 200, 2, dtype=torch.float64)
    >>> est = GroupedEstimator([GaussianKDE(xg) for xg in x], (3,))
    >>> est.score(torch.zeros(5, 3, 2, dtype=torch.float64)).shape
    torch.Size([5, 3, 2])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from pyro_disco.estimators.base import Estimator, as_logdensity_and_score_fn

__all__ = ["GroupedEstimator"]


class GroupedEstimator:
    """``estimators`` (a flat list, row-major over ``group_shape``) behind one protocol."""

    def __init__(self, estimators: Iterable[Estimator], group_shape: Sequence[int]) -> None:
        self.estimators = list(estimators)
        self.group_shape = torch.Size(group_shape)
        if len(self.estimators) != math.prod(self.group_shape) or not self.estimators:
            raise ValueError(f"need {math.prod(self.group_shape)} estimators for groups {tuple(group_shape)}")
        first = self.estimators[0]
        self.dim = first.dim
        self.dtype = getattr(first, "dtype", torch.float64)
        self.device = getattr(first, "device", torch.device("cpu"))

    def _split(self, x: Tensor) -> tuple[Tensor, torch.Size]:
        k = len(self.group_shape)
        if x.dim() < k + 1 or x.shape[x.dim() - k - 1 : -1] != self.group_shape or x.shape[-1] != self.dim:
            raise ValueError(
                f"query points must have shape (..., {', '.join(map(str, self.group_shape))}, {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        lead = x.shape[: x.dim() - k - 1]
        return x.reshape(-1, len(self.estimators), self.dim), lead  # m G d

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat, lead = self._split(x)
        outs = [as_logdensity_and_score_fn(est)(flat[:, g]) for g, est in enumerate(self.estimators)]
        logp = torch.stack([o[0] for o in outs], dim=1)  # m G
        score = torch.stack([o[1] for o in outs], dim=1)  # m G d
        return logp.reshape(*lead, *self.group_shape), score.reshape(*lead, *self.group_shape, self.dim)

    def logdensity(self, x: Tensor) -> Tensor:
        flat, lead = self._split(x)
        logp = torch.stack([est.logdensity(flat[:, g]) for g, est in enumerate(self.estimators)], dim=1)
        return logp.reshape(*lead, *self.group_shape)

    def score(self, x: Tensor) -> Tensor:
        flat, lead = self._split(x)
        score = torch.stack([est.score(flat[:, g]) for g, est in enumerate(self.estimators)], dim=1)
        return score.reshape(*lead, *self.group_shape, self.dim)

    def __repr__(self) -> str:
        return f"GroupedEstimator(groups={tuple(self.group_shape)}, first={self.estimators[0]!r})"
