"""Distributions with exact log-densities and scores: test references and training tasks.

They satisfy the estimator protocol (``dim``, ``logdensity``, ``score``), so anything that
accepts an estimator accepts the exact answer too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_disco._stats import logdensity_and_autograd_score

__all__ = ["GaussianMixture", "ProductMixture", "ExactDistribution"]


class GaussianMixture:
    r"""A (batch of) Gaussian mixture(s) with exact log-density and score, in any dtype.

    .. math:: p(x) = \sum_k w_k\, \mathcal N(x; \mu_k, \Sigma_k), \qquad
              \nabla \log p(x) = -\sum_k r_k(x)\, \Sigma_k^{-1}(x - \mu_k)

    Args:
        weights: ``(*B, k)`` non-negative mixture weights (normalised here).
        means: ``(*B, k, d)``.
        covariances: ``(*B, k, d, d)`` symmetric positive definite.

    Query points are ``(*B, m, d)`` (or ``(m, d)`` when there is no batch); results are
    ``(*B, m)`` and ``(*B, m, d)``.

    Example:
        >>> gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0], [2.0]]),
        ...                      torch.ones(2, 1, 1))
        >>> gm.score(torch.tensor([[1.0]]))  # pulled towards the component at +2
        tensor([[0.9281]])
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        if means.dim() < 2 or covariances.shape[-2:] != (means.shape[-1],) * 2:
            raise ValueError("means must be (*B, k, d) and covariances (*B, k, d, d)")
        self.weights = weights / weights.sum(-1, keepdim=True)
        self.means = means
        self.covariances = covariances
        self.dim = means.shape[-1]
        self.dtype = means.dtype
        self._chol = torch.linalg.cholesky(covariances)  # *B k d d
        self._prec = torch.cholesky_inverse(self._chol)  # *B k d d
        half_logdet = self._chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # *B k
        self._log_norm = self.weights.log() - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        diff = x.unsqueeze(-2) - self.means.unsqueeze(-3)  # *B m k d
        pdiff = torch.einsum("...kij,...mkj->...mki", self._prec, diff)  # *B m k d
        logc = self._log_norm.unsqueeze(-2) - 0.5 * (diff * pdiff).sum(-1)  # *B m k
        return logc, pdiff

    def logdensity(self, x: Tensor) -> Tensor:
        logc, _ = self._parts(x)
        return torch.logsumexp(logc, dim=-1)

    def score(self, x: Tensor) -> Tensor:
        return self.logdensity_and_score(x)[1]

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logc, pdiff = self._parts(x)
        logp = torch.logsumexp(logc, dim=-1)
        resp = (logc - logp.unsqueeze(-1)).exp()  # *B m k
        return logp, -(resp.unsqueeze(-1) * pdiff).sum(-2)

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``(*B, num_samples, d)`` points."""
        batch = self.weights.shape[:-1]
        if num_samples == 0:
            return self.means.new_zeros(*batch, 0, self.dim)
        flat_w = self.weights.reshape(-1, self.weights.shape[-1])
        comp = torch.multinomial(flat_w, num_samples, replacement=True, generator=generator)
        comp = comp.reshape(*batch, num_samples)  # *B n
        eps = torch.randn(
            *batch, num_samples, self.dim, generator=generator, dtype=self.dtype, device=self.means.device
        )
        idx = comp.unsqueeze(-1)
        mu = torch.gather(self.means, -2, idx.expand(*batch, num_samples, self.dim))
        chol = torch.gather(self._chol, -3, idx.unsqueeze(-1).expand(*batch, num_samples, self.dim, self.dim))
        return mu + (chol @ eps.unsqueeze(-1)).squeeze(-1)


MARGINALS = ("gaussian", "student-t", "laplace")


class ProductMixture:
    r"""A (batch of) mixture(s) of affine images of i.i.d. products: heavy-tailed mixtures with
    exact log-density and score.

    Component :math:`k` is :math:`x = \mu_k + L_k z` with :math:`z_j` i.i.d. from a standard
    marginal :math:`f` (Gaussian, Student-t with ``df`` degrees of freedom, or Laplace), so

    .. math:: p(x) = \sum_k w_k\, |\det L_k|^{-1} \prod_j f\big(z_{kj}\big),\quad
              z_k = L_k^{-1}(x - \mu_k),\qquad
              \nabla\log p(x) = \sum_k r_k(x)\, L_k^{-\top}\, \psi(z_k),\quad \psi = (\log f)'.

    A Gaussian marginal gives a Gaussian mixture with covariances :math:`L_k L_k^\top`.

    Args:
        weights: ``(*B, k)`` non-negative mixture weights (normalised here).
        means: ``(*B, k, d)``.
        factors: ``(*B, k, d, d)`` invertible :math:`L_k`.
        marginal: one of ``"gaussian"``, ``"student-t"``, ``"laplace"`` (shared by every set).
        df: ``(*B,)`` or a float, Student-t degrees of freedom per set (integer-valued, so that
            :meth:`sample` can draw the chi-square from a generator); needed for ``"student-t"``.

    Query points are ``(*B, m, d)``; results are ``(*B, m)`` and ``(*B, m, d)``.

    Example:
        >>> t = ProductMixture(torch.ones(1), torch.zeros(1, 1), torch.ones(1, 1, 1), "student-t", df=3.0)
        >>> t.score(torch.tensor([[1.0]]))  # -(df + 1) z / (df + z^2)
        tensor([[-1.]])
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        factors: Tensor,
        marginal: str,
        *,
        df: Tensor | float | None = None,
    ) -> None:
        if marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
        if means.dim() < 2 or factors.shape[-2:] != (means.shape[-1],) * 2:
            raise ValueError("means must be (*B, k, d) and factors (*B, k, d, d)")
        if marginal == "student-t":
            if df is None:
                raise ValueError("marginal='student-t' needs df")
            df = torch.as_tensor(df, dtype=means.dtype, device=means.device).expand(weights.shape[:-1])
            if not bool((df > 0).all()) or not bool((df == df.round()).all()):
                raise ValueError("df must be positive integers (sampling draws chi-square by sums)")
        self.weights = weights / weights.sum(-1, keepdim=True)
        self.means = means
        self.factors = factors
        self.marginal = marginal
        self.df = df
        self.dim = means.shape[-1]
        self.dtype = means.dtype
        self._inv = torch.linalg.inv(factors)  # *B k d d
        logdet = torch.linalg.slogdet(factors)[1]  # *B k
        self._log_norm = self.weights.log() - logdet

    def _marginal_terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``log f(z)`` summed over coordinates ``(*B, m, k)`` and ``psi(z)`` ``(*B, m, k, d)``."""
        if self.marginal == "gaussian":
            return -0.5 * z.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi), -z
        if self.marginal == "laplace":
            return -z.abs().sum(-1) - self.dim * math.log(2.0), -torch.sign(z)
        nu = self.df.reshape(*self.df.shape, 1, 1, 1)  # *B 1 1 1
        const = torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2) - 0.5 * torch.log(nu * math.pi)
        logf = (const - 0.5 * (nu + 1) * torch.log1p(z.square() / nu)).sum(-1)
        return logf, -(nu + 1) * z / (nu + z.square())

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        diff = x.unsqueeze(-2) - self.means.unsqueeze(-3)  # *B m k d
        z = torch.einsum("...kij,...mkj->...mki", self._inv, diff)  # *B m k d
        logf, psi = self._marginal_terms(z)
        logc = self._log_norm.unsqueeze(-2) + logf  # *B m k
        logp = torch.logsumexp(logc, dim=-1)
        resp = (logc - logp.unsqueeze(-1)).exp()  # *B m k
        grad = torch.einsum("...kji,...mkj->...mki", self._inv, psi)  # L^-T psi: *B m k d
        return logp, (resp.unsqueeze(-1) * grad).sum(-2)

    def logdensity(self, x: Tensor) -> Tensor:
        return self.logdensity_and_score(x)[0]

    def score(self, x: Tensor) -> Tensor:
        return self.logdensity_and_score(x)[1]

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``(*B, num_samples, d)`` points."""
        batch = self.weights.shape[:-1]
        shape = (*batch, num_samples, self.dim)
        kw = dict(generator=generator, dtype=self.dtype, device=self.means.device)
        flat_w = self.weights.reshape(-1, self.weights.shape[-1])
        comp = torch.multinomial(flat_w, max(num_samples, 1), replacement=True, generator=generator)
        comp = comp[:, :num_samples].reshape(*batch, num_samples)  # *B n
        if self.marginal == "gaussian":
            z = torch.randn(*shape, **kw)
        elif self.marginal == "laplace":  # a difference of two standard exponentials
            z = torch.rand(*shape, **kw).log() - torch.rand(*shape, **kw).log()
        else:  # normal / sqrt(chi2_df / df), the chi-square as a masked sum of squares
            nu = self.df.reshape(*batch, 1, 1, 1)
            g = torch.randn(*shape, int(self.df.max()), **kw)
            live = torch.arange(g.shape[-1], device=g.device) < nu
            chi2 = torch.where(live, g.square(), 0.0).sum(-1)
            z = torch.randn(*shape, **kw) / (chi2 / nu[..., 0]).sqrt()
        idx = comp.unsqueeze(-1)
        mu = torch.gather(self.means, -2, idx.expand(*batch, num_samples, self.dim))
        fac = torch.gather(self.factors, -3, idx.unsqueeze(-1).expand(*shape, self.dim))
        return mu + (fac @ z.unsqueeze(-1)).squeeze(-1)


