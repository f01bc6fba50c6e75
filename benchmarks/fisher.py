"""Fisher information and entropy from samples: error table (estimator x n x case), KSD test.

Prints, for a 1-D three-mode Gaussian mixture (truth by quadrature) and a 10-D Gaussian
(truth analytic), the root-mean-square error over repetitions of the plug-in estimates
J = E||s||^2 and H = -E log p, for each estimator and sample size; then the power of the KSD
goodness-of-fit test (IMQ kernel, median bandwidth, wild bootstrap) against a 0.3-sigma shift
in 2-D at n = 500, and its level under p = q.

Estimators: Scott KDE evaluated at its own samples; Scott KDE cross-fit (built on one half,
evaluated on the other); Emp-SD-KDE (SD-KDE with the KDE's own score, bandwidth rule "sd");
the pretrained transformer and SD-KDE with the transformer's score when weights exist for d.
Then (issue 16) the classical peers of ``benchmarks/peers.py`` (built by ``_peers_common.py``),
on the same samples: ``sklearn GMM-BIC`` (scikit-learn ``GaussianMixture``, full covariances,
k = 1..10 by BIC, random_state=0; exact log-density and score of the fit), ``CV-KDE`` (Gaussian
KDE, factor by 2-fold held-out log-likelihood), our ``gmm`` (torch EM, k by BIC) and ``auto``
(``build_estimator(x, "auto")``; what it chose is listed under the table). Each peer is fitted
once per repetition, J and H sharing the fit (the original rows fit twice, so their s/rep is not
comparable with the peers'). ``--quick`` keeps only CV-KDE of the peers;
``--no-peers`` leaves them all out.

Run:  OMP_NUM_THREADS=1 python benchmarks/fisher.py [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from pyro_disco import EmpSDKDE, GaussianKDE, GaussianMixture
from pyro_disco.fisher import entropy, fisher_information
from pyro_disco.stein import ksd_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers_common import PEERS, auto_choice, peer_factories, peers_line  # noqa: E402

DTYPE = torch.float64


def mixture_1d() -> GaussianMixture:
    """The three-mode 1-D mixture used in the notebook."""
    weights = torch.tensor([0.3, 0.45, 0.25], dtype=DTYPE)
    means = torch.tensor([[-3.0], [0.0], [2.5]], dtype=DTYPE)
    stds = torch.tensor([0.6, 1.0, 0.4], dtype=DTYPE)
    return GaussianMixture(weights, means, (stds**2).reshape(3, 1, 1))


def quadrature_truth_1d(
    target: GaussianMixture, lo: float = -12.0, hi: float = 12.0, num: int = 400_001
) -> tuple[float, float]:
    """``(J, H)`` of a 1-D density by the trapezoidal rule on a fine grid."""
    grid = torch.linspace(lo, hi, num, dtype=DTYPE).unsqueeze(-1)
    logp, score = target.logdensity_and_score(grid)
    p = logp.exp()
    x = grid.squeeze(-1)
    return float(torch.trapezoid(score.squeeze(-1) ** 2 * p, x)), float(torch.trapezoid(-p * logp, x))


def gaussian_10d() -> GaussianMixture:
    """N(0, Sigma) in 10-D with scales in [0.5, 2] along a fixed random rotation."""
    d = 10
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(123), dtype=DTYPE))
    cov = q @ torch.diag(torch.linspace(0.5, 2.0, d, dtype=DTYPE) ** 2) @ q.T
    return GaussianMixture(torch.ones(1, dtype=DTYPE), torch.zeros(1, d, dtype=DTYPE), cov[None])


def gaussian_truth(target: GaussianMixture) -> tuple[float, float]:
    cov = target.covariances[0]
    return float(torch.linalg.inv(cov).trace()), float(0.5 * torch.logdet(2 * math.pi * math.e * cov))


def transformer_factory(d: int):
    """``pretrained_estimator`` if weights exist for ``d``, else ``None``."""
    try:
        from pyro_disco.pretrained import available_dims, pretrained_estimator

        return pretrained_estimator if d in available_dims() else None
    except (ImportError, AttributeError, OSError, ValueError):
        return None


QUICK_PEERS = ("CV-KDE",)  # --quick (the test's smoke run): the one that adds about a second


class FitOnce:
    """A factory that reuses its last fit when called again on the same samples (J and H of one
    repetition), and counts what ``auto`` chose."""

    def __init__(self, factory):
        self.factory, self.last, self.choices = factory, None, Counter()

    def __call__(self, x):
        key = (x.data_ptr(), tuple(x.shape))
        if self.last is None or self.last[1] != key:
            est = self.factory(x)
            self.last = (x, key, est)  # holding x keeps its memory (the key) from being reused
            if getattr(est, "selection", None) is not None:
                self.choices[auto_choice(est)] += 1
        return self.last[2]


def estimators(d: int, peers=PEERS) -> dict:
    """name -> (factory, cross_fit)."""
    table = {
        "Scott KDE": (GaussianKDE, False),
        "Scott KDE cross-fit": (GaussianKDE, True),
        "Emp-SD-KDE": (EmpSDKDE, False),
    }
    tf = transformer_factory(d)
    if tf is not None:
        table["transformer"] = (tf, False)
        table["SD-KDE (transformer score)"] = (lambda s: _sdkde_with(tf, s), False)
    for name, make in peer_factories(peers).items():  # after the original rows; fresh per case
        table[name] = (FitOnce(make), False)
    return table


def _sdkde_with(factory, samples):
    from pyro_disco import SDKDE

    return SDKDE(samples, factory(samples))


def error_table(sizes, num_reps, seed, peers=PEERS):
    """Rows ``(case, estimator, n, J true, J RMSE, H true, H RMSE, s/rep)`` and what ``auto``
    chose ``{(case, n): Counter}``."""
    cases = {
        "mixture-1d": (mixture_1d(), quadrature_truth_1d),
        "gaussian-10d": (gaussian_10d(), gaussian_truth),
    }
    rows, choices = [], {}
    for case, (target, truth_fn) in cases.items():
        j_true, h_true = truth_fn(target)
        for name, (factory, cross_fit) in estimators(target.dim, peers).items():
            for n in sizes:
                if name == "auto":
                    factory.choices = choices.setdefault((case, n), Counter())
                gen = torch.Generator().manual_seed(seed)  # same samples for every estimator
                j_err, h_err, t0 = [], [], time.perf_counter()
                for _ in range(num_reps):
                    x = target.sample(n, generator=gen)
                    j_err.append(float(fisher_information(x, factory, cross_fit=cross_fit).estimate) - j_true)
                    h_err.append(float(entropy(x, factory, cross_fit=cross_fit).estimate) - h_true)
                seconds = (time.perf_counter() - t0) / num_reps
                rows.append((case, name, n, j_true, _rmse(j_err), h_true, _rmse(h_err), seconds))
    return rows, choices


def _rmse(errors):
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def ksd_rates(num_reps, n=500, d=2, shift=0.3, alpha=0.05, num_bootstrap=500, seed=0):
    """Rejection rates of the KSD test (score of N(0, I)) on N(shift e1, I) and on N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.zeros(d, dtype=DTYPE)
    offset[0] = shift
    rates = {}
    for label, mean in (("power (0.3 sigma shift)", offset), ("level (p = q)", torch.zeros(d, dtype=DTYPE))):
        hits = 0
        for _ in range(num_reps):
            x = mean + torch.randn(n, d, generator=gen, dtype=DTYPE)
            result = ksd_test(x, lambda z: -z, num_bootstrap=num_bootstrap, generator=gen)
            hits += float(result.p_value) <= alpha
        rate = hits / num_reps
        rates[label] = (rate, math.sqrt(max(rate * (1 - rate), 1e-12) / num_reps))
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n in {256, 1024}, 2 repetitions, 50 KSD tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="leave out the issue-16 peer rows")
    args = parser.parse_args(argv)
    peers = () if args.no_peers else QUICK_PEERS if args.quick else PEERS
    sizes = (256, 1024) if args.quick else (256, 1024, 4096)
    num_reps = 2 if args.quick else 5
    ksd_reps = 50 if args.quick else 200
    torch.manual_seed(args.seed)

    print(f"Fisher information J and entropy H: RMSE over {num_reps} repetitions (float64, CPU)")
    print(
        "bandwidths: Scott KDE factor n^(-1/(d+4)) x Cov^(1/2); Emp-SD-KDE rule 'sd' 0.4 n^(-1/(d+8)) "
        "(robust 1-D scale); cross-fit = built on one half, evaluated on the other"
    )
    if peers:
        how = "fitted once per repetition, J and H sharing the fit"
        print(
            peers_line(
                peers, how + ("; --quick leaves out sklearn GMM-BIC, gmm and auto" if args.quick else "")
            )
        )
    print(
        f"{'case':<13} {'estimator':<27} {'n':>5} {'J true':>8} {'J RMSE':>8} {'J rel%':>7} "
        f"{'H true':>8} {'H RMSE':>8} {'s/rep':>6}"
    )
    rows, choices = error_table(sizes, num_reps, args.seed, peers)
    for case, name, n, j_true, j_rmse, h_true, h_rmse, sec in rows:
        print(
            f"{case:<13} {name:<27} {n:>5} {j_true:>8.4f} {j_rmse:>8.4f} {100 * j_rmse / j_true:>7.1f} "
            f"{h_true:>8.4f} {h_rmse:>8.4f} {sec:>6.2f}"
        )
    if choices:
        print(
            "auto chose (repetitions): "
            + "; ".join(
                f"{case} n={n}: " + ", ".join(f"{k} x{v}" for k, v in sorted(c.items()))
                for (case, n), c in choices.items()
            )
        )
    print(
        f"\nKSD test (IMQ, median bandwidth, 500 wild-bootstrap draws), d = 2, n = 500, alpha = 0.05, "
        f"{ksd_reps} repetitions:"
    )
    for label, (rate, se) in ksd_rates(ksd_reps, seed=args.seed).items():
        print(f"  {label:<26} rejection rate {rate:.3f} +- {se:.3f}")


if __name__ == "__main__":
    main()
