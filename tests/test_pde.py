"""Particle solvers for Fokker–Planck and Landau against exact solutions (pyro_disco.pde)."""

import functools
import math

import pytest
import torch
from torch.testing import assert_close

from pyro_disco import GaussianKDE, GaussianMixture
from pyro_disco.pde import (
    BKW,
    FokkerPlanck,
    GaussianMixtureSolution,
    Landau,
    MaxwellRelaxation,
    diagnostics,
    landau_velocity,
    mixture_moments,
    solve,
)

DT = torch.float64
ROUNDOFF = dict(rtol=0.0, atol=1e-12)  # sums of O(n) terms of size O(1) in float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def two_mode_mixture():
    return GaussianMixture(
        torch.tensor([0.4, 0.6], dtype=DT),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=DT),
        torch.stack([0.3 * torch.eye(2, dtype=DT), torch.tensor([[0.5, 0.1], [0.1, 0.2]], dtype=DT)]),
    )


class GaussianFit:
    """Score of the Gaussian fitted to the particles: a legitimate (parametric) estimator."""

    def __init__(self, x):
        self.dim, self.mean = x.shape[1], x.mean(0)
        self.precision = torch.linalg.inv(diagnostics.covariance(x))

    def score(self, y):
        return -(y - self.mean) @ self.precision


def smooth_arbitrary_score(d, seed=0):
    """Some score that has nothing to do with the particles' density (conservation holds anyway)."""
    w = torch.randn(d, d, generator=gen(seed), dtype=DT)
    return lambda x, t: torch.tanh(x @ w) * (1 + t)


def covariance_se(x):
    """Monte Carlo standard error of each entry of the (1/n) covariance of x."""
    xc = x - x.mean(0)
    prods = xc[:, :, None] * xc[:, None, :]
    return prods.std(0) / math.sqrt(x.shape[0])


# --------------------------------------------------------------------------- contract


def test_solve_contract_shapes_no_mutation_and_errors():
    bkw = BKW.standard_2d()
    x0 = bkw.sample_initial(60, generator=gen(0))
    copy = x0.clone()
    traj = solve(bkw, x0, [0.0, 0.5, 1.0], fit=GaussianKDE, method="heun", step_size=0.25, progress=False)
    assert traj.particles.shape == (3, 60, 2) and traj.times.shape == (3,)
    assert traj.diagnostics["covariance"].shape == (3, 2, 2)
    assert traj.diagnostics["fourth_moment_error"].shape == (3,)
    keys = {"entropy", "entropy_rate", "score_error", "energy_drift", "momentum_drift"}
    assert keys <= set(traj.diagnostics)
    assert torch.equal(x0, copy) and torch.equal(traj.particles[0], x0)
    with pytest.raises(ValueError, match="method"):
        solve(bkw, x0, [0.0, 1.0], method="rk45", progress=False)
    with pytest.raises(ValueError, match="increasing"):
        solve(bkw, x0, [1.0, 0.0], progress=False)
    with pytest.raises(ValueError, match="exact"):
        solve(Landau.maxwell(), x0, [0.0, 1.0], score="exact", progress=False)
    with pytest.raises(TypeError, match="factory"):
        solve(bkw, x0, [0.0, 1.0], score=GaussianKDE(x0), progress=False)
    with pytest.raises(TypeError, match="factory"):
        solve(bkw, x0, [0.0, 1.0], fit=GaussianKDE(x0), progress=False)
    with pytest.raises(ValueError, match="one of"):
        solve(bkw, x0, [0.0, 1.0], score="exact", fit=GaussianKDE, progress=False)
    with pytest.raises(TypeError, match="problem"):
        solve("landau", x0, [0.0, 1.0], progress=False)
    with pytest.raises(ValueError, match="K >="):
        BKW(Landau.maxwell(1 / 16), 2, C=0.9)
    with pytest.raises(ValueError, match="gamma"):
        Landau(gamma=-4.0)


