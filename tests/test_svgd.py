"""SVGD with any score (functional and inside Pyro's SVGD) and score-based particle flows."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVGD, IMQSteinKernel, RBFSteinKernel
from pyro.infer.svgd import SteinKernel
from pyro.optim import Adam
from torch.testing import assert_close

import pyro_disco.infer
from pyro_disco import GaussianKDE, GaussianMixture
from pyro_disco.distributions import LearnedScore
from pyro_disco.infer import particles as flow
from pyro_disco.infer import svgd
from pyro_disco.infer.svgd import score_factor, svgd_direction
from pyro_disco.kernels import IMQ, RBF

from helpers import COV_2D, GAUSSIAN_2D, MEAN_2D, check_moments, gen

F64 = torch.float64
# Moments are checked within k iid Monte Carlo standard errors (helpers.check_moments): SVGD
# and the flows place particles deterministically and are at least as accurate as iid draws
# for these moments (Liu & Wang 2016), so the iid standard error is a fair yardstick.
EXACT = dict(rtol=1e-10, atol=1e-12)  # same float64 quantity by two routes


def _start(n, seed, d=2):
    return torch.randn(n, d, generator=gen(seed), dtype=F64)


# ------------------------------------------------------------------ SVGD direction (exact)


@pytest.mark.parametrize("kernel", [RBF(), IMQ(), RBF(bandwidth=0.7)])
def test_direction_matches_autograd_of_the_kernel(kernel):
    x = _start(6, 0)
    phi, h = svgd_direction(x, GAUSSIAN_2D, kernel)
    xj = x.clone().requires_grad_(True)
    k = kernel.profile(torch.cdist(xj, x.detach()).square(), h)[0]  # k(x_j, x_i), grad in x_j
    grad_k = torch.stack(
        [torch.autograd.grad(k[:, i].sum(), xj, retain_graph=True)[0].sum(0) for i in range(6)]
    )
    expected = (k.detach().T @ GAUSSIAN_2D.score(x) + grad_k) / 6
    assert_close(phi, expected, **EXACT)


class _FixedRBFSteinKernel(SteinKernel):
    """Pyro's RBFSteinKernel formula with one fixed bandwidth H for every coordinate."""

    def __init__(self, H):
        self.H = H

    def log_kernel_and_grad(self, particles):
        delta = particles.unsqueeze(0) - particles.unsqueeze(1)  # N N D
        return -(delta**2) / self.H, 2.0 * delta / self.H


def test_pyro_stein_kernel_gives_the_same_direction_as_ours():
    # exp(-|x - y|^2 / H) is our RBF with 2 h^2 = H: Pyro's kernel object, used as Pyro's SVGD
    # uses it, must give our direction to round-off.
    x = _start(7, 0)
    phi_pyro, h = svgd_direction(x, GAUSSIAN_2D, _FixedRBFSteinKernel(0.8))
    phi_ours, _ = svgd_direction(x, GAUSSIAN_2D, RBF(bandwidth=math.sqrt(0.4)))
    assert_close(phi_pyro, phi_ours, **EXACT)
    assert math.isnan(float(h))
    with pytest.raises(TypeError, match="SteinKernel"):
        svgd_direction(x, GAUSSIAN_2D, kernel="rbf")


@pytest.mark.parametrize("kernel", [RBFSteinKernel(), IMQSteinKernel()])
def test_svgd_with_pyro_kernels_recovers_a_gaussian(kernel):
    out = svgd.run(_start(150, 2), GAUSSIAN_2D, 0.05, 300, kernel=kernel)
    check_moments(out.particles, MEAN_2D, COV_2D)


def test_adam_step_is_the_adam_update():
    # torch.optim.Adam rebuilt from the state each step = Kingma & Ba's update written out
    # (ascent on phi, eps outside the square root), to round-off over several steps.
    kernel, lr, (b1, b2), eps = RBF(bandwidth=1.0), 0.1, (0.9, 0.999), 1e-6
    state = svgd.init(_start(10, 3))
    x, m, v = state.particles.clone(), torch.zeros(10, 2, dtype=F64), torch.zeros(10, 2, dtype=F64)
    for t in range(1, 5):
        phi, _ = svgd_direction(x, GAUSSIAN_2D, kernel)
        m = b1 * m + (1 - b1) * phi
        v = b2 * v + (1 - b2) * phi**2
        x = x + lr * (m / (1 - b1**t)) / (eps + (v / (1 - b2**t)).sqrt())
        before = state.particles.clone()
        state, _ = svgd.step(state, GAUSSIAN_2D, lr, kernel=kernel)
        assert_close(state.particles, x, rtol=1e-12, atol=1e-12)
    sgd, _ = svgd.step(svgd.init(before), GAUSSIAN_2D, lr, kernel=kernel, optimizer="sgd")
    assert_close(sgd.particles, before + lr * svgd_direction(before, GAUSSIAN_2D, kernel)[0], **EXACT)


