"""The one estimator protocol everything downstream speaks.

An *estimator* is built from ``samples`` of shape ``(n, d)`` and answers, at query points
``x`` of shape ``(..., d)``:

- ``logdensity(x)`` of shape ``(...)`` — an estimate of :math:`\\log p(x)`;
- ``score(x)`` of shape ``(..., d)`` — an estimate of :math:`\\nabla_x \\log p(x)`.

Langevin, SVGD, Stein, Fisher and the PDE solvers accept either such an object or a bare
``score_fn(x) -> (..., d)``; :func:`as_score_fn` and :func:`as_logdensity_fn` make the two
interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from pyro_disco._validation import as_queries

__all__ = ["Estimator", "SampleEstimator", "as_score_fn", "as_logdensity_fn", "ScoreLike"]


@runtime_checkable
class Estimator(Protocol):
    """Anything with ``dim``, ``logdensity(x) -> (...)`` and ``score(x) -> (..., d)``."""

    dim: int

    def logdensity(self, x: Tensor) -> Tensor: ...

    def score(self, x: Tensor) -> Tensor: ...


ScoreLike = Callable[[Tensor], Tensor] | Estimator


def as_score_fn(score: ScoreLike) -> Callable[[Tensor], Tensor]:
    """Return a ``score_fn(x) -> (..., d)`` from an estimator or a callable."""
    if hasattr(score, "score") and callable(score.score):
        return score.score
    if callable(score):
        return score
    raise TypeError(f"expected a score function or an object with .score(x), got {type(score).__name__}")


def as_logdensity_fn(obj) -> Callable[[Tensor], Tensor]:
    """Return a ``logdensity_fn(x) -> (...)`` from an estimator or a callable."""
    if hasattr(obj, "logdensity") and callable(obj.logdensity):
        return obj.logdensity
    if callable(obj):
        return obj
    raise TypeError(
        f"expected a log-density function or an object with .logdensity(x), got {type(obj).__name__}"
    )


class SampleEstimator:
    """Base class: flattens ``(..., d)`` queries to ``(m, d)``, checks them, restores the shape.

    Subclasses implement ``_logdensity(x)`` and ``_score(x)`` on ``(m, d)`` tensors of the
    samples' dtype and device (and may override ``_logdensity_and_score`` to share work).
    """

    dim: int
    dtype: torch.dtype
    device: torch.device

    def _prepare(self, x: Tensor) -> tuple[Tensor, torch.Size]:
        x = as_queries(x, dim=self.dim, dtype=self.dtype)
        if x.device != self.device:
            raise ValueError(f"query points are on {x.device} but the samples are on {self.device}")
        return x.reshape(-1, self.dim), x.shape[:-1]

    def logdensity(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\log p(x)`; ``x`` is ``(..., d)``, the result ``(...)``."""
        flat, batch = self._prepare(x)
        return self._logdensity(flat).reshape(batch)

    def score(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\nabla_x \\log p(x)`; ``x`` is ``(..., d)``, the result ``(..., d)``."""
        flat, batch = self._prepare(x)
        return self._score(flat).reshape(*batch, self.dim)

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both at once (one pass where the estimator allows it)."""
        flat, batch = self._prepare(x)
        logp, s = self._logdensity_and_score(flat)
        return logp.reshape(batch), s.reshape(*batch, self.dim)

    def density(self, x: Tensor) -> Tensor:
        """``exp(logdensity(x))``."""
        return self.logdensity(x).exp()

    def _logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._logdensity(x), self._score(x)

    def _logdensity(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
