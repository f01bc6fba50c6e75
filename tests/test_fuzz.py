"""Fuzz every public estimator (issue 12, Deliver 7): a seeded generator of shapes, dtypes,
scales, offsets and NaN positions. Property: either a clear exception of a documented type
(``ValueError`` — including ``DegenerateSamplesError`` — or ``TypeError``), or finite outputs of
the right shape and dtype; for the KDE, also translation equivariance where the offset is exact.
"""

import math
import random

import pytest
import torch

import pyro_disco
from pyro_disco import SDKDE, EmpSDKDE, GaussianKDE, LearnedScore

DOCUMENTED = (ValueError, TypeError)
CASES = 40  # per estimator; the whole file runs in well under a minute on one core


def _case(rng: random.Random, max_d: int):
    d = rng.randint(1, max_d)
    n = rng.choice([d + 1, d + 2, rng.randint(d + 3, 200)])
    dtype = rng.choices([torch.float64, torch.float32, torch.float16, torch.int64], [6, 4, 1, 1])[0]
    scale = 10 ** rng.uniform(-6, 6)
    offset = rng.choice([0.0, 10 ** rng.uniform(0, 6 if dtype == torch.float32 else 10)])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + offset
    m = rng.choice([0, 1, rng.randint(2, 40)])
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * scale * 10 ** rng.uniform(-1, 2) + offset
    if rng.random() < 0.1:
        x[rng.randrange(n), rng.randrange(d)] = rng.choice([math.nan, math.inf])
    if m and rng.random() < 0.1:
        y[rng.randrange(m), rng.randrange(d)] = math.nan
    if rng.random() < 0.05:
        x[:, -1] = x[:, 0]  # exactly singular
    return x.to(dtype), y.to(dtype)


BUILDERS = {
    "kde": (lambda x: GaussianKDE(x), 6),
    "sdkde": (lambda x: SDKDE(x, lambda z: torch.zeros_like(z)), 6),
    "emp-sdkde": (lambda x: EmpSDKDE(x), 6),
    "transformer": (lambda x: pyro_disco.build_estimator(x, "transformer"), 3),
    "learned-score": (lambda x: LearnedScore(x, estimator="kde"), 4),
}


def _evaluate(est, y):
    if isinstance(est, LearnedScore):
        return est.log_prob(y), est.score(y)  # empty y included (was a support-check error)
    return est.logdensity_and_score(y)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fuzz_estimators(name):
    build, max_d = BUILDERS[name]
    rng = random.Random(f"fuzz-{name}")
    outcomes = {"finite": 0, "error": 0}
    for i in range(CASES):
        x, y = _case(rng, max_d)
        try:
            est = build(x)
            logp, s = _evaluate(est, y)
        except DOCUMENTED:
            outcomes["error"] += 1
            continue
        where = f"case {i}: n, d = {tuple(x.shape)}, {x.dtype}, |x| <= {float(x.abs().max()):.3g}"
        assert logp.shape == y.shape[:-1] and s.shape == y.shape, where
        assert torch.isfinite(logp).all() and torch.isfinite(s).all(), where
        outcomes["finite"] += 1
    assert outcomes["finite"] >= CASES // 3, outcomes  # the fuzzer mostly builds valid problems
    assert outcomes["error"] >= 3, outcomes  # ... and some invalid ones


@pytest.mark.parametrize("seed", range(10))
def test_fuzz_kde_translation_equivariance(seed):
    """Offsets up to 1e6 (float32) and 1e12 (float64) on data exactly representable after the
    shift: the answers agree with the unshifted ones to round-off of the spread."""
    rng = random.Random(seed)
    dtype = rng.choice([torch.float32, torch.float64])
    d = rng.randint(1, 6)
    grid = 2.0**-8
    offset = float(round(10 ** rng.uniform(0, 6 if dtype == torch.float32 else 12)))
    if dtype == torch.float32:
        grid = 2.0 ** math.ceil(math.log2(max(offset, 1.0)) - 20)  # exact below 2^24 grid steps
    g = torch.Generator().manual_seed(seed)
    scale = 2.0**10 * grid
    x = (torch.randn(300, d, generator=g, dtype=torch.float64) * scale / grid).round() * grid
    y = (torch.randn(20, d, generator=g, dtype=torch.float64) * scale / grid).round() * grid
    ref_logp, ref_s = GaussianKDE(x).logdensity_and_score(y)
    logp, s = GaussianKDE((x + offset).to(dtype)).logdensity_and_score((y + offset).to(dtype))
    tol = 1e-3 if dtype == torch.float32 else 1e-8  # round-off of O(1) whitened quantities
    torch.testing.assert_close(logp.double(), ref_logp, rtol=0, atol=tol)
    torch.testing.assert_close(s.double() * scale, ref_s * scale, rtol=0, atol=10 * tol)
