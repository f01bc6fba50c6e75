"""The one estimator protocol everything downstream speaks.

An *estimator* is built from ``samples`` of shape ``(n, d)`` and answers, at query points
``x`` of shape ``(..., d)``:

- ``logdensity(x)`` of shape ``(...)`` — an estimate of :math:`\\log p(x)`;
- ``score(x)`` of shape ``(..., d)`` — an estimate of :math:`\\nabla_x \\log p(x)`.

The vocabulary of what the rest of the package takes, one type and one coercion each:

- :class:`Estimator` — a fitted estimator (the protocol above, with ``logdensity_and_score``);
  :func:`as_logdensity_and_score_fn` gives its ``fn(x) -> (logdensity, score)``.
- :data:`ScoreFn` — a bare ``score_fn(x) -> (..., d)``. A *score source* (:data:`ScoreLike`) is an
  estimator or a ``ScoreFn``; functions take it as ``score=`` and read it through
  :func:`as_score_fn`.
- :data:`EstimatorFactory` — ``samples (n, d) -> Estimator`` (``GaussianKDE``,
  ``pretrained_estimator``, a lambda), refitted where the samples move; functions take it as
  ``fit=`` and read it through :func:`as_estimator_factory`.

**dtype and device rule.** Queries of any floating dtype and any device are accepted: they are
evaluated in the samples' dtype and on the samples' device, and the answer comes back in the
query's dtype and on its device (so float32 Pyro parameters work with a float64 estimator, and
vice versa). ``LearnedScore.log_prob`` follows the same rule. Move an estimator itself with
``est.to(device, dtype)``; save it with ``est.save(path)`` and read it back with
``type(est).load(path)`` (:mod:`pyro_disco.estimators.io`, no unpickling).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from pyro_disco._compat import deprecated
from pyro_disco._validation import as_queries

if TYPE_CHECKING:  # typing.Self is Python >= 3.11
    from typing_extensions import Self

__all__ = [
    "Estimator",
    "SampleEstimator",
    "ScoreFn",
    "ScoreLike",
    "EstimatorFactory",
    "as_score_fn",
    "as_logdensity_fn",
    "as_logdensity_and_score_fn",
    "as_estimator_factory",
]

_IO_HOOKS: dict[str, Callable] = {}  # "save", "load", "move": set by pyro_disco.estimators.io


@runtime_checkable
class Estimator(Protocol):
    """Anything with ``dim``, ``logdensity(x) -> (...)``, ``score(x) -> (..., d)`` and both at
    once, ``logdensity_and_score(x)`` (every estimator and exact target of the package)."""

    dim: int

    def logdensity(self, x: Tensor) -> Tensor: ...

    def score(self, x: Tensor) -> Tensor: ...

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


ScoreFn = Callable[[Tensor], Tensor]  # score_fn(x (..., d)) -> (..., d)
ScoreLike = ScoreFn | Estimator  # a score source: what score= takes
EstimatorFactory = Callable[[Tensor], Estimator]  # samples (n, d) -> Estimator: what fit= takes


def as_score_fn(score: ScoreLike) -> ScoreFn:
    """Return a ``score_fn(x) -> (..., d)`` from an estimator or a callable."""
    if hasattr(score, "score") and callable(score.score):
        return score.score
    if callable(score):
        return score
    raise TypeError(f"expected a score function or an object with .score(x), got {type(score).__name__}")


def as_logdensity_and_score_fn(
    source: ScoreLike, logdensity_fn: Callable[[Tensor], Tensor] | None = None
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``fn(x) -> (logdensity (...), score (..., d))`` from an estimator (its
    ``logdensity_and_score``, or its ``logdensity`` and ``score``), or from a ``score_fn`` plus a
    ``logdensity_fn``."""
    if logdensity_fn is None:
        if callable(getattr(source, "logdensity_and_score", None)):
            return source.logdensity_and_score
        if callable(getattr(source, "logdensity", None)):
            logdensity_fn = source.logdensity
        else:
            raise ValueError("MALA needs a log-density: pass an estimator, or logdensity_fn= with score_fn")
    score_fn = as_score_fn(source)
    return lambda x: (logdensity_fn(x), score_fn(x))


