r"""Training tasks: random Gaussian mixtures with exact log-density and score (float64).

Algorithm 1 of DiScoFormer (arXiv:2511.05924): each set draws a mixture with
:math:`k \in [1, 10]` components, means :math:`\sim U[-3, 3]^d`, diagonal scales in
:math:`[0.2, 1]` then a Haar-random rotation. The context comes from that mixture; queries
come from it (fresh points), from the context itself, and from a second, independent
mixture (off-support points). Targets are the exact log-density and score of the *context*
mixture, expressed in the context's whitened coordinates.

Beyond the paper, :func:`sample_task` can draw heavy-tailed sets
(``marginal="student-t"`` or ``"laplace"``, :func:`random_product_mixtures`): mixtures of
rotated, scaled products of Student-t or Laplace marginals, so that a network also learns the
tails that Gaussian mixtures lack (issue 11: off-family sets).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyro_disco.estimators.whitening import fit_whitening
from pyro_disco.targets import GaussianMixture, ProductMixture

__all__ = [
    "random_rotation",
    "random_mixtures",
    "random_product_mixtures",
    "MixtureTask",
    "sample_task",
    "log_uniform_int",
]

HEAVY_TAIL_K_RANGE = (1, 5)  # components of a heavy-tailed training set
HEAVY_TAIL_DF = (3, 10)  # Student-t degrees of freedom, drawn uniformly among the integers


def random_rotation(
    batch: int, dim: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Haar-distributed orthogonal matrices ``(batch, d, d)`` (QR with the sign fix)."""
    g = torch.randn(batch, dim, dim, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _random_components(
    batch: int,
    dim: int,
    *,
    k_range: tuple[int, int],
    mean_range: float,
    scale_range: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weights ``(B, K)`` (zero past each set's k), means ``(B, K, d)``, rotations ``R``
    ``(B, K, d, d)`` and scales ``s`` ``(B, K, d)`` of random components (Algorithm 1's draws,
    in its order)."""
    k_lo, k_hi = k_range
    k_max = k_hi
    ks = torch.randint(k_lo, k_hi + 1, (batch,), generator=generator)
    active = torch.arange(k_max).unsqueeze(0) < ks.unsqueeze(1)  # B K
    raw = -torch.log(torch.rand(batch, k_max, generator=generator, dtype=torch.float64))  # Dirichlet(1)
    weights = torch.where(active, raw, torch.zeros_like(raw))
    means = (2 * torch.rand(batch, k_max, dim, generator=generator, dtype=torch.float64) - 1) * mean_range
    lo, hi = scale_range
    scales = lo + (hi - lo) * torch.rand(batch, k_max, dim, generator=generator, dtype=torch.float64)
    rot = random_rotation(batch * k_max, dim, generator=generator).view(batch, k_max, dim, dim)
    return weights, means, rot, scales


def random_mixtures(
    batch: int,
    dim: int,
    *,
    k_range: tuple[int, int] = (1, 10),
    mean_range: float = 3.0,
    scale_range: tuple[float, float] = (0.2, 1.0),
    generator: torch.Generator | None = None,
) -> GaussianMixture:
    """A batch of ``batch`` random mixtures in ``d`` dimensions (padded to ``k_max`` components
    with zero weight)."""
    weights, means, rot, scales = _random_components(
        batch, dim, k_range=k_range, mean_range=mean_range, scale_range=scale_range, generator=generator
    )
    cov = rot @ torch.diag_embed(scales**2) @ rot.transpose(-1, -2)
    return GaussianMixture(weights, means, 0.5 * (cov + cov.transpose(-1, -2)))


def random_product_mixtures(
    batch: int,
    dim: int,
    marginal: str,
    *,
    k_range: tuple[int, int] = HEAVY_TAIL_K_RANGE,
    df_range: tuple[int, int] = HEAVY_TAIL_DF,
    mean_range: float = 3.0,
    scale_range: tuple[float, float] = (0.2, 1.0),
    generator: torch.Generator | None = None,
) -> ProductMixture:
    """A batch of random mixtures of rotated, scaled products of ``marginal`` (see
    :class:`~pyro_disco.targets.ProductMixture`), drawn like :func:`random_mixtures`; each set's
    Student-t degrees of freedom are uniform on the integers of ``df_range``."""
    weights, means, rot, scales = _random_components(
        batch, dim, k_range=k_range, mean_range=mean_range, scale_range=scale_range, generator=generator
    )
    df = None
    if marginal == "student-t":
        df = torch.randint(df_range[0], df_range[1] + 1, (batch,), generator=generator).to(torch.float64)
    return ProductMixture(weights, means, rot * scales.unsqueeze(-2), marginal, df=df)


def log_uniform_int(lo: int, hi: int, *, generator: torch.Generator | None = None) -> int:
    """An integer log-uniform in ``[lo, hi]``."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))


class MixtureTask(NamedTuple):
    """One training batch, all in whitened coordinates (float64).

    ``context`` ``(B, n, d)``; ``context_logdensity`` ``(B, n)``, ``context_score`` ``(B, n, d)``:
    exact targets at the samples; ``queries`` ``(B, m, d)`` with targets ``query_logdensity``
    ``(B, m)``, ``query_score`` ``(B, m, d)``; ``off_support`` ``(B, m)`` bool marks queries
    drawn from the second mixture; ``whitening`` ``(B, d, d)`` is each set's whitening matrix A
    (original-space scores are ``s_w @ A.T``)."""

    context: Tensor
    context_logdensity: Tensor
    context_score: Tensor
    queries: Tensor
    query_logdensity: Tensor
    query_score: Tensor
    off_support: Tensor
    whitening: Tensor


def sample_task(
    batch: int,
    dim: int,
    num_samples: int,
    num_queries: int,
    *,
    off_support_fraction: float = 0.25,
    marginal: str = "gaussian",
    generator: torch.Generator | None = None,
    **mixture_kwargs: Any,
) -> MixtureTask:
    """Draw ``batch`` mixtures, ``num_samples`` context points each, and ``num_queries`` queries
    (a fraction ``off_support_fraction`` from an independent mixture, the rest fresh from the
    context's own mixture). ``marginal="student-t"`` or ``"laplace"`` draws heavy-tailed
    mixtures (:func:`random_product_mixtures`) for the context and the off-support queries."""
    if marginal == "gaussian":
        mix = random_mixtures(batch, dim, generator=generator, **mixture_kwargs)
        other = random_mixtures(batch, dim, generator=generator, **mixture_kwargs)
    else:
        mix = random_product_mixtures(batch, dim, marginal, generator=generator, **mixture_kwargs)
        other = random_product_mixtures(batch, dim, marginal, generator=generator, **mixture_kwargs)
    x = mix.sample(num_samples, generator=generator)  # B n d
    m_off = int(round(off_support_fraction * num_queries))
    y = torch.cat(
        [mix.sample(num_queries - m_off, generator=generator), other.sample(m_off, generator=generator)],
        dim=1,
    )  # B m d
    off = torch.zeros(batch, num_queries, dtype=torch.bool)
    off[:, num_queries - m_off :] = True
    w = fit_whitening(x)
    lx, sx = mix.logdensity_and_score(x)
    ly, sy = mix.logdensity_and_score(y)
    shift = w.logabsdet.unsqueeze(-1)
    return MixtureTask(
        w.apply(x),
        lx - shift,
        w.score_forward(sx),
        w.apply(y),
        ly - shift,
        w.score_forward(sy),
        off,
        w.matrix,
    )
