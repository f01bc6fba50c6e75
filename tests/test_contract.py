"""The estimator contract, one parametrised test for every estimator name and exact target.

Every name in :data:`pyro_disco.factory.ESTIMATORS` and every exact target of
:mod:`pyro_disco.targets` answers ``logdensity(x) -> (...)`` and ``score(x) -> (..., d)`` for
queries ``(..., d)``; float32 and float64 queries come back in their own dtype; neither the
samples nor the queries are changed; bad input is a ``ValueError`` (NaN, wrong shape, n <= d)
or a ``TypeError`` (integer dtype), as ``pyro_disco._validation`` documents; where the score is
the exact gradient of the log-density (the KDE family, the Gaussian mixture, the targets) it
matches autograd; ``repr`` names the kind. Small n, d in {1, 3}: a few seconds on one thread.
"""

from __future__ import annotations

import functools
import pickle

import pytest
import torch
from torch.distributions import Independent, Laplace, Normal

from pyro_disco.factory import ESTIMATORS, build_estimator
from pyro_disco.targets import ExactDistribution, GaussianMixture

F32, F64 = torch.float32, torch.float64
DIMS = (1, 3)
N = 150  # samples: enough for every estimator (auto's 2-fold selection included), cheap to fit
BATCH_SHAPES = [(), (4,), (2, 3)]
# the score is the exact gradient of the log-density for these (auto picks one of its own)
EXACT_GRADIENT = ("gmm", "kde", "silverman-kde", "sdkde", "emp-sdkde")
GRADIENT = {F64: dict(rtol=1e-8, atol=1e-10), F32: dict(rtol=1e-4, atol=1e-5)}  # two routes, round-off
SAME = dict(rtol=0, atol=0)  # the same computation twice