def as_estimator_factory(fit: EstimatorFactory) -> EstimatorFactory:
    """Check that ``fit`` is a factory ``samples -> estimator`` (a class such as ``GaussianKDE``
    or a function) and return one whose result is checked to have ``.score(x)``.

    A fitted estimator is not a factory (it would be the score of the wrong samples), nor is a
    bare ``score_fn``: both are refused here or at the first call.
    """
    if hasattr(fit, "score") and not isinstance(fit, type):
        raise TypeError(
            f"fit= takes an estimator factory `samples -> estimator` (e.g. GaussianKDE), not a fitted "
            f"{type(fit).__name__}; pass `lambda samples: ...` if you really mean a fixed estimator"
        )
    if not callable(fit):
        raise TypeError(f"fit= takes an estimator factory `samples -> estimator`, got {type(fit).__name__}")

    def factory(samples: Tensor) -> Estimator:
        est = fit(samples)
        if not callable(getattr(est, "score", None)):
            raise TypeError(
                f"the estimator factory returned {type(est).__name__}, which has no .score(x); a bare "
                "score function is not a factory"
            )
        return est

    return factory


@deprecated("use estimator.logdensity, or as_logdensity_and_score_fn for both values")
def as_logdensity_fn(obj: Callable[[Tensor], Tensor] | Estimator) -> Callable[[Tensor], Tensor]:
    """Return a ``logdensity_fn(x) -> (...)`` from an estimator or a callable.

    Deprecated: nothing in the package uses it; kept because the first release exported it."""
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
        """Check ``x`` and cast it to the samples' dtype and device (the one rule: queries are
        evaluated in the estimator's dtype and device; :meth:`_restore` casts the answer back)."""
        x = as_queries(x, dim=self.dim)
        x = x.to(device=self.device, dtype=self.dtype)
        return x.reshape(-1, self.dim), x.shape[:-1]

    @staticmethod
    def _restore(out: Tensor, like: Tensor) -> Tensor:
        return out.to(device=like.device, dtype=like.dtype) if isinstance(like, Tensor) else out

    def logdensity(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\log p(x)`; ``x`` is ``(..., d)``, the result ``(...)``, in ``x``'s
        dtype and device (computed in the samples')."""
        flat, batch = self._prepare(x)
        return self._restore(self._logdensity(flat).reshape(batch), x)

    def score(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\nabla_x \\log p(x)`; ``x`` is ``(..., d)``, the result ``(..., d)``,
        in ``x``'s dtype and device (computed in the samples')."""
        flat, batch = self._prepare(x)
        return self._restore(self._score(flat).reshape(*batch, self.dim), x)

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both at once (one pass where the estimator allows it)."""
        flat, batch = self._prepare(x)
        logp, s = self._logdensity_and_score(flat)
        return self._restore(logp.reshape(batch), x), self._restore(s.reshape(*batch, self.dim), x)

    def density(self, x: Tensor) -> Tensor:
        """``exp(logdensity(x))``."""
        return self.logdensity(x).exp()

    def _logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._logdensity(x), self._score(x)

    def _logdensity(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- saving, moving, printing. The logic lives in :mod:`pyro_disco.estimators.io`, which
    # builds every estimator kind and so cannot be imported from here; it registers itself in
    # ``_IO_HOOKS`` when the ``pyro_disco.estimators`` package is imported (always, before any
    # of its modules).

    def save(self, path: str | os.PathLike) -> None:
        """Write this fitted estimator to ``path``: a plain dict of tensors and a config, read
        back by :meth:`load` with ``torch.load(weights_only=True)`` (no unpickling)."""
        _IO_HOOKS["save"](self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device | None = "cpu") -> Self:
        """Read an estimator written by :meth:`save`; it must be a ``cls``."""
        est = _IO_HOOKS["load"](path, map_location=map_location)
        if not isinstance(est, cls):
            raise TypeError(f"{path} holds a {type(est).__name__}, not a {cls.__name__}")
        return est

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Self:
        """A new estimator of the same kind with samples on ``device`` in ``dtype`` (this one is
        unchanged; a transformer's network keeps its own dtype)."""
        return _IO_HOOKS["move"](self, device=device, dtype=dtype)

    def __repr__(self) -> str:
        n = getattr(self, "num_samples", None)
        parts = [f"n={n}" if n is not None else None, f"d={self.dim}"]
        bandwidth = getattr(self, "bandwidth", None)
        if isinstance(bandwidth, float):
            parts.append(f"bandwidth={bandwidth:.4g}")
        model = getattr(self, "model", None)
        if model is not None:
            parts.append(f"model={type(model).__name__}")
        parts += [f"dtype={self.dtype}", f"device={self.device}"]
        return f"{type(self).__name__}({', '.join(p for p in parts if p)})"
