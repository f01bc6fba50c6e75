"""Which density the MCMC kernels sample when an estimator's two heads disagree (issue 16, item 5).

A ``LearnedScore``'s ``log_prob`` value is the estimator's log-density head and its gradient is
the score head. Metropolis-corrected kernels (MALA, HMC, NUTS) accept or reject with the
*values*: the leapfrog and the Langevin proposal may use any vector field and the chain still
targets exp(log-density head) exactly. ULA and SVGD never look at the values: they follow the
score head. A deliberately inconsistent estimator makes the difference large enough to see.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import HMC, MCMC

from pyro_disco import LearnedScore
from pyro_disco.infer.langevin import run

F64 = torch.float64


class _TwoHeads:
    """log-density head: N(0, 1); score head: that of N(2, 1) (not its gradient)."""

    dim, dtype = 1, F64

    def logdensity(self, x):
        return -0.5 * x[..., 0] ** 2 - 0.5 * math.log(2 * math.pi)

    def score(self, x):
        return 2.0 - x

    def logdensity_and_score(self, x):
        return self.logdensity(x), self.score(x)


def _mean_se(x):
    """Mean and a batch-means standard error of a chain ``(steps,)``."""
    batches = x[: x.shape[0] // 20 * 20].reshape(20, -1).mean(-1)
    return float(x.mean()), float(batches.std() / math.sqrt(20))


@pytest.mark.parametrize(("method", "mean"), [("mala", 0.0), ("ula", 2.0)])
def test_mala_targets_the_density_head_and_ula_the_score_head(method, mean):
    g = torch.Generator().manual_seed(3)
    out = run(
        torch.zeros(64, 1, dtype=F64), _TwoHeads(), 0.3, 400, method=method, num_warmup=200, generator=g
    )
    m = float(out.samples.mean())
    se = float(out.samples.mean(dim=(1, 2)).std() / math.sqrt(64))  # across independent chains
    assert abs(m - mean) < 5 * se + (0.05 if method == "ula" else 0.0), (m, se)  # ULA: O(h) bias
    assert abs(m - (2.0 - mean)) > 1.0  # and not the other head's mean


def test_hmc_on_a_learned_score_targets_the_density_head():
    prior = LearnedScore(torch.randn(200, 1, dtype=F64), _TwoHeads())

    def model():
        pyro.sample("theta", prior)

    pyro.set_rng_seed(0)
    mcmc = MCMC(
        HMC(model, step_size=0.5, num_steps=4, adapt_step_size=False),
        num_samples=1500,
        warmup_steps=200,
        disable_progbar=True,
    )
    mcmc.run()
    m, se = _mean_se(mcmc.get_samples()["theta"].reshape(-1))
    assert abs(m) < 5 * se + 0.02, (m, se)  # N(0, 1), the density head; the score head's mean is 2