def _samples(d: int, dtype: torch.dtype, n: int = N) -> torch.Tensor:
    """Two correlated, offset clusters: neither a plain standard normal nor degenerate."""
    g = torch.Generator().manual_seed(100 + d)
    z = torch.randn(n, d, generator=g, dtype=F64)
    z[: n // 3] += 2.5
    mix = torch.eye(d, dtype=F64) + 0.3 * torch.ones(d, d, dtype=F64).triu(1)
    return (z @ mix + 1.0).to(dtype)


def _queries(batch: tuple[int, ...], d: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return (1.5 * torch.randn(*batch, d, generator=g, dtype=F64) + 1.0).to(dtype)


@functools.cache
def _estimator(name: str, d: int, dtype: torch.dtype):
    return build_estimator(_samples(d, dtype), name)


def _targets(d: int, dtype: torch.dtype) -> dict:
    weights = torch.tensor([0.3, 0.7], dtype=dtype)
    means = torch.stack([torch.full((d,), -1.0), torch.full((d,), 1.5)]).to(dtype)
    covs = torch.stack([torch.eye(d), 0.5 * torch.eye(d) + 0.1]).to(dtype)
    loc, scale = torch.zeros(d, dtype=dtype), torch.full((d,), 0.8, dtype=dtype)
    out = {"GaussianMixture": GaussianMixture(weights, means, covs)}
    out["ExactDistribution(Laplace)"] = ExactDistribution(Independent(Laplace(loc, scale), 1))
    if d == 1:  # a scalar event shape stands for d = 1
        out["ExactDistribution(Normal)"] = ExactDistribution(Normal(loc[0], scale[0]))
    return out


TARGETS = [(name, d) for d in DIMS for name in _targets(d, F64)]
# a target's queries need at least one point axis, (m, d): batch shapes of one or more axes
TARGET_BATCH_SHAPES = [(4,), (2, 3)]


def _target(name: str, d: int, dtype: torch.dtype):
    return _targets(d, dtype)[name]


# ------------------------------------------------------------------ shapes and dtypes


def _check_shapes(obj, d: int, batch_shapes: list[tuple[int, ...]]) -> None:
    """``(...)`` log-densities and ``(..., d)`` scores, finite, the same from the joint call
    (to round-off: an estimator may share work between the two)."""
    assert obj.dim == d
    for batch in batch_shapes:
        y = _queries(batch, d, F64)
        logp, s = obj.logdensity(y), obj.score(y)
        assert logp.shape == batch and s.shape == (*batch, d), (batch, logp.shape, s.shape)
        assert torch.isfinite(logp).all() and torch.isfinite(s).all()
        both = obj.logdensity_and_score(y)
        torch.testing.assert_close(both[0], logp, **GRADIENT[F64])
        torch.testing.assert_close(both[1], s, **GRADIENT[F64])


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_output_shapes(name, d):
    _check_shapes(_estimator(name, d, F64), d, BATCH_SHAPES)


@pytest.mark.parametrize("name, d", TARGETS)
def test_target_output_shapes(name, d):
    _check_shapes(_target(name, d, F64), d, TARGET_BATCH_SHAPES)


@pytest.mark.parametrize("query_dtype", [F32, F64])
@pytest.mark.parametrize("sample_dtype", [F32, F64])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_answers_in_the_query_dtype(name, sample_dtype, query_dtype):
    est = _estimator(name, 3, sample_dtype)
    y = _queries((5,), 3, query_dtype)
    logp, s = est.logdensity_and_score(y)
    assert est.logdensity(y).dtype == est.score(y).dtype == logp.dtype == s.dtype == query_dtype


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name, d", TARGETS)
def test_target_keeps_its_dtype(name, d, dtype):
    target = _target(name, d, dtype)
    y = _queries((5,), d, dtype)
    assert target.logdensity(y).dtype == target.score(y).dtype == dtype


# ------------------------------------------------------------------ no mutation


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_changes_neither_samples_nor_queries(name):
    x = _samples(3, F64)
    x_before = x.clone()
    est = build_estimator(x, name)
    y = _queries((6,), 3, F64)
    y_before = y.clone()
    est.logdensity(y), est.score(y), est.logdensity_and_score(y)
    torch.testing.assert_close(x, x_before, **SAME)
    torch.testing.assert_close(y, y_before, **SAME)
    assert not y.requires_grad


@pytest.mark.parametrize("name, d", TARGETS)
def test_target_changes_no_query(name, d):
    target = _target(name, d, F64)
    y = _queries((6,), d, F64)
    y_before = y.clone()
    target.logdensity(y), target.score(y), target.logdensity_and_score(y)
    torch.testing.assert_close(y, y_before, **SAME)
    assert not y.requires_grad


# ------------------------------------------------------------------ bad input


def _bad_samples(d: int) -> dict:
    x = _samples(d, F64)
    nan = x.clone()
    nan[3, 0] = float("nan")
    return {
        "NaN": (nan, ValueError, "non-finite"),
        "inf": (x.clone().index_fill_(0, torch.tensor([5]), float("inf")), ValueError, "non-finite"),
        "three axes": (x.unsqueeze(0), ValueError, r"shape \(n, d\)"),
        "one axis": (x[:, 0], ValueError, r"shape \(n, d\)"),
        "n <= d": (x[:d], ValueError, "more samples than dimensions"),
        "integer dtype": (x.round().long(), TypeError, "floating dtype"),
        "float16": (x.half(), TypeError, "float32 or float64"),
    }


@pytest.mark.parametrize("case", list(_bad_samples(3)))
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_rejects_bad_samples_clearly(name, case):
    x, error, message = _bad_samples(3)[case]
    with pytest.raises(error, match=message):
        build_estimator(x, name)


def _bad_queries(d: int) -> dict:
    y = _queries((4,), d, F64)
    return {
        "NaN": (y.clone().index_fill_(0, torch.tensor([1]), float("nan")), ValueError, "non-finite"),
        "wrong d": (torch.zeros(4, d + 1, dtype=F64), ValueError, rf"shape \(\.\.\., {d}\)"),
        "0-dim": (torch.tensor(0.5, dtype=F64), ValueError, rf"shape \(\.\.\., {d}\)"),
        "integer dtype": (torch.zeros(4, d, dtype=torch.long), TypeError, "floating dtype"),
    }


@pytest.mark.parametrize("case", list(_bad_queries(3)))
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_rejects_bad_queries_clearly(name, case):
    est = _estimator(name, 3, F64)
    y, error, message = _bad_queries(3)[case]
    for method in (est.logdensity, est.score, est.logdensity_and_score):
        with pytest.raises(error, match=message):
            method(y)


# ------------------------------------------------------------------ score = ∇ log-density


def _autograd_score(fn, y: torch.Tensor) -> torch.Tensor:
    y = y.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(y).sum(), y)
    return grad


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", EXACT_GRADIENT)
def test_estimator_score_is_the_gradient_of_its_logdensity(name, d, dtype):
    est = _estimator(name, d, dtype)
    y = _queries((2, 5), d, dtype)
    torch.testing.assert_close(est.score(y), _autograd_score(est.logdensity, y), **GRADIENT[dtype])


@pytest.mark.parametrize("name, d", TARGETS)
def test_target_score_is_the_gradient_of_its_logdensity(name, d):
    target = _target(name, d, F64)
    y = _queries((2, 5), d, F64)
    torch.testing.assert_close(target.score(y), _autograd_score(target.logdensity, y), **GRADIENT[F64])


# ------------------------------------------------------------------ repr and pickling


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_repr_names_its_kind_and_size(name):
    est = _estimator(name, 3, F64)
    text = repr(est)
    assert text.startswith(type(est).__name__ + "(") and "d=3" in text and f"n={N}" in text, text


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_pickles_to_the_same_answers(name):
    est = _estimator(name, 3, F64)
    again = pickle.loads(pickle.dumps(est))
    y = _queries((5,), 3, F64)
    torch.testing.assert_close(again.logdensity(y), est.logdensity(y), **SAME)
    torch.testing.assert_close(again.score(y), est.score(y), **SAME)
