"""`auto` returns a normalised density: a transformer whose log-normaliser cannot be estimated
is passed over for the best of the others, and the report says so (issue 16)."""

import math

import pytest
import torch

import pyro_disco.factory as factory
from pyro_disco.estimators.selection import Selection
from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.pretrained import pretrained_estimator


@pytest.fixture
def samples():
    g = torch.Generator().manual_seed(5)
    return torch.randn(300, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 0.5], dtype=torch.float64
    )


def test_the_transformer_reports_whether_it_is_normalised(samples):
    est = pretrained_estimator(samples)
    assert est.normalized  # d = 2: the importance sampler's ESS is in the thousands
    assert est.normalization.ess >= 100
    assert not pretrained_estimator(samples, normalize=False).normalized


def _transformer_wins(monkeypatch):
    """The ranking puts the transformer first; later rankings (without it) are the real ones."""
    real = factory.select_estimator

    def rigged(x, builders, **kw):
        if "transformer" in builders:
            names = list(builders)
            scores = {n: (-1.0 if n == "transformer" else 0.0) for n in names}
            return Selection("transformer", scores, {n: 0.1 for n in names}, 100, 0.0)
        return real(x, builders, **kw)

    monkeypatch.setattr(factory, "select_estimator", rigged)


def test_auto_passes_over_a_transformer_it_cannot_normalise(monkeypatch, samples):
    _transformer_wins(monkeypatch)
    monkeypatch.setattr(DiScoFormerEstimator, "normalized", property(lambda self: False))
    est, name = factory.resolve_estimator(samples, "auto")
    assert name in ("gmm", "kde") and est.selection.chosen == name
    assert "could not be normalised" in est.selection.note and "could not be normalised" in str(est.selection)
    assert est.selection.scores["transformer"] == -1.0  # the ranking is still reported
    # the fallback is a proper density: its log-density integrates to one on a grid
    t = torch.linspace(-8, 8, 321, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    mass = float(est.logdensity(grid).exp().sum() * (t[1] - t[0]) ** 2)
    assert math.isclose(mass, 1.0, abs_tol=0.02)


def test_auto_keeps_a_normalised_transformer_and_the_opt_out_keeps_any(monkeypatch, samples):
    _transformer_wins(monkeypatch)
    est, name = factory.resolve_estimator(samples, "auto")
    assert name == "transformer" and est.selection.note == ""
    monkeypatch.setattr(DiScoFormerEstimator, "normalized", property(lambda self: False))
    est, name = factory.resolve_estimator(samples, "auto", require_normalized=False)
    assert name == "transformer" and est.selection.note == ""


def test_the_selection_does_not_depend_on_units(samples):
    """The Hyvärinen terms are taken in the samples' whitened coordinates: mixed units (1e5 and
    1e-7) and a rotation give the same scores, so the same choice (was: a J dominated by the
    coordinate in the smallest unit)."""
    from pyro_disco.estimators.kde import GaussianKDE
    from pyro_disco.estimators.mixture import GaussianMixtureEstimator
    from pyro_disco.estimators.selection import select_estimator

    candidates = {"gmm": GaussianMixtureEstimator, "kde": GaussianKDE}
    ref = select_estimator(samples, candidates)
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0], [-0.5, 1.0]], dtype=torch.float64))
    for mapped in (samples * torch.tensor([1e5, 1e-7], dtype=torch.float64), samples @ q + 3.0):
        got = select_estimator(mapped, candidates)
        assert got.chosen == ref.chosen
        for name in candidates:
            assert math.isclose(got.scores[name], ref.scores[name], rel_tol=1e-6), name


def test_setting_a_candidate_aside_repicks_from_the_same_terms(samples):
    """No refit: the others' scores are the same numbers, and the rule picks among them."""
    from pyro_disco.estimators.kde import GaussianKDE
    from pyro_disco.estimators.mixture import GaussianMixtureEstimator
    from pyro_disco.estimators.selection import select_estimator

    sel = select_estimator(samples, {"gmm": GaussianMixtureEstimator, "kde": GaussianKDE})
    other = "kde" if sel.chosen == "gmm" else "gmm"
    aside = sel.without(sel.chosen, note="because")
    assert aside.chosen == other and aside.note == "because"
    assert aside.scores[other] == sel.scores[other] and aside.std_errors[other] == 0.0
    assert aside.scores[sel.chosen] == sel.scores[sel.chosen]  # still reported
