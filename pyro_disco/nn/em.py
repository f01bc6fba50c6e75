r"""Gaussian mixtures by EM, batched over sample sets, with k chosen by BIC — in torch.

The fit runs on (whitened) sample sets ``x`` of shape ``(B, n, d)``, for every number of
components :math:`k = 1 \dots K` at once per set, and is **deterministic and equivariant**:
it depends on the data only through inner products and linear combinations of the points, so
a permutation of the samples, or an orthogonal map of the whitened coordinates, maps every
fitted mean and covariance the same way (to round-off). That is what lets the universal
network use the fits as input features without giving up its exact O(d) equivariance, and
what gives :class:`~pyro_disco.estimators.mixture.GaussianMixtureEstimator` the
transformer's affine equivariance.

Initialisation (the source of the equivariance). Centres are chosen greedily, k-means++ style
but without randomness: the first is the sample of highest Gaussian-KDE density (Scott's
bandwidth), each next one maximises :math:`\log \hat f(x_i) + \log D_i^2`, with :math:`D_i`
the distance to the nearest chosen centre. The first :math:`k` centres of that one sequence
start the :math:`k`-component fit; Lloyd (k-means) steps, then EM with full covariances
floored at ``reg_covar`` on the diagonal (as scikit-learn's ``reg_covar``).

Model choice. :math:`\mathrm{BIC}_k = -2 \log L_k + p_k \log n` with
:math:`p_k = (k - 1) + k d + k d (d + 1) / 2`; :func:`bic_mixture` returns the BIC-weighted
average of the fits (weights :math:`\propto e^{-\mathrm{BIC}_k / 2}`, in practice the
BIC-selected fit), which is again a normalised Gaussian mixture.

Reference: Dempster, Laird & Rubin (1977); Schwarz (1978); Arthur & Vassilvitskii (2007).

Example:
    >>> x = torch.cat([torch.randn(200, 2) - 3, torch.randn(200, 2) + 3]).double().unsqueeze(0)
    >>> fits = fit_gaussian_mixtures(x, max_components=3)
    >>> int(torch.stack([f.bic for f in fits], -1).argmin()) + 1  # components chosen by BIC
    2
    >>> logf, score = mixture_logdensity_and_score(bic_mixture(fits), x[:, :5])  # (1, 5), (1, 5, 2)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._stats import scott_factor
from pyro_disco.nn.common import kde_logsumexp

__all__ = [
    "MixtureFit",
    "fit_gaussian_mixtures",
    "mixture_logdensity_and_score",
    "bic_mixture",
    "max_components_for",
]

_LOG_2PI = math.log(2 * math.pi)


class MixtureFit(NamedTuple):
    """A batch of Gaussian mixtures: ``loc`` ``(B, k, d)``, ``scale_tril`` ``(B, k, d, d)`` (the
    Cholesky factors of the covariances), ``log_weights`` ``(B, k)`` (normalised), and the
    fit's total log-likelihood ``loglik`` ``(B,)`` and ``bic`` ``(B,)`` on its samples."""

    loc: Tensor
    scale_tril: Tensor
    log_weights: Tensor
    loglik: Tensor
    bic: Tensor


COMPONENT_SIZES = ("params", "dims")


