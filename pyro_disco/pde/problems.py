r"""Fokker–Planck and homogeneous Landau problems, their particle velocities and exact solutions.

Both equations are transport equations :math:`\partial_t \rho + \nabla\cdot(\rho\, u[\rho]) = 0`
whose velocity contains the score :math:`s = \nabla \log \rho_t` of the density itself, so a
particle method only needs the score *at the particles*:

- Fokker–Planck :math:`\partial_t\rho = -\nabla\cdot(b\rho) + D\Delta\rho`:
  :math:`u(x) = b(x) - D\, s(x)` (the probability-flow ODE).
- Landau, :math:`A(z) = B|z|^\gamma(|z|^2 I - z z^\top)`:
  :math:`u(v_p) = -\frac1n \sum_q A(v_p - v_q)\,(s(v_p) - s(v_q))`.

References:
    Carrillo, Hu, Wang, Wu, *A particle method for the homogeneous Landau equation*,
    arXiv:1910.03080 (the blob score). Exact solutions: :mod:`pyro_disco.pde.exact`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FokkerPlanck", "Landau", "landau_velocity"]

_BLOCK_ELEMENTS = 1 << 21  # block * n * d doubles per temporary: 16 MB


# --------------------------------------------------------------------------- Fokker–Planck


@dataclass(frozen=True)
class FokkerPlanck:
    r"""Fokker–Planck :math:`\partial_t\rho = -\nabla\cdot(b\rho) + D\Delta\rho`.

    Args:
        drift_fn: ``b(x)``, ``(n, d) -> (n, d)``.
        diffusion: the constant :math:`D > 0`.
        rate: set when ``b(x) = -rate * x`` (OU, heat): enables the exact Gaussian-mixture solution.

    Example:
        >>> fp = FokkerPlanck.ornstein_uhlenbeck()
        >>> fp.velocity(torch.ones(2, 1), torch.zeros(2, 1), 0.0)
        tensor([[-1.],
                [-1.]])
    """

    drift_fn: Callable[[Tensor], Tensor]
    diffusion: float = 1.0
    rate: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.drift_fn):
            raise TypeError("drift_fn must be callable: b(x) with x of shape (n, d)")
        if not float(self.diffusion) > 0:
            raise ValueError(f"diffusion must be positive, got {self.diffusion}")

    @classmethod
    def ornstein_uhlenbeck(cls, rate: float = 1.0, diffusion: float = 1.0) -> FokkerPlanck:
        r"""OU: :math:`dX = -a X\,dt + \sqrt{2D}\,dW` (``rate`` a > 0)."""
        if not rate > 0:
            raise ValueError(f"the OU rate must be positive (use FokkerPlanck.heat for 0), got {rate}")
        return cls(lambda x: -rate * x, float(diffusion), float(rate))

    @classmethod
    def heat(cls, diffusion: float = 1.0) -> FokkerPlanck:
        r"""Heat equation :math:`\partial_t\rho = D\Delta\rho` (zero drift)."""
        return cls(torch.zeros_like, float(diffusion), 0.0)

    def velocity(self, particles: Tensor, score_values: Tensor, t: float = 0.0) -> Tensor:
        """``b(x) - D s(x)``; ``particles`` and ``score_values`` are ``(n, d)``."""
        return self.drift_fn(particles) - self.diffusion * score_values


# --------------------------------------------------------------------------- Landau


@dataclass(frozen=True)
class Landau:
    r"""Homogeneous Landau equation with kernel :math:`A(z) = B|z|^\gamma(|z|^2 I - z z^\top)`.

    Conserves mass, momentum and energy for *any* score used in the particle velocity.

    Args:
        gamma: collision exponent, 0 (Maxwell molecules) or -3 (Coulomb), any value in [-3, 1].
        B: collision constant.
        epsilon: optional regularisation :math:`|z|^\gamma \to (|z|^2 + \epsilon^2)^{\gamma/2}`
            for soft potentials; 0 means none (the self term q = p is zero anyway).
    """

    gamma: float = 0.0
    B: float = 1.0 / 16
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not -3.0 <= float(self.gamma) <= 1.0:
            raise ValueError(f"gamma must lie in [-3, 1] (0 Maxwell, -3 Coulomb), got {self.gamma}")
        if not float(self.B) > 0 or float(self.epsilon) < 0:
            raise ValueError(f"need B > 0 and epsilon >= 0, got B={self.B}, epsilon={self.epsilon}")

    @classmethod
    def maxwell(cls, B: float = 1.0 / 16) -> Landau:
        return cls(0.0, float(B))

    @classmethod
    def coulomb(cls, B: float = 1.0 / (4 * math.pi), epsilon: float = 0.0) -> Landau:
        return cls(-3.0, float(B), float(epsilon))

    def velocity(
        self,
        particles: Tensor,
        score_values: Tensor,
        t: float = 0.0,
        *,
        block_size: int | None = None,
        algorithm: str = "auto",
    ) -> Tensor:
        """The particle velocity, see :func:`landau_velocity`."""
        return landau_velocity(
            particles,
            score_values,
            gamma=self.gamma,
            B=self.B,
            epsilon=self.epsilon,
            block_size=block_size,
            algorithm=algorithm,
        )


def landau_velocity(
    particles: Tensor,
    score_values: Tensor,
    *,
    gamma: float = 0.0,
    B: float = 1.0,
    epsilon: float = 0.0,
    block_size: int | None = None,
    algorithm: str = "auto",
) -> Tensor:
    r"""Landau particle velocity, computed in blocks of ``block_size`` particles.

    .. math:: u_p = -\frac{B}{n}\sum_q |z|^\gamma\big(|z|^2 \Delta s - (z\cdot\Delta s)\, z\big),
              \quad z = v_p - v_q,\ \Delta s = s_p - s_q

    ``algorithm="pairwise"``: memory ``O(block_size · n · d)``, time ``O(n² d)``; pairs with
    ``z = 0`` contribute nothing (for ``q = p``, :math:`\Delta s = 0`): their weight is set to 0,
    never ``inf``. ``"moments"`` (Maxwell only, :math:`\gamma = 0`): the kernel is a quadratic
    polynomial in ``z``, so the sum over ``q`` reduces to a few moments of ``(v, s)``: time
    ``O(n d^2)``. ``"auto"`` picks ``"moments"`` when :math:`\gamma = 0`.

    Args:
        particles: ``(n, d)`` velocities ``v``.
        score_values: ``(n, d)`` the score at the particles.
        algorithm: ``"auto"``, ``"pairwise"`` or ``"moments"``.

    Returns:
        ``(n, d)``. Sums to zero over particles, and :math:`\sum_p v_p\cdot u_p = 0`, for any score.

    Example:
        >>> v = torch.randn(5, 3, dtype=torch.float64)
        >>> landau_velocity(v, -v).abs().max() < 1e-12  # Maxwellian: equilibrium
        tensor(True)
    """
    if particles.dim() != 2 or score_values.shape != particles.shape:
        raise ValueError(
            f"particles and score_values must both be (n, d), got {tuple(particles.shape)} "
            f"and {tuple(score_values.shape)}"
        )
    v, s = particles, score_values.to(particles.dtype)
    n, d = v.shape
    if algorithm not in ("auto", "pairwise", "moments"):
        raise ValueError(f"algorithm must be 'auto', 'pairwise' or 'moments', got {algorithm!r}")
    if algorithm == "moments" and gamma != 0:
        raise ValueError("the moment algorithm is exact only for Maxwell molecules (gamma = 0)")
    if gamma == 0 and algorithm != "pairwise":
        return _maxwell_velocity_by_moments(v, s, B)
    b = block_size or max(1, _BLOCK_ELEMENTS // (n * d))
    if b < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    out = torch.empty_like(v)
    for start in range(0, n, b):
        z = v[start : start + b, None, :] - v[None]  # b n d
        ds = s[start : start + b, None, :] - s[None]  # b n d
        r2 = (z * z).sum(-1)  # b n
        zds = (z * ds).sum(-1)  # b n
        if gamma != 0:
            if epsilon > 0:
                w = (r2 + epsilon**2) ** (0.5 * gamma)
            else:  # guard z = 0: zero weight instead of inf * 0 = nan
                w = torch.where(
                    r2 > 0, r2.clamp_min(torch.finfo(v.dtype).tiny) ** (0.5 * gamma), torch.zeros_like(r2)
                )
            r2, zds = w * r2, w * zds
        out[start : start + b] = -(B / n) * (r2[..., None] * ds - zds[..., None] * z).sum(1)
    return out


def _maxwell_velocity_by_moments(v: Tensor, s: Tensor, B: float) -> Tensor:
    """The gamma = 0 velocity from moments of (v, s): expand |a-b|^2 (σ-τ) - ((a-b)·(σ-τ))(a-b)
    over b = v_q, τ = s_q, with a = v_p, σ = s_p. The velocity depends on differences only, so
    both are centred first: the expansion in raw moments cancels catastrophically at an offset."""
    n = v.shape[0]
    v, s = v - v.mean(0), s - s.mean(0)
    sum_v, sum_s = v.sum(0), s.sum(0)  # d
    v2 = (v * v).sum(-1)  # n
    vs = (v * s).sum(-1)  # n
    sum_v2, sum_vs = v2.sum(), vs.sum()
    m_sv = s.T @ v  # d d: sum_q s_q v_q^T
    m_vv = v.T @ v  # d d
    sum_v2s = v2 @ s  # d: sum_q |v_q|^2 s_q
    sum_vsv = vs @ v  # d: sum_q (v_q . s_q) v_q
    # sum_q |z|^2 Δs
    r2_sum = n * v2 - 2 * v @ sum_v + sum_v2  # n
    first = s * r2_sum[:, None] - (v2[:, None] * sum_s - 2 * v @ m_sv.T + sum_v2s)
    # sum_q (z . Δs) z = a sum_q c - sum_q c b
    c_sum = n * vs - v @ sum_s - s @ sum_v + sum_vs  # n
    cb_sum = vs[:, None] * sum_v - v @ m_sv - s @ m_vv + sum_vsv  # n d
    second = v * c_sum[:, None] - cb_sum
    return -(B / n) * (first - second)
