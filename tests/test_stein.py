"""Kernel Stein discrepancy and the KSD test: exact reference, Stein identity, invariants, level.

Statistical checks state their tolerance in Monte Carlo standard errors (NUM_SE) or as a
binomial band (LEVEL_BAND_SD standard deviations of a rejection count).
"""

import math

import pytest
import torch
from torch.distributions import Laplace

from pyro_disco import ExactDistribution, GaussianKDE, GaussianMixture
from pyro_disco.kernels import IMQ, RBF
from pyro_disco.stein import KSDTestResult, ksd, ksd_test, stein_kernel, stein_kernel_matrix

from helpers import gen

NUM_SE = 4.0  # two-sided 4-sigma miss has probability ~6e-5
LEVEL_BAND_SD = 3.0  # a binomial count outside mean +- 3 sd has probability < 0.3 %
ALPHA = 0.05
EXACT = dict(rtol=1e-10, atol=1e-12)  # float64, same sums in a different order


def _mixture_2d():
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.4]]), 0.3 * torch.eye(2)]).double()
    return GaussianMixture(weights, means, covs)


def _normal_score(shift=0.0, scale=1.0):
    """Score of N(shift, scale^2 I)."""
    return lambda z: -(z - shift) / scale**2


# ---- exact reference: the closed-form Stein kernel against its autograd definition ---------


@pytest.mark.parametrize("kernel", [RBF(), IMQ(), IMQ(c=0.5, beta=-0.3)], ids=["rbf", "imq", "imq-c0.5"])
def test_stein_kernel_matches_autograd_definition(kernel):
    gm = _mixture_2d()
    x = gm.sample(5, generator=gen(0))
    y = gm.sample(4, generator=gen(1))
    h = torch.tensor(0.8, dtype=torch.float64)
    sx, sy = gm.score(x), gm.score(y)
    expected = torch.empty(5, 4, dtype=torch.float64)
    for i in range(5):
        for j in range(4):
            xi = x[i].clone().requires_grad_(True)
            yj = y[j].clone().requires_grad_(True)
            k = kernel.profile(((xi - yj) ** 2).sum(), h)[0]
            gx, gy = torch.autograd.grad(k, (xi, yj), create_graph=True)
            trace = sum(torch.autograd.grad(gy[a], xi, retain_graph=True)[0][a] for a in range(2))
            expected[i, j] = (sx[i] @ sy[j]) * k + sx[i] @ gy + sy[j] @ gx + trace
    got = stein_kernel(x, y, sx, sy, kernel=kernel, bandwidth=h)
    torch.testing.assert_close(got, expected.detach(), **EXACT)


# ---- invariants ---------------------------------------------------------------------------


def _stein_identity_terms(x, score_fn, field_fn):
    x = x.clone().requires_grad_(True)
    f = field_fn(x)
    div = sum(torch.autograd.grad(f[:, a].sum(), x, retain_graph=True)[0][:, a] for a in range(x.shape[1]))
    return ((score_fn(x.detach()) * f).sum(-1) + div).detach()


def _field(x):
    a = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=x.dtype)
    return torch.tanh(x @ a + torch.tensor([0.2, -0.1], dtype=x.dtype)) * (1 + x[:, :1] ** 2).rsqrt()


def test_stein_identity_holds_for_exact_scores_and_fails_for_a_wrong_one():
    gm = _mixture_2d()
    x = gm.sample(20000, generator=gen(2))
    terms = _stein_identity_terms(x, gm.score, _field)
    assert abs(float(terms.mean())) <= NUM_SE * float(terms.std()) / math.sqrt(len(terms))
    # Power: a score 30 % too large must break the identity (guards the check itself).
    wrong = _stein_identity_terms(x, lambda z: 1.3 * gm.score(z), _field)
    assert abs(float(wrong.mean())) > NUM_SE * float(wrong.std()) / math.sqrt(len(wrong))


def test_stein_identity_for_a_laplace_exact_distribution():
    loc, scale = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    lap = ExactDistribution(Laplace(loc, scale))
    u = torch.rand(20000, 1, generator=gen(3), dtype=torch.float64) - 0.5
    x = 0.5 - 0.7 * u.sign() * torch.log1p(-2 * u.abs())
    terms = _stein_identity_terms(x, lap.score, lambda z: torch.sin(z) + z / (1 + z**2))
    assert abs(float(terms.mean())) <= NUM_SE * float(terms.std()) / math.sqrt(len(terms))


def test_u_statistic_is_centred_under_the_null():
    # E[KSD^2_U] = 0 when p = q exactly; average R independent replicates.
    gm = _mixture_2d()
    values = torch.stack([ksd(gm.sample(100, generator=gen(100 + r)), gm) for r in range(40)])
    assert abs(float(values.mean())) <= NUM_SE * float(values.std()) / math.sqrt(len(values))


