r"""Diagnostics of a particle run: moments, conserved quantities, entropy, errors against exact.

Moments use the particle (``1/n``) normalisation, the one under which the Landau particle
system conserves momentum and energy exactly. The entropy :math:`H = -E\log\rho` is estimated
by the estimator's log-density at the particles; its rate along the flow is
:math:`\dot H = -E[u\cdot s]` (for the probability flow :math:`\partial_t\rho + \nabla\cdot(\rho u) = 0`),
the entropy production of Landau and :math:`D\,J(\rho)` for the heat equation.

Example:
    >>> x = torch.randn(1000, 2, dtype=torch.float64)
    >>> covariance(x).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from pyro_disco.metrics import relative_error, relative_score_error


class ExactSolution(Protocol):
    """What :func:`record` reads of an exact solution (``BKW``, ``GaussianMixtureSolution``,
    ``MaxwellRelaxation``); ``fourth_moment(t)`` and ``score(x, t)`` are used when present."""

    def mean(self, t: float) -> Tensor: ...

    def covariance(self, t: float) -> Tensor: ...


__all__ = [
    "mean",
    "covariance",
    "kinetic_energy",
    "fourth_moment",
    "relative_error",
    "relative_score_error",
    "entropy_rate",
    "density_l2_error",
    "convergence_order",
    "record",
]


def mean(x: Tensor) -> Tensor:
    """``(d,)`` particle mean."""
    return x.mean(0)


def covariance(x: Tensor) -> Tensor:
    """``(d, d)`` particle covariance, normalised by ``n``."""
    xc = x - x.mean(0)
    return xc.T @ xc / x.shape[0]


def kinetic_energy(x: Tensor) -> Tensor:
    r""":math:`\frac1{2n}\sum_p |x_p|^2`."""
    return 0.5 * (x * x).sum(-1).mean()


def fourth_moment(x: Tensor) -> Tensor:
    r""":math:`\frac1n\sum_p |x_p|^4`."""
    return ((x * x).sum(-1) ** 2).mean()


def entropy_rate(velocity: Tensor, score_values: Tensor) -> Tensor:
    r"""Estimated :math:`dH/dt = -E[u\cdot s]` at the particles."""
    return -(velocity * score_values).sum(-1).mean()


def density_l2_error(
    density_fn: Callable[[Tensor], Tensor],
    exact_density_fn: Callable[[Tensor], Tensor],
    center: Tensor,
    scale: Tensor,
    *,
    points_per_axis: int | None = None,
    width: float = 5.0,
) -> Tensor:
    r"""Relative :math:`L^2` density error on a grid, for ``d <= 3``.

    .. math:: \|\hat\rho - \rho\|_{L^2} / \|\rho\|_{L^2}, \quad \text{on the box }
              \text{center} \pm \text{width}\cdot\text{scale} \text{ (midpoint rule)}

    Args:
        density_fn, exact_density_fn: ``(m, d) -> (m,)`` densities (not log).
        center, scale: ``(d,)`` box centre and per-axis scale (e.g. mean and standard deviation).
        points_per_axis: default 400 / 80 / 30 for d = 1 / 2 / 3.
    """
    center, scale = torch.as_tensor(center), torch.as_tensor(scale, dtype=center.dtype)
    d = center.numel()
    if d > 3:
        raise ValueError(f"the grid L2 error is for d <= 3, got d={d}")
    m = points_per_axis or {1: 400, 2: 80, 3: 30}[d]
    edges = [torch.linspace(-width, width, m + 1, dtype=center.dtype) for _ in range(d)]
    mids = [0.5 * (e[1:] + e[:-1]) for e in edges]
    grid = torch.stack(torch.meshgrid(*mids, indexing="ij"), -1).reshape(-1, d) * scale + center  # m^d d
    cell = float(torch.prod(scale)) * (2 * width / m) ** d
    est, ref = density_fn(grid), exact_density_fn(grid)
    return torch.sqrt(((est - ref) ** 2).sum() * cell) / torch.sqrt((ref**2).sum() * cell)


def convergence_order(error_h: float, error_half_h: float) -> float:
    """Observed order :math:`\\log_2(e_h / e_{h/2})` from errors at step sizes ``h`` and ``h/2``."""
    return math.log2(float(error_h) / float(error_half_h))


def record(
    x: Tensor,
    x0: Tensor,
    velocity: Tensor,
    score_values: Tensor,
    t: float,
    *,
    logdensity_fn: Callable[[Tensor], Tensor] | None = None,
    exact: ExactSolution | None = None,
) -> dict[str, Tensor]:
    """All diagnostics at one recorded time (``solve`` stacks them over time).

    Keys: ``mean`` (d,), ``covariance`` (d, d), ``kinetic_energy``, ``fourth_moment``,
    ``momentum_drift`` (norm of the mean's change since t0), ``energy_drift`` (relative change
    of the kinetic energy), ``momentum_rate`` / ``energy_rate`` (:math:`|E u|` and :math:`E[x\\cdot u]`,
    the continuous-time rates, zero for Landau with any score), ``entropy_rate``; with a
    log-density: ``entropy``; with an exact solution: ``covariance_error``,
    ``fourth_moment_error``, ``mean_error`` and, where it has a score, ``score_error``.
    """
    ke, ke0 = kinetic_energy(x), kinetic_energy(x0)
    out = {
        "mean": mean(x),
        "covariance": covariance(x),
        "kinetic_energy": ke,
        "fourth_moment": fourth_moment(x),
        "momentum_drift": torch.linalg.norm(mean(x) - mean(x0)),
        "energy_drift": (ke - ke0).abs() / ke0,
        "momentum_rate": torch.linalg.norm(velocity.mean(0)),
        "energy_rate": (x * velocity).sum(-1).mean(),
        "entropy_rate": entropy_rate(velocity, score_values),
    }
    if logdensity_fn is not None:
        out["entropy"] = -logdensity_fn(x).mean().to(x.dtype)
    if exact is not None:
        out["covariance_error"] = relative_error(out["covariance"], exact.covariance(t).to(x.dtype))
        out["mean_error"] = torch.linalg.norm(out["mean"] - exact.mean(t).to(x.dtype))
        if hasattr(exact, "fourth_moment"):
            m4 = exact.fourth_moment(t).to(x.dtype)
            out["fourth_moment_error"] = relative_error(out["fourth_moment"], m4)
        if hasattr(exact, "score"):
            out["score_error"] = relative_score_error(score_values, exact.score(x, t))
    return out
