r"""Exact solutions to validate the particle solvers against.

- :class:`GaussianMixtureSolution`: linear-drift Fokker–Planck (OU, heat) from a Gaussian-mixture
  start stays a Gaussian mixture, so density and score are exact at all times.
- :class:`BKW`: the Bobylev–Krook–Wu solution of Maxwell-molecule Landau (d >= 2).
- :class:`MaxwellRelaxation`: the covariance law of Maxwell-molecule Landau for any start.

References:
    Bobylev (1975); Krook & Wu (1977) (BKW). Carrillo, Hu, Wang, Wu, arXiv:1910.03080
    (the standard 2-D and 3-D BKW instances). Villani (1998) (Maxwell-molecule moments).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_disco.pde.diagnostics import covariance as particle_covariance
from pyro_disco.pde.problems import FokkerPlanck, Landau
from pyro_disco.targets import GaussianMixture

__all__ = ["GaussianMixtureSolution", "mixture_moments", "BKW", "MaxwellRelaxation"]


class GaussianMixtureSolution:
    r"""Exact solution of a linear-drift Fokker–Planck equation from a Gaussian-mixture start.

    Each component moves on its own (the equation is linear in :math:`\rho`); for
    :math:`b(x) = -a x`:

    .. math:: \mu_k(t) = \mu_k e^{-at}, \qquad
              \Sigma_k(t) = \Sigma_k e^{-2at} + \tfrac{D}{a}(1 - e^{-2at}) I
              \quad (\Sigma_k + 2Dt\, I \text{ when } a = 0).

    Args:
        problem: a :class:`FokkerPlanck` with ``rate`` set.
        initial: the unbatched :class:`~pyro_disco.targets.GaussianMixture` at ``t = 0``.

    Example:
        >>> gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None] * 4)
        >>> sol = GaussianMixtureSolution(FokkerPlanck.ornstein_uhlenbeck(), gm)
        >>> sol.covariance(50.0)
        tensor([[1., 0.],
                [0., 1.]])
    """

    def __init__(self, problem: FokkerPlanck, initial: GaussianMixture) -> None:
        if not isinstance(problem, FokkerPlanck) or problem.rate is None:
            raise ValueError("an exact solution needs a linear-drift FokkerPlanck (rate set): OU or heat")
        if not isinstance(initial, GaussianMixture) or initial.means.dim() != 2:
            raise TypeError("initial must be an unbatched GaussianMixture (means of shape (k, d))")
        self.problem, self.initial, self.dim = problem, initial, initial.dim

    def at(self, t: float) -> GaussianMixture:
        """The exact density at time ``t``, as a :class:`GaussianMixture`."""
        a, D, g = self.problem.rate, self.problem.diffusion, self.initial
        eye = torch.eye(self.dim, dtype=g.dtype, device=g.means.device)
        if a == 0:
            return GaussianMixture(g.weights, g.means, g.covariances + 2 * D * t * eye)
        decay = math.exp(-a * t)
        added = (D / a) * (1 - decay**2)
        return GaussianMixture(g.weights, g.means * decay, g.covariances * decay**2 + added * eye)

    def logdensity(self, x: Tensor, t: float) -> Tensor:
        return self.at(t).logdensity(x)

    def score(self, x: Tensor, t: float) -> Tensor:
        return self.at(t).score(x)

    def mean(self, t: float) -> Tensor:
        return mixture_moments(self.at(t))[0]

    def covariance(self, t: float) -> Tensor:
        return mixture_moments(self.at(t))[1]

    def fourth_moment(self, t: float) -> Tensor:
        r""":math:`E|x|^4`."""
        return mixture_moments(self.at(t))[2]

    def sample(self, num_samples: int, t: float = 0.0, *, generator: torch.Generator | None = None) -> Tensor:
        return self.at(t).sample(num_samples, generator=generator)

    def sample_initial(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self.initial.sample(num_samples, generator=generator)


def mixture_moments(gm: GaussianMixture) -> tuple[Tensor, Tensor, Tensor]:
    r"""Mean, covariance and :math:`E|x|^4` of an unbatched Gaussian mixture.

    For one component :math:`E|x|^4 = (\mathrm{tr}\Sigma + |\mu|^2)^2 + 2\,\mathrm{tr}\Sigma^2
    + 4\mu^\top\Sigma\mu`.
    """
    w, mu, cov = gm.weights, gm.means, gm.covariances  # k, k d, k d d
    mean = w @ mu
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    tr = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    m2 = (mu**2).sum(-1)
    quad = torch.einsum("ki,kij,kj->k", mu, cov, mu)
    fourth = (w * ((tr + m2) ** 2 + 2 * (cov * cov).sum((-2, -1)) + 4 * quad)).sum()
    return mean, second - mean[:, None] * mean[None, :], fourth


class BKW:
    r"""The Bobylev–Krook–Wu exact solution of Maxwell-molecule Landau (:math:`\gamma = 0`, d ≥ 2).

    .. math:: f(v, t) = (2\pi K)^{-d/2} e^{-|v|^2/(2K)}\,(P + Q|v|^2), \quad
              K = 1 - C e^{-2B(d-1)(t + t_0)},\ P = \tfrac{(d+2)K - d}{2K},\ Q = \tfrac{1-K}{2K^2}

    valid while :math:`K \ge d/(d+2)`. Mean 0, covariance :math:`I`, :math:`E|v|^4 = d(d+2)K(2-K)`.
    The density is a two-part radial mixture (weight ``P`` of :math:`N(0, KI)` and weight
    :math:`dKQ` of the law with :math:`|v|^2/K \sim \chi^2_{d+2}`), which gives an exact sampler.
    For an isotropic density of unit covariance the mean-field Landau velocity reduces to
    :math:`U(v) = -(d-1)B\,(v + s(v))` (:meth:`velocity`).

    Args:
        problem: a Maxwell :class:`Landau` (``gamma = 0``).
        dim: ``d >= 2``.
        C: the constant in ``K``; 0 < C.
        t0: time shift: solver time ``t`` is BKW time ``t + t0``.

    Example:
        >>> bkw = BKW.standard_2d()
        >>> round(float(bkw.fourth_moment(0.0)), 6)  # d(d+2) K (2 - K) at K = 1/2
        6.0
    """

    def __init__(self, problem: Landau, dim: int, C: float, t0: float = 0.0) -> None:
        if not isinstance(problem, Landau) or problem.gamma != 0:
            raise ValueError("BKW solves Maxwell-molecule Landau: pass Landau.maxwell(B)")
        if int(dim) < 2 or not C > 0:
            raise ValueError(f"BKW needs d >= 2 and C > 0, got d={dim}, C={C}")
        self.problem, self.dim, self.C, self.t0 = problem, int(dim), float(C), float(t0)
        self.K(0.0)  # raises if the initial time is outside the range of validity

    @classmethod
    def standard_2d(cls) -> BKW:
        """d = 2, B = 1/16, C = 1/2 (Carrillo et al., arXiv:1910.03080)."""
        return cls(Landau.maxwell(1.0 / 16), 2, 0.5)

    @classmethod
    def standard_3d(cls) -> BKW:
        """d = 3, B = 1/24, C = 1, t0 = 5.5 (Carrillo et al., arXiv:1910.03080)."""
        return cls(Landau.maxwell(1.0 / 24), 3, 1.0, 5.5)

    def K(self, t: float) -> float:
        d = self.dim
        K = 1.0 - self.C * math.exp(-2 * self.problem.B * (d - 1) * (float(t) + self.t0))
        if K < d / (d + 2) - 1e-12:
            raise ValueError(f"BKW needs K >= d/(d+2) = {d / (d + 2):.4f}, got K={K:.4f} at t={t}")
        return K

    def _pq(self, t: float) -> tuple[float, float, float]:
        K, d = self.K(t), self.dim
        return K, max(((d + 2) * K - d) / (2 * K), 0.0), (1 - K) / (2 * K**2)

    def logdensity(self, x: Tensor, t: float) -> Tensor:
        K, P, Q = self._pq(t)
        r2 = (x * x).sum(-1)
        return -0.5 * self.dim * math.log(2 * math.pi * K) - r2 / (2 * K) + torch.log(P + Q * r2)

    def score(self, x: Tensor, t: float) -> Tensor:
        K, P, Q = self._pq(t)
        r2 = (x * x).sum(-1, keepdim=True)
        return x * (-1.0 / K + 2 * Q / (P + Q * r2))

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """The exact mean-field velocity :math:`-(d-1)B(v + s(v))` (isotropic, unit covariance)."""
        return -(self.dim - 1) * self.problem.B * (x + self.score(x, t))

    def at(self, t: float) -> _Frozen:
        """The density at time ``t``: an estimator-protocol object (``logdensity``, ``score``, ``sample``)."""
        return _Frozen(self, float(t))

    def mean(self, t: float, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.zeros(self.dim, dtype=dtype)

    def covariance(self, t: float, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.eye(self.dim, dtype=dtype)

    def fourth_moment(self, t: float, dtype: torch.dtype = torch.float64) -> Tensor:
        r""":math:`E|v|^4 = d(d+2)K(2-K)`."""
        K, d = self.K(t), self.dim
        return torch.tensor(d * (d + 2) * K * (2 - K), dtype=dtype)

    def radial_moment(self, k: int, t: float) -> float:
        r""":math:`E|v|^{2k} = P K^k \prod_{j<k}(d+2j) + Q K^{k+1} \prod_{j\le k}(d+2j)` (for error bars)."""
        K, P, Q = self._pq(t)
        prod = math.prod(self.dim + 2 * j for j in range(k))
        return P * K**k * prod + Q * K ** (k + 1) * prod * (self.dim + 2 * k)

    def sample(
        self,
        num_samples: int,
        t: float = 0.0,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """Exact draws ``(num_samples, d)`` from the radial-mixture structure."""
        K, P, _ = self._pq(t)
        d = self.dim
        z = torch.randn(num_samples, d + 2, generator=generator, dtype=dtype)
        gauss = z[:, :d]
        radius = z.norm(dim=-1, keepdim=True)  # chi_{d+2}
        direction = gauss / gauss.norm(dim=-1, keepdim=True)
        heavy = torch.rand(num_samples, 1, generator=generator, dtype=dtype) >= P
        return math.sqrt(K) * torch.where(heavy, radius * direction, gauss)

    def sample_initial(
        self,
        num_samples: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        return self.sample(num_samples, 0.0, generator=generator, dtype=dtype)


class _Frozen:
    """An exact solution frozen at time ``t``: ``dim``, ``logdensity(x)``, ``score(x)``, ``sample``."""

    def __init__(self, solution: BKW, t: float) -> None:
        self.solution, self.t, self.dim = solution, t, solution.dim

    def logdensity(self, x: Tensor) -> Tensor:
        return self.solution.logdensity(x, self.t)

    def score(self, x: Tensor) -> Tensor:
        return self.solution.score(x, self.t)

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self.solution.sample(num_samples, self.t, generator=generator)


class MaxwellRelaxation:
    r"""The exact covariance law of Maxwell-molecule Landau, for any start.

    .. math:: \Sigma(t) = \Sigma_\infty - (\Sigma_\infty - \Sigma_0)\,e^{-4dBt},
              \qquad \Sigma_\infty = \tfrac{\mathrm{tr}\,\Sigma_0}{d} I

    (the mean is conserved). Only the moments are exact: there is no exact score. The
    Gaussian :math:`N(m_0, \Sigma_0)` is offered as an initial condition.

    Args:
        problem: a Maxwell :class:`Landau`.
        covariance: :math:`\Sigma_0`, ``(d, d)``.
        mean: :math:`m_0`, ``(d,)`` (default 0).

    Example:
        >>> law = MaxwellRelaxation(Landau.maxwell(0.25), torch.diag(torch.tensor([2.0, 0.0])))
        >>> law.covariance(100.0)
        tensor([[1., 0.],
                [0., 1.]])
    """

    def __init__(self, problem: Landau, covariance: Tensor, mean: Tensor | None = None) -> None:
        if not isinstance(problem, Landau) or problem.gamma != 0:
            raise ValueError("the covariance law holds for Maxwell molecules: pass Landau.maxwell(B)")
        cov = torch.as_tensor(covariance)
        if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"covariance must be (d, d), got {tuple(cov.shape)}")
        self.problem, self.dim, self.initial_covariance = problem, cov.shape[0], cov
        self.initial_mean = torch.zeros(self.dim, dtype=cov.dtype) if mean is None else torch.as_tensor(mean)

    @classmethod
    def from_particles(cls, problem: Landau, particles: Tensor) -> MaxwellRelaxation:
        """The law started from the particles' own (1/n) covariance and mean."""
        return cls(problem, particle_covariance(particles), particles.mean(0))

    def mean(self, t: float) -> Tensor:
        return self.initial_mean

    def covariance(self, t: float) -> Tensor:
        s0 = self.initial_covariance
        s_inf = torch.eye(self.dim, dtype=s0.dtype) * (s0.diagonal().sum() / self.dim)
        return s_inf - (s_inf - s0) * math.exp(-4 * self.dim * self.problem.B * float(t))

    def sample_initial(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draws of :math:`N(m_0, \\Sigma_0)`, ``(num_samples, d)``."""
        chol = torch.linalg.cholesky(self.initial_covariance)
        eps = torch.randn(num_samples, self.dim, generator=generator, dtype=chol.dtype)
        return self.initial_mean + eps @ chol.T
