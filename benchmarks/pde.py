"""Score-based particle solvers: covariance and fourth-moment errors at the final time.

For n = 500 and n = 2000 particles, runs the Landau particle method with the exact score, the
Scott-KDE ("blob") score and the pretrained transformer's score (when weights exist for that
d; otherwise says so) on

- BKW 2-D (B = 1/16, C = 1/2), t in [0, 5];
- BKW 3-D (B = 1/24, C = 1, t0 = 5.5), t in [0, 5];
- anisotropic Maxwell relaxation, d = 3 and d = 10, B = 1/(4d), Sigma0 = diag(1.8, rest equal,
  trace d), t in [0, 2]: only the covariance law is exact there (no exact score);

and prints the relative covariance error ||S - S_exact||_F / ||S_exact||_F and the relative
fourth-moment error |E|v|^4 - exact| / exact at the final time. Heun, step 0.5 (BKW) / 0.2
(anisotropic). All numbers carry the Monte Carlo error of n initial draws; the t = 0 columns
show it. For the anisotropic cases the law starts from the particles' own covariance, and a
Gaussian-fit score (``gauss-fit``) is a parametric reference.

Then (issue 16) the classical peers of ``benchmarks/peers.py`` (built by ``_peers_common.py``),
each refitted at every velocity evaluation like the KDE: ``sklearn GMM-BIC`` (scikit-learn
``GaussianMixture``, full covariances, k = 1..10 by BIC, random_state=0; exact score of the fit),
``CV-KDE`` (Gaussian KDE, factor by 2-fold held-out log-likelihood) and our ``gmm`` (torch EM,
k by BIC). ``auto`` (``build_estimator(x, "auto")``) costs two fits of each candidate plus the
Hyvärinen selection, 4-8 s per fit at n = 2000 (about 21 fits per run: 2-3 minutes per run,
more than all the other rows of a run together): it is *not* run at every step. Its choice on
the starting particles is printed instead (that estimator refitted at every step is the row of
the same name). ``--peers`` picks which peers run (default all four, ``--peers`` alone none).

Run:  OMP_NUM_THREADS=1 python benchmarks/pde.py [--sizes 500 2000] [--seed 0] [--peers ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pyro_disco import GaussianKDE
from pyro_disco.pde import BKW, Landau, MaxwellRelaxation, solve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers_common import PEERS, auto_choice, build_auto, peer_factories, peers_line  # noqa: E402

DTYPE = torch.float64


class GaussianFit:
    """Score of the Gaussian fitted to the particles (a parametric reference estimator)."""

    def __init__(self, x):
        xc = x - x.mean(0)
        self.dim, self.mean = x.shape[1], x.mean(0)
        self.precision = torch.linalg.inv(xc.T @ xc / x.shape[0])

    def score(self, y):
        return -(y - self.mean) @ self.precision


def transformer_factory(d: int):
    """``pretrained_estimator`` when weights for ``d`` ship, else ``None`` and the reason."""
    try:
        from pyro_disco.pretrained import available_dims, pretrained_estimator
    except ImportError as exc:  # the transformer is optional here
        return None, f"pyro_disco.pretrained unavailable ({exc})"
    dims = available_dims()
    if d not in dims:
        return None, f"no pretrained weights for d={d} (available: {dims or 'none'})"
    return pretrained_estimator, "pretrained"


def auto_at_start(x0: torch.Tensor) -> str:
    """What ``build_estimator(x0, "auto")`` chooses on the starting particles, and its cost."""
    start = time.perf_counter()
    try:
        chosen = auto_choice(build_auto(x0))
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"failed on the starting particles ({type(exc).__name__}: {exc})"
    seconds = time.perf_counter() - start
    return f"chooses {chosen} on the starting particles ({seconds:.1f} s); not run per step"


def anisotropic(d: int) -> MaxwellRelaxation:
    rest = (d - 1.8) / (d - 1)
    cov = torch.diag(torch.tensor([1.8] + [rest] * (d - 1), dtype=DTYPE))
    return MaxwellRelaxation(Landau.maxwell(1.0 / (4 * d)), cov)


def cases():
    yield "BKW d=2", BKW.standard_2d(), 5.0, 0.5
    yield "BKW d=3", BKW.standard_3d(), 5.0, 0.5
    yield "aniso d=3", anisotropic(3), 2.0, 0.2
    yield "aniso d=10", anisotropic(10), 2.0, 0.2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peers", nargs="*", choices=PEERS, default=list(PEERS), help="issue-16 peers to add (default all)"
    )
    args = parser.parse_args(argv)
    print("relative errors at the final time T (and at t = 0: the Monte Carlo floor of the draw)")
    if args.peers:
        how = (
            "refitted at every step like the KDE, except auto: only its choice on the starting particles "
            "is listed (4-8 s per fit at n = 2000, ~21 fits per run)"
        )
        print(peers_line(args.peers, how))
    print(
        f"{'case':<11} {'n':>5} {'score':<15} {'cov(T)':>9} {'cov(0)':>9} {'m4(T)':>9} {'m4(0)':>9} "
        f"{'time s':>7}"
    )
    for name, problem, final_time, step in cases():
        d = problem.dim
        transformer, why = transformer_factory(d)
        scores = {"exact": "exact"} if isinstance(problem, BKW) else {}
        scores["kde-scott"] = GaussianKDE
        if not isinstance(problem, BKW):
            scores["gauss-fit"] = GaussianFit  # parametric reference: no exact score exists here
        if transformer is not None:
            scores["transformer"] = transformer
        scores.update(peer_factories(set(args.peers) - {"auto"}))  # auto: see auto_at_start
        for n in args.sizes:
            x0 = problem.sample_initial(n, generator=torch.Generator().manual_seed(args.seed))
            if isinstance(problem, BKW):
                exact = problem
            else:  # the law from the particles' own start, so t = 0 has no error
                exact = MaxwellRelaxation.from_particles(problem.problem, x0)
            for label, score in scores.items():
                start = time.perf_counter()
                traj = solve(
                    exact,
                    x0,
                    [0.0, final_time],
                    **({"score": score} if score == "exact" else {"fit": score}),
                    method="heun",
                    step_size=step,
                    progress=False,
                )
                elapsed = time.perf_counter() - start
                dg = traj.diagnostics
                ce, me = dg["covariance_error"], dg.get("fourth_moment_error")
                cov = f"{float(ce[-1]):9.4f} {float(ce[0]):9.4f}"
                m4 = f"{float(me[-1]):9.4f} {float(me[0]):9.4f}" if me is not None else f"{'-':>9} {'-':>9}"
                print(f"{name:<11} {n:>5} {label:<15} {cov} {m4} {elapsed:7.1f}", flush=True)
            if transformer is None:
                print(f"{name:<11} {n:>5} {'transformer':<15} {why}", flush=True)
            if "auto" in args.peers:
                print(f"{name:<11} {n:>5} {'auto':<15} {auto_at_start(x0)}", flush=True)


if __name__ == "__main__":
    main()
