"""LearnedScore: the Pyro distribution contract, its score-head gradient, and its sampler."""

import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

from pyro_disco import EmpSDKDE, GaussianKDE, GaussianMixture, build_estimator
from pyro_disco.distributions import LearnedScore
from pyro_disco.pretrained import available_dims as _available_dims

EXACT = dict(rtol=1e-10, atol=1e-12)  # same float64 computation reached by two routes


def _samples(n=300, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64)
        @ torch.tensor([[1.0, 0.3], [0.0, 0.8]], dtype=torch.float64)[:d, :d]
    )


class _ScoreNotGradient:
    """An estimator whose score head is NOT the gradient of its log-density head (like the
    transformer): log-density of N(0, I), score of N(0, 4 I)."""

    dim = 2

    def logdensity(self, x):
        return -0.5 * (x**2).sum(-1) - math.log(2 * math.pi)

    def score(self, x):
        return -x / 4.0


def test_shapes_event_and_support():
    ls = LearnedScore(_samples(), estimator="kde")
    assert ls.event_shape == (2,) and ls.batch_shape == ()
    assert ls.support is dist.constraints.real_vector
    x = torch.zeros(4, 3, 2, dtype=torch.float64)
    assert ls.log_prob(x).shape == (4, 3)
    assert ls.score(x).shape == (4, 3, 2)
    assert ls.sample().shape == (2,) and ls.sample((5, 7)).shape == (5, 7, 2)
    assert ls.estimator_name == "kde" and isinstance(ls.estimator, GaussianKDE)


def test_log_prob_and_score_match_the_estimator():
    x = _samples()
    ls, kde = LearnedScore(x, estimator="kde"), GaussianKDE(x)
    q = torch.randn(10, 2, dtype=torch.float64)
    assert_close(ls.log_prob(q), kde.logdensity(q), **EXACT)
    assert_close(ls.score(q), kde.score(q), **EXACT)


def test_gradient_of_log_prob_is_the_score_head():
    ls = LearnedScore(_samples(), estimator=_ScoreNotGradient())
    q = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    lp = ls.log_prob(q)
    (grad,) = torch.autograd.grad(lp.sum(), q)
    assert_close(grad, -q.detach() / 4.0, **EXACT)  # the score head, not autograd's -q
    assert_close(lp.detach(), _ScoreNotGradient().logdensity(q.detach()), **EXACT)
    assert ls.estimator_name == "custom"


def test_gradient_with_float32_queries_and_upstream_weights():
    ls = LearnedScore(_samples(), estimator="kde")
    q = torch.randn(5, 2, requires_grad=True)  # float32 query, float64 samples
    w = torch.arange(1.0, 6.0)
    (grad,) = torch.autograd.grad((w * ls.log_prob(q)).sum(), q)
    assert grad.dtype == torch.float32
    assert_close(grad, w[:, None] * ls.score(q.detach()), rtol=1e-5, atol=1e-6)  # float32 rounding


def test_expand_broadcasts_and_shares_the_estimator():
    ls = LearnedScore(_samples(), estimator="kde", validate_args=True)
    e = ls.expand((3,))
    assert e.batch_shape == (3,) and e.estimator is ls.estimator and e._validate_args
    assert e.log_prob(torch.zeros(2, dtype=torch.float64)).shape == (3,)
    assert e.sample((4,)).shape == (4, 3, 2)


