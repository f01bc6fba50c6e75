"""Fisher information, relative Fisher information and entropy: closed forms and contracts.

Statistical checks use exact scores, so the reported standard error is the true Monte Carlo
standard error; they allow NUM_SE of them (a two-sided 4-sigma miss has probability ~6e-5).
"""

import math

import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Laplace,
    MultivariateNormal,
    SigmoidTransform,
    TransformedDistribution,
    Uniform,
)

from pyro_disco import ExactDistribution, GaussianKDE, GaussianMixture
from pyro_disco.fisher import (
    Estimate,
    entropy,
    fisher_information,
    fisher_matrix,
    relative_fisher_information,
)

from helpers import gen

NUM_SE = 4.0  # tolerance in Monte Carlo standard errors (false-failure rate ~6e-5 per check)
EXACT = dict(rtol=1e-12, atol=1e-12)  # float64 identities that involve only a few sums


def _t(v):
    return torch.tensor(v, dtype=torch.float64)


def _assert_within_se(result: Estimate, truth, num_se=NUM_SE):
    truth = torch.as_tensor(truth, dtype=result.estimate.dtype)
    err = (result.estimate - truth).abs()
    assert bool((err <= num_se * result.stderr).all()), (
        f"estimate {result.estimate} vs truth {truth}: error {err} > {num_se} x stderr {result.stderr}"
    )


class MultivariateT:
    r"""Isotropic multivariate t_nu(0, sigma^2 I) with exact log-density and score (test helper)."""

    def __init__(self, nu, sigma, d):
        self.nu, self.sigma, self.dim = nu, sigma, d

    def logdensity(self, x):
        nu, d, s2 = self.nu, self.dim, self.sigma**2
        const = (
            math.lgamma((nu + d) / 2)
            - math.lgamma(nu / 2)
            - d / 2 * math.log(nu * math.pi)
            - d * math.log(self.sigma)
        )
        return const - (nu + d) / 2 * torch.log1p((x * x).sum(-1) / (nu * s2))

    def score(self, x):
        return -(self.nu + self.dim) * x / (self.nu * self.sigma**2 + (x * x).sum(-1, keepdim=True))

    def sample(self, n, generator):
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chi2 = 2.0 * torch._standard_gamma(torch.full((n, 1), self.nu / 2, dtype=torch.float64), generator)
        return self.sigma * z / torch.sqrt(chi2 / self.nu)


def _gaussian(d, seed):
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64)
    cov = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=gen(seed + 1), dtype=torch.float64)
    return mean, cov


def _gaussian_samples(mean, cov, n, seed):
    z = torch.randn(n, mean.shape[0], generator=gen(seed), dtype=torch.float64)
    return mean + z @ torch.linalg.cholesky(cov).T


# ---- exact references ---------------------------------------------------------------------


def test_gaussian_fisher_information_is_trace_of_precision():
    mean, cov = _gaussian(3, seed=0)
    x = _gaussian_samples(mean, cov, 4000, seed=1)
    result = fisher_information(x, ExactDistribution(MultivariateNormal(mean, cov)))
    _assert_within_se(result, torch.linalg.inv(cov).trace())


def test_gaussian_fisher_matrix_is_precision():
    mean, cov = _gaussian(3, seed=2)
    x = _gaussian_samples(mean, cov, 4000, seed=3)
    exact = GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None], cov[None])
    result = fisher_matrix(x, exact)
    assert result.estimate.shape == result.stderr.shape == (3, 3)
    _assert_within_se(result, torch.linalg.inv(cov))
    # Invariant: the trace of the matrix is the scalar Fisher information, exactly.
    torch.testing.assert_close(result.estimate.trace(), fisher_information(x, exact).estimate, **EXACT)


def test_multivariate_t_fisher_information():
    nu, sigma, d = 5.0, 1.5, 3
    t = MultivariateT(nu, sigma, d)
    # The helper's score is the gradient of its log-density (guards the reference itself).
    x = t.sample(64, gen(4)).requires_grad_(True)
    (grad,) = torch.autograd.grad(t.logdensity(x).sum(), x)
    torch.testing.assert_close(t.score(x.detach()), grad, rtol=1e-12, atol=1e-12)
    result = fisher_information(t.sample(4000, gen(5)), t)
    _assert_within_se(result, d * (nu + d) / ((nu + d + 2) * sigma**2))


def test_laplace_fisher_information_is_inverse_square_scale():
    b = 0.7
    u = torch.rand(500, 1, generator=gen(6), dtype=torch.float64) - 0.5
    x = -b * u.sign() * torch.log1p(-2 * u.abs())
    lap = ExactDistribution(Laplace(_t(0.0), _t(b)))
    result = fisher_information(x, lap)
    # |score| = 1/b at every sample, so the estimate is exact and its standard error zero.
    torch.testing.assert_close(result.estimate, torch.tensor(1 / b**2, dtype=torch.float64), **EXACT)
    torch.testing.assert_close(result.stderr, torch.tensor(0.0, dtype=torch.float64), **EXACT)


def test_logistic_fisher_information():
    s = 0.8
    base = Uniform(_t(0.0), _t(1.0))
    transforms = [SigmoidTransform().inv, AffineTransform(0.0, s)]
    logistic = ExactDistribution(TransformedDistribution(base, transforms))
    u = torch.rand(4000, 1, generator=gen(7), dtype=torch.float64)
    x = s * torch.log(u / (1 - u))
    _assert_within_se(fisher_information(x, logistic), 1 / (3 * s**2))


