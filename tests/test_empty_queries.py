"""Empty queries and block sizes (issue 12, item 8): every estimator and ``LearnedScore`` answer
``(0, d)`` queries with empty outputs of the right shape, and a non-positive ``block_size`` is
a clear ``ValueError``, not a ``torch.cat`` error or an unclear one deep in attention."""

import pytest
import torch

from pyro_disco import LearnedScore
from pyro_disco.factory import ESTIMATORS, build_estimator

DT = torch.float64


@pytest.fixture(scope="module")
def samples():
    return torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=DT)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_answers_empty_queries(name, samples):
    est = build_estimator(samples, name)
    for shape in [(0, 3), (2, 0, 3), (0, 4, 3)]:
        for dtype in (torch.float64, torch.float32):
            q = torch.zeros(shape, dtype=dtype)
            logp, s = est.logdensity_and_score(q)
            assert logp.shape == shape[:-1] and s.shape == shape, (shape, dtype)
            assert logp.dtype == s.dtype == dtype
            assert est.logdensity(q).shape == shape[:-1]
            assert est.score(q).shape == shape


@pytest.mark.parametrize("name", ["kde", "transformer"])
@pytest.mark.parametrize("validate_args", [True, False])
def test_learned_score_answers_empty_queries(name, validate_args, samples):
    """Was: RuntimeError "cannot reshape tensor of 0 elements" from torch's support check."""
    ls = LearnedScore(samples, estimator=name, validate_args=validate_args)
    q = torch.zeros(0, 3, dtype=DT, requires_grad=True)
    logp = ls.log_prob(q)
    assert logp.shape == (0,) and ls.score(q).shape == (0, 3)
    (grad,) = torch.autograd.grad(logp.sum(), q)
    assert grad.shape == (0, 3)
    grouped = LearnedScore(torch.stack([samples, samples + 1]), estimator=name, validate_args=validate_args)
    assert grouped.log_prob(torch.zeros(0, 2, 3, dtype=DT)).shape == (0, 2)
    assert grouped.score(torch.zeros(0, 1, 3, dtype=DT)).shape == (0, 2, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        ls.log_prob(torch.zeros(0, 2, dtype=DT))  # an empty query of the wrong d is still an error


@pytest.mark.parametrize("name", ["kde", "silverman-kde", "emp-sdkde", "transformer"])
@pytest.mark.parametrize("bad", [0, -5])
def test_non_positive_block_size_is_a_clear_error(name, bad, samples):
    """Was (transformer): block_size=0 failed inside the attention with an unclear error."""
    with pytest.raises(ValueError, match="block_size must be a positive"):
        build_estimator(samples, name, block_size=bad)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_transformer_query_block_must_be_a_positive_int(bad, samples):
    with pytest.raises(ValueError, match="query_block must be a positive int"):
        build_estimator(samples, "transformer", query_block=bad)
