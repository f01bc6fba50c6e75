r"""The KDE family: Gaussian KDE with its exact score, SD-KDE and Emp-SD-KDE.

All three satisfy the estimator protocol and evaluate in blocks of queries, so memory stays
``O(block · n)`` for any number of samples ``n`` and queries ``m``.

Numerics. Samples and queries are centred on the samples' mean and whitened by the Cholesky
factor :math:`L` of the kernel covariance *in float64* before any distance is formed, so the
answer does not depend on where the data sit (an offset of 1e6 in float32 or 1e12 in float64
changes nothing but round-off of the spread). Each block of queries then costs one matrix
product for the exponents, one ``exp`` per pair and one matrix product that yields the
log-density and the score together:

.. math:: E_{ij} = [v_i, 1, -\tfrac12\|v_i\|^2] \cdot [u_j, -\tfrac12\|u_j\|^2, 1]^\top
          = -\tfrac12\|v_i - u_j\|^2, \qquad
          [\textstyle\sum_j e^{E_{ij}} u_j,\ \sum_j e^{E_{ij}}] = e^{E}\,[u, 1].

Queries so far from every sample that :math:`\sum_j e^{E_{ij}}` underflows (more than ~13
kernel widths in float32, ~37 in float64) are redone with the usual max-shifted log-sum-exp on
exact float64 differences, so far-field answers stay finite and exact.

References:
    Scott (1992); Silverman (1986) — bandwidth rules, scipy's ``gaussian_kde`` convention.
    Epstein et al., *Score-debiased kernel density estimation*, arXiv:2504.19084.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._stats import scott_factor
from pyro_disco._validation import DegenerateSamplesError, as_samples, checked_once
from pyro_disco.estimators.base import SampleEstimator, ScoreLike, as_score_fn
from pyro_disco.estimators.whitening import (
    centre,
    check_samples,
    check_whitening,
    quiet_outliers,
    robust_covariance,
    warn_if_outliers,
)

__all__ = ["GaussianKDE", "SDKDE", "EmpSDKDE", "bandwidth_factor"]

# queries x samples per block: 2 MiB of float64 exponents, small enough to stay in cache
# between the matrix product that writes them, the exp and the product that reads them.
_BLOCK_ELEMENTS = 1 << 18


def bandwidth_factor(rule: str | float, n: int, d: int) -> float:
    r"""The factor multiplying ``Cov(X)^{1/2}``: ``"scott"`` :math:`n^{-1/(d+4)}`,
    ``"silverman"`` :math:`(n(d+2)/4)^{-1/(d+4)}`, ``"sd"`` :math:`0.4\,n^{-1/(d+8)}`
    (the SD-KDE rule), or a number used as is."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not (rule > 0 and math.isfinite(rule)):
            raise ValueError(f"bandwidth factor must be positive and finite, got {rule}")
        return float(rule)
    if rule == "scott":
        return scott_factor(n, d)
    if rule == "silverman":
        return (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
    if rule == "sd":
        return 0.4 * n ** (-1.0 / (d + 8))
    raise ValueError(f"unknown bandwidth rule {rule!r}; use 'scott', 'silverman', 'sd' or a positive number")


def _centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, x - mean)`` in float64, accurate at any offset. The mean is kept as two parts,
    ``mean[0] + mean[1]`` (:func:`~pyro_disco.estimators.whitening.centre`): rounding their sum
    to one float64 would shift queries against samples by an ulp of the offset (1e-4 at 1e12).
    Centre queries as ``(y - mean[0]) - mean[1]``."""
    origin, offset, xc = centre(x)
    return torch.stack([origin, offset]), xc


def _sample_covariance(x: Tensor) -> Tensor:
    """Sample covariance in float64 (centred first, so offsets cost no accuracy)."""
    _, xc = _centre(x)
    return xc.T @ xc / (x.shape[0] - 1)


def _check_block_size(block_size: int | None) -> int | None:
    if block_size is None:
        return None
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be a positive int or None, got {type(block_size).__name__}")
    if block_size <= 0:
        raise ValueError(f"block_size must be a positive number of queries per block, got {block_size}")
    return block_size


class _Fit(NamedTuple):
    """What a KDE precomputes from its samples (all derived in float64)."""

    mean: Tensor  # 2 d, float64: the centring, y -> (y - mean[0]) - mean[1]
    linv: Tensor  # d d, float64: L^{-1}; v = (y - mean) @ linv.T, scores (mean_u - v) @ linv
    u: Tensor  # n d, float64: whitened centred kernel centres
    exps: Tensor  # n (d+2), working dtype: [u, -|u|^2/2, 1]
    moments: Tensor  # (d+1) n, working dtype: [u, 1]^T (this layout makes the product 2-5x faster)
    log_norm: Tensor  # (), float64: -log n - log det L - d/2 log 2 pi
    shift: Tensor | None  # n d, float64: the kernel centres' shift from the samples (SD-KDE), or None


class GaussianKDE(SampleEstimator):
    r"""Gaussian kernel density estimate with kernel covariance :math:`H`.

    .. math:: \hat f(y) = \frac1n \sum_j \mathcal N(y; x_j, H), \qquad
              \nabla \log \hat f(y) = H^{-1}\Big(\sum_j w_j(y)\, x_j - y\Big),
              \quad w = \mathrm{softmax}_j\big(-\tfrac12 \|y - x_j\|^2_{H^{-1}}\big)

    Samples and queries are centred and whitened in float64 before distances (see the module
    docstring), so results are translation-equivariant to round-off at any offset. The samples
    are read again if they are edited in place after building (``Tensor._version`` changes),
    and a KDE of samples that require grad rebuilds its graph on every call, so it can be
    differentiated any number of times.

    Args:
        samples: ``(n, d)``.
        bandwidth: ``"scott"`` (default), ``"silverman"``, or a positive factor; then
            :math:`H = \text{factor}^2\,\mathrm{Cov}(X)` (scipy's convention).
        covariance: an explicit kernel covariance ``(d, d)`` (or a scalar ``h``, meaning
            :math:`H = h^2 I`); overrides ``bandwidth``.
        block_size: queries per block (default: so that a block holds ~256 K exponents).
        whitening: where :math:`\mathrm{Cov}(X)` comes from: ``"standard"`` (default: the
            sample covariance) or ``"robust"``
            (:func:`~pyro_disco.estimators.whitening.robust_covariance`: far outliers get no
            weight, and the bandwidth is not differentiated through). With ``"standard"`` and no
            explicit ``covariance``, samples whose standard deviation in some direction exceeds
            10 robust scales raise an :class:`~pyro_disco._validation.OutlierWarning` that
            names this option.

    Raises:
        DegenerateSamplesError: the bandwidth comes from the samples' covariance and it is
            singular (a constant coordinate, or samples in a lower-dimensional subspace).
            With an explicit ``covariance`` degenerate samples are allowed.
        ValueError: an explicit ``covariance`` that is not positive definite,
            ``block_size <= 0``, or an unknown ``whitening``.

    Example:
        >>> kde = GaussianKDE(torch.randn(500, 2, dtype=torch.float64))
        >>> kde.score(torch.zeros(3, 2, dtype=torch.float64)).shape
        torch.Size([3, 2])
    """

    _differentiable_fit = True  # SD-KDE shifts detached samples, so its fit has no graph

    def __init__(
        self,
        samples: Tensor,
        bandwidth: str | float = "scott",
        *,
        covariance: Tensor | float | None = None,
        block_size: int | None = None,
        whitening: str = "standard",
    ) -> None:
        x = as_samples(samples)
        check_whitening(whitening)
        n, d = x.shape
        self.whitening_method = whitening
        self.samples, self.dim, self.dtype, self.device = x, d, x.dtype, x.device
        self.num_samples = n
        self._bandwidth_rule = bandwidth
        self._covariance_arg = covariance
        if isinstance(covariance, (int, float)) and not isinstance(covariance, bool):
            if not (covariance > 0 and math.isfinite(covariance)):
                raise ValueError(f"a scalar kernel bandwidth h must be positive and finite, got {covariance}")
            self.bandwidth = float(covariance)
        elif covariance is None:
            self.bandwidth = bandwidth_factor(bandwidth, n, d)
        else:
            self.bandwidth = None
        block_size = _check_block_size(block_size)
        self.block_size = block_size or max(1, _BLOCK_ELEMENTS // n)
        self._refit()
        if covariance is None and whitening == "standard":
            warn_if_outliers(x)

    # -- fitting -----------------------------------------------------------------------

    def _kernel_covariance(self, x: Tensor) -> Tensor:
        """The kernel covariance ``(d, d)`` in float64 (differentiable in ``x``)."""
        cov_arg, d = self._covariance_arg, self.dim
        if cov_arg is None:
            if self.whitening_method == "robust":
                return robust_covariance(x) * self.bandwidth**2
            check_samples(x)  # the thresholds and messages of the transformer's whitening
            return _sample_covariance(x) * self.bandwidth**2
        if isinstance(cov_arg, (int, float)):
            return torch.eye(d, dtype=torch.float64, device=x.device) * float(cov_arg) ** 2
        cov = torch.as_tensor(cov_arg, dtype=torch.float64, device=x.device)
        if cov.shape != (d, d):
            raise ValueError(f"covariance must be ({d}, {d}), got {tuple(cov.shape)}")
        return cov

    def _kernel_shift(self, x: Tensor, cov: Tensor) -> Tensor | None:
        """The kernel centres' shift from the samples ``(n, d)`` in float64, or ``None`` (the
        samples themselves are the centres; SD-KDE shifts them). It is added after centring,
        so that it is not rounded to the samples' offset."""
        return None

    def _fit(self, x: Tensor) -> _Fit:
        cov = self._kernel_covariance(x)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            if self._covariance_arg is None:
                raise DegenerateSamplesError(
                    "the kernel covariance is singular: the samples are degenerate "
                    "(all identical, or confined to a lower-dimensional subspace)"
                )
            raise ValueError("the kernel covariance must be symmetric positive definite")
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        linv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^{-1}
        mean, centred = _centre(x)
        shift = self._kernel_shift(x, cov)
        if shift is not None:
            centred = centred + shift
        u = centred @ linv.T  # n d
        half_sq = -0.5 * u.square().sum(-1, keepdim=True)  # n 1
        ones = torch.ones_like(half_sq)
        n, d = x.shape
        log_norm = -math.log(n) - chol.diagonal().log().sum() - 0.5 * d * math.log(2 * math.pi)
        self.covariance = cov.detach().to(self.dtype)  # d d
        self._chol = chol.detach().to(self.dtype)  # d d, H = L L^T
        return _Fit(
            mean=mean,
            linv=linv,
            u=u,
            exps=torch.cat([u, half_sq, ones], -1).to(self.dtype),
            moments=torch.cat([u, ones], -1).T.contiguous().to(self.dtype),
            log_norm=log_norm,
            shift=shift,
        )

    def _refit(self) -> None:
        with torch.no_grad():
            self._cache = self._fit(self.samples.detach())
        self._version = self.samples._version

    def _state(self) -> _Fit:
        """The fit to use now: refreshed if the samples changed in place; rebuilt with a
        graph on each call if the samples require grad (so every backward has its own)."""
        if self.samples._version != self._version:
            self._refit()
        if self._differentiable_fit and self.samples.requires_grad and torch.is_grad_enabled():
            return self._fit(self.samples)
        return self._cache

    # -- evaluation ----------------------------------------------------------------------

    def _logdensity(self, x: Tensor) -> Tensor:
        return self._evaluate(x, want_score=False)[0]

    def _score(self, x: Tensor) -> Tensor:
        return self._evaluate(x, want_score=True)[1]

    def _logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, want_score=True)

    def _evaluate(self, x: Tensor, *, want_score: bool) -> tuple[Tensor, Tensor]:
        fit = self._state()
        m, d = x.shape
        v = (x.double() - fit.mean[0] - fit.mean[1]) @ fit.linv.T  # m d, float64, centred and whitened
        if torch.is_grad_enabled() and (x.requires_grad or fit.u.requires_grad):
            lse, mean_u = _differentiable_blocks(v, fit.u, self.block_size)
        else:
            lse, mean_u = _fused_blocks(v, fit, self.block_size, self.dtype)
        logp = (lse + fit.log_norm).to(self.dtype)
        score = ((mean_u - v) @ fit.linv).to(self.dtype) if want_score else logp.new_empty(m, d)
        return logp, score


