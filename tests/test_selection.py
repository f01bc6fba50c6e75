"""Hyvärinen-score selection (``pyro_disco.estimators.selection``) and ``estimator="auto"``."""

import math

import torch

from pyro_disco import build_estimator
from pyro_disco.estimators.kde import GaussianKDE
from pyro_disco.estimators.mixture import GaussianMixtureEstimator
from pyro_disco.estimators.selection import hyvarinen_terms, select_estimator


def test_hyvarinen_terms_of_the_truth_average_minus_half_fisher():
    d = 3
    g = torch.Generator().manual_seed(0)

    class StandardNormal:  # exact score -x, differentiable
        dim = d

        def score(self, y):
            return -y

    truth = StandardNormal()
    x = torch.randn(4000, d, generator=g, dtype=torch.float64)
    terms = hyvarinen_terms(truth, x)  # ½‖x‖² − d, mean −d/2
    se = float(terms.std()) / math.sqrt(x.shape[0])
    assert abs(float(terms.mean()) + d / 2) < 4 * se  # 4 Monte Carlo standard errors
    torch.testing.assert_close(terms, 0.5 * x.square().sum(-1) - d, rtol=1e-12, atol=1e-12)


def test_selection_prefers_the_better_score_and_reports_it():
    x = torch.randn(800, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sel = select_estimator(x, {"narrow-kde": lambda s: GaussianKDE(s, 0.1), "gmm": GaussianMixtureEstimator})
    assert sel.chosen == "gmm"
    assert sel.scores["gmm"] < sel.scores["narrow-kde"] - 3 * sel.std_errors["narrow-kde"]
    assert sel.num_points == 512 and "gmm" in str(sel)


def test_ties_and_tiny_samples_go_to_the_simplest():
    x = torch.randn(600, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    same = select_estimator(x, {"first": GaussianKDE, "second": GaussianKDE})
    assert same.chosen == "first"
    tiny = select_estimator(x[:10], {"first": GaussianKDE, "second": GaussianMixtureEstimator})
    assert tiny.chosen == "first" and tiny.num_points == 0


def test_auto_selects_on_the_data_and_keeps_the_report():
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(300, 2, generator=g) - 4, torch.randn(300, 2, generator=g) + 4]).double()
    est = build_estimator(x, "auto")
    assert est.selection.chosen in est.selection.scores
    assert set(est.selection.scores) >= {"gmm", "kde"}
    forced = build_estimator(x, "gmm")  # a user can still force any estimator by name
    assert isinstance(forced, GaussianMixtureEstimator)
