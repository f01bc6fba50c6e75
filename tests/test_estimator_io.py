"""Estimators: the dtype/device rule, ``__repr__``, ``.to`` and safe save/load round trips."""

import os
import pickle

import pytest
import torch
from pyro.infer import MCMC
from torch.testing import assert_close

from pyro_disco import MALA
from pyro_disco.distributions import LearnedScore
from pyro_disco.estimators import SDKDE, DiScoFormerEstimator, EmpSDKDE, GaussianKDE
from pyro_disco.estimators.io import load_estimator, save_estimator
from pyro_disco.estimators.weighted import WeightedGaussianKDE
from pyro_disco.pretrained import pretrained_estimator

F64 = torch.float64


def _x(n=200, dtype=F64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


BUILDERS = {
    "kde": lambda x: GaussianKDE(x),
    "kde-h": lambda x: GaussianKDE(x, covariance=0.3),
    "kde-cov": lambda x: GaussianKDE(x, covariance=torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=F64)),
    "sdkde": lambda x: SDKDE(x, lambda z: -z),
    "emp-sdkde": lambda x: EmpSDKDE(x),
    "weighted": lambda x: WeightedGaussianKDE(x, torch.linspace(0.1, 1.0, x.shape[0])),
    "transformer": lambda x: pretrained_estimator(x),
    "transformer-adapted": lambda x: pretrained_estimator(x).adapt(
        1, generator=torch.Generator().manual_seed(0)
    ),
}


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_save_load_round_trip_is_exact(name, dtype, tmp_path):
    est = BUILDERS[name](_x(dtype=dtype))
    path = tmp_path / "est.pt"
    est.save(path)
    state = torch.load(path, weights_only=True)  # the safe loader accepts the file as is
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert state["format"] == "pyro-disco-estimator" and state["kind"] == type(est).__name__
    again = type(est).load(path)
    assert type(again) is type(est) and repr(again) == repr(est)
    q = _x(7, dtype=dtype, seed=1)
    assert torch.equal(again.logdensity(q), est.logdensity(q))  # rebuilt by the same constructor
    assert torch.equal(again.score(q), est.score(q))
    if name == "transformer-adapted":
        assert again.adaptation_losses == est.adaptation_losses


def test_load_refuses_pickled_objects_and_wrong_kinds(tmp_path):
    bad = tmp_path / "pickled.pt"
    torch.save(GaussianKDE(_x()), bad)  # a whole object: only an unsafe unpickler could read it
    with pytest.raises(pickle.UnpicklingError):
        load_estimator(bad)
    good = tmp_path / "kde.pt"
    save_estimator(GaussianKDE(_x()), good)
    with pytest.raises(TypeError, match="not a DiScoFormerEstimator"):
        DiScoFormerEstimator.load(good)
    with pytest.raises(TypeError, match="cannot save"):
        save_estimator(object(), tmp_path / "x.pt")


@pytest.mark.parametrize("name", ["kde", "weighted", "transformer"])
def test_queries_follow_the_estimators_dtype_and_come_back_in_their_own(name):
    est = BUILDERS[name](_x())
    q64 = _x(5, seed=2)
    q32 = q64.float()
    for fn in (est.logdensity, est.score):
        out = fn(q32)
        assert out.dtype == torch.float32
        assert_close(out, fn(q32.double()).float(), rtol=0, atol=0)  # computed in float64
    moved = est.to(dtype=torch.float32)
    assert moved.dtype == torch.float32 and est.dtype == F64 and moved.score(q64).dtype == F64
    assert_close(moved.score(q64), est.score(q64), rtol=1e-4, atol=1e-5)  # float32 samples
    assert f"n={est.num_samples}" in repr(est) and "float64" in repr(est)


def test_mala_with_float32_initial_params_and_a_float64_estimator():
    ls = LearnedScore(_x(300), estimator="kde")
    assert "LearnedScore(n=300, d=2" in repr(ls)
    kernel = MALA(score=ls.estimator, logdensity_fn=ls.estimator.logdensity, step_size=0.3)
    init = {"x": torch.zeros(2)}  # Pyro's default dtype, float32
    mcmc = MCMC(kernel, num_samples=20, warmup_steps=10, initial_params=init, disable_progbar=True)
    mcmc.run()
    draws = mcmc.get_samples()["x"]
    assert draws.shape == (20, 2) and torch.isfinite(draws).all()
