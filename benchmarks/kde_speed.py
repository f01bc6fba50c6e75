"""Our ``GaussianKDE`` against a 15-line torch KDE, measured side by side in the same process.

    OMP_NUM_THREADS=1 python benchmarks/kde_speed.py                # n = m = 4096, 16384; d = 2, 10
    OMP_NUM_THREADS=1 python benchmarks/kde_speed.py --sizes 1024 --dims 2 --repeats 3

Both compute the log-density *and* the score of a Scott-rule KDE at ``m`` queries from ``n``
samples, one thread, median wall time of ``--repeats`` runs (after one warm-up). The reference
(:func:`reference_kde`) is what a competent user writes in a few minutes: whiten by the
Cholesky factor, squared distances by one matrix product (``addmm``), ``logsumexp`` for the
log-density, ``softmax @ u`` for the score, over blocks of queries. It does not centre, so it
is only right for data near the origin (as here). The ratio column is ours / reference.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def reference_kde(x, y, block=1024):
    """Log-density ``(m,)`` and score ``(m, d)`` of the Scott-rule Gaussian KDE of ``x`` at ``y``."""
    n, d = x.shape
    xc = x - x.mean(0)
    cov = xc.T @ xc / (n - 1) * n ** (-2.0 / (d + 4))
    chol = torch.linalg.cholesky(cov)
    u = torch.linalg.solve_triangular(chol, x.T, upper=False).T  # n d
    v = torch.linalg.solve_triangular(chol, y.T, upper=False).T  # m d
    log_norm = -math.log(n) - chol.diagonal().log().sum() - 0.5 * d * math.log(2 * math.pi)
    u_sq = u.square().sum(-1)  # n
    logps, scores = [], []
    for vb in v.split(block):
        sq = torch.addmm(u_sq + vb.square().sum(-1, keepdim=True), vb, u.T, alpha=-2)  # b n
        logk = -0.5 * sq
        lse = torch.logsumexp(logk, -1)
        logps.append(lse + log_norm)
        shift = torch.softmax(logk, -1) @ u - vb  # b d, whitened coordinates
        scores.append(torch.linalg.solve_triangular(chol.T, shift.T, upper=True).T)
    return torch.cat(logps), torch.cat(scores)


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="n = m")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pyro_disco import GaussianKDE

    dtype = getattr(torch, args.dtype)
    rows = []
    print(f"{'d':>3} {'n=m':>6} {'ours s':>8} {'ref s':>8} {'ratio':>6} {'max |dlogp|':>12} {'max |ds|':>10}")
    for d in args.dims:
        for n in args.sizes:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, d, generator=g, dtype=dtype)
            y = torch.randn(n, d, generator=g, dtype=dtype)
            with torch.no_grad():
                ours = _median_time(lambda x=x, y=y: GaussianKDE(x).logdensity_and_score(y), args.repeats)
                ref = _median_time(lambda x=x, y=y: reference_kde(x, y), args.repeats)
                (lp, s), (lr, sr) = GaussianKDE(x).logdensity_and_score(y), reference_kde(x, y)
            row = dict(
                d=d,
                n=n,
                m=n,
                dtype=args.dtype,
                threads=args.threads,
                ours_s=round(ours, 4),
                reference_s=round(ref, 4),
                ratio=round(ours / ref, 3),
                max_abs_logp_diff=float((lp - lr).abs().max()),
                max_abs_score_diff=float((s - sr).abs().max()),
            )
            rows.append(row)
            print(
                f"{d:>3} {n:>6} {ours:>8.3f} {ref:>8.3f} {ours / ref:>6.2f} "
                f"{row['max_abs_logp_diff']:>12.2e} {row['max_abs_score_diff']:>10.2e}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
