"""Samplers that contain faults (issue 12, item 6): one NaN chain, a mis-shaped user score,
NaN particles in SVGD."""

import pytest
import torch

from pyro_disco.infer import langevin
from pyro_disco.infer.svgd import svgd_direction


def _std_normal_with_a_hole(x):
    """log N(0, I) with NaN where x_0 > 50 (a chain started there starts at NaN)."""
    logp = -0.5 * x.square().sum(-1)
    logp = torch.where(x[..., 0] > 50, torch.full_like(logp, float("nan")), logp)
    return logp, -x


def test_one_nan_chain_does_not_freeze_the_others():
    """Was: dual averaging took the NaN mean, the step size became NaN and 0 of 64 chains moved,
    with no exception. Now the NaN chain is divergent and stays put; the others adapt and move."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    x0[5] = torch.tensor([100.0, 0.0], dtype=torch.float64)
    run = langevin.run(
        x0,
        lambda x: -x,
        0.5,
        50,
        method="mala",
        logdensity_fn=lambda x: _std_normal_with_a_hole(x)[0],
        num_warmup=50,
        generator=g,
    )
    assert run.step_size > 0 and torch.isfinite(torch.tensor(run.step_size))
    moved = (run.samples[:, -1] != run.samples[:, 0]).any(-1)
    assert int(moved.sum()) == 63 and not bool(moved[5])
    assert bool(run.info.is_divergent[5].all())
    assert not bool(run.info.is_divergent[torch.arange(64) != 5].all(-1).any())
    # the healthy chains sample N(0, I): variance within 5 Monte Carlo standard errors (~0.05 each)
    var = run.samples[torch.arange(64) != 5].reshape(-1, 2).var(0)
    assert bool(((var - 1).abs() < 0.3).all()), var


@pytest.mark.parametrize("method", ["ula", "mala"])
def test_score_of_the_wrong_shape_is_an_error(method):
    """Was: a score of shape (n, 1) for d = 2 broadcast silently."""
    x0 = torch.zeros(8, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="the score must have the positions' shape"):
        langevin.run(
            x0,
            lambda x: -x[..., :1],
            0.1,
            3,
            method=method,
            logdensity_fn=lambda x: -0.5 * x.square().sum(-1),
        )


def test_svgd_with_nan_particles_says_nan():
    """Was: 'the points are (nearly) all identical'."""
    x = torch.randn(20, 2, dtype=torch.float64)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        svgd_direction(x, lambda z: -z)
    with pytest.raises(ValueError, match="shape"):
        svgd_direction(torch.randn(20, 2, dtype=torch.float64), lambda z: -z[:, :1])
