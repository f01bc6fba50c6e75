"""The empirical-prior workflow end to end: yesterday's posterior draws -> LearnedScore prior ->
NUTS on today's data, against exact references (conjugate Gaussian; 1-D mixture by quadrature)."""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size

from pyro_disco import GaussianMixture
from pyro_disco.distributions import LearnedScore

from helpers import gen

F64 = torch.float64
K = 4.0  # tolerance in Monte Carlo standard errors (ESS-based): a 1-in-16000 false alarm per check


def _nuts(model, seed, warmup=200, samples=300):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    mcmc.run()
    return mcmc.get_samples()["theta"].double()


def _mc_se(draws):
    """Standard errors of the mean ``(d,)`` and of the covariance entries ``(d, d)`` from the
    chain's effective sample size (smallest over coordinates for the covariance)."""
    ess = effective_sample_size(draws.unsqueeze(0), chain_dim=0, sample_dim=1)  # d
    cov = torch.cov(draws.T).reshape(draws.shape[1], draws.shape[1])
    var = cov.diagonal()
    return (var / ess).sqrt(), ((var[:, None] * var[None, :] + cov**2) / ess.min()).sqrt()


def _assert_moments(draws, mean, cov):
    se_mean, se_cov = _mc_se(draws)
    assert ((draws.mean(0) - mean).abs() < K * se_mean).all(), (draws.mean(0), mean, se_mean)
    emp = torch.cov(draws.T).reshape(cov.shape)
    assert ((emp - cov).abs() < K * se_cov).all(), (emp, cov, se_cov)


# ------------------------------------------------------------------ conjugate Gaussian, d = 2

R = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)  # known observation covariance
THETA = torch.tensor([0.5, -1.0], dtype=F64)


def _gaussian_update(mean, cov, y):
    """Exact posterior of theta for prior N(mean, cov) and rows of y ~ N(theta, R)."""
    prec = torch.linalg.inv(cov) + y.shape[0] * torch.linalg.inv(R)
    post_cov = torch.linalg.inv(prec)
    post_mean = post_cov @ (torch.linalg.solve(cov, mean) + torch.linalg.solve(R, y.sum(0)))
    return post_mean, post_cov


def _kde_prior_posterior(kde, y):
    """Exact posterior moments under the KDE prior: a Gaussian mixture, one component per sample."""
    n_obs = y.shape[0]
    h_inv, lik_prec = torch.linalg.inv(kde.covariance), n_obs * torch.linalg.inv(R)
    post_cov = torch.linalg.inv(h_inv + lik_prec)
    x = kde.samples
    means = (x @ h_inv.T + y.mean(0) @ lik_prec.T) @ post_cov.T  # n d
    ybar = GaussianMixture(torch.ones(1, dtype=F64), y.mean(0)[None], (kde.covariance + R / n_obs)[None])
    w = torch.softmax(ybar.logdensity(x), 0)  # N(ybar; x_j, H + R/n), symmetric in (ybar, x_j)
    mean = w @ means
    return mean, post_cov + (w[:, None] * means).T @ means - torch.outer(mean, mean)


def test_empirical_prior_matches_the_conjugate_posterior():
    chol_r = torch.linalg.cholesky(R)
    y1 = THETA + torch.randn(8, 2, generator=gen(0), dtype=F64) @ chol_r.T
    y2 = THETA + torch.randn(8, 2, generator=gen(1), dtype=F64) @ chol_r.T
    m1, s1 = _gaussian_update(torch.zeros(2, dtype=F64), 4.0 * torch.eye(2, dtype=F64), y1)
    draws1 = m1 + torch.randn(2000, 2, generator=gen(2), dtype=F64) @ torch.linalg.cholesky(s1).T
    prior = LearnedScore(draws1, estimator="kde")  # yesterday's posterior draws

    def model():
        theta = pyro.sample("theta", prior)
        with pyro.plate("obs", y2.shape[0]):
            pyro.sample("y", dist.MultivariateNormal(theta, R), obs=y2)

    draws2 = _nuts(model, seed=3)
    # (1) the exact conjugate posterior N(m2, S2) — the KDE inflates the prior covariance by
    # 1 + 2000^{-1/3} = 1.08, which moves the posterior covariance by ~4 %, well inside 4 MC SE.
    m2, s2 = _gaussian_update(m1, s1, y2)
    _assert_moments(draws2, m2, s2)
    # (2) the exact posterior under the KDE prior itself (what NUTS targets, no smoothing caveat)
    _assert_moments(draws2, *_kde_prior_posterior(prior.estimator, y2))


# ------------------------------------------------------------------ non-Gaussian prior, d = 1

PRIOR_MIX = GaussianMixture(
    torch.tensor([0.35, 0.65], dtype=F64),
    torch.tensor([[-1.0], [1.0]], dtype=F64),
    torch.full((2, 1, 1), 0.25, dtype=F64),
)
Y_OBS = torch.tensor([-0.6, 0.4, -0.7], dtype=F64)
SIGMA_OBS = 1.5


def _quadrature(logprior_fn):
    """Posterior mean, variance and P(theta > 0) on a fine grid (error << MC error)."""
    grid = torch.linspace(-7.0, 7.0, 14001, dtype=F64)[:, None]
    loglik = dist.Normal(grid, SIGMA_OBS).log_prob(Y_OBS).sum(-1)
    logw = logprior_fn(grid) + loglik
    w = torch.softmax(logw, 0)
    t = grid.squeeze(-1)
    mean = (w * t).sum()
    return mean, (w * (t - mean) ** 2).sum(), w[t > 0].sum()


def test_empirical_mixture_prior_matches_quadrature():
    samples = PRIOR_MIX.sample(2000, generator=gen(4))
    prior = LearnedScore(samples, estimator="kde")

    def model():
        theta = pyro.sample("theta", prior)
        with pyro.plate("obs", Y_OBS.shape[0]):
            pyro.sample("y", dist.Normal(theta.squeeze(-1), SIGMA_OBS), obs=Y_OBS)

    draws = _nuts(model, seed=5, samples=400)
    t = draws.squeeze(-1)
    ess = float(effective_sample_size(t[None, :, None], chain_dim=0, sample_dim=1))
    kde_ref = _quadrature(lambda g: prior.estimator.logdensity(g))
    true_ref = _quadrature(PRIOR_MIX.logdensity)
    for mean, var, mass in (kde_ref, true_ref):  # the KDE target, then the true prior's posterior
        sd = var.sqrt()
        assert abs(t.mean() - mean) < K * sd / math.sqrt(ess), (t.mean(), mean)
        # SE of a sample variance ~ var sqrt(2/ess) for a near-Gaussian shape; bimodality makes the
        # fourth moment smaller, so this is conservative.
        assert abs(t.var() - var) < K * var * math.sqrt(2.0 / ess), (t.var(), var)
        frac = (t > 0).double().mean()
        assert abs(frac - mass) < K * math.sqrt(mass * (1 - mass) / ess), (frac, mass)
    # the posterior really is non-Gaussian: two modes of unequal mass survive the update
    assert 0.2 < float(kde_ref[2]) < 0.8
