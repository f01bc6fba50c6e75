"""arviz bridge: chains / MCMC runs / particles to arviz data; ESS and R-hat from both backends."""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC

from pyro_disco.infer import MALA, ULA
from pyro_disco.infer.arviz import arviz_major_version, ess_rhat, from_mcmc, from_particles, to_inference_data


def _posterior(data):
    return data["posterior"] if arviz_major_version() >= 1 else data.posterior


def _sample_stats(data):
    return data["sample_stats"] if arviz_major_version() >= 1 else data.sample_stats


def _ar1(chains, draws, rho, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(chains, draws, 2, generator=g, dtype=torch.float64)
    x = torch.empty_like(eps)
    x[:, 0] = eps[:, 0]
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * eps[:, t]
    return x


def model():
    pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def test_chains_to_inference_data():
    x = torch.randn(3, 50, 2)
    stats = {"diverging": torch.zeros(3, 50, dtype=torch.bool), "acceptance_rate": torch.rand(3, 50)}
    data = to_inference_data(x, sample_stats=stats)
    post = _posterior(data)
    assert post["x"].shape == (3, 50, 2)
    np.testing.assert_array_equal(post["x"].values, x.numpy())
    assert set(_sample_stats(data).data_vars) == {"diverging", "acceptance_rate"}
    assert az.summary(data).shape[0] == 2


def test_dict_input_and_shape_errors():
    data = to_inference_data({"a": torch.randn(2, 10), "b": torch.randn(2, 10, 3)})
    assert set(_posterior(data).data_vars) == {"a", "b"}
    with pytest.raises(ValueError, match="chains, draws"):
        to_inference_data(torch.randn(10))
    with pytest.raises(ValueError, match="one \\(chains, draws\\)"):
        to_inference_data(torch.randn(2, 10, 1), sample_stats={"diverging": torch.zeros(2, 9)})


@pytest.mark.parametrize("kernel_cls", [ULA, MALA])
def test_langevin_mcmc_feeds_arviz(kernel_cls):
    pyro.set_rng_seed(0)
    mcmc = MCMC(kernel_cls(model, step_size=0.3), num_samples=40, warmup_steps=20, disable_progbar=True)
    mcmc.run()
    data = from_mcmc(mcmc)
    assert _posterior(data)["z"].shape == (1, 40, 2)
    stats = _sample_stats(data)
    assert stats["diverging"].shape == (1, 40) and stats["diverging"].dtype == bool
    assert stats["acceptance_rate"].shape == (1, 40)
    if arviz_major_version() == 0:  # arviz 0.x's own converter reads our kernel too
        pyro_data = az.from_pyro(mcmc)
        assert pyro_data.sample_stats["diverging"].shape == (1, 40)
        np.testing.assert_array_equal(pyro_data.posterior["z"].values, _posterior(data)["z"].values)


def test_divergences_land_on_the_right_draws():
    def bad(x):
        return torch.full_like(x, float("inf"))

    mcmc = MCMC(
        ULA(score=bad, initial_params={"x": torch.zeros(2)}),
        num_samples=4,
        warmup_steps=1,
        disable_progbar=True,
    )
    mcmc.run()
    # (Pyro's MCMC.diagnostics needs >= 4 draws)
    assert _sample_stats(from_mcmc(mcmc))["diverging"].values.tolist() == [[True] * 4]


def test_particles_and_trajectories():
    final = from_particles(torch.randn(30, 2))
    assert _posterior(final)["x"].shape == (1, 30, 2)
    traj = from_particles(torch.randn(5, 30, 2))  # saved steps, particles, d
    assert _posterior(traj)["x"].shape == (30, 5, 2)
    with pytest.raises(ValueError, match="particles"):
        from_particles(torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize("backend", ["arviz", "pyro"])
def test_ess_of_an_ar1_chain(backend):
    # AR(1) with rho = 0.5 has ESS = N (1 - rho) / (1 + rho) = N / 3. Estimates of ESS scatter by
    # ~5-10 % at N = 4000 (autocorrelation-sum estimators); 25 % is a 3-4 sigma band.
    x = _ar1(4, 1000, 0.5, seed=1)
    out = ess_rhat(x, backend=backend)
    assert out["ess"].shape == (2,) and out["rhat"].shape == (2,)
    assert ((out["ess"] / (4000 / 3) - 1).abs() < 0.25).all(), out["ess"]
    assert (out["rhat"] < 1.02).all()


@pytest.mark.parametrize("backend", ["arviz", "pyro"])
def test_rhat_flags_chains_that_disagree(backend):
    x = _ar1(4, 200, 0.0, seed=2)
    x[0] += 3.0  # one chain stuck elsewhere
    assert (ess_rhat(x, backend=backend)["rhat"] > 1.3).all()


def test_ess_backends_agree_and_errors():
    x = _ar1(3, 500, 0.3, seed=3)
    a, p = ess_rhat(x, backend="arviz"), ess_rhat(x, backend="pyro")
    # both are split R-hat; arviz rank-normalises, which moves values near 1 by well under 1 %
    torch.testing.assert_close(a["rhat"], p["rhat"], rtol=0.01, atol=0.0)
    with pytest.raises(ValueError, match="draws >= 4"):
        ess_rhat(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="backend"):
        ess_rhat(x, backend="stan")


def test_without_arviz_a_clear_error_and_the_pyro_fallback(monkeypatch):
    """arviz is an extra: without it the conversions name the extra, and ESS/R-hat use Pyro."""
    import sys

    monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz now raises ImportError
    chains = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ImportError, match=r'pip install "pyro-disco\[arviz\]"'):
        to_inference_data(chains)
    assert arviz_major_version() is None
    out = ess_rhat(chains)
    torch.testing.assert_close(out["ess"], ess_rhat(chains, backend="pyro")["ess"], rtol=0, atol=0)