def _fused_blocks(v: Tensor, fit: _Fit, block_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Log-sum-exp ``(m,)`` and softmax-weighted mean centre ``(m, d)`` (float64), one block of
    queries at a time: one product for the exponents, one in-place exp, one product for the
    weighted sums and the normaliser together. No graph."""
    m, d = v.shape
    n = fit.u.shape[0]
    lse = v.new_empty(m)
    mean_u = v.new_empty(m, d)
    if m == 0:
        return lse, mean_u
    half_sq = -0.5 * v.square().sum(-1, keepdim=True)
    v_aug = torch.cat([v, torch.ones_like(half_sq), half_sq], -1).to(dtype)  # m (d+2)
    # below this normaliser the largest term may be subnormal: redo the row exactly
    tiny = math.sqrt(torch.finfo(dtype).tiny)
    # exp(floor) is just above the smallest normal number; such a term adds at most n * 1e-37
    # to a normaliser of at least `tiny`, a relative error far below round-off
    floor = math.log(torch.finfo(dtype).tiny) + 2.0
    buf = torch.empty(min(block_size, m), n, dtype=dtype, device=v.device)
    for start in range(0, m, block_size):
        vb = v_aug[start : start + block_size]  # b (d+2)
        e = torch.mm(vb, fit.exps.T, out=buf[: vb.shape[0]])  # b n: -|v_i - u_j|^2 / 2
        e.clamp_(min=floor).exp_()  # no subnormals: they make exp and the product 10x slower
        sums = (fit.moments @ e.T).T.double()  # b (d+1): [sum_j e_ij u_j, sum_j e_ij]
        total = sums[:, -1]
        lse[start : start + vb.shape[0]] = total.log()
        mean_u[start : start + vb.shape[0]] = sums[:, :d] / total.unsqueeze(-1)
    far = ~(torch.nan_to_num(lse, nan=-math.inf) > math.log(tiny))
    if bool(far.any()):
        lse[far], mean_u[far] = _exact_far_rows(v[far], fit.u, block_size)
    return lse, mean_u


def _exact_far_rows(v: Tensor, u: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Max-shifted log-sum-exp on exact float64 differences, for queries far from every sample."""
    lses, means = [], []
    for vb in v.split(block_size):
        logk = -0.5 * torch.cdist(vb, u, compute_mode="donot_use_mm_for_euclid_dist").square()
        lse = torch.logsumexp(logk, -1)
        lses.append(lse)
        means.append((logk - lse.unsqueeze(-1)).exp() @ u)
    return torch.cat(lses), torch.cat(means)


def _differentiable_blocks(v: Tensor, u: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """As :func:`_fused_blocks`, in float64 with plain autograd-friendly operations."""
    m, d = v.shape
    if m == 0:
        return v.sum(-1) + 0 * u.sum(), v + 0 * u.sum()  # empty, but connected to the graph
    half_u = -0.5 * u.square().sum(-1)  # n
    lses, means = [], []
    for vb in v.split(block_size):
        logk = vb @ u.T + half_u - 0.5 * vb.square().sum(-1, keepdim=True)  # b n
        lse = torch.logsumexp(logk, -1)
        lses.append(lse)
        means.append((logk - lse.unsqueeze(-1)).exp() @ u)
    return torch.cat(lses), torch.cat(means)


class SDKDE(GaussianKDE):
    r"""Score-debiased KDE: shift each sample once along a score, then a plain KDE.

    .. math:: \tilde x_i = x_i + \tfrac12 H\, \hat s(x_i), \qquad
              \hat f(y) = \frac1n \sum_i \mathcal N(y; \tilde x_i, H)

    With an exact score the MISE rate improves from :math:`n^{-4/(d+4)}` to
    :math:`n^{-8/(d+8)}` (Epstein et al., arXiv:2504.19084), hence the default bandwidth rule
    ``"sd"``: :math:`H = (0.4\, n^{-1/(d+8)})^2\,\Sigma`, where :math:`\Sigma` is the sample
    covariance (in 1-D the robust scale :math:`\min(\sigma, \mathrm{IQR}/1.34)^2`, as in the
    paper's code). The shift is evaluated again if the samples are edited in place.

    Args:
        samples: ``(n, d)``.
        score: an estimator or ``score_fn(x) -> (n, d)`` evaluated once at the samples.
        bandwidth: ``"sd"`` (default), ``"scott"``, ``"silverman"`` or a positive factor.
        covariance: explicit kernel covariance, overriding ``bandwidth``.
        block_size, whitening: as for :class:`GaussianKDE` (``"robust"``: :math:`\Sigma` is the
            robust covariance).
    """

    _differentiable_fit = False

    def __init__(
        self,
        samples: Tensor,
        score: ScoreLike,
        bandwidth: str | float = "sd",
        *,
        covariance: Tensor | float | None = None,
        block_size: int | None = None,
        whitening: str = "standard",
    ) -> None:
        self._score_fn = as_score_fn(score)
        super().__init__(
            samples, bandwidth, covariance=covariance, block_size=block_size, whitening=whitening
        )

    def _kernel_covariance(self, x: Tensor) -> Tensor:
        cov = super()._kernel_covariance(x.detach())
        if self._covariance_arg is None and x.shape[1] == 1:
            # the SD-KDE code's robust scale: sigma = min(std, IQR / 1.34)
            xd = x.detach().double()[:, 0]
            q25, q75 = torch.quantile(xd, xd.new_tensor([0.25, 0.75])).tolist()
            var = float(cov) / self.bandwidth**2  # the (sample or robust) variance
            cov = cov * min(1.0, ((q75 - q25) / 1.34) ** 2 / var)
            if not float(cov) > 0:
                raise DegenerateSamplesError(
                    "samples are degenerate: their interquartile range is zero (half of them identical)"
                )
        return cov

    def _kernel_shift(self, x: Tensor, cov: Tensor) -> Tensor:
        x = x.detach()
        shift = self._score_fn(x)
        if not isinstance(shift, Tensor) or shift.shape != x.shape:
            got = tuple(shift.shape) if isinstance(shift, Tensor) else type(shift).__name__
            raise ValueError(f"score at the samples must have shape {tuple(x.shape)}, got {got}")
        if not bool(torch.isfinite(shift).all()):
            raise ValueError("the score at the samples is not finite; SD-KDE cannot shift them")
        return 0.5 * shift.double() @ cov.T

    @property
    def shifted_samples(self) -> Tensor:
        r"""The kernel centres :math:`\tilde x_i` ``(n, d)``, in the samples' dtype."""
        x = self.samples.detach()
        return (x.double() + self._state().shift).to(x.dtype)


class EmpSDKDE(SDKDE):
    """SD-KDE whose shift uses the KDE's own score at the same bandwidth (Emp-SD-KDE)."""

    def __init__(
        self,
        samples: Tensor,
        bandwidth: str | float = "sd",
        *,
        covariance: Tensor | float | None = None,
        block_size: int | None = None,
        whitening: str = "standard",
    ) -> None:
        kwargs = dict(covariance=covariance, block_size=block_size, whitening=whitening)
        with checked_once(samples) as x:  # one check for the two KDEs built on x
            with quiet_outliers():  # the estimator itself checks the same samples
                # a zero shift, the plain KDE (a named function, so that the estimator pickles)
                plain = SDKDE(x, torch.zeros_like, bandwidth, **kwargs)
            super().__init__(x, plain.score, bandwidth, **kwargs)