def test_single_particle_follows_the_score():
    x = torch.tensor([[0.3, 0.2]], dtype=F64)
    phi, _ = svgd_direction(x, GAUSSIAN_2D, RBF(bandwidth=1.0))
    assert_close(phi, GAUSSIAN_2D.score(x), **EXACT)


def test_run_shapes_errors_and_no_mutation():
    x = _start(20, 1)
    before = x.clone()
    out = svgd.run(x, GAUSSIAN_2D.score, 0.1, 6, save_every=2)
    assert out.particles.shape == (20, 2) and out.trajectory.shape == (4, 20, 2)
    assert out.info.bandwidth.shape == (6,) and torch.equal(x, before)
    assert svgd.run(x, GAUSSIAN_2D, 0.1, 2).trajectory is None
    with pytest.raises(ValueError, match="optimizer"):
        svgd.run(x, GAUSSIAN_2D, 0.1, 2, optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        svgd.run(x[0], GAUSSIAN_2D, 0.1, 2)
    with pytest.raises(ValueError, match="bandwidth_rule"):
        svgd.run(x, GAUSSIAN_2D, 0.1, 2, bandwidth_rule="silverman")


# ------------------------------------------------------------------ SVGD recovers targets


@pytest.mark.parametrize("kernel,optimizer", [(RBF(), "adam"), (IMQ(), "adam"), (RBF(), "adagrad")])
def test_svgd_recovers_a_gaussian_with_the_exact_score(kernel, optimizer):
    out = svgd.run(_start(150, 2), GAUSSIAN_2D, 0.05, 300, kernel=kernel, optimizer=optimizer)
    check_moments(out.particles, MEAN_2D, COV_2D)


def test_svgd_with_a_kde_score_recovers_the_kde_moments():
    # The KDE's moments are exact: mean(X) and (n-1)/n Cov(X) + H.
    chol = torch.linalg.cholesky(COV_2D)
    kde = GaussianKDE(MEAN_2D + _start(400, 3) @ chol.T)
    n = kde.samples.shape[0]
    mean, cov = kde.samples.mean(0), torch.cov(kde.samples.T) * (n - 1) / n + kde.covariance
    out = svgd.run(_start(150, 4), kde, 0.05, 300)
    check_moments(out.particles, mean, cov)


@pytest.mark.parametrize("score", ["exact", "kde"])
def test_svgd_recovers_mixture_weights(score):
    # 1-D mixture 0.3 N(-1.5, 0.5^2) + 0.7 N(1.5, 0.5^2): the share of particles right of 0
    # matches the exact mass 0.3 Phi(-3) + 0.7 Phi(3) (for the KDE target: the mean of its
    # kernels' normal CDFs) within 4 binomial standard errors.
    mix = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=F64),
        torch.tensor([[-1.5], [1.5]], dtype=F64),
        torch.full((2, 1, 1), 0.25, dtype=F64),
    )
    if score == "exact":
        target = mix
        phi3 = 0.5 * (1 + math.erf(3 / math.sqrt(2)))
        mass = 0.3 * (1 - phi3) + 0.7 * phi3
    else:
        target = GaussianKDE(mix.sample(400, generator=gen(11)))
        z = target.samples.squeeze(-1) / target.covariance.sqrt().squeeze()
        mass = float((0.5 * (1 + torch.erf(z / math.sqrt(2)))).mean())
    n = 200
    out = svgd.run(2.0 * _start(n, 5, d=1), target, 0.05, 400)
    frac = float((out.particles[:, 0] > 0).double().mean())
    assert abs(frac - mass) < 4 * math.sqrt(mass * (1 - mass) / n)


# ------------------------------------------------------------------ inside Pyro's SVGD


def _pyro_svgd(model, steps=300, n=100):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svgd = SVGD(model, RBFSteinKernel(), Adam({"lr": 0.05}), num_particles=n, max_plate_nesting=0)
    for _ in range(steps):
        svgd.step()
    return svgd.get_named_particles()["z"].detach().double()


def test_learned_score_site_in_pyro_svgd():
    # A LearnedScore site: Pyro's SVGD follows the KDE score through log_prob's gradient.
    chol = torch.linalg.cholesky(COV_2D)
    prior = LearnedScore(MEAN_2D + _start(400, 6) @ chol.T, estimator="kde")
    x = prior.samples
    mean, cov = x.mean(0), torch.cov(x.T) * (x.shape[0] - 1) / x.shape[0] + prior.estimator.covariance

    def model():
        pyro.sample("z", prior)

    check_moments(_pyro_svgd(model), mean, cov)


def test_score_factor_in_pyro_svgd():
    # Only a score function: the site is sampled from a unit Normal base (Pyro's SVGD draws its
    # initial particles from it) and score_factor supplies score - base score.
    base = dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1)

    def model():
        z = pyro.sample("z", base)
        score_factor("z_score", z, GAUSSIAN_2D.score, base=base)

    check_moments(_pyro_svgd(model), MEAN_2D, COV_2D)