def test_relative_fisher_information_of_two_isotropic_gaussians():
    d, s1, s2 = 2, 1.0, 1.4
    mu1 = torch.zeros(d, dtype=torch.float64)
    mu2 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    p = ExactDistribution(MultivariateNormal(mu1, s1**2 * eye))
    q = ExactDistribution(MultivariateNormal(mu2, s2**2 * eye))
    xp = _gaussian_samples(mu1, s1**2 * eye, 4000, seed=8)
    xq = _gaussian_samples(mu2, s2**2 * eye, 300, seed=9)
    truth = d * s1**2 * (1 / s2**2 - 1 / s1**2) ** 2 + float((mu1 - mu2).square().sum()) / s2**4
    _assert_within_se(relative_fisher_information(xp, xq, p, q), truth)
    # I(p|p) = 0 exactly.
    same = relative_fisher_information(xp, xp, p, p)
    torch.testing.assert_close(same.estimate, torch.tensor(0.0, dtype=torch.float64), **EXACT)


def test_gaussian_entropy():
    mean, cov = _gaussian(3, seed=10)
    x = _gaussian_samples(mean, cov, 4000, seed=11)
    truth = 0.5 * torch.logdet(2 * math.pi * math.e * cov)
    _assert_within_se(entropy(x, ExactDistribution(MultivariateNormal(mean, cov))), truth)


# ---- estimators plug in -------------------------------------------------------------------


def test_factory_and_built_estimator_agree():
    x = torch.randn(300, 2, generator=gen(12), dtype=torch.float64)
    for fn in (fisher_information, fisher_matrix, entropy):
        a, b = fn(x, GaussianKDE), fn(x, GaussianKDE(x))
        torch.testing.assert_close(a.estimate, b.estimate, **EXACT)
        torch.testing.assert_close(a.stderr, b.stderr, **EXACT)


def test_cross_fit_evaluates_each_half_with_the_other_halfs_estimator():
    x = torch.randn(301, 2, generator=gen(13), dtype=torch.float64)
    first, second = x[:150], x[150:]
    s = torch.cat([GaussianKDE(second).score(first), GaussianKDE(first).score(second)])
    expected = (s * s).sum(-1)
    result = fisher_information(x, lambda z: GaussianKDE(z), cross_fit=True)
    torch.testing.assert_close(result.estimate, expected.mean(), **EXACT)
    torch.testing.assert_close(result.stderr, expected.std() / math.sqrt(301), **EXACT)


def test_relative_fisher_uses_q_estimator_built_on_q_samples():
    xp = torch.randn(200, 2, generator=gen(14), dtype=torch.float64)
    xq = torch.randn(250, 2, generator=gen(15), dtype=torch.float64) + 1.0
    diff = GaussianKDE(xp).score(xp) - GaussianKDE(xq).score(xp)
    result = relative_fisher_information(xp, xq, GaussianKDE)
    torch.testing.assert_close(result.estimate, (diff * diff).sum(-1).mean(), **EXACT)


def test_kde_plug_in_with_cross_fit_is_close_in_one_dimension():
    # 1-D N(0, 1), n = 4000: the cross-fit Scott-KDE plug-ins have a smoothing bias of order
    # h^2 ~ n^{-2/5} ~ 0.04; 0.1 leaves room for that bias plus ~3 Monte Carlo standard errors.
    x = torch.randn(4000, 1, generator=gen(16), dtype=torch.float64)
    j = fisher_information(x, GaussianKDE, cross_fit=True)
    h = entropy(x, GaussianKDE, cross_fit=True)
    assert abs(float(j.estimate) - 1.0) < 0.1
    assert abs(float(h.estimate) - 0.5 * math.log(2 * math.pi * math.e)) < 0.1


# ---- contracts ----------------------------------------------------------------------------


def test_shapes_dtypes_and_no_mutation():
    x = torch.randn(100, 3, generator=gen(17))  # float32
    before = x.clone()
    for fn in (fisher_information, entropy):
        r = fn(x, GaussianKDE)
        assert isinstance(r, Estimate) and r.estimate.shape == () and r.estimate.dtype == torch.float32
    assert fisher_matrix(x, GaussianKDE).estimate.shape == (3, 3)
    assert relative_fisher_information(x, x + 1, GaussianKDE).stderr.shape == ()
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(50, 2, generator=gen(18), dtype=torch.float64)
    exact_1d = ExactDistribution(Laplace(_t(0.0), _t(1.0)))
    with pytest.raises(ValueError, match="dimension"):
        fisher_information(x, exact_1d)
    with pytest.raises(TypeError, match="not a factory"):
        fisher_information(x, lambda z: -z)
    with pytest.raises(TypeError, match="factory"):
        entropy(x, 3.0)
    with pytest.raises(ValueError, match="cross_fit"):
        fisher_information(x, GaussianKDE(x), cross_fit=True)
    with pytest.raises(ValueError, match="estimator_q"):
        relative_fisher_information(x, x, GaussianKDE(x))
    with pytest.raises(ValueError, match="same dimension"):
        relative_fisher_information(x, x[:, :1], GaussianKDE)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        fisher_information(x[0], GaussianKDE)
    with pytest.raises(ValueError, match="non-finite"):
        fisher_information(torch.full((5, 1), float("nan")), GaussianKDE)
