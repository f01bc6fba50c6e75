"""PreparedQuery (nn.prepared): the universal network's query with its context-only parts
computed once equals the general ``UniversalDiScoFormer.query`` to round-off, in values and in
derivatives, and is what the estimator uses for a few query points."""

import pytest
import torch

from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.nn.prepared import PREPARED_MAX_QUERIES, PreparedQuery
from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer

SMALL = dict(d_model=32, num_layers=2, num_heads=4, head_dim=8, d_ff=64)
# the two paths sum in different orders (fused matrices, batched bandwidths, precomputed
# inverse Cholesky factors): float64 agrees to ~1e-13 relative, float32 to a few ulps of
# outputs whose largest terms are ~100 (asinh'd Gram features, log-densities of ~1e-3 points)
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def _model(mixture: int, dtype: torch.dtype, seed: int = 0) -> UniversalDiScoFormer:
    """A small universal model with *every* parameter perturbed (zero-initialised gates included),
    so attention, score messages, features and gates all shape the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UniversalDiScoFormer(UniversalConfig(**SMALL, mixture_components=mixture))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def _cloud(n: int, d: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """A lumpy, roughly whitened point cloud ``(1, n, d)`` (two clusters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    x[:, : n // 3] += 1.5
    return (x * 0.8).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mixture", [0, 3])
@pytest.mark.parametrize("d", [1, 2, 5, 16])
@pytest.mark.parametrize("m", [1, 3, 40])
def test_prepared_query_equals_the_general_query(d, m, mixture, dtype):
    model = _model(mixture, dtype)
    context = _cloud(150, d, dtype)
    y = _cloud(m, d, dtype, seed=2) * 1.3
    with torch.no_grad():
        encoded = model.encode(context)
        logf, score = model.query(encoded, y)
        logf_p, score_p = PreparedQuery(model, encoded)(y[0])
    assert logf_p.dtype == dtype and logf_p.shape == (m,) and score_p.shape == (m, d)
    torch.testing.assert_close(logf_p, logf[0], **TOL[dtype])
    torch.testing.assert_close(score_p, score[0], **TOL[dtype])


@pytest.mark.parametrize("mixture", [0, 3])
def test_prepared_query_has_the_general_querys_derivatives(mixture):
    """First and second derivatives in the queries (what LearnedScore's Hessians use)."""
    model = _model(mixture, torch.float64)
    encoded = model.encode(_cloud(120, 3, torch.float64))
    prepared = PreparedQuery(model, encoded)
    y = _cloud(4, 3, torch.float64, seed=3)[0]
    v = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def derivatives(fn):
        x = y.clone().requires_grad_(True)
        logf, score = fn(x)
        (g_logf,) = torch.autograd.grad(logf.sum(), x, create_graph=True)
        (vjp,) = torch.autograd.grad((score * v).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad((vjp * v).sum(), x)
        return g_logf.detach(), vjp.detach(), second

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):  # double backward
        general = derivatives(lambda x: tuple(t[0] for t in model.query(encoded, x.unsqueeze(0))))
    for a, b in zip(derivatives(prepared), general):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_prepared_query_holds_no_weight_gradients():
    model = _model(3, torch.float64)
    for p in model.parameters():
        p.requires_grad_(True)
    prepared = PreparedQuery(model, model.encode(_cloud(80, 2, torch.float64)))
    logf, score = prepared(torch.zeros(1, 2, dtype=torch.float64))
    assert not logf.requires_grad and not score.requires_grad


def test_prepared_query_takes_one_sample_set():
    model = _model(0, torch.float64)
    with pytest.raises(ValueError, match="one sample set"):
        PreparedQuery(model, model.encode(torch.randn(2, 50, 2, dtype=torch.float64)))


@pytest.mark.parametrize("m", [1, 5, PREPARED_MAX_QUERIES + 2])
def test_estimator_answers_few_points_by_the_prepared_query(m):
    """Same estimator outputs with and without the prepared path (inside the data's extent, in
    the far-field blend and beyond it), and under autograd."""
    model = _model(3, torch.float32)
    samples = _cloud(200, 2, torch.float64)[0] * 2.0 + 1.0
    est = DiScoFormerEstimator(model, samples, normalize=False)
    general = DiScoFormerEstimator(model, samples, normalize=False)
    general._use_prepared = False
    g = torch.Generator().manual_seed(5)
    x = samples.mean(0) + 2.0 * torch.randn(m, 2, generator=g, dtype=torch.float64)
    x[0] = samples.mean(0) + 100.0  # past the far-field tail
    with torch.inference_mode():  # the prepared query is built from plain tensors all the same
        answers = est.logdensity_and_score(x)
    # built on the first query of at most PREPARED_MAX_QUERIES points for the network (all but x[0])
    assert (est._prepared is not None) == (0 < m - 1 <= PREPARED_MAX_QUERIES)
    for a, b in zip(answers, general.logdensity_and_score(x)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(est.score(xr).sum(), xr)
        xr = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(general.score(xr).sum(), xr)
    torch.testing.assert_close(grad, ref, **TOL[torch.float32])
