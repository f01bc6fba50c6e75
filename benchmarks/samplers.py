"""ULA / MALA / SVGD (and the score-based flow) on one 2-D target, with exact vs learned scores.

Target: the 2-D Gaussian mixture 0.4 N((-1.5, 0), diag(0.5, 0.8)) + 0.6 N((1.5, 0.5), [[0.6, 0.3],
[0.3, 0.7]]), known exactly. Learned scores come from ``--num-samples`` draws of it: Scott KDE
(bandwidth factor n^{-1/6}), and the pretrained transformer when weights for d = 2 ship.
Reported per sampler and score: the error of the mean (Euclidean), the relative Frobenius error
of the covariance, and the squared KSD (IMQ kernel, U-statistic, against the *exact* score) when
``pyro_disco.stein`` is available. The "iid exact draws" row is the Monte Carlo floor for the
same number of points. All samplers start from the Gaussian fitted to the samples.

Run:  OMP_NUM_THREADS=1 python benchmarks/samplers.py            (about a minute on one core)
      OMP_NUM_THREADS=1 python benchmarks/samplers.py --smoke    (seconds)
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_disco import GaussianKDE, GaussianMixture
from pyro_disco.infer.langevin import run as langevin_run
from pyro_disco.infer.particles import flow_run
from pyro_disco.infer.svgd import svgd_run
from pyro_disco.metrics import relative_error

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
        print(f"{name:<22} {score_name:<14} {x.shape[0]:>6} {merr:>9.4f} {cerr:>9.4f} {k} {seconds:>7.1f}")

    print(f"target: 2-D two-component Gaussian mixture; learned scores from n = {samples.shape[0]} draws")
    print(
        f"{'sampler':<22} {'score':<14} {'points':>6} {'mean err':>9} {'cov err':>9} {'KSD^2 (U)':>10} "
        f"{'seconds':>7}"
    )
    report("iid exact draws", "-", target.sample(n_chains, generator=gen), 0.0)
    report("iid exact draws", "-", target.sample(n_particles, generator=gen), 0.0)
    scores = {"exact": target, **learned_scores(samples)}
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


if __name__ == "__main__":
    main()
