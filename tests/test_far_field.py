"""The far-field guarantee: beyond the data, every shipped model's score points back at the data
and grows linearly, and its log-density falls quadratically (random rays out to 100 sd)."""

import pytest
import torch

from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.pretrained import available_models, load_model

CASES = [(name, d) for name, dims in sorted(available_models().items()) for d in dims]


@pytest.mark.parametrize("name,d", CASES)
def test_score_points_back_and_grows_far_from_the_data(name, d):
    g = torch.Generator().manual_seed(d)
    n = max(200, 4 * d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 2, 0] += 4.0  # bimodal: where the d = 1 model used to point outward from 5-10 sd
    est = DiScoFormerEstimator(load_model(name), x)
    u = torch.randn(16, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    centre, spread = x.mean(0), float(x.std(0).max())
    radii = torch.tensor([5.0, 10.0, 20.0, 50.0, 100.0], dtype=torch.float64) * spread  # 5 … 100 sd
    pts = centre + radii.view(-1, 1, 1) * u  # R 16 d
    logf, score = est.logdensity_and_score(pts)
    assert bool(torch.isfinite(logf).all() and torch.isfinite(score).all())
    radial = (score * u).sum(-1)  # R 16
    rw = est.whitening.apply(pts.reshape(-1, d)).norm(dim=-1).reshape(radii.shape[0], -1)
    beyond = rw >= est.tail_radii[0]
    assert bool(beyond[-2:].all())  # 50 and 100 sd are past the data's extent
    assert bool((radial[beyond] < 0).all()), "score points away from the data"
    # linear growth: the radial score doubles from 50 to 100 sd (within 5 %)
    assert bool((radial[-1] <= 1.9 * radial[-2]).all())
    # quadratic decay: log f(100 sd) - log f(50 sd) = -½(‖y_w(100)‖² - ‖y_w(50)‖²)
    torch.testing.assert_close(logf[-1] - logf[-2], -0.5 * (rw[-1] ** 2 - rw[-2] ** 2), rtol=1e-9, atol=1e-6)


def test_huge_queries_stay_finite_and_point_back():
    x = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    est = DiScoFormerEstimator(load_model("discoformer-universal"), x)
    logf, score = est.logdensity_and_score(torch.full((2, 2), 1e18, dtype=torch.float64))
    assert bool(torch.isfinite(logf).all() and torch.isfinite(score).all())
    assert bool((score < 0).all())


def test_normalize_makes_the_transformer_integrate_to_one():
    from pyro_disco.estimators.normalizer import log_normalizer
    from pyro_disco.training.tasks import random_mixtures

    g = torch.Generator().manual_seed(5005)
    x = random_mixtures(1, 5, generator=g).sample(1024, generator=g)[0]
    raw = DiScoFormerEstimator(load_model("discoformer-universal"), x, normalize=False)
    est = DiScoFormerEstimator(load_model("discoformer-universal"), x)  # normalised by default
    assert raw.normalization is None
    before = log_normalizer(raw, x, generator=torch.Generator().manual_seed(1))
    after = log_normalizer(est, x, generator=torch.Generator().manual_seed(1))
    assert est.normalization.ess >= 100
    # after: 4 standard errors of the two independent estimates
    assert abs(after.value) < 4 * (after.std_error + est.normalization.std_error)
    assert abs(before.value - est.normalization.value) < 4 * (before.std_error + est.normalization.std_error)
    lf, _ = est.logdensity_and_score(x[:3] + 0.1)
    torch.testing.assert_close(lf, raw.logdensity(x[:3] + 0.1) - est.normalization.value)


def test_a_second_proposal_rescues_a_low_effective_sample_size():
    from pyro_disco.estimators.mixture import GaussianMixtureEstimator
    from pyro_disco.estimators.normalizer import log_normalizer
    from pyro_disco.training.tasks import random_mixtures

    g = torch.Generator().manual_seed(1616)
    x = random_mixtures(1, 16, k_range=(6, 6), generator=g).sample(1024, generator=g)[0]
    gmm = GaussianMixtureEstimator(x)  # exactly normalised: log Z = 0
    cheap = log_normalizer(gmm, x, generator=torch.Generator().manual_seed(0))
    both = log_normalizer(gmm, x, generator=torch.Generator().manual_seed(0), min_ess=100)
    assert cheap.ess < 100 <= both.ess and both.num_draws == 2 * cheap.num_draws
    assert abs(both.value) < 4 * both.std_error


def test_unnormalisable_log_density_warns_and_subtracts_nothing():
    from pyro_disco import NormalizationWarning
    from pyro_disco.training.tasks import random_mixtures

    g = torch.Generator().manual_seed(2)
    x = random_mixtures(1, 32, k_range=(8, 8), generator=g).sample(1024, generator=g)[0]  # ESS 4
    model = load_model("discoformer-universal-mix")
    est = DiScoFormerEstimator(model, x)
    raw = DiScoFormerEstimator(model, x, normalize=False)
    with pytest.warns(NormalizationWarning, match="not normalised"):
        lf = est.logdensity(x[:4])
    assert est.normalization.ess < 100 and est.log_normalizer_value() == 0.0
    torch.testing.assert_close(lf, raw.logdensity(x[:4]))


# --- issue 12, item 1: the false attractors of the 1-D default, as users met them ------------


def _bimodal_1d():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(1024, 1, generator=g, dtype=torch.float64)
    x[:512] += 3.0
    return x


@pytest.mark.parametrize("method", ["ula", "mala"])
def test_langevin_chains_started_far_out_come_back(method):
    from pyro_disco import LearnedScore
    from pyro_disco.infer import langevin

    x = _bimodal_1d()
    est = LearnedScore(x, estimator="transformer").estimator  # the shipped default network for d = 1
    start = torch.linspace(-40, 40, 81, dtype=torch.float64).unsqueeze(-1)  # 81 chains, as reported
    out = langevin.run(
        start, est, 0.05, 50, method=method, num_warmup=400, generator=torch.Generator().manual_seed(0)
    )
    final = out.samples[:, -1, 0]
    # before the tail: 53 of 81 ULA and 29 of 81 MALA chains ended near ±46-58
    assert bool((final.abs() < 10).all()), final[final.abs() >= 10]


def test_gradient_ascent_on_log_prob_converges_to_the_data():
    from pyro_disco import LearnedScore

    prior = LearnedScore(_bimodal_1d(), estimator="transformer")
    z = torch.tensor([[40.0]], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([z], lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        (-prior.log_prob(z).sum()).backward()
        opt.step()
    assert -2.0 < float(z.detach()) < 5.0  # a mode of the data (0 or 3), not x = 61 as before
