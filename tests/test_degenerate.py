"""Degenerate or not, by thresholds relative to the data (issue 12, items 2 and 8).

Every estimator of :data:`pyro_disco.factory.ESTIMATORS` must accept legitimate data at any
scale, in mixed units and at large offsets — with answers that move exactly with the data —
and must reject exactly singular samples with the same clear error, whatever the round-off.
"""

import pytest
import torch
from torch.testing import assert_close

from pyro_disco import DegenerateSamplesError, DiScoFormerEstimator
from pyro_disco.factory import ESTIMATORS, build_estimator

DT = torch.float64
# Round-off of O(1) float64 quantities: the whitened coordinates of the scaled samples equal the
# unscaled ones to a few ulps, and every estimator maps outputs back exactly.
EXACT = 1e-12


def _grid(n: int, d: int, seed: int) -> torch.Tensor:
    """N(0, I) draws on a 2^-8 grid: ``x + 1e12`` is exact, so the shifted problem is the same."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=DT) * 256).round() / 256


@pytest.fixture(scope="module")
def problem():
    x, y = _grid(256, 2, 0), _grid(16, 2, 1)
    refs = {name: build_estimator(x, name).logdensity_and_score(y) for name in ESTIMATORS}
    return x, y, refs


SCALES = {
    "1e-12": [1e-12, 1e-12],  # was rejected by the absolute threshold (std <= 1e-12)
    "1e-20": [1e-20, 1e-20],
    "mixed-units": [1e5, 1e-7],
}


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("scale", list(SCALES))
def test_tiny_scales_and_mixed_units_are_not_degenerate(name, scale, problem):
    """Was: the transformer, gmm and sdkde raised "coordinate is constant" below 1e-12 or for
    a column in 1e-7 next to one in 1e5. Now: log p(c y) = log p(y) - sum log c and
    s(c y) = s(y) / c, to round-off."""
    x, y, refs = problem
    c = torch.tensor(SCALES[scale], dtype=DT)
    logp, s = build_estimator(x * c, name).logdensity_and_score(y * c)
    ref_logp, ref_s = refs[name]
    assert_close(logp + c.log().sum(), ref_logp, rtol=EXACT, atol=EXACT)
    assert_close(s * c, ref_s, rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_offset_1e12_is_not_degenerate(name, problem):
    """Was: rejected (the constant-column test scaled with max |x| clamped at 1); SD-KDE rounded
    its shifted centres to the offset's ulp (1.2e-4). Now: the same answers as unshifted."""
    x, y, refs = problem
    est = build_estimator(x + 1e12, name)
    logp, s = est.logdensity_and_score(y + 1e12)
    ref_logp, ref_s = refs[name]
    # the transformer's log-normaliser is an importance-sampling average over draws made in the
    # data's space, where they round to ulp(1e12) = 1.2e-4 of an sd: ~1e-6 in log Z
    logp_tol = 1e-5 if isinstance(est, DiScoFormerEstimator) and est.log_normalizer_value() else EXACT
    assert_close(logp, ref_logp, rtol=0, atol=logp_tol)
    assert_close(s, ref_s, rtol=0, atol=EXACT)


def _singular_sets():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(200, 3, generator=g, dtype=DT)
    mix = torch.tensor([[1.0, 0.3], [-2.0, 0.7], [0.5, 1.1]], dtype=DT)
    t = torch.randn(200, 1, generator=g, dtype=DT)
    return {
        "5-D in a 3-D subspace": torch.cat([a, a @ mix], 1) + 10.0,  # round-off off the subspace
        "line in 2-D": t @ torch.tensor([[0.6, 0.8]], dtype=DT),  # 0.6 t, 0.8 t: rounded
        "line at an offset": t @ torch.tensor([[1.0, 3.0]], dtype=DT) + torch.tensor([3.0, -1e3], dtype=DT),
        "constant column": torch.cat([a[:, :2], torch.full((200, 1), 7.0, dtype=DT)], 1),
    }


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("case", list(_singular_sets()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_singular_samples_raise_the_same_clear_error(name, case, dtype):
    """Was: "auto" said "every candidate failed on the cross-validation folds"; a line in 2-D
    raised or not depending on round-off. Now: every estimator raises DegenerateSamplesError
    (a ValueError) with the one message of the shared check."""
    x = _singular_sets()[case].to(dtype)
    match = "constant" if case == "constant column" else "lie in a lower-dimensional affine subspace"
    with pytest.raises(DegenerateSamplesError, match=f"samples are degenerate: .*{match}"):
        build_estimator(x, name)