class ExactDistribution:
    """Wrap a ``torch.distributions`` object with event shape ``(d,)`` (or a scalar one when
    ``d = 1``) as an exact estimator: ``logdensity = log_prob``, ``score`` by autograd.

    Example:
        >>> from torch.distributions import Laplace, Independent
        >>> lap = ExactDistribution(Independent(Laplace(torch.zeros(2), torch.ones(2)), 1))
        >>> lap.score(torch.tensor([[1.0, -1.0]]))
        tensor([[-1.,  1.]])
    """

    def __init__(self, distribution: torch.distributions.Distribution) -> None:
        self.distribution = distribution
        event = distribution.event_shape
        self._scalar = len(event) == 0
        self.dim = 1 if self._scalar else int(event[0])

    def logdensity(self, x: Tensor) -> Tensor:
        return self.distribution.log_prob(x.squeeze(-1) if self._scalar else x)

    def score(self, x: Tensor) -> Tensor:
        return logdensity_and_autograd_score(self.logdensity, x)[1]

    def logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.logdensity(x), self.score(x)

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        if generator is not None:
            raise NotImplementedError(
                "torch.distributions sample from the global RNG; seed with torch.manual_seed"
            )
        x = self.distribution.sample((num_samples,))
        return x.unsqueeze(-1) if self._scalar else x
