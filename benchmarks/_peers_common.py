"""The classical peers of issue 16, shared by the benchmarks (``peers.py``, ``samplers.py``,
``fisher.py``, ``pde.py``): each is built from samples ``x`` ``(n, d)`` and exposes
``logdensity(x)`` / ``score(x)``.

- ``SklearnGMM``: scikit-learn ``GaussianMixture(k, covariance_type="full", random_state=0)``,
  k = 1..10 (k < n), lowest BIC; exact log-density and score of the fitted mixture through
  ``pyro_disco.targets.GaussianMixture``;
- ``cv_kde``: ``GaussianKDE(x, factor)``, factor from a log grid of 12 values in [0.05, 2] x
  Scott's n^(-1/(d+4)), chosen by 2-fold held-out log-likelihood (fits on n/2), then refitted on
  all n with the factor rescaled by 2^(-1/(d+4)) (Scott's rate from n/2 to n).

scikit-learn is a benchmark/test extra: imported only when a ``SklearnGMM`` is built. No global
state is changed on import (``peers.py`` sets float64 as the default dtype itself).
"""

from __future__ import annotations

import math

import torch

from pyro_disco.estimators.kde import GaussianKDE, bandwidth_factor
from pyro_disco.targets import GaussianMixture


class SklearnGMM:
    """scikit-learn's GaussianMixture, k = 1..k_max (k < n) by lowest BIC, exposed with exact
    ``logdensity`` and ``score``."""

    def __init__(self, x: torch.Tensor, k_max: int = 10):
        from sklearn.mixture import GaussianMixture as SkGMM

        xn = x.detach().cpu().numpy()
        best = None
        for k in range(1, min(k_max, x.shape[0] - 1) + 1):
            m = SkGMM(k, covariance_type="full", random_state=0).fit(xn)
            bic = m.bic(xn)
            if best is None or bic < best[0]:
                best = (bic, m)
        m = best[1]
        self.dim = x.shape[-1]
        self.num_components = m.n_components
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)[None]  # noqa: E731
        self._gm = GaussianMixture(t(m.weights_), t(m.means_), t(m.covariances_))

    def logdensity(self, x):
        return self._gm.logdensity(x[None])[0]

    def proposal(self) -> GaussianMixture:
        """Defensive importance proposal: half the fit, half the fit with covariances x 4."""
        gm = self._gm
        return GaussianMixture(
            torch.cat([gm.weights, gm.weights], -1),
            torch.cat([gm.means, gm.means], -2),
            torch.cat([gm.covariances, 4 * gm.covariances], -3),
        )

    def score(self, x):
        return self._gm.score(x[None])[0]


GRID = torch.logspace(math.log10(0.05), math.log10(2.0), 12, dtype=torch.float64).tolist()


def cv_kde(x: torch.Tensor, seed: int = 0):
    """Gaussian KDE with factor chosen by 2-fold held-out log-likelihood (see module docstring);
    the chosen factor over Scott's is kept as ``.factor_over_scott``."""
    n, d = x.shape
    scott = bandwidth_factor("scott", n, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = x[perm[: n // 2]], x[perm[n // 2 :]]
    best = None
    for c in GRID:
        f = c * scott
        ll = 0.5 * (
            GaussianKDE(a, f).logdensity(b).mean().item() + GaussianKDE(b, f).logdensity(a).mean().item()
        )
        if best is None or ll > best[0]:
            best = (ll, f)
    est = GaussianKDE(x, best[1] * 2.0 ** (-1.0 / (d + 4)))
    est.factor_over_scott = best[1] / scott
    return est


PEERS = ("sklearn GMM-BIC", "CV-KDE", "gmm", "auto")  # the rows the downstream benchmarks add


def build_auto(x: torch.Tensor):
    """``build_estimator(x, "auto")``: gmm, Scott KDE or the transformer by held-out Hyvärinen score."""
    from pyro_disco.factory import build_estimator

    return build_estimator(x, "auto")


def peer_factories(names=PEERS) -> dict:
    """name -> factory ``samples -> estimator`` for the peers in ``names`` (in ``PEERS`` order);
    ``gmm`` is ours, ``GaussianMixtureEstimator`` (torch EM, k by BIC)."""
    from pyro_disco.estimators.mixture import GaussianMixtureEstimator

    makers = {
        "sklearn GMM-BIC": SklearnGMM,
        "CV-KDE": cv_kde,
        "gmm": GaussianMixtureEstimator,
        "auto": build_auto,
    }
    return {name: makers[name] for name in PEERS if name in names}


def peers_line(names, how: str) -> str:
    """The output header's line that names the peer rows and says ``how`` they were run."""
    return f"peers (issue 16): {', '.join(n for n in PEERS if n in names)} (gmm: ours); {how}"


def auto_choice(est) -> str:
    """The candidate ``build_estimator(x, "auto")`` chose (``"-"`` for any other estimator)."""
    sel = getattr(est, "selection", None)
    return str(getattr(sel, "chosen", "?")) if sel is not None else "-"