def test_validation_and_bad_input():
    ls = LearnedScore(_samples(), estimator="kde", validate_args=True)
    with pytest.raises(ValueError):
        ls.log_prob(torch.tensor([[float("nan"), 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="event_shape"):
        ls.log_prob(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        unchecked = LearnedScore(_samples(), estimator="kde", validate_args=False)
        unchecked.log_prob(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown estimator"):
        LearnedScore(_samples(), estimator="nope")
    with pytest.raises(ValueError, match="n > d"):
        LearnedScore(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="logdensity"):
        LearnedScore(_samples(), estimator=object())
    with pytest.raises(ValueError, match="adapt"):
        LearnedScore(_samples(), estimator="kde", adapt_steps=2)
    if 2 not in _available_dims():  # with weights, "sdkde" shifts along the transformer's score
        with pytest.raises(ValueError, match="score="):
            LearnedScore(_samples(), estimator="sdkde")


def test_estimator_choices():
    x = _samples()
    assert LearnedScore(x, estimator="emp-sdkde").estimator_name == "emp-sdkde"
    assert isinstance(LearnedScore(x, estimator="emp-sdkde").estimator, EmpSDKDE)
    assert LearnedScore(x, estimator="sdkde", score=lambda z: -z).estimator_name == "sdkde"
    assert LearnedScore(x, estimator="kde", bandwidth="silverman").estimator.bandwidth == pytest.approx(
        (300 * 4 / 4.0) ** (-1 / 6)
    )
    auto = LearnedScore(x)
    # auto chooses on the data by held-out Hyvärinen score (N(0, I) samples: the mixture fit, k = 1)
    assert auto.estimator_name == auto.estimator.selection.chosen == "gmm"
    missing = next(d for d in range(11, 40) if d not in _available_dims())
    with pytest.raises(ValueError, match="pretrained"):
        LearnedScore(torch.randn(100, missing, dtype=torch.float64), estimator="transformer")


def test_no_mutation_and_pickle():
    x = _samples()
    before = x.clone()
    ls = LearnedScore(x, estimator="kde")
    q = torch.randn(4, 2, dtype=torch.float64)
    q0 = q.clone()
    ls.log_prob(q), ls.score(q), ls.sample((10,))
    assert torch.equal(x, before) and torch.equal(q, q0)
    again = pickle.loads(pickle.dumps(ls))
    assert_close(again.log_prob(q), ls.log_prob(q), **EXACT)


def test_sample_is_a_smoothed_bootstrap():
    # mean = sample mean, covariance = (n-1)/n Cov(X) + H exactly; checked at 4 MC standard errors
    x = _samples(n=200)
    ls = LearnedScore(x, estimator="kde")
    torch.manual_seed(1)
    draws = ls.sample((20000,))
    n = x.shape[0]
    cov = torch.cov(x.T) * (n - 1) / n + ls.estimator.covariance
    se_mean = (cov.diagonal() / draws.shape[0]).sqrt()
    assert ((draws.mean(0) - x.mean(0)).abs() < 4 * se_mean).all()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / draws.shape[0]).sqrt()
    assert ((torch.cov(draws.T) - cov).abs() < 4 * se_cov).all()
    assert_close(ls.mean, x.mean(0), **EXACT)


def test_usable_inside_a_pyro_model_and_plate():
    x = _samples()
    prior = LearnedScore(x, estimator="kde")

    def model():
        with pyro.plate("p", 5):
            return pyro.sample("z", prior)

    tr = pyro.poutine.trace(model).get_trace()
    site = tr.nodes["z"]
    assert site["value"].shape == (5, 2)
    assert site["fn"].log_prob(site["value"]).shape == (5,)
    tr.compute_log_prob()
    assert torch.isfinite(tr.log_prob_sum())


def test_kde_gradient_equals_autograd_of_its_density():
    # For the KDE family the score head *is* the gradient of the log-density: an invariant.
    x = _samples()
    kde = GaussianKDE(x)
    n = x.shape[0]
    gm = GaussianMixture(torch.ones(n, dtype=torch.float64), x, kde.covariance.expand(n, 2, 2))
    q = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(gm.logdensity(q).sum(), q)
    ls = LearnedScore(x, estimator="kde")
    (via,) = torch.autograd.grad(ls.log_prob(q).sum(), q)
    assert_close(via, auto, rtol=1e-8, atol=1e-10)  # two float64 formulas for the same gradient


class _Adaptable(_ScoreNotGradient):
    """A stand-in for the transformer's test-time adaptation: .adapt returns a new estimator."""

    def __init__(self, steps=0):
        self.steps = steps

    def adapt(self, num_steps=4):
        return _Adaptable(self.steps + num_steps)


def test_test_time_adaptation_is_applied_once_and_returns_new_objects():
    x = _samples()
    ls = LearnedScore(x, estimator=_Adaptable(), adapt_steps=3)
    assert ls.estimator.steps == 3
    more = ls.adapt(2)
    assert more.estimator.steps == 5 and ls.estimator.steps == 3 and more.samples is ls.samples
    with pytest.raises(ValueError, match="non-negative"):
        ls.adapt(-1)


def test_integer_queries_and_negative_expand_are_errors():
    """Issue 12, item 8: int64 queries were answered with truncated int64 log-densities and
    ``expand((-1,))`` was accepted."""
    prior = LearnedScore(_samples(), estimator="kde")
    with pytest.raises(TypeError, match="floating"):
        prior.log_prob(torch.zeros(3, prior.dim, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-negative"):
        prior.expand((-1,))


@pytest.fixture
def sample_checks(monkeypatch):
    """The names passed to the full input check, one per check (``"samples"`` for a sample set)."""
    import pyro_disco._validation as validation

    checked = []
    full_check = validation._as_float_tensor
    monkeypatch.setattr(
        validation,
        "_as_float_tensor",
        lambda x, name: checked.append(name) or full_check(x, name),
    )
    return checked


@pytest.mark.parametrize(
    "estimator, weighted", [("kde", False), ("gmm", False), ("transformer", False), ("kde", True)]
)
def test_samples_are_checked_once_per_construction(sample_checks, estimator, weighted):
    # Validate at the public boundary once: LearnedScore checks the samples, and the factory,
    # pretrained_estimator and the constructors skip the repeat check of that tensor (3-4 before).
    if estimator == "transformer" and 2 not in _available_dims():
        pytest.skip("no pretrained weights for d = 2")
    x = _samples()
    weights = torch.ones(x.shape[0], dtype=x.dtype) if weighted else None
    LearnedScore(x, estimator, weights=weights)
    assert sample_checks.count("samples") == 1
    with pytest.raises(ValueError, match="non-finite"):  # the one check still runs
        LearnedScore(torch.full_like(x, math.nan), estimator, weights=weights)


@pytest.mark.parametrize(
    "estimator", ["kde", "silverman-kde", "gmm", "sdkde", "emp-sdkde", "transformer", "auto"]
)
def test_build_estimator_checks_the_samples_once(sample_checks, estimator):
    # build_estimator is a public boundary too: one check (kde was 2, emp-sdkde 4); auto checks
    # each of its 2 cross-validation folds once more, not once per candidate (auto was 9).
    if estimator == "transformer" and 2 not in _available_dims():
        pytest.skip("no pretrained weights for d = 2")
    x = _samples()
    kwargs = {"score": lambda z: -z} if estimator == "sdkde" else {}
    build_estimator(x, estimator, **kwargs)
    assert sample_checks.count("samples") == (3 if estimator == "auto" else 1)
    with pytest.raises(ValueError, match="non-finite"):  # the one check still runs
        build_estimator(torch.full_like(x, math.nan), estimator, **kwargs)
