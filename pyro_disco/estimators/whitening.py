r"""Affine normalisation of a sample set (float64), the source of DiScoFormer's affine equivariance.

The whitening map is :math:`x \mapsto (x - \mu) A` with

.. math:: A = D^{-1} R^{-1/2}, \qquad D = \operatorname{diag}(\sigma_1, \dots, \sigma_d),

where :math:`\sigma_j` are the coordinates' standard deviations and :math:`R^{-1/2}` is the
*symmetric* inverse square root of the correlation matrix. Then :math:`A^\top \Sigma A = I`
(to round-off: no ridge is added — samples whose correlation matrix is near-singular are
rejected instead). Standardising first makes the map exactly equivariant under translations
and under isotropic *and* anisotropic (diagonal) scalings — the whitened coordinates do not
change at all — while any other invertible linear map of the input (a rotation, a reflection)
becomes an orthogonal map of the whitened coordinates, since any two whitening maps of the
same samples differ by one. The per-dimension networks learn that symmetry (DiScoFormer,
arXiv:2511.05924, §3.1); the universal network is exactly O(d)-equivariant, so it inherits
exact equivariance under every affine map.
Outputs map back as :math:`\log f(y) = \log f_w(y_w) + \log|\det A|` and
:math:`\nabla \log f(y) = A\, \nabla \log f_w(y_w)` (row vectors: ``s_w @ A.T``).

**Degenerate samples.** Every threshold is relative to the data, so units, scales and offsets
do not matter (``N(0, I)·1e-20``, a column in 1e5 next to one in 1e-7, an offset of 1e12 in
float64 are all fine): the samples are centred first (on one sample plus the mean of the exact
differences to it, so an offset costs no accuracy), each column is scaled by its own spread, and

- a column is *constant* when its standard deviation is at most ``CONSTANT_ULPS`` units of
  round-off of its magnitude (``std <= 4 · eps · max|x_j|``, ``eps`` of the samples' dtype);
- the samples lie in a lower-dimensional affine subspace when the correlation matrix's smallest
  eigenvalue is at most ``DEGENERATE`` (1e-10) times its largest.

Both raise :class:`~pyro_disco._validation.DegenerateSamplesError` (a ``ValueError``) with the
same message from every estimator (:func:`check_samples` is shared with the KDE family). Samples
that are near-singular only because a few far outliers dominate the covariance get a message
that says so (``kind="outliers"``); ``whitening="robust"`` accepts them.

**Outliers and robust whitening.** The mean and covariance follow a single gross outlier: one
point at (1e6, 1e6) among 511 N(0, I) draws squeezes the bulk into a sliver of the whitened
space and ruins every estimate (transformer log-density MSE 0.013 → 73, KDE 0.06 → 91). So

- :func:`outlier_ratio` measures, in the standard whitened coordinates (where every direction
  has standard deviation 1), the direction of smallest robust spread and there the ratio of the
  standard deviation to the robust scale ``1.4826 · MAD``. Estimators built with the standard
  whitening warn (:class:`~pyro_disco._validation.OutlierWarning`) when it exceeds
  ``OUTLIER_FACTOR`` (10): the ratio is about 1 for normal samples, 1.4 for Laplace, 1.5–2.5 for
  Student-t with 3 degrees of freedom, but about 6e4 with that one outlier (and above 10 for one
  point beyond roughly ``10 sqrt(n)`` standard deviations) — as long as the far points are few,
  at most ``OUTLIER_FRACTION`` (5 %) of the samples outside the robust 99.9 % ellipsoid: a 70/30
  mixture of two modes 50 sd apart also has a ratio above 10, but it is a mixture, not
  contamination. Samples with fewer than ``10 (d + 1)`` points are not checked: there outliers
  cannot be told from the tails.
- ``whitening="robust"`` (:func:`fit_whitening` and every estimator's keyword) takes the mean
  and covariance from :func:`robust_location_scatter` instead — a deterministic,
  affine-equivariant estimate that gives far outliers no weight — so the bulk is whitened as if
  the outliers were not there. They stay among the samples (far out in whitened space). It is
  not the default: for clean or merely heavy-tailed samples the classical moments are what the
  estimators were built and benchmarked with.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._validation import DegenerateSamplesError, OutlierWarning

__all__ = [
    "Whitening",
    "fit_whitening",
    "centre",
    "check_not_degenerate",
    "robust_location_scatter",
    "robust_covariance",
    "check_whitening",
    "check_samples",
    "outlier_ratio",
    "warn_if_outliers",
    "quiet_outliers",
    "WHITENINGS",
    "DEGENERATE",
    "CONSTANT_ULPS",
    "OUTLIER_FACTOR",
    "OUTLIER_FRACTION",
]

WHITENINGS = ("standard", "robust")

DEGENERATE = 1e-10  # smallest admissible correlation eigenvalue, relative to the largest
# a column whose spread is this many units of round-off of its magnitude or less is constant:
# arithmetic on a constant leaves at most ~1 ulp of noise, while float32 data of sd 1 at an
# offset of 1e6 (16 representable levels per sd, a coarse but genuine sample) is ~8 units.
CONSTANT_ULPS = 4
# warn when, in some direction, the standard deviation exceeds this many robust scales
# (1.4826 MAD): ~1 for normal samples, <= 2.5 for Laplace or Student-t(3) at n = 4096
OUTLIER_FACTOR = 10.0
OUTLIER_ITERS = 8  # iterations of the robust scatter behind the check
# ... and only when the far points are few: a 70/30 mixture with modes 50 sd apart has a ratio
# of ~13 too, but 30 % of its samples lie outside the robust ellipsoid of the larger mode
OUTLIER_FRACTION = 0.05
# below this many samples per dimension (+1) outliers cannot be told from the tails (and a robust
# scatter of n <= d + 1 points does not exist): no check
MIN_PER_DIM_FOR_OUTLIERS = 10
# off while auto's selection builds candidates on folds: the refit on all samples warns once
_CHECK_OUTLIERS: ContextVar[bool] = ContextVar("pyro_disco_check_outliers", default=True)


class Whitening(NamedTuple):
    """The map ``x -> ((x - origin) - offset) @ matrix``, float64: ``origin`` ``(*B, d)`` (one of
    the samples), ``offset`` ``(*B, d)`` (the mean of the samples' differences to it),
    ``matrix`` :math:`A` ``(*B, d, d)``, ``logabsdet`` ``(*B,)``. The mean is kept as two parts
    because rounding their sum would shift queries against samples by an ulp of the offset."""

    origin: Tensor
    offset: Tensor
    matrix: Tensor
    logabsdet: Tensor

    @property
    def mean(self) -> Tensor:
        """The centre :math:`\\mu` ``(*B, d)`` (rounded to one float64)."""
        return self.origin + self.offset

    def apply(self, x: Tensor) -> Tensor:
        """``(x - mean) @ A`` for ``x`` ``(*B, m, d)``, in float64."""
        return ((x.double() - self.origin.unsqueeze(-2)) - self.offset.unsqueeze(-2)) @ self.matrix

    def invert(self, x_w: Tensor) -> Tensor:
        """The inverse map: whitened points ``(*B, m, d)`` back to the samples' space (float64)."""
        x = torch.linalg.solve(self.matrix.transpose(-1, -2), x_w.double().transpose(-1, -2))
        return (x.transpose(-1, -2) + self.offset.unsqueeze(-2)) + self.origin.unsqueeze(-2)

    def score_back(self, score_w: Tensor) -> Tensor:
        """Map whitened scores ``(*B, m, d)`` back: ``s_w @ A^T``."""
        return score_w.double() @ self.matrix.transpose(-1, -2)

    def score_forward(self, score: Tensor) -> Tensor:
        """Map scores in the original space to whitened space: ``s @ A^{-T}``."""
        return torch.linalg.solve(self.matrix, score.double().transpose(-1, -2)).transpose(-1, -2)


def centre(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(origin, offset, x - origin - offset)`` of ``x`` ``(*B, n, d)`` in float64, accurate at
    any offset: ``origin`` is the first sample, ``offset`` the mean of the differences to it
    (exact for samples within a factor 2 of each other). Centre other points the same way,
    ``(y - origin) - offset``."""
    x = x.double()
    origin = x[..., 0, :]
    dx = x - origin.unsqueeze(-2)
    offset = dx.mean(-2)
    return origin, offset, dx - offset.unsqueeze(-2)


def _check_constant(cov: Tensor, magnitude: Tensor, dtype: torch.dtype) -> Tensor:
    """Raise if a column's spread is within ``CONSTANT_ULPS`` of its magnitude; return the
    standard deviations ``(*B, d)``."""
    std = cov.detach().double().diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    constant = std <= CONSTANT_ULPS * torch.finfo(dtype).eps * magnitude.detach().double()
    if bool(constant.any()):
        cols = sorted({int(j) for j in constant.nonzero()[:, -1]})
        raise DegenerateSamplesError(
            f"samples are degenerate: coordinate(s) {cols} are constant (e.g. all samples identical)",
            kind="constant",
        )
    return std


def check_not_degenerate(cov: Tensor, magnitude: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Raise :class:`DegenerateSamplesError` if the covariance ``cov`` ``(*B, d, d)`` of centred
    samples is singular relative to the data; ``magnitude`` ``(*B, d)`` is each column's largest
    ``|x|`` (offset included) in the same units as ``cov``, ``dtype`` the samples' own.

    Returns the standard deviations ``(*B, d)`` and the eigenvalues ``(*B, d)`` and
    eigenvectors ``(*B, d, d)`` of the correlation matrix (float64, no graph).
    """
    cov = cov.detach().double()
    std = _check_constant(cov, magnitude, dtype)
    corr = cov / (std.unsqueeze(-1) * std.unsqueeze(-2))
    evals, evecs = torch.linalg.eigh(corr)
    ratio = evals[..., 0] / evals[..., -1]
    if bool((ratio <= DEGENERATE).any()):
        raise DegenerateSamplesError(
            "samples are degenerate: they lie in a lower-dimensional affine subspace "
            f"(smallest/largest correlation eigenvalue {float(ratio.min()):.2e} <= {DEGENERATE:.0e})",
            kind="subspace",
        )
    return std, evals, evecs


class _Scaled(NamedTuple):
    origin: Tensor  # *B d
    offset: Tensor  # *B d
    z: Tensor  # *B n d: centred, each column in units of its largest deviation
    unit: Tensor  # *B d
    magnitude: Tensor  # *B d: max |x| per column, in those units
    cov: Tensor  # *B d d: covariance of z


def _scaled(samples: Tensor, method: str = "standard") -> _Scaled:
    """Centre, scale each column by its own largest deviation (so that squares neither overflow
    nor underflow at any scale, 1e-200 or 1e200, and mixed units are fine) and check that the
    samples are not degenerate: for ``"robust"`` only that they are not singular to round-off
    (a far outlier alone makes the classical covariance near-singular; the robust scatter is
    checked by the caller)."""
    n = samples.shape[-2]
    origin, offset, xc = centre(samples.detach())
    spread = xc.abs().amax(-2)  # *B d
    unit = torch.where(spread > 0, spread, torch.ones_like(spread))
    z = xc / unit.unsqueeze(-2)
    magnitude = samples.detach().double().abs().amax(-2) / unit
    cov = z.transpose(-1, -2) @ z / (n - 1)  # *B d d
    scaled = _Scaled(origin, offset, z, unit, magnitude, cov)
    if method == "robust" and not bool(torch.linalg.cholesky_ex(cov).info.any()):
        _check_constant(cov, magnitude, samples.dtype)
        return scaled
    try:
        check_not_degenerate(cov, magnitude, samples.dtype)
    except DegenerateSamplesError as exc:
        if exc.kind == "subspace" and method == "standard" and _robust_core_is_fine(scaled, samples.dtype):
            raise DegenerateSamplesError(
                f"{exc}; but their robust scatter is not degenerate: a few far outliers dominate the "
                "covariance. Remove them, or pass whitening='robust'",
                kind="outliers",
            ) from None
        raise
    return scaled


def _robust_core_is_fine(scaled: _Scaled, dtype: torch.dtype) -> bool:
    try:
        _robust_scaled(scaled, dtype)
    except DegenerateSamplesError:
        return False
    return True


def _robust_scaled(scaled: _Scaled, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`robust_location_scatter` of the scaled samples, checked not degenerate."""
    try:
        mu, cov = robust_location_scatter(scaled.z)
    except torch.linalg.LinAlgError:  # the iteration met a singular scatter: singular to round-off
        cov = None
    if cov is None or not bool(torch.isfinite(cov).all()):
        raise DegenerateSamplesError(
            "samples are degenerate: they lie in a lower-dimensional affine subspace "
            "(their robust scatter is singular)",
            kind="subspace",
        )
    check_not_degenerate(cov, scaled.magnitude, dtype)
    return mu, cov


def check_samples(samples: Tensor, method: str = "standard") -> None:
    """Raise :class:`DegenerateSamplesError` if ``samples`` ``(*B, n, d)`` are degenerate for
    whitening by ``method`` (what :func:`fit_whitening` checks, without fitting)."""
    check_whitening(method)
    if method == "robust":
        robust_covariance(samples)
    else:
        _scaled(samples)


def fit_whitening(samples: Tensor, method: str = "standard") -> Whitening:
    """Fit the whitening map of ``samples`` ``(*B, n, d)`` (float64 arithmetic).

    Args:
        samples: ``(*B, n, d)``.
        method: ``"standard"`` (the samples' mean and covariance) or ``"robust"``
            (:func:`robust_location_scatter`: far outliers get no weight).

    Raises:
        DegenerateSamplesError: a coordinate is constant or the samples lie in a
            lower-dimensional affine subspace (thresholds relative to the data, see the module
            docstring).
        ValueError: an unknown ``method``.
    """
    check_whitening(method)
    sc = _scaled(samples, method)
    offset, cov_z = sc.offset, sc.cov
    if method == "robust":
        mu_z, cov_z = _robust_scaled(sc, samples.dtype)
        offset = offset + mu_z * sc.unit
    std_z, evals, evecs = check_not_degenerate(cov_z, sc.magnitude, samples.dtype)
    std = std_z * sc.unit
    inv_sqrt = (evecs * evals.rsqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)
    matrix = inv_sqrt / std.unsqueeze(-1)  # D^{-1} R^{-1/2}: row j scaled by 1/std_j
    logabsdet = -std.log().sum(-1) - 0.5 * evals.log().sum(-1)
    return Whitening(sc.origin, offset, matrix, logabsdet)


def robust_covariance(samples: Tensor) -> Tensor:
    """:func:`robust_location_scatter`'s covariance of ``samples`` ``(*B, n, d)`` in their own
    units, ``(*B, d, d)`` float64 (no graph).

    Raises:
        DegenerateSamplesError: as :func:`fit_whitening`, for the samples or their robust core.
    """
    sc = _scaled(samples, "robust")
    return _robust_scaled(sc, samples.dtype)[1] * sc.unit.unsqueeze(-1) * sc.unit.unsqueeze(-2)


def check_whitening(method: str) -> None:
    """Raise ``ValueError`` unless ``method`` is one of ``WHITENINGS``."""
    if method not in WHITENINGS:
        raise ValueError(f"unknown whitening {method!r}; use one of {WHITENINGS}")


def _chi2_cdf(q: Tensor, d: int) -> Tensor:
    return torch.special.gammainc(torch.as_tensor(d / 2.0, dtype=torch.float64), q / 2.0)


@lru_cache(maxsize=256)
def _chi2_quantile(p: float, d: int) -> float:
    """The ``p`` quantile of :math:`\\chi^2_d` (bisection on the regularised gamma function)."""
    lo, hi = 0.0, float(d) + 40.0 * (float(d) ** 0.5 + 1.0)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(_chi2_cdf(torch.tensor(mid, dtype=torch.float64), d)) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _mahalanobis_sq(r: Tensor, cov: Tensor) -> Tensor:
    """``r^T cov^{-1} r`` per row of ``r`` ``(*B, n, d)``."""
    chol = torch.linalg.cholesky(cov)
    w = torch.linalg.solve_triangular(chol, r.transpose(-1, -2), upper=False)
    return w.square().sum(-2)


def robust_location_scatter(z: Tensor, *, num_iters: int = 100) -> tuple[Tensor, Tensor]:
    """Deterministic, affine-equivariant robust mean ``(*B, d)`` and covariance ``(*B, d, d)`` of
    ``z`` ``(*B, n, d)`` (float64; finite, non-degenerate input).

    1. the multivariate Cauchy (t with one degree of freedom) maximum-likelihood location and
       scatter, by the Kent–Tyler–Vardi iteration from the classical estimate (a point at
       Mahalanobis distance ``r`` has weight :math:`(d + 1)/(1 + r^2)`, so far outliers have
       none);
    2. its scatter scaled so that the median squared distance is :math:`\\chi^2_d`'s;
    3. one hard reweighting step: the classical mean and covariance of the points within the
       0.999 quantile of :math:`\\chi^2_d`, made consistent at the normal.

    Steps 2–3 make the result the covariance of the bulk for normal data. References: Kent,
    Tyler & Vardi, *A curious likelihood identity for the multivariate t-distribution* (1994);
    Rousseeuw & Van Driessen (1999) for the reweighting step.
    """
    n, d = z.shape[-2:]
    mu = z.mean(-2)
    cov = (z - mu.unsqueeze(-2)).transpose(-1, -2) @ (z - mu.unsqueeze(-2)) / (n - 1)
    prev = None
    for _ in range(num_iters):
        r = z - mu.unsqueeze(-2)
        d2 = _mahalanobis_sq(r, cov)
        w = (d + 1.0) / (1.0 + d2)  # *B n
        sw = w.sum(-1, keepdim=True)
        mu = mu + (w.unsqueeze(-1) * r).sum(-2) / sw
        r = z - mu.unsqueeze(-2)
        cov = (w.unsqueeze(-1) * r).transpose(-1, -2) @ r / sw.unsqueeze(-1)
        if prev is not None and bool(((w - prev).abs() <= 1e-10 * (d + 1.0)).all()):
            break
        prev = w
    d2 = _mahalanobis_sq(z - mu.unsqueeze(-2), cov)
    cov = cov * (d2.median(-1).values / _chi2_quantile(0.5, d)).unsqueeze(-1).unsqueeze(-1)
    q, consistency = _reweighting(d)
    keep = (_mahalanobis_sq(z - mu.unsqueeze(-2), cov) <= q).to(z.dtype)  # *B n
    k = keep.sum(-1, keepdim=True)
    mu = (keep.unsqueeze(-1) * z).sum(-2) / k
    r = z - mu.unsqueeze(-2)
    cov = (keep.unsqueeze(-1) * r).transpose(-1, -2) @ r / (k - 1).unsqueeze(-1) * consistency
    return mu, cov


@lru_cache(maxsize=64)
def _reweighting(d: int) -> tuple[float, float]:
    """The cut-off (chi^2_d's 0.999 quantile) and the factor that makes the covariance of the
    normal points within it consistent: P(chi^2_d <= q) / P(chi^2_{d+2} <= q)."""
    q = _chi2_quantile(0.999, d)
    return q, float(_chi2_cdf(torch.tensor(q), d) / _chi2_cdf(torch.tensor(q), d + 2))


def outlier_ratio(samples: Tensor, whitening: Whitening | None = None) -> Tensor:
    """The largest ratio of standard deviation to robust scale over directions, ``(*B,)``.

    In the standard whitened coordinates every direction has standard deviation 1; the
    direction ``u`` of smallest robust spread is the eigenvector of the smallest eigenvalue of
    :func:`robust_location_scatter`'s covariance there, and the ratio is
    ``std(x_w u) / (1.4826 · MAD(x_w u))`` (``inf`` if more than half the projections coincide).
    Affine-invariant. ``whitening``: the samples' standard whitening, if already fitted.
    """
    return _outlier_stats(samples, whitening)[0]


def _outlier_stats(samples: Tensor, whitening: Whitening | None) -> tuple[Tensor, Tensor]:
    """:func:`outlier_ratio` and the fraction of samples outside the robust 99.9 % ellipsoid."""
    w = fit_whitening(samples) if whitening is None else whitening
    xw = w.apply(samples.detach())  # *B n d
    # a factor-of-10 test needs no converged scatter: a few iterations find the direction
    mu, cov = robust_location_scatter(xw, num_iters=OUTLIER_ITERS)
    outside = _mahalanobis_sq(xw - mu.unsqueeze(-2), cov) > _reweighting(xw.shape[-1])[0]
    u = torch.linalg.eigh(cov)[1][..., :, :1]  # *B d 1
    p = (xw @ u)[..., 0]  # *B n
    mad = (p - p.median(-1, keepdim=True).values).abs().median(-1).values
    return p.std(-1) / (1.4826 * mad), outside.double().mean(-1)


def warn_if_outliers(samples: Tensor, whitening: Whitening | None = None, *, stacklevel: int = 3) -> None:
    """Warn (:class:`OutlierWarning`) if :func:`outlier_ratio` exceeds ``OUTLIER_FACTOR`` because
    of a few samples: at most ``OUTLIER_FRACTION`` of them outside the robust 99.9 % ellipsoid
    (a larger far group is a mixture component, not outliers). Samples with fewer than
    ``10 (d + 1)`` points are not checked (outliers cannot be told from tails)."""
    n, d = samples.shape[-2:]
    if not _CHECK_OUTLIERS.get() or n < MIN_PER_DIM_FOR_OUTLIERS * (d + 1):
        return
    ratio, fraction = _outlier_stats(samples, whitening)
    flagged = (ratio > OUTLIER_FACTOR) & (fraction <= OUTLIER_FRACTION)
    if bool(flagged.any()):
        worst = float(ratio[flagged].max())
        warnings.warn(
            f"the samples' standard deviation is {worst:.3g}x their robust scale (1.4826 MAD) in "
            f"some direction (more than {OUTLIER_FACTOR:g}x), because of a few outliers (at most "
            f"{OUTLIER_FRACTION:.0%} of the samples): they dominate the mean and covariance and the "
            "estimate will be poor. Remove them, or pass whitening='robust' to whiten by a robust "
            "location and scatter",
            OutlierWarning,
            stacklevel=stacklevel,
        )


@contextmanager
def quiet_outliers() -> Iterator[None]:
    """No :class:`OutlierWarning` inside (this thread or task only): for estimators built as
    parts of another that checks the same samples itself (auto's folds, Emp-SD-KDE's pilot)."""
    token = _CHECK_OUTLIERS.set(False)
    try:
        yield
    finally:
        _CHECK_OUTLIERS.reset(token)