def max_components_for(n: int, d: int, cap: int, component_size: str = "params") -> int:
    """The largest k worth trying: at most ``cap``, and on average at least this many samples
    per component:

    - ``"params"``: as many as it has free parameters, :math:`1 + d + d(d+1)/2` (without
      shrinkage, full covariances collapse onto a few points beyond that and their likelihood
      spikes mislead BIC);
    - ``"dims"``: :math:`4(d + 1)`, enough for a shrunk covariance (``shrinkage > 0``). In
      high d this lets BIC see several components where ``"params"`` allows one: on random
      32-D mixtures at n = 1024 it took our GMM's relative score MSE from 54.7 % to 32.7 %,
      and changed no cell at d <= 5 (``benchmarks/gmm_options.py``).
    """
    if component_size not in COMPONENT_SIZES:
        raise ValueError(f"component_size must be one of {COMPONENT_SIZES}, got {component_size!r}")
    size = 1 + d + d * (d + 1) // 2 if component_size == "params" else 4 * (d + 1)
    return max(1, min(cap, n // size))


def _component_logpdf(x: Tensor, loc: Tensor, scale_tril: Tensor) -> tuple[Tensor, Tensor]:
    """Log-densities ``(B, m, k)`` of ``x`` ``(B, m, d)`` under each component, and the
    whitened residuals ``z = L^{-1}(x - μ)`` ``(B, k, m, d)``."""
    d = x.shape[-1]
    diff = x.unsqueeze(1) - loc.unsqueeze(2)  # B k m d
    z = torch.linalg.solve_triangular(scale_tril, diff.transpose(-1, -2), upper=False)  # B k d m
    z = z.transpose(-1, -2)  # B k m d
    half_logdet = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # B k
    logp = -0.5 * z.square().sum(-1) - half_logdet.unsqueeze(-1) - 0.5 * d * _LOG_2PI  # B k m
    return logp.transpose(1, 2), z


def mixture_logdensity_and_score(fit: MixtureFit, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""Exact log-density ``(B, m)`` and score ``(B, m, d)`` of the mixtures at ``y`` ``(B, m, d)``:

    .. math:: \nabla \log f(y) = -\sum_c r_c(y)\, \Sigma_c^{-1} (y - \mu_c), \qquad
              r_c(y) \propto w_c\, \mathcal N(y; \mu_c, \Sigma_c).
    """
    logp, z = _component_logpdf(y, fit.loc, fit.scale_tril)  # B m k, B k m d
    joint = logp + fit.log_weights.unsqueeze(1)
    logf = torch.logsumexp(joint, dim=-1)  # B m
    resp = (joint - logf.unsqueeze(-1)).exp()  # B m k
    # Σ^{-1}(y - μ) = L^{-T} z
    prec_diff = torch.linalg.solve_triangular(
        fit.scale_tril.transpose(-1, -2), z.transpose(-1, -2), upper=True
    ).transpose(-1, -2)  # B k m d
    score = -(resp.transpose(1, 2).unsqueeze(-1) * prec_diff).sum(1)  # B m d
    return logf, score


def _greedy_centres(x: Tensor, k: int, logdensity: Tensor) -> Tensor:
    """Indices ``(B, k)`` of the deterministic k-means++-style centres (see the module docstring)."""
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    idx = [logdensity.argmax(-1)]
    dist2 = (x - x[rows, idx[0]].unsqueeze(1)).square().sum(-1)  # B n
    for _ in range(1, k):
        nxt = (logdensity + dist2.clamp_min(1e-300).log()).argmax(-1)
        idx.append(nxt)
        dist2 = torch.minimum(dist2, (x - x[rows, nxt].unsqueeze(1)).square().sum(-1))
    return torch.stack(idx, -1)


def _m_step(
    x: Tensor, resp: Tensor, sample_weights: Tensor | None, reg_covar: float, shrinkage: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Weights, means and Cholesky factors from responsibilities ``(B, n, k)``; each covariance
    shrunk toward its own mean variance by :math:`\lambda_c = a d / (n_c + a d)` (``a =
    shrinkage``), then floored by ``reg_covar``."""
    d = x.shape[-1]
    if sample_weights is not None:
        resp = resp * sample_weights.unsqueeze(-1)
    nk = resp.sum(1) + 1e-10 * x.shape[1]  # B k
    loc = (resp.transpose(1, 2) @ x) / nk.unsqueeze(-1)  # B k d
    diff = x.unsqueeze(1) - loc.unsqueeze(2)  # B k n d
    cov = (resp.transpose(1, 2).unsqueeze(-1) * diff).transpose(-1, -2) @ diff / nk[..., None, None]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    if shrinkage > 0:
        lam = (shrinkage * d / (nk + shrinkage * d))[..., None, None]  # B k 1 1
        iso = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye
        cov = (1 - lam) * cov + lam * iso
    cov = cov + reg_covar * torch.eye(d, dtype=x.dtype, device=x.device)
    scale_tril = torch.linalg.cholesky(0.5 * (cov + cov.transpose(-1, -2)))
    log_weights = (nk / nk.sum(-1, keepdim=True)).log()
    return log_weights, loc, scale_tril


def fit_gaussian_mixtures(
    x: Tensor,
    max_components: int = 6,
    *,
    num_iters: int = 60,
    tol: float = 1e-6,
    reg_covar: float = 1e-3,
    sample_weights: Tensor | None = None,
    logdensity: Tensor | None = None,
    lloyd_iters: int = 15,
    shrinkage: float = 0.0,
    split_init: bool = False,
    component_size: str = "params",
) -> list[MixtureFit]:
    r"""Fit Gaussian mixtures with :math:`k = 1, \dots, K` components to every set of ``x``.

    Args:
        x: ``(B, n, d)`` samples (whitened ones in the networks; any floating dtype, float64
            recommended).
        max_components: :math:`K`; capped by :func:`max_components_for` with
            ``component_size`` (``"params"`` or ``"dims"``).
        num_iters: EM iterations at most; the loop stops early once the mean log-likelihood
            per sample changes by less than ``tol`` in every set.
        reg_covar: added to every covariance's diagonal (same units as ``x``).
        sample_weights: optional ``(B, n)`` non-negative weights (normalised here to mean 1).
        logdensity: optional ``(B, n)`` density ranking of the samples for the initialisation
            (default: a Scott-bandwidth KDE of the samples).
        shrinkage: ``a >= 0``; every M-step shrinks component ``c``'s covariance toward its mean
            variance times the identity with weight :math:`\lambda_c = a d / (n_c + a d)`
            (:math:`n_c` its effective sample count): a Ledoit–Wolf-style regulariser, like
            ``a d`` pseudo-samples of an isotropic prior. It matters where a component has few
            samples per parameter, which is where unregularised full covariances turn thin and
            their scores explode (``a = 0.2`` took our GMM's relative score MSE on random
            10-D mixtures at n = 256 from 711 % to 44 %, and at n = 1024 from 116 % to 17 %,
            at a cost of 0.3 points in 5-D: ``benchmarks/gmm_options.py``). It is
            rotation- and scale-equivariant, so equivariance is kept.
        split_init: for ``k >= 2`` also run EM from the ``k - 1`` fit with its widest component
            split in two along its principal axis, and keep whichever start reaches the higher
            likelihood (a deterministic second start, about twice the EM cost).

    Returns:
        ``K`` :class:`MixtureFit` s, the ``k``-th with ``k`` components.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, n, d), got {tuple(x.shape)}")
    b, n, d = x.shape
    if sample_weights is not None:
        if sample_weights.shape != (b, n) or bool((sample_weights < 0).any()):
            raise ValueError(f"sample_weights must be non-negative with shape {(b, n)}")
        sample_weights = sample_weights.to(x.dtype) / sample_weights.to(x.dtype).mean(-1, keepdim=True)
    big_k = max_components_for(n, d, max_components, component_size)
    if logdensity is None:
        logdensity = kde_logsumexp(x, x, scott_factor(n, d))  # B n: the KDE up to a constant
    centres = _greedy_centres(x, big_k, logdensity.to(x.dtype))  # B K
    rows = torch.arange(b, device=x.device).unsqueeze(-1)
    n_eff = n if sample_weights is None else float(n)
    fits = []
    em = dict(
        sample_weights=sample_weights, reg_covar=reg_covar, shrinkage=shrinkage, num_iters=num_iters, tol=tol
    )
    for k in range(1, big_k + 1):
        loc = x[rows, centres[:, :k]]  # B k d
        for _ in range(lloyd_iters):  # Lloyd steps: hard assignments to the nearest centre
            assign = torch.cdist(x, loc).argmin(-1)  # B n
            resp = torch.nn.functional.one_hot(assign, k).to(x.dtype)
            _, loc_new, _ = _m_step(x, resp, sample_weights, reg_covar, shrinkage)
            empty = resp.sum(1) < 0.5  # keep a centre that lost every point where it was
            loc = torch.where(empty.unsqueeze(-1), loc, loc_new)
        fit = _em(x, *_m_step(x, resp, sample_weights, reg_covar, shrinkage), **em)
        if split_init and k > 1:  # second start: split the widest component of the k - 1 fit
            other = _em(x, *_split_widest(fits[-1]), **em)
            better = (other[3] > fit[3]).view(-1, 1)
            fit = tuple(torch.where(better.view(-1, *[1] * (a.dim() - 1)), b, a) for a, b in zip(fit, other))
        log_weights, loc, scale_tril, loglik = fit
        num_params = (k - 1) + k * d + k * d * (d + 1) // 2
        bic = -2 * loglik + num_params * math.log(n_eff)
        fits.append(MixtureFit(loc, scale_tril, log_weights, loglik, bic))
    return fits


def _em(
    x: Tensor,
    log_weights: Tensor,
    loc: Tensor,
    scale_tril: Tensor,
    *,
    sample_weights: Tensor | None,
    reg_covar: float,
    shrinkage: float,
    num_iters: int,
    tol: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EM from the given parameters; returns them refined and the total log-likelihood ``(B,)``."""
    prev = None
    for _ in range(num_iters):
        logp, _ = _component_logpdf(x, loc, scale_tril)
        joint = logp + log_weights.unsqueeze(1)  # B n k
        logf = torch.logsumexp(joint, dim=-1)  # B n
        mean_ll = logf.mean(-1) if sample_weights is None else (logf * sample_weights).mean(-1)
        if prev is not None and bool(((mean_ll - prev).abs() < tol).all()):
            break
        prev = mean_ll
        log_weights, loc, scale_tril = _m_step(
            x, (joint - logf.unsqueeze(-1)).exp(), sample_weights, reg_covar, shrinkage
        )
    logp, _ = _component_logpdf(x, loc, scale_tril)
    logf = torch.logsumexp(logp + log_weights.unsqueeze(1), dim=-1)
    loglik = logf.sum(-1) if sample_weights is None else (logf * sample_weights).sum(-1)
    return log_weights, loc, scale_tril, loglik


def _split_widest(fit: MixtureFit) -> tuple[Tensor, Tensor, Tensor]:
    r"""Start a ``k + 1``-component fit from a ``k``-component one: the component with the largest
    :math:`w_c \operatorname{tr}\Sigma_c` becomes two, at :math:`\mu \pm 0.8\sqrt{\lambda}\,v` along
    its principal axis (eigenpair :math:`\lambda, v`), each with half its weight and the
    covariance :math:`\Sigma - 0.64 \lambda v v^	op` (the pair has the parent's mean and
    covariance). Rotation-equivariant: the pair does not depend on the sign of :math:`v`."""
    cov = fit.scale_tril @ fit.scale_tril.transpose(-1, -2)  # B k d d
    width = fit.log_weights + cov.diagonal(dim1=-2, dim2=-1).sum(-1).log()  # B k
    c = width.argmax(-1)  # B
    rows = torch.arange(cov.shape[0], device=cov.device)
    evals, evecs = torch.linalg.eigh(cov[rows, c])  # B d, B d d
    lam, v = evals[:, -1], evecs[..., -1]  # B, B d
    step = 0.8 * lam.sqrt().unsqueeze(-1) * v  # B d
    child_cov = cov[rows, c] - 0.64 * lam[:, None, None] * v.unsqueeze(-1) * v.unsqueeze(-2)
    child_tril = torch.linalg.cholesky(child_cov)
    loc = torch.cat([fit.loc, (fit.loc[rows, c] - step).unsqueeze(1)], 1)
    loc[rows, c] = fit.loc[rows, c] + step
    tril = torch.cat([fit.scale_tril, child_tril.unsqueeze(1)], 1)
    tril[rows, c] = child_tril
    log_w = torch.cat([fit.log_weights, (fit.log_weights[rows, c] - math.log(2)).unsqueeze(1)], 1)
    log_w[rows, c] = fit.log_weights[rows, c] - math.log(2)
    return log_w, loc, tril


def bic_mixture(fits: list[MixtureFit]) -> MixtureFit:
    r"""The BIC-weighted average of ``fits`` as one mixture (all components, model weights
    :math:`\propto e^{-\mathrm{BIC}_k/2}` folded into the component weights). Its ``bic`` and
    ``loglik`` are those of the BIC-selected fit."""
    bic = torch.stack([f.bic for f in fits], -1)  # B K
    log_model = torch.log_softmax(-0.5 * bic, dim=-1)  # B K
    best = bic.argmin(-1)
    rows = torch.arange(bic.shape[0], device=bic.device)
    return MixtureFit(
        torch.cat([f.loc for f in fits], 1),
        torch.cat([f.scale_tril for f in fits], 1),
        torch.cat([f.log_weights + log_model[:, i : i + 1] for i, f in enumerate(fits)], 1),
        torch.stack([f.loglik for f in fits], -1)[rows, best],
        bic[rows, best],
    )