def test_landau_velocity_blocks_match_the_pairwise_formula():
    v = torch.randn(23, 3, generator=gen(1), dtype=DT)
    s = torch.randn(23, 3, generator=gen(2), dtype=DT)
    z, ds = v[:, None] - v[None], s[:, None] - s[None]
    r2 = (z * z).sum(-1, keepdim=True)
    for gamma in (0.0, -3.0):
        w = torch.where(r2 > 0, r2.clamp_min(1e-300) ** (gamma / 2), torch.zeros_like(r2))
        ref = -(0.7 / 23) * (w * (r2 * ds - (z * ds).sum(-1, keepdim=True) * z)).sum(1)
        for block in (1, 5, 23, 100):
            got = landau_velocity(v, s, gamma=gamma, B=0.7, block_size=block, algorithm="pairwise")
            assert_close(got, ref, rtol=1e-13, atol=1e-14)  # same sums, different blocking
    moments = landau_velocity(v, s, B=0.7, algorithm="moments")  # Maxwell: O(n d^2) expansion
    assert_close(moments, landau_velocity(v, s, B=0.7, algorithm="pairwise"), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Maxwell"):
        landau_velocity(v, s, gamma=-3.0, algorithm="moments")


def test_coulomb_guard_at_coincident_particles():
    v = torch.randn(10, 3, generator=gen(3), dtype=DT)
    v = torch.cat([v, v[:2]])  # two exact duplicates: z = 0 between distinct particles
    s = torch.randn(12, 3, generator=gen(4), dtype=DT)
    u = Landau.coulomb().velocity(v, s)
    assert bool(torch.isfinite(u).all())
    assert_close(u.sum(0), torch.zeros(3, dtype=DT), **ROUNDOFF)


# --------------------------------------------------------------------------- exact references


@pytest.mark.parametrize("bkw", [BKW.standard_2d(), BKW.standard_3d()], ids=["2d", "3d"])
def test_bkw_score_moments_and_sampler(bkw):
    x = torch.randn(7, bkw.dim, generator=gen(5), dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(bkw.logdensity(x, 1.0).sum(), x)
    assert_close(bkw.score(x.detach(), 1.0), grad, rtol=1e-12, atol=1e-12)  # closed form == autograd
    assert bkw.radial_moment(0, 2.0) == pytest.approx(1.0, abs=1e-12)  # mass
    assert bkw.radial_moment(1, 2.0) == pytest.approx(bkw.dim, abs=1e-12)  # energy: covariance I
    assert bkw.radial_moment(2, 2.0) == pytest.approx(float(bkw.fourth_moment(2.0)), rel=1e-12)
    n = 20000
    draws = bkw.sample(n, 2.0, generator=gen(6))
    r4 = (draws**2).sum(-1) ** 2
    se = math.sqrt((bkw.radial_moment(4, 2.0) - bkw.radial_moment(2, 2.0) ** 2) / n)
    assert abs(float(r4.mean()) - bkw.radial_moment(2, 2.0)) < 4 * se  # 4 MC standard errors
    assert float((diagnostics.covariance(draws) - torch.eye(bkw.dim, dtype=DT)).abs().max()) < 4 * float(
        covariance_se(draws).max()
    )


def test_bkw_landau_velocity_is_a_monte_carlo_estimate_of_the_mean_field():
    """With the exact score, u_p = mean_q T_pq estimates U(v_p) = -(d-1)B(v_p + s(v_p))."""
    bkw, n = BKW.standard_3d(), 400
    v = bkw.sample_initial(n, generator=gen(7))
    s = bkw.score(v, 0.0)
    u = landau_velocity(v, s, B=bkw.problem.B)
    z, ds = v[:, None] - v[None], s[:, None] - s[None]
    terms = -bkw.problem.B * ((z * z).sum(-1, keepdim=True) * ds - (z * ds).sum(-1, keepdim=True) * z)
    se = terms.std(1) / math.sqrt(n)  # n d: per-particle, per-coordinate standard error
    zscores = (u - bkw.velocity(v, 0.0)) / se
    # ~1 if independent; all particles share one q-sample, so the mean square scatters (0.5-2.9 over
    # 10 seeds); a wrong velocity (e.g. a sign or a factor 2 in B) gives >> 10
    assert float((zscores**2).mean()) < 4.0


def test_gaussian_mixture_fourth_moment_and_ou_solution():
    gm = two_mode_mixture()
    mean, cov, m4 = mixture_moments(gm)
    x = gm.sample(200000, generator=gen(8))
    r4 = (x**2).sum(-1) ** 2
    assert abs(float(r4.mean() - m4)) < 4 * float(r4.std()) / math.sqrt(x.shape[0])  # 4 MC SE
    assert_close(cov, diagnostics.covariance(x), rtol=0, atol=4 * float(covariance_se(x).max()))
    sol = GaussianMixtureSolution(FokkerPlanck.ornstein_uhlenbeck(), gm)
    assert_close(sol.covariance(40.0), torch.eye(2, dtype=DT), rtol=0, atol=1e-12)  # stationary N(0, I)
    heat = GaussianMixtureSolution(FokkerPlanck.heat(0.5), gm)
    assert_close(heat.covariance(3.0), cov + 3.0 * torch.eye(2, dtype=DT), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "problem", [FokkerPlanck.ornstein_uhlenbeck(), FokkerPlanck.heat(0.5)], ids=["ou", "heat"]
)
def test_gaussian_start_moves_by_the_exact_affine_flow(problem):
    """Diagonal Gaussian start + exact score: x(t) = m(t) + M(t)(x0 - m0), M = (Sigma(t)/Sigma0)^(1/2)."""
    m0, var0 = torch.tensor([1.0, -0.5], dtype=DT), torch.tensor([0.3, 2.0], dtype=DT)
    sol = GaussianMixtureSolution(
        problem, GaussianMixture(torch.ones(1, dtype=DT), m0[None], torch.diag(var0)[None])
    )
    x0 = sol.sample_initial(200, generator=gen(9))
    traj = solve(
        sol, x0, torch.linspace(0, 1, 3), score="exact", method="heun", step_size=0.01, progress=False
    )
    for t, x in zip(traj.times.tolist(), traj.particles, strict=True):
        scale = (sol.covariance(t).diagonal() / var0).sqrt()
        # Heun's O(h^2) error: measured 3.2e-4 at h = 0.01 (8e-5 at h = 0.005; Euler 2.4e-2)
        assert_close(x, sol.mean(t) + (x0 - m0) * scale, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "problem", [FokkerPlanck.ornstein_uhlenbeck(), FokkerPlanck.heat(0.5)], ids=["ou", "heat"]
)
def test_two_mode_start_tracks_the_exact_covariance(problem):
    sol = GaussianMixtureSolution(problem, two_mode_mixture())
    x0 = sol.sample_initial(300, generator=gen(10))
    times = torch.linspace(0, 2, 5)
    exact = solve(sol, x0, times, score="exact", method="heun", step_size=0.05, progress=False)
    for t, x in zip(times.tolist(), exact.particles, strict=True):
        err = (diagnostics.covariance(x) - sol.covariance(t)).abs()
        assert bool((err < 4 * covariance_se(x)).all()), t  # exact samples: within 4 MC SE
    assert_close(exact.diagnostics["score_error"], torch.zeros(5, dtype=DT), rtol=0, atol=0)
    kde = solve(sol, x0, times, fit=GaussianKDE, method="heun", step_size=0.05, progress=False)
    score_error = kde.diagnostics["score_error"]
    assert float(score_error[-1]) < float(score_error[0])  # mixture -> unimodal: KDE's score improves
    assert float(score_error.max()) < 0.5  # Scott KDE at n=300, d=2: ~30% on a two-mode start


# --------------------------------------------------------------------------- Landau validation


@pytest.mark.parametrize("bkw", [BKW.standard_2d(), BKW.standard_3d()], ids=["2d", "3d"])
def test_bkw_exact_score_tracks_the_fourth_moment(bkw):
    n = 300
    x0 = bkw.sample_initial(n, generator=gen(11))
    times = torch.linspace(0, 5, 6)
    traj = solve(bkw, x0, times, score="exact", method="heun", step_size=0.625, progress=False)
    for t, m4 in zip(times.tolist(), traj.diagnostics["fourth_moment"], strict=True):
        se = math.sqrt((bkw.radial_moment(4, t) - bkw.radial_moment(2, t) ** 2) / n)
        assert abs(float(m4) - bkw.radial_moment(2, t)) < 3 * se, t  # particle + time error << 3 MC SE
    assert float(traj.diagnostics["momentum_drift"].max()) < 1e-14


def test_convergence_order_euler_one_heun_two():
    bkw, T = BKW.standard_3d(), 5.0
    x0 = bkw.sample_initial(150, generator=gen(12))

    def final(method, steps):
        return solve(
            bkw, x0, [0.0, T], score="exact", method=method, step_size=T / steps, progress=False
        ).particles[-1]

    ref = final("heun", 128)

    def err(method, steps):
        return float((final(method, steps) - ref).norm() / ref.norm())

    euler = diagnostics.convergence_order(err("euler", 8), err("euler", 16))
    heun = diagnostics.convergence_order(err("heun", 4), err("heun", 8))
    assert 0.8 < euler < 1.25, euler  # measured 1.02 (n=300)
    assert 1.7 < heun < 2.3, heun  # measured 1.86 (n=300)


def test_anisotropic_maxwell_relaxation_law():
    """A Gaussian start relaxes by Sigma(t) = Sigma_inf - (Sigma_inf - Sigma_0) exp(-4dBt)."""
    d = 3
    law = MaxwellRelaxation(Landau.maxwell(1 / (4 * d)), torch.diag(torch.tensor([1.8, 0.6, 0.6], dtype=DT)))
    x0 = law.sample_initial(300, generator=gen(13))
    own = MaxwellRelaxation.from_particles(law.problem, x0)
    times = torch.linspace(0, 2, 5)
    traj = solve(own, x0, times, fit=GaussianFit, method="midpoint", step_size=0.1, progress=False)
    tol = 2 * float(covariance_se(x0).max())  # the non-Gaussian corrections are well inside 2 MC SE
    for t, cov in zip(times.tolist(), traj.diagnostics["covariance"], strict=True):
        assert_close(cov, own.covariance(t), rtol=0, atol=tol)
    trace = traj.diagnostics["covariance"].diagonal(dim1=-2, dim2=-1).sum(-1)
    assert_close(trace, trace[:1].expand(5), rtol=1e-12, atol=0)  # midpoint keeps the energy (trace)


# --------------------------------------------------------------------------- invariants


def test_refits_skip_the_outlier_check_and_give_the_same_trajectory(monkeypatch):
    # The estimator refitted at every velocity evaluation checks the starting particles for
    # outliers once (OutlierWarning), not at every step (~2 ms each); the check never changed
    # the estimate, so the trajectory is bit for bit the one that checks every refit.
    import sys
    from contextlib import nullcontext

    import pyro_disco.estimators.whitening as whitening

    bkw = BKW.standard_3d()
    x0 = bkw.sample_initial(200, generator=gen(0))
    checks = []
    outlier_stats = whitening._outlier_stats
    monkeypatch.setattr(whitening, "_outlier_stats", lambda *a: checks.append(1) or outlier_stats(*a))
    run = functools.partial(solve, bkw, x0, [0.0, 0.5], fit=GaussianKDE, method="heun", step_size=0.125)
    fast = run(progress=False)
    assert len(checks) == 1  # 9 fits: the first one checks
    monkeypatch.setattr(sys.modules["pyro_disco.pde.solve"], "quiet_outliers", nullcontext)
    every = run(progress=False)
    assert len(checks) == 1 + 9
    assert torch.equal(fast.particles, every.particles)
    for key in fast.diagnostics:
        assert torch.equal(fast.diagnostics[key], every.diagnostics[key]), key


def test_first_release_spellings_of_fit_and_score_fn_still_work():
    # score=<factory> and score=<score_fn(x, t)> (told apart by signature before) give the same
    # trajectories as fit= and score_fn=, with a DeprecationWarning; a partial is a factory too.
    bkw = BKW.standard_2d()
    x0 = bkw.sample_initial(40, generator=gen(0))
    run = functools.partial(solve, bkw, x0, [0.0, 0.5], method="heun", step_size=0.25, progress=False)
    factory = functools.partial(GaussianKDE, bandwidth="silverman")
    with pytest.warns(DeprecationWarning, match="fit="):
        legacy = run(score=factory)
    assert torch.equal(legacy.particles, run(fit=factory).particles)
    score_fn = smooth_arbitrary_score(2)
    with pytest.warns(DeprecationWarning, match="score_fn="):
        legacy = run(score=score_fn)
    assert torch.equal(legacy.particles, run(score_fn=score_fn).particles)


@pytest.mark.parametrize("landau", [Landau.maxwell(0.1), Landau.coulomb(0.1)], ids=["maxwell", "coulomb"])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_momentum_conserved_and_energy_rate_zero_for_any_score(landau, method):
    x0 = torch.randn(80, 3, generator=gen(14), dtype=DT)
    traj = solve(
        landau,
        x0,
        torch.linspace(0, 1, 5),
        score_fn=smooth_arbitrary_score(3),
        method=method,
        step_size=0.05,
        progress=False,
    )
    dg = traj.diagnostics
    assert_close(dg["momentum_drift"], torch.zeros(5, dtype=DT), **ROUNDOFF)
    assert_close(dg["momentum_rate"], torch.zeros(5, dtype=DT), **ROUNDOFF)
    assert_close(dg["energy_rate"], torch.zeros(5, dtype=DT), **ROUNDOFF)  # d/dt sum |v|^2 = 0 exactly
    assert bool((dg["entropy_rate"] >= -1e-12).all())  # H-theorem holds for any score: A(z) is PSD


def test_implicit_midpoint_conserves_energy_to_roundoff_with_kde_score():
    bkw = BKW.standard_2d()
    x0 = bkw.sample_initial(100, generator=gen(15))
    traj = solve(bkw, x0, [0.0, 1.0], fit=GaussianKDE, method="midpoint", step_size=0.25, progress=False)
    assert float((traj.particles[-1] - x0).abs().max()) > 1e-2  # it moved
    assert_close(traj.diagnostics["energy_drift"], torch.zeros(2, dtype=DT), rtol=0, atol=1e-12)
    assert_close(traj.diagnostics["momentum_drift"], torch.zeros(2, dtype=DT), **ROUNDOFF)


def test_density_l2_error_against_gaussian_closed_form():
    a, d = 1.3, 2
    zero, eye = torch.zeros(1, d, dtype=DT), torch.eye(d, dtype=DT)[None]
    exact = GaussianMixture(torch.ones(1, dtype=DT), zero, eye)
    wide = GaussianMixture(torch.ones(1, dtype=DT), zero, a**2 * eye)
    got = diagnostics.density_l2_error(
        lambda y: wide.logdensity(y).exp(),
        lambda y: exact.logdensity(y).exp(),
        torch.zeros(d, dtype=DT),
        torch.full((d,), 1.5, dtype=DT),
    )
    n_est, n_ref, cross = (4 * math.pi * a**2) ** -1, (4 * math.pi) ** -1, (2 * math.pi * (1 + a**2)) ** -1
    want = math.sqrt((n_est + n_ref - 2 * cross) / n_ref)
    assert float(got) == pytest.approx(want, rel=1e-6)  # midpoint rule on a smooth integrand


def test_score_fn_and_factory_paths_and_entropy_of_a_gaussian():
    """Heat from N(0, diag): the entropy diagnostic matches 1/2 log det(2 pi e Sigma(t)) within 4 MC SE."""
    heat = FokkerPlanck.heat(0.5)
    sol = GaussianMixtureSolution(
        heat,
        GaussianMixture(
            torch.ones(1, dtype=DT),
            torch.zeros(1, 2, dtype=DT),
            torch.diag(torch.tensor([0.5, 2.0], dtype=DT))[None],
        ),
    )
    x0 = sol.sample_initial(400, generator=gen(16))
    times = torch.linspace(0, 1, 3)
    exact = solve(sol, x0, times, score="exact", method="heun", step_size=0.05, progress=False)
    as_fn = solve(
        heat, x0, times, score_fn=lambda x, t: sol.score(x, t), method="heun", step_size=0.05, progress=False
    )
    assert_close(as_fn.particles, exact.particles, rtol=0, atol=0)  # same velocity, same numbers
    assert "entropy" not in as_fn.diagnostics and "covariance_error" not in as_fn.diagnostics
    se = math.sqrt(2 / 2 / 400)  # Var(log N(x; 0, Sigma)) = d/2 under x ~ N(0, Sigma)
    for t, h in zip(times.tolist(), exact.diagnostics["entropy"], strict=True):
        want = 0.5 * float(torch.logdet(2 * math.pi * math.e * sol.covariance(t)))
        assert abs(float(h) - want) < 4 * se, t
    kde = solve(heat, x0, times, fit=GaussianKDE, step_size=0.1, progress=False)
    assert bool((kde.diagnostics["entropy_rate"] > 0).all())  # heat: dH/dt = D E|s|^2 > 0
    with pytest.raises(ValueError, match="d <= 3"):
        diagnostics.density_l2_error(lambda y: y[:, 0], lambda y: y[:, 0], torch.zeros(4), torch.ones(4))