def test_score_factor_value_is_zero_and_gradient_is_the_score():
    x = _start(5, 7).requires_grad_(True)

    def model():
        return score_factor("f", x, GAUSSIAN_2D.score)

    tr = pyro.poutine.trace(model).get_trace()
    lp = tr.log_prob_sum()
    (g,) = torch.autograd.grad(lp, x)
    assert float(lp.detach()) == 0.0
    assert_close(g, GAUSSIAN_2D.score(x.detach()), **EXACT)


def test_first_release_names_are_the_same_functions():
    # init/step/run per module (BlackJAX's naming); the prefixed names of the first release stay
    assert (svgd.svgd_init, svgd.svgd_step, svgd.svgd_run) == (svgd.init, svgd.step, svgd.run)
    assert (flow.flow_init, flow.flow_step, flow.flow_run) == (flow.init, flow.step, flow.run)
    assert pyro_disco.infer.svgd_run is svgd.run and pyro_disco.infer.flow_run is flow.run


def test_flow_first_release_keyword_names_still_work():
    x = _start(30, 1)
    new = flow.run(x, GAUSSIAN_2D, fit=GaussianKDE, step_size=0.1, num_steps=3)
    with pytest.warns(DeprecationWarning):
        old = flow.flow_run(x, target_score=GAUSSIAN_2D, estimator_fn=GaussianKDE, step_size=0.1, num_steps=3)
    assert torch.equal(old.particles, new.particles)


def test_flow_refits_skip_the_outlier_check_and_move_the_same(monkeypatch):
    # run() checks the starting particles for outliers once; the refits of later steps skip the
    # check, and the particles are bit for bit those of step() repeated (which checks each fit).
    import pyro_disco.estimators.whitening as whitening

    x = _start(300, 1)
    checks = []
    outlier_stats = whitening._outlier_stats
    monkeypatch.setattr(whitening, "_outlier_stats", lambda *a: checks.append(1) or outlier_stats(*a))
    out = flow.run(x, GAUSSIAN_2D, GaussianKDE, step_size=0.05, num_steps=5)
    assert len(checks) == 1
    state = flow.init(x)
    for _ in range(5):
        state, _ = flow.step(state, GAUSSIAN_2D, 0.05, GaussianKDE)
    assert len(checks) == 1 + 5
    assert torch.equal(out.particles, state.particles)


# ------------------------------------------------------------------ score-based particle flow


class GaussianFit:
    """Moment-matched Gaussian of the particles: with a Gaussian target the flow is then exact
    (its covariance obeys the Fokker-Planck ODE dC/dt = 2I - S^{-1}C - CS^{-1}, fixed point S)."""

    def __init__(self, particles):
        self.mean = particles.mean(0)
        self.prec = torch.linalg.inv(torch.cov(particles.T))

    def score(self, x):
        return -(x - self.mean) @ self.prec


def test_flow_with_exact_cloud_score_converges_to_the_target():
    x0 = 0.5 * _start(100, 8) + 3.0
    out = flow.run(x0, GAUSSIAN_2D, GaussianFit, step_size=0.05, num_steps=600)
    # exponential convergence at rate >= 1/2.2 (the largest eigenvalue of S): error ~ 4 e^{-13.6} at t = 30
    assert_close(out.particles.mean(0), MEAN_2D, rtol=0, atol=1e-4)
    assert_close(torch.cov(out.particles.T), COV_2D, rtol=1e-3, atol=1e-4)


def test_flow_covariance_follows_the_fokker_planck_ode():
    # Euler steps of the particle flow = Euler steps of the covariance ODE, exactly.
    x = _start(50, 9)
    state = flow.init(x)
    prec = torch.linalg.inv(COV_2D)
    cov = torch.cov(x.T)
    h = 0.01
    for _ in range(5):
        state, _ = flow.step(state, GAUSSIAN_2D, h, GaussianFit)
        a = torch.eye(2, dtype=F64) - h * prec + h * torch.linalg.inv(cov)
        cov = a @ cov @ a.T
    assert_close(torch.cov(state.particles.T), cov, rtol=1e-9, atol=1e-12)
    assert_close(state.time, torch.tensor(0.05, dtype=F64), **EXACT)


def test_blob_flow_with_kde_is_biased_as_predicted():
    # With a Scott KDE (H = f^2 Cov, f^2 = n^{-1/3}) the flow settles near Cov = S / (1 + f^2):
    # the mean is exact (4 iid SE); the covariance is matched to 12 % because the KDE's
    # self-interaction at each particle adds a further ~5-7 % contraction at n = 200 (measured).
    n = 200
    out = flow.run(_start(n, 10), GAUSSIAN_2D, step_size=0.1, num_steps=150, save_every=50)
    p = out.particles
    assert out.trajectory.shape == (4, n, 2) and out.times.shape == (4,)
    assert ((p.mean(0) - MEAN_2D).abs() < 4 * (COV_2D.diagonal() / n).sqrt()).all()
    predicted = COV_2D / (1 + n ** (-1 / 3))
    assert_close(torch.cov(p.T), predicted, rtol=0.12, atol=0.06)
    assert float(out.info.mean_speed[-1]) < 0.01  # stationary
