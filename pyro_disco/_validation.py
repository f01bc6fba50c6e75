"""Input checks shared by every estimator: one place that turns bad input into a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from numpy.typing import ArrayLike
from torch import Tensor

__all__ = ["as_samples", "as_queries", "checked_once", "DegenerateSamplesError", "OutlierWarning"]

# The one sample tensor already checked by the public constructor now running (see checked_once).
_CHECKED: ContextVar[Tensor | None] = ContextVar("pyro_disco_checked_samples", default=None)


class DegenerateSamplesError(ValueError):
    """The samples span less than their ambient dimension (singular covariance).

    ``kind``: ``"constant"`` (a constant coordinate), ``"subspace"`` (a lower-dimensional affine
    subspace), ``"outliers"`` (near-singular only because a few far outliers dominate the
    covariance: ``whitening="robust"`` accepts them), or ``None``.
    """

    def __init__(self, *args: object, kind: str | None = None) -> None:
        super().__init__(*args)
        self.kind = kind


class OutlierWarning(UserWarning):
    """A few samples dominate the samples' mean and covariance: their standard deviation in
    some direction is more than ``OUTLIER_FACTOR`` (10) times the robust scale (1.4826 MAD)
    there (:func:`pyro_disco.estimators.whitening.outlier_ratio`), and at most 5 % of them lie
    outside the robust 99.9 % ellipsoid. Remove the outliers, or build the estimator with
    ``whitening="robust"``."""


class NormalizationWarning(UserWarning):
    """An estimator's log-density could not be normalised: its importance-sampling estimate of
    :math:`\\log\\int\\hat f` has too small an effective sample size to be trusted, so
    ``logdensity`` / ``log_prob`` are returned unnormalised (off by an unknown constant; scores
    are unaffected). In practice: the transformer at d ≳ 16. For log-likelihoods, use
    ``estimator="gmm"`` or ``"kde"``, which are normalised by construction."""


def _as_float_tensor(x: Tensor | ArrayLike, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # pragma: no cover - torch's own message is kept
            raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}") from exc
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; "
            f"convert with {name}.double() or {name}.float()"
        )
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    return x


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=-1).sum()) if x.dim() > 1 else int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains non-finite values (NaN or inf) in {bad} row(s)")


def as_samples(samples: Tensor | ArrayLike, *, min_per_dim: bool = True) -> Tensor:
    """Check a sample set ``(n, d)``: floating dtype, finite, ``n > d``.

    Returns the same tensor (never a copy the caller could confuse with its own). Inside
    :func:`checked_once` for this very tensor, it is returned at once: it passed already.
    """
    if samples is _CHECKED.get():
        return samples
    x = _as_float_tensor(samples, "samples")
    if x.dim() != 2:
        raise ValueError(f"samples must have shape (n, d), got shape {tuple(x.shape)}")
    n, d = x.shape
    if d < 1:
        raise ValueError("samples must have at least one coordinate (d >= 1)")
    if min_per_dim and n <= d:
        raise ValueError(f"need more samples than dimensions (n > d) to whiten, got n={n}, d={d}")
    _check_finite(x, "samples")
    return x


@contextmanager
def checked_once(samples: Tensor | ArrayLike) -> Iterator[Tensor]:
    """Check ``samples`` with :func:`as_samples` once, at the public boundary, and yield them;
    until the block ends, the estimators built inside on this same tensor object (the factory,
    ``pretrained_estimator``, the constructors) skip the repeat check. Another tensor, a slice
    or a copy of it included, is still checked in full.

    Example:
        >>> x = torch.randn(50, 2)
        >>> with checked_once(x) as y:
        ...     as_samples(y) is x  # no second check
        True
    """
    x = as_samples(samples)
    token = _CHECKED.set(x)
    try:
        yield x
    finally:
        _CHECKED.reset(token)


def as_queries(x: Tensor | ArrayLike, *, dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """Check query points ``(..., d)`` against the estimator's dimension and dtype."""
    x = _as_float_tensor(x, "x")
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(
            f"query points must have shape (..., {dim}) to match the samples, got {tuple(x.shape)}"
        )
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"query dtype {x.dtype} does not match the samples' dtype {dtype}; convert with x.to({dtype})"
        )
    _check_finite(x, "x")
    return x