def test_v_statistic_is_nonnegative_and_stein_matrix_is_psd():
    gm = _mixture_2d()
    x = gm.sample(80, generator=gen(4))
    for kernel in ("imq", "rbf"):
        u = stein_kernel_matrix(x, gm, kernel=kernel)
        torch.testing.assert_close(u, u.T, **EXACT)
        eig = torch.linalg.eigvalsh(u)
        assert float(eig.min()) >= -1e-10 * float(eig.max())
        assert float(ksd(x, gm, kernel=kernel, statistic="v")) >= 0.0


def test_blocking_permutation_and_u_v_relation():
    gm = _mixture_2d()
    x = gm.sample(157, generator=gen(5))
    n = x.shape[0]
    full = stein_kernel_matrix(x, gm)
    for stat in ("u", "v"):
        blocked = ksd(x, gm, statistic=stat, block_size=10)
        torch.testing.assert_close(blocked, ksd(x, gm, statistic=stat), **EXACT)
    perm = torch.randperm(n, generator=gen(6))
    torch.testing.assert_close(ksd(x[perm], gm), ksd(x, gm), **EXACT)
    torch.testing.assert_close(ksd(x, gm, statistic="v"), full.mean(), **EXACT)
    torch.testing.assert_close(ksd(x, gm), (full.sum() - full.diagonal().sum()) / (n * (n - 1)), **EXACT)
    # The test statistic is n * KSD^2_V, and blocking does not change the bootstrap either.
    a = ksd_test(x, gm, num_bootstrap=50, generator=gen(7))
    b = ksd_test(x, gm, num_bootstrap=50, block_size=13, generator=gen(7))
    torch.testing.assert_close(a.statistic, n * full.mean(), **EXACT)
    torch.testing.assert_close(a.bootstrap, b.bootstrap, **EXACT)


@pytest.mark.parametrize("d", [1, 2, 10])
def test_ksd_separates_p_from_shifted_and_scaled_q(d):
    x = torch.randn(300, d, generator=gen(10 + d), dtype=torch.float64)
    null = ksd(x, _normal_score())
    for name, score in {"shift": _normal_score(shift=1.0), "scale": _normal_score(scale=2.0)}.items():
        alt = ksd(x, score)
        assert float(alt) > float(null), name
        result = ksd_test(x, score, num_bootstrap=200, generator=gen(20 + d))
        assert float(result.p_value) <= 0.01, (name, float(result.p_value))


def test_ksd_with_a_kde_score_is_finite():
    x = torch.randn(120, 2, generator=gen(8), dtype=torch.float64)
    assert torch.isfinite(ksd(x, GaussianKDE(x)))


# ---- the test's level under p = q ---------------------------------------------------------


def _rejections(num_reps, n, d, seed):
    g = gen(seed)
    count = 0
    for _ in range(num_reps):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        count += float(ksd_test(x, _normal_score(), num_bootstrap=200, generator=g).p_value) <= ALPHA
    return count


def _assert_level(count, num_reps):
    mean, sd = num_reps * ALPHA, math.sqrt(num_reps * ALPHA * (1 - ALPHA))
    assert abs(count - mean) <= LEVEL_BAND_SD * sd, f"{count}/{num_reps} rejections at alpha={ALPHA}"


def test_ksd_test_holds_its_level():
    _assert_level(_rejections(200, 100, 2, seed=30), 200)


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, 2, 10])
def test_ksd_test_holds_its_level_full(d):
    _assert_level(_rejections(2000, 300, d, seed=40 + d), 2000)


# ---- contracts ----------------------------------------------------------------------------


def test_contract_shapes_dtypes_no_mutation():
    x = torch.randn(60, 3, generator=gen(9))  # float32
    before = x.clone()
    value = ksd(x, _normal_score())
    assert value.shape == () and value.dtype == torch.float32
    result = ksd_test(x, _normal_score(), num_bootstrap=30, generator=gen(1))
    assert isinstance(result, KSDTestResult) and result.bootstrap.shape == (30,)
    assert 0.0 < float(result.p_value) <= 1.0 and float(result.bandwidth) > 0
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(20, 2, generator=gen(11), dtype=torch.float64)
    with pytest.raises(ValueError, match="kernel"):
        ksd(x, _normal_score(), kernel="gauss")
    with pytest.raises(ValueError, match="statistic"):
        ksd(x, _normal_score(), statistic="w")
    with pytest.raises(ValueError, match="shape"):
        ksd(x, lambda z: z[:, :1])
    with pytest.raises(ValueError, match="at least 2"):
        ksd(x[:1], _normal_score())
    with pytest.raises(ValueError, match="num_bootstrap"):
        ksd_test(x, _normal_score(), num_bootstrap=0)
    with pytest.raises(ValueError, match="not finite"):
        ksd(x, lambda z: z / 0.0)
    with pytest.raises(TypeError, match="score"):
        ksd(x, 3.0)
