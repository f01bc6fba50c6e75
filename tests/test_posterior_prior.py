"""Posterior -> prior plumbing: (n,) input, per-group draws, weighted draws, and the site map from
``mcmc.get_samples()`` to a joint unconstrained ``LearnedScore`` and back (exact references)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size
from scipy.stats import gaussian_kde
from torch.testing import assert_close

from pyro_disco.distributions import LearnedScore, posterior_prior
from pyro_disco.estimators.weighted import WeightedGaussianKDE, resample

from helpers import gen

F64 = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-12)  # the same float64 quantity by two routes
K = 4.0  # Monte Carlo tolerance in standard errors


def test_vector_input_means_d_equals_one():
    x = torch.randn(300, generator=gen(0), dtype=F64)
    q = torch.linspace(-2, 2, 7, dtype=F64)[:, None]
    a, b = LearnedScore(x, estimator="kde"), LearnedScore(x[:, None], estimator="kde")
    assert a.event_shape == (1,)
    assert_close(a.log_prob(q), b.log_prob(q), **EXACT)


@pytest.mark.parametrize("name", ["kde", "transformer"])
def test_per_group_draws_give_a_batch_shape(name):
    x = torch.randn(3, 400, 2, generator=gen(1), dtype=F64) + torch.arange(3.0, dtype=F64)[:, None, None]
    ls = LearnedScore(x, estimator=name)
    assert ls.batch_shape == (3,) and ls.event_shape == (2,)
    q = torch.randn(5, 3, 2, generator=gen(2), dtype=F64)
    lp, s = ls.log_prob(q), ls.score(q)
    assert lp.shape == (5, 3) and s.shape == (5, 3, 2)
    for g in range(3):  # group g is exactly the single-group distribution of x[g]
        one = LearnedScore(x[g], estimator=name)
        assert_close(lp[:, g], one.log_prob(q[:, g]), **EXACT)
        assert_close(s[:, g], one.score(q[:, g]), **EXACT)
    assert ls.sample((4,)).shape == (4, 3, 2) and ls.expand((2, 3)).log_prob(q[0]).shape == (2, 3)
    assert ls.mean.shape == (3, 2) and ls.kernel_covariance().shape == (3, 2, 2)
    hess = torch.autograd.functional.hessian(lambda z: ls.log_prob(z).sum(), q[0])  # (3,2,3,2)
    assert hess.abs().sum() > 0 and hess[0, :, 1].abs().max() == 0  # groups do not interact

    def model():
        with pyro.plate("groups", 3):
            return pyro.sample("z", ls)

    tr = pyro.poutine.trace(model).get_trace()
    assert tr.nodes["z"]["value"].shape == (3, 2) and torch.isfinite(tr.log_prob_sum())
    with pytest.raises(ValueError, match="expand"):
        ls.expand((4,))


def test_weighted_kde_is_scipys_and_integer_weights_are_repeats():
    g = gen(3)
    x = torch.randn(200, 2, generator=g, dtype=F64)
    w = torch.rand(200, generator=g, dtype=F64)
    q = torch.randn(6, 2, generator=g, dtype=F64)
    ls = LearnedScore(x, estimator="kde", weights=w)
    ref = gaussian_kde(x.T.numpy(), weights=w.numpy())
    assert_close(
        ls.log_prob(q), torch.as_tensor(ref.logpdf(q.T.numpy())), rtol=1e-9, atol=1e-11
    )  # two libraries
    # integer weights are repeated samples, at a fixed kernel covariance
    k = torch.randint(1, 4, (200,), generator=g)
    cov = 0.1 * torch.eye(2, dtype=F64)
    a = WeightedGaussianKDE(x, k.double(), covariance=cov)
    b = WeightedGaussianKDE(x.repeat_interleave(k, 0), torch.ones(int(k.sum()), dtype=F64), covariance=cov)
    assert_close(a.logdensity(q), b.logdensity(q), **EXACT)
    assert_close(a.score(q), b.score(q), **EXACT)
    # weighted mean is the exact mean of the weighted smoothed bootstrap (4 MC SE)
    torch.manual_seed(0)
    draws = ls.sample((20000,))
    wm = (w[:, None] * x).sum(0) / w.sum()
    se = (torch.cov(draws.T).diagonal() / draws.shape[0]).sqrt()
    assert ((draws.mean(0) - wm).abs() < K * se).all() and torch.allclose(ls.mean, wm)


def test_weighted_transformer_resamples_with_the_generator():
    g = gen(4)
    x = torch.randn(300, 2, generator=g, dtype=F64)
    w = torch.rand(300, generator=g, dtype=F64)
    ls = LearnedScore(x, estimator="transformer", weights=w, generator=gen(5))
    ref = LearnedScore(resample(x, w, generator=gen(5)), estimator="transformer")
    q = torch.randn(4, 2, generator=g, dtype=F64)
    assert_close(ls.log_prob(q), ref.log_prob(q), **EXACT)
    with pytest.raises(ValueError, match="weights= works with"):
        LearnedScore(x, estimator="emp-sdkde", weights=w)
    with pytest.raises(ValueError, match="non-negative"):
        LearnedScore(x, estimator="kde", weights=-w)
    with pytest.raises(ValueError, match="weights must have shape"):
        LearnedScore(x, estimator="kde", weights=w[:10])


def _three_site_model():
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=F64), 0.5))
    probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3, dtype=F64)))
    return loc, scale, probs


def test_site_map_round_trip_and_change_of_variables():
    g = gen(6)
    n = 400
    draws = {
        "loc": torch.randn(n, 2, generator=g, dtype=F64),
        "scale": torch.exp(0.5 * torch.randn(n, generator=g, dtype=F64)),
        "probs": torch.distributions.Dirichlet(torch.ones(3, dtype=F64)).sample((n,)),
    }
    pp = posterior_prior(draws, _three_site_model, estimator="kde")
    assert pp.dim == 2 + 1 + 2 and pp.prior.event_shape == (5,)  # the simplex loses one coordinate
    back = pp.to_constrained(pp.to_unconstrained(draws))
    for k in draws:
        assert_close(back[k], draws[k], rtol=1e-10, atol=1e-12)
    # log_prob of constrained values = joint KDE density in z minus log|det dx/dz|, the latter
    # checked site by site against Pyro's TransformedDistribution
    z = pp.to_unconstrained(draws)[:5]
    vals = pp.to_constrained(z)
    ladj = pp.log_abs_det_jacobian(z)
    base_scale = dist.Normal(torch.tensor(0.0, dtype=F64), 1.0)
    scale_td = dist.TransformedDistribution(base_scale, [pp.sites[1].transform])
    ref_scale = base_scale.log_prob(z[:, 2]) - scale_td.log_prob(vals["scale"])
    base_p = dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1)
    p_td = dist.TransformedDistribution(base_p, [pp.sites[2].transform])
    ref_p = base_p.log_prob(z[:, 3:]) - p_td.log_prob(vals["probs"])
    assert_close(ladj, ref_scale + ref_p, rtol=1e-9, atol=1e-10)
    assert_close(pp.log_prob(vals), pp.prior.log_prob(z) - ladj, **EXACT)
    with pytest.raises(ValueError, match="not latent"):
        posterior_prior({"nope": draws["scale"]}, _three_site_model)
    with pytest.raises(ValueError, match="draws must have shape"):
        posterior_prior({"loc": draws["scale"]}, _three_site_model)


def test_sequential_beta_binomial_update_matches_the_exact_posterior():
    # p ~ Beta(2, 2); batch 1: 7 of 20; batch 2: 12 of 30. Exact: Beta(2 + 19, 2 + 31).
    a0, b0, (k1, n1), (k2, n2) = 2.0, 2.0, (7, 20), (12, 30)
    draws1 = {"p": torch.distributions.Beta(a0 + k1, b0 + n1 - k1).sample((4000,)).double()}

    def model(k, n):
        p = pyro.sample("p", dist.Beta(torch.tensor(a0, dtype=F64), b0))
        pyro.sample("k", dist.Binomial(n, p), obs=torch.tensor(float(k), dtype=F64))

    torch.manual_seed(7)
    pp = posterior_prior(draws1, model, k1, n1, estimator="kde")  # yesterday's posterior draws

    def model2():
        p = pp.sample("z")["p"]
        pyro.sample("k", dist.Binomial(n2, p), obs=torch.tensor(float(k2), dtype=F64))

    pyro.set_rng_seed(8)
    mcmc = MCMC(NUTS(model2), num_samples=600, warmup_steps=300, disable_progbar=True)
    mcmc.run()
    p = pp.to_constrained(mcmc.get_samples()["z"])["p"]
    exact = torch.distributions.Beta(a0 + k1 + k2, b0 + n1 + n2 - k1 - k2)
    ess = float(effective_sample_size(p[None, :, None], chain_dim=0, sample_dim=1))
    sd = float(exact.variance.sqrt())
    # The Scott KDE in logit space widens the prior by 1 + 4000^{-2/5} = 1.04 in variance: a shift
    # of the posterior mean/sd of < 0.01 sd, far inside the MC tolerance.
    assert abs(float(p.mean()) - float(exact.mean)) < K * sd / math.sqrt(ess)
    assert abs(float(p.std()) - sd) < K * sd * math.sqrt(0.5 / ess)
