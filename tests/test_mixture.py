"""Gaussian-mixture EM (``pyro_disco.nn.em``) and its estimator: exactness, equivariance, choice of k."""

import math

import pytest
import torch

from pyro_disco.estimators.mixture import GaussianMixtureEstimator
from pyro_disco.nn.em import bic_mixture, fit_gaussian_mixtures, max_components_for
from pyro_disco.training.tasks import random_rotation

ROUND_OFF = 1e-8  # float64 EM over ~60 iterations: equivariance holds to accumulated round-off


def two_blobs(n=400, d=2, sep=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = sep
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 2] -= shift
    x[n // 2 :] += shift
    return x


def test_bic_picks_two_separated_components_and_recovers_them():
    gmm = GaussianMixtureEstimator(two_blobs())
    assert gmm.num_components == 2
    fit = gmm.fit
    assert bool((fit.log_weights[0].exp() > 1e-6).sum() >= 2)


def test_single_gaussian_is_one_component():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert GaussianMixtureEstimator(x).num_components == 1


def test_score_is_exact_gradient_of_logdensity():
    gmm = GaussianMixtureEstimator(two_blobs(d=3))
    y = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    y.requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.logdensity(y).sum(), y)
    torch.testing.assert_close(gmm.score(y.detach()), grad, rtol=1e-10, atol=1e-10)


def test_density_is_normalised_in_2d():
    gmm = GaussianMixtureEstimator(two_blobs())
    t = torch.linspace(-12, 12, 481, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    mass = gmm.density(grid).sum() * (t[1] - t[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-6  # the quadrature error of a 0.05 grid on smooth Gaussians


@pytest.mark.parametrize("d", [1, 2, 5])
def test_affine_and_permutation_equivariance(d):
    g = torch.Generator().manual_seed(3 + d)
    x = two_blobs(n=600, d=d, seed=d)
    y = torch.randn(30, d, generator=g, dtype=torch.float64) * 2
    base = GaussianMixtureEstimator(x)
    lf, s = base.logdensity_and_score(y)
    # an affine map x -> x M + b with M = rotation · diag(scales)
    rot = random_rotation(1, d, generator=g)[0]
    m = rot @ torch.diag(torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
    b = torch.randn(d, generator=g, dtype=torch.float64) * 10
    moved = GaussianMixtureEstimator((x @ m + b)[torch.randperm(x.shape[0], generator=g)])
    lf2, s2 = moved.logdensity_and_score(y @ m + b)
    logdet = torch.linalg.slogdet(m)[1]
    torch.testing.assert_close(lf2 + logdet, lf, rtol=ROUND_OFF, atol=ROUND_OFF)
    torch.testing.assert_close(s2 @ m.T, s, rtol=ROUND_OFF, atol=ROUND_OFF)
    assert moved.num_components == base.num_components


def test_batched_fit_equals_separate_fits():
    a, b = two_blobs(seed=4), two_blobs(seed=5) * 0.7
    from pyro_disco.estimators.whitening import fit_whitening

    xs = torch.stack([fit_whitening(a).apply(a), fit_whitening(b).apply(b)])
    joint = bic_mixture(fit_gaussian_mixtures(xs, 4))
    for i in range(2):
        single = bic_mixture(fit_gaussian_mixtures(xs[i : i + 1], 4))
        torch.testing.assert_close(joint.bic[i], single.bic[0], rtol=1e-9, atol=1e-9)


def test_unit_weights_change_nothing_and_zero_weights_drop_a_cluster():
    x = two_blobs()
    plain = GaussianMixtureEstimator(x)
    ones = GaussianMixtureEstimator(x, weights=torch.ones(x.shape[0], dtype=torch.float64))
    y = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(ones.logdensity(y), plain.logdensity(y), rtol=1e-10, atol=1e-10)
    w = torch.ones(x.shape[0], dtype=torch.float64)
    w[x.shape[0] // 2 :] = 0.0  # keep the left blob only
    left = GaussianMixtureEstimator(x, weights=w)
    assert left.num_components == 1
    assert float(left.score(torch.tensor([[-4.0, 0.0]], dtype=torch.float64)).norm()) < 0.5


def test_sampling_matches_the_fit():
    gmm = GaussianMixtureEstimator(two_blobs())
    draws = gmm.sample(20000, generator=torch.Generator().manual_seed(6))
    assert draws.shape == (20000, 2)
    # the fitted mean is the sample mean of the data (EM preserves the weighted mean)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((draws.mean(0) - two_blobs().mean(0)).abs() < 4 * se).all())


def test_component_cap_and_clear_errors():
    assert max_components_for(256, 10, 10) == 3  # 66 parameters per component in 10-D
    assert max_components_for(4096, 2, 10) == 10
    # with shrinkage, 4(d + 1) samples per component suffice: several components in 32-D at n = 1024
    assert max_components_for(1024, 32, 10) == 1
    assert max_components_for(1024, 32, 10, "dims") == 7
    assert max_components_for(256, 10, 10, "dims") == 5
    with pytest.raises(ValueError, match="component_size"):
        max_components_for(256, 10, 10, "samples")
    x = torch.randn(50, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="too many"):
        GaussianMixtureEstimator(x, num_components=5)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureEstimator(x, weights=-torch.ones(50))
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixtureEstimator(x, reg_covar=0.0)


def test_covariance_shrinkage_is_the_documented_formula():
    from pyro_disco.nn.em import _m_step

    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 40, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 1.0, 0.2], dtype=torch.float64
    )
    resp = torch.zeros(1, 40, 2, dtype=torch.float64)
    resp[0, :25, 0], resp[0, 25:, 1] = 1.0, 1.0
    _, loc, tril = _m_step(x, resp, None, 1e-3, 0.5)
    for c, rows in enumerate((slice(0, 25), slice(25, 40))):
        xc = x[0, rows]
        s = torch.cov(xc.T, correction=0)
        lam = 0.5 * 3 / (xc.shape[0] + 0.5 * 3)
        want = (
            (1 - lam) * s
            + lam * s.diagonal().mean() * torch.eye(3, dtype=torch.float64)
            + 1e-3 * torch.eye(3)
        )
        got = tril[0, c] @ tril[0, c].T
        assert torch.allclose(got, want, atol=1e-9), (c, got, want)
    with pytest.raises(ValueError, match="shrinkage"):
        GaussianMixtureEstimator(x[0], shrinkage=-1.0)


def test_split_start_keeps_the_parents_moments():
    from pyro_disco.nn.em import _split_widest

    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 300, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [2.0, 1.0, 0.5], dtype=torch.float64
    )
    fit = fit_gaussian_mixtures(x, 2, shrinkage=0.0)[1]  # 2 components
    log_w, loc, tril = _split_widest(fit)
    assert loc.shape == (1, 3, 3) and float(log_w.exp().sum()) == pytest.approx(1.0)

    def moments(log_w, loc, tril):
        w = log_w.exp()[0]
        mean = (w[:, None] * loc[0]).sum(0)
        cov = sum(
            w[c] * (tril[0, c] @ tril[0, c].T + torch.outer(loc[0, c] - mean, loc[0, c] - mean))
            for c in range(len(w))
        )
        return mean, cov

    m0, c0 = moments(fit.log_weights, fit.loc, fit.scale_tril)
    m1, c1 = moments(log_w, loc, tril)
    assert torch.allclose(m0, m1, atol=1e-12) and torch.allclose(c0, c1, atol=1e-12)
