"""ULA and MALA: functional core (exact ULA bias, MALA moments, mixture weights) and Pyro kernels."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC
from torch.testing import assert_close

from pyro_disco import GaussianKDE, GaussianMixture
from pyro_disco.infer.langevin import init, mala_step, run, step, step_size_init, step_size_update, ula_step
from pyro_disco.infer.mcmc import MALA, ULA

from helpers import COV_2D, GAUSSIAN_2D, MEAN_2D, check_moments, gen

F64 = torch.float64
# 1-D two-component mixture: weights 0.3 / 0.7, modes close enough for chains to cross.
MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-1.2], [1.2]], dtype=F64),
    torch.tensor([[[0.5]], [[0.5]]], dtype=F64),
)


def _normal_cdf(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _kde_moments(kde):
    x = kde.samples
    n = x.shape[0]
    return x.mean(0), torch.cov(x.T) * (n - 1) / n + kde.covariance


# ------------------------------------------------------------------ functional core


def test_run_shapes_no_mutation_and_reproducible():
    x0 = torch.zeros(5, 2, dtype=F64)
    before = x0.clone()
    a = run(x0, GAUSSIAN_2D, 0.2, 7, method="mala", num_warmup=3, generator=gen(0))
    b = run(x0, GAUSSIAN_2D, 0.2, 7, method="mala", num_warmup=3, generator=gen(0))
    assert a.samples.shape == (5, 7, 2) and a.info.acceptance_prob.shape == (5, 7)
    assert a.info.is_divergent.dtype == torch.bool
    assert torch.equal(a.samples, b.samples) and torch.equal(x0, before)
    u = run(x0, GAUSSIAN_2D.score, 0.1, 4, method="ula", generator=gen(0))
    assert u.samples.shape == (5, 4, 2) and bool(u.info.is_accepted.all())


def test_errors():
    x0 = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="method"):
        run(x0, GAUSSIAN_2D, 0.1, 5, method="hmc")
    with pytest.raises(ValueError, match="log-density"):
        run(x0, GAUSSIAN_2D.score, 0.1, 5, method="mala")
    with pytest.raises(ValueError, match="positive"):
        step_size_init(0.0)


def test_divergent_proposal_is_rejected_and_flagged():
    def blowup(x):
        return torch.full_like(x, float("inf"))

    state = init(torch.zeros(2, 2, dtype=F64), None, logdensity_and_score_fn=GAUSSIAN_2D.logdensity_and_score)
    state = state._replace(score=blowup(state.position))
    new, info = mala_step(state, GAUSSIAN_2D.logdensity_and_score, 0.1, generator=gen(0))
    assert bool(info.is_divergent.all()) and not bool(info.is_accepted.any())
    assert torch.equal(new.position, state.position)


def test_step_is_mala_step_or_ula_step():
    both = GAUSSIAN_2D.logdensity_and_score
    state = init(torch.randn(3, 2, generator=gen(1), dtype=F64), None, logdensity_and_score_fn=both)
    for method, fn, kernel in [("mala", both, mala_step), ("ula", GAUSSIAN_2D.score, ula_step)]:
        ours = step(state, fn, 0.1, method=method, generator=gen(0))
        theirs = kernel(state, fn, 0.1, generator=gen(0))
        assert torch.equal(ours[0].position, theirs[0].position), method
    with pytest.raises(ValueError, match="method"):
        step(state, both, 0.1, method="hmc")


def test_mala_leaves_the_target_invariant():
    # MALA on the exact target leaves it invariant: start at exact draws, take 30 steps,
    # 4000 independent chains are still iid N(MEAN_2D, COV_2D) within 4 MC standard errors.
    x0 = _exact_draws(4000, 1)
    out = run(x0, GAUSSIAN_2D, 0.8, 30, method="mala", generator=gen(2))
    check_moments(out.samples[:, -1], MEAN_2D, COV_2D)


def _exact_draws(n, seed):
    chol = torch.linalg.cholesky(COV_2D)
    return MEAN_2D + torch.randn(n, 2, generator=gen(seed), dtype=F64) @ chol.T


def test_ula_stationary_covariance_is_the_exact_biased_one():
    # ULA on N(m, S) is a linear AR(1) chain whose stationary law is N(m, S (I - h S^{-1}/2)^{-1}):
    # an exact reference that differs from S by 11-25 % at h = 0.4, so the bias is really detected.
    h = 0.4
    exact = COV_2D @ torch.linalg.inv(torch.eye(2, dtype=F64) - 0.5 * h * torch.linalg.inv(COV_2D))
    out = run(_exact_draws(4000, 3), GAUSSIAN_2D.score, h, 60, method="ula", generator=gen(4))
    check_moments(out.samples[:, -1], MEAN_2D, exact)


def test_mala_adapts_to_target_acceptance_and_recovers_moments():
    out = run(
        torch.zeros(2000, 2, dtype=F64),
        GAUSSIAN_2D,
        0.05,
        40,
        method="mala",
        num_warmup=150,
        generator=gen(5),
    )
    # the chain-averaged acceptance of the kept draws lands near 0.574 (dual averaging converges to
    # the target up to O(1/sqrt(warmup)) noise; 0.07 is about 3 times the spread seen over seeds)
    assert abs(float(out.info.acceptance_prob.mean()) - 0.574) < 0.07
    check_moments(out.samples[:, -1], MEAN_2D, COV_2D)


def test_step_size_update_moves_toward_target():
    s = step_size_init(1.0)
    low = step_size_update(s, 0.1)  # accepting too little: shrink
    high = step_size_update(s, 0.99)  # accepting too much: grow
    assert low.log_step_size < high.log_step_size


def test_step_size_update_is_hoffman_gelman_dual_averaging_and_pure():
    # Hoffman & Gelman (2014), Alg. 5, written out: the Pyro scheme we delegate to must match it
    # to round-off, and stepping must leave the previous state usable (a value, not a handle).
    h0, gamma, t0, kappa, delta = 0.3, 0.05, 10.0, 0.75, 0.574
    probs = [0.9, 0.2, 0.6, 0.05, 1.0, 0.5]
    mu, g_avg, x_avg = math.log(10 * h0), 0.0, math.log(h0)
    state = step_size_init(h0)
    for t, a in enumerate(probs, start=1):
        g_avg = (1 - 1 / (t + t0)) * g_avg + (delta - a) / (t + t0)
        x = mu - math.sqrt(t) / gamma * g_avg
        x_avg = t**-kappa * x + (1 - t**-kappa) * x_avg
        before = state
        state = step_size_update(state, a, delta)
        assert math.isclose(state.log_step_size, x, rel_tol=1e-12)
        assert math.isclose(state.log_step_size_avg, x_avg, rel_tol=1e-12)
    again = step_size_update(before, probs[-1], delta)
    assert (again.log_step_size, again.log_step_size_avg) == (state.log_step_size, state.log_step_size_avg)


@pytest.mark.parametrize("method", ["ula", "mala"])
def test_kde_score_recovers_the_kde_moments(method):
    # The chains target the KDE, whose moments are exact: mean(X), (n-1)/n Cov(X) + H.
    # ULA at h = 0.05 is biased by about h/4 ~ 1.3 % of the variance, below 4 MC SE (~ 6 %).
    kde = GaussianKDE(_exact_draws(500, 6))
    mean, cov = _kde_moments(kde)
    out = run(
        _exact_draws(1000, 7),
        kde,
        0.05 if method == "ula" else 0.5,
        1,
        method=method,
        num_warmup=50,
        generator=gen(8),
    )
    check_moments(out.samples[:, -1], mean, cov)
    # and, looser, the true target: the KDE inflates the covariance by the factor (1 + n^{-1/3})
    # = 1.13 (Scott, d = 2, n = 500) and its sample mean is off by one sampling error of 500 draws
    # (1000 chains): 6 instead of 4 standard errors.
    check_moments(out.samples[:, -1], MEAN_2D, COV_2D * (1 + 500 ** (-1 / 3)), k=6.0)


@pytest.mark.parametrize(
    "method,score", [("ula", "exact"), ("mala", "exact"), ("ula", "kde"), ("mala", "kde")]
)
def test_mixture_weight_is_recovered(method, score):
    # P(x > 0) under the 1-D mixture is exact: 0.3 Phi(-1.2/0.707) + 0.7 Phi(1.2/0.707); for the
    # KDE target it is the mean of normal CDFs. Checked at 4 binomial standard errors.
    if score == "exact":
        target = MIX
        mass = sum(w * _normal_cdf(m / math.sqrt(0.5)) for w, m in ((0.3, -1.2), (0.7, 1.2)))
    else:
        target = GaussianKDE(MIX.sample(400, generator=gen(9)))
        sd = float(target.covariance.sqrt())
        mass = float(sum(_normal_cdf(float(x) / sd) for x in target.samples.squeeze(-1)) / 400)
    n = 1500
    x0 = 2.0 * torch.randn(n, 1, generator=gen(10), dtype=F64)
    out = run(
        x0, target, 0.05 if method == "ula" else 0.4, 1, method=method, num_warmup=200, generator=gen(11)
    )
    frac = float((out.samples[:, -1, 0] > 0).double().mean())
    assert abs(frac - mass) < 4 * math.sqrt(mass * (1 - mass) / n)


# ------------------------------------------------------------------ Pyro kernels


def gaussian_model():
    pyro.sample("z", dist.MultivariateNormal(MEAN_2D.float(), COV_2D.float()))


def gaussian_potential(params):
    return -GAUSSIAN_2D.logdensity(params["x"].to(F64))


def _ess_se(samples):
    from pyro.ops.stats import effective_sample_size

    ess = effective_sample_size(samples.unsqueeze(0), chain_dim=0, sample_dim=1)
    return samples.std(0) / ess.sqrt()


def test_mala_kernel_with_a_model():
    pyro.set_rng_seed(0)
    mcmc = MCMC(MALA(gaussian_model), num_samples=600, warmup_steps=300, disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples()["z"].double()
    assert z.shape == (600, 2)
    assert ((z.mean(0) - MEAN_2D).abs() < 4 * _ess_se(z)).all()  # 4 MC SE with the chain's ESS
    diag = mcmc.diagnostics()
    assert set(diag) >= {"divergences", "acceptance rate", "z"} and set(diag["z"]) >= {"n_eff", "r_hat"}
    assert 0.35 < diag["acceptance rate"]["chain 0"] < 0.8  # adapted toward 0.574


def test_ula_kernel_with_potential_fn_and_two_chains(capsys):
    pyro.set_rng_seed(1)
    kernel = ULA(potential_fn=gaussian_potential, step_size=0.2)
    init = {"x": torch.zeros(2, 2, dtype=F64)}
    with warnings.catch_warnings():  # on <= 2 CPUs Pyro warns that chains run sequentially
        warnings.filterwarnings("ignore", message="num_chains", category=UserWarning)
        mcmc = MCMC(
            kernel, num_samples=300, warmup_steps=100, num_chains=2, initial_params=init, disable_progbar=True
        )
        mcmc.run()
    assert mcmc.get_samples(group_by_chain=True)["x"].shape == (2, 300, 2)
    assert mcmc.diagnostics()["acceptance rate"] == {"chain 0": 1.0, "chain 1": 1.0}
    mcmc.summary()
    assert "Number of divergences: 0" in capsys.readouterr().out


def test_mala_kernel_with_a_bare_score_and_estimator():
    pyro.set_rng_seed(2)
    x0 = {"x": torch.zeros(2, dtype=F64)}
    mcmc = MCMC(
        MALA(score=GAUSSIAN_2D.score, logdensity_fn=GAUSSIAN_2D.logdensity, initial_params=x0),
        num_samples=500,
        warmup_steps=200,
        disable_progbar=True,
    )
    mcmc.run()
    x = mcmc.get_samples()["x"]
    assert ((x.mean(0) - MEAN_2D).abs() < 4 * _ess_se(x)).all()
    mcmc2 = MCMC(
        MALA(score=GAUSSIAN_2D, site="theta"),
        num_samples=5,
        warmup_steps=5,
        disable_progbar=True,
        initial_params={"theta": torch.zeros(2, dtype=F64)},
    )
    mcmc2.run()
    assert mcmc2.get_samples()["theta"].shape == (5, 2)


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        MALA()
    with pytest.raises(ValueError, match="exactly one"):
        ULA(gaussian_model, potential_fn=gaussian_potential)
    with pytest.raises(ValueError, match="logdensity_fn"):
        MALA(score=GAUSSIAN_2D.score)
    with pytest.raises(ValueError, match="step_size"):
        ULA(gaussian_model, step_size=-1.0)
    with pytest.raises(ValueError, match="initial_params"):
        MCMC(ULA(score=GAUSSIAN_2D.score), num_samples=2, warmup_steps=0, disable_progbar=True).run()


def test_first_release_keyword_names_still_work():
    # score_fn= (kernels) and target= (run) are the old names of score=: same draws, and a warning
    x0 = torch.zeros(3, 2, dtype=F64)
    with pytest.warns(DeprecationWarning, match="score="):
        old = run(x0, target=GAUSSIAN_2D, step_size=0.1, num_steps=4, generator=gen(0))
    assert torch.equal(old.samples, run(x0, GAUSSIAN_2D, 0.1, 4, generator=gen(0)).samples)
    with pytest.warns(DeprecationWarning, match="score="):
        kernel = MALA(score_fn=GAUSSIAN_2D)
    assert kernel.score is GAUSSIAN_2D
    with pytest.raises(TypeError, match="both"):
        ULA(score=GAUSSIAN_2D.score, score_fn=GAUSSIAN_2D.score)


def test_kernel_divergences_are_reported():
    # A score that blows up to inf every time: every post-warm-up step is a divergence.
    def bad(x):
        return torch.full_like(x, float("inf"))

    mcmc = MCMC(
        ULA(score=bad, initial_params={"x": torch.zeros(2, dtype=F64)}),
        num_samples=4,
        warmup_steps=2,
        disable_progbar=True,
    )
    mcmc.run()
    assert mcmc.diagnostics()["divergences"]["chain 0"] == [0, 1, 2, 3]
    assert_close(mcmc.get_samples()["x"], torch.zeros(4, 2, dtype=F64))
