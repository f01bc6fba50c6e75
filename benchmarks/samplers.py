"""ULA / MALA / SVGD (and the score-based flow) on one 2-D target, with exact vs learned scores.

Target: the 2-D Gaussian mixture 0.4 N((-1.5, 0), diag(0.5, 0.8)) + 0.6 N((1.5, 0.5), [[0.6, 0.3],
[0.3, 0.7]]), known exactly. Learned scores come from ``--num-samples`` draws of it: Scott KDE
(bandwidth factor n^{-1/6}), and the pretrained transformer when weights for d = 2 ship; then
(issue 16) the classical peers of ``benchmarks/peers.py`` (built by ``_peers_common.py``):
``sklearn GMM-BIC`` (scikit-learn ``GaussianMixture``, full covariances, k = 1..10 by BIC,
random_state=0; exact log-density and score of the fit), ``CV-KDE`` (Gaussian KDE, factor by
2-fold held-out log-likelihood), our ``gmm`` (torch EM, k by BIC) and ``auto``
(``build_estimator(x, "auto")``, its choice in brackets). The peers' rows come after the
original ones and their fits draw no random numbers from the shared generator, so the exact /
KDE / transformer rows are the same as without them; ``--no-peers`` leaves them out, ``--smoke``
keeps only CV-KDE and gmm. The fit time of every learned score is printed under the table.
Reported per sampler and score: the error of the mean (Euclidean), the relative Frobenius error
of the covariance, and the squared KSD (IMQ kernel, U-statistic, against the *exact* score) when
``pyro_disco.stein`` is available. The "iid exact draws" row is the Monte Carlo floor for the
same number of points. All samplers start from the Gaussian fitted to the samples.

Run:  OMP_NUM_THREADS=1 python benchmarks/samplers.py            (about a minute on one core)
      OMP_NUM_THREADS=1 python benchmarks/samplers.py --smoke    (seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pyro_disco import GaussianKDE, GaussianMixture
from pyro_disco.infer.langevin import run as langevin_run
from pyro_disco.infer.particles import flow_run
from pyro_disco.infer.svgd import svgd_run
from pyro_disco.metrics import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers_common import PEERS, auto_choice, peer_factories, peers_line  # noqa: E402

F64 = torch.float64


def make_target() -> GaussianMixture:
    w = torch.tensor([0.4, 0.6], dtype=F64)
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=F64)
    covs = torch.tensor([[[0.5, 0.0], [0.0, 0.8]], [[0.6, 0.3], [0.3, 0.7]]], dtype=F64)
    return GaussianMixture(w, means, covs)


def exact_moments(gm: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    w, mu, cov = gm.weights, gm.means, gm.covariances
    mean = w @ mu
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


def learned_scores(samples: torch.Tensor) -> dict:
    scores = {"KDE (Scott)": GaussianKDE(samples)}
    try:
        from pyro_disco.pretrained import available_dims, pretrained_estimator
    except ImportError:
        return scores
    if 2 in available_dims():
        scores["transformer"] = pretrained_estimator(samples)
    return scores


SMOKE_PEERS = ("CV-KDE", "gmm")  # --smoke: the two that add under a second


def peer_scores(samples: torch.Tensor, names=PEERS) -> tuple[dict, dict]:
    """The issue-16 peers ``names`` on ``samples``: ``({label: estimator}, {label: fit seconds})``;
    a peer that fails to build is left out with its error printed."""
    scores, seconds = {}, {}
    for label, make in peer_factories(names).items():
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng():  # the original rows' random numbers stay as they were
                est = make(samples)
        except Exception as exc:  # noqa: BLE001 - reported, the other rows still run
            print(f"{label}: left out ({type(exc).__name__}: {exc})")
            continue
        if label == "auto":
            label = f"auto ({auto_choice(est)})"
        scores[label], seconds[label] = est, time.perf_counter() - t0
    return scores, seconds


def ksd_fn():
    try:
        from pyro_disco.stein.ksd import ksd
    except ImportError:
        return None
    return ksd


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=1000, help="draws the learned scores are built from")
    p.add_argument("--num-chains", type=int, default=1000, help="Langevin chains = SVGD/flow particles / 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    p.add_argument("--no-peers", action="store_true", help="only the exact, KDE and transformer rows")
    args = p.parse_args(argv)
    n_chains = 60 if args.smoke else args.num_chains
    n_particles = n_chains // 2
    steps = 20 if args.smoke else 300
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    target = make_target()
    mean, cov = exact_moments(target)
    samples = target.sample(200 if args.smoke else args.num_samples, generator=gen)
    ksd = ksd_fn()

    def report(name: str, score_name: str, x: torch.Tensor, seconds: float) -> None:
        merr = float((x.mean(0) - mean).norm())
        cerr = float(relative_error(torch.cov(x.T), cov))
        k = f"{float(ksd(x[:1000], target.score, statistic='u')):10.2e}" if ksd else "       n/a"
        print(f"{name:<22} {score_name:<18} {x.shape[0]:>6} {merr:>9.4f} {cerr:>9.4f} {k} {seconds:>7.1f}")

    print(f"target: 2-D two-component Gaussian mixture; learned scores from n = {samples.shape[0]} draws")
    peer_names = () if args.no_peers else SMOKE_PEERS if args.smoke else PEERS
    if peer_names:
        how = "after the exact, KDE (Scott) and transformer rows; auto: its choice in brackets"
        if args.smoke:
            how += "; --smoke leaves out sklearn GMM-BIC and auto (a few seconds each)"
        print(peers_line(peer_names, how))
    print(
        f"{'sampler':<22} {'score':<18} {'points':>6} {'mean err':>9} {'cov err':>9} {'KSD^2 (U)':>10} "
        f"{'seconds':>7}"
    )
    report("iid exact draws", "-", target.sample(n_chains, generator=gen), 0.0)
    report("iid exact draws", "-", target.sample(n_particles, generator=gen), 0.0)
    fit_seconds = {}
    t0 = time.perf_counter()
    scores = {"exact": target, **learned_scores(samples)}
    fit_seconds["KDE (Scott) + transformer"] = time.perf_counter() - t0
    if peer_names:
        peers, peer_seconds = peer_scores(samples, peer_names)
        scores.update(peers)
        fit_seconds.update(peer_seconds)
    # every sampler starts from the Gaussian fitted to the samples (what a user would do)
    chol = torch.linalg.cholesky(torch.cov(samples.T))
    start = samples.mean(0) + torch.randn(n_chains, 2, generator=gen, dtype=F64) @ chol.T
    for score_name, score in scores.items():
        t0 = time.perf_counter()
        out = langevin_run(start, score, 0.05, 1, method="ula", num_warmup=steps, generator=gen)
        report("ULA h=0.05", score_name, out.samples[:, -1], time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = langevin_run(start, score, 0.3, 1, method="mala", num_warmup=steps, generator=gen)
        report(f"MALA h->{out.step_size:.2f}", score_name, out.samples[:, -1], time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = svgd_run(start[:n_particles], score, 0.05, steps + 200)
        report("SVGD RBF/Adam", score_name, res.particles, time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = flow_run(start[:n_particles], score, step_size=0.05, num_steps=steps)
        report("flow (KDE of cloud)", score_name, res.particles, time.perf_counter() - t0)
    print("fit seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in fit_seconds.items()))


if __name__ == "__main__":
    main()
