"""How the cost grows with n: DiScoFormer against four KDEs, as ratios, side by side.

    OMP_NUM_THREADS=1 python benchmarks/scale.py --sweep               # d = 2, 10; n = m = 1024 … 16384
    python benchmarks/scale.py --n 65536 --m 65536 --dim 2             # one large run, with peak memory

**Sweep** (``--sweep``): for each d and n = m, one thread, in one process, the median of
``--repeats`` CPU times of the process (after a warm-up at the smallest n; CPU time, so that other
jobs on a shared machine mostly drop out) of building each estimator on ``n``
standard normal samples and answering ``m`` queries:

- ``auto``: the universal model (what ``estimator="auto"`` uses for d >= 2), log-density and score,
  without the log-normaliser: its importance-sampling estimate (4096 draws, once per estimator,
  whatever n and m) is timed on its own, once per d, and printed below the tables;
- ``per-d``: the per-dimension shipped model, where one ships;
- ``our KDE``: :class:`~pyro_disco.GaussianKDE` (Scott), log-density and score;
- ``torch ref``: the 15-line torch KDE of ``benchmarks/kde_speed.py``, log-density and score;
- ``scipy``: ``scipy.stats.gaussian_kde(x).logpdf(y)``, log-density only (it has no score);
- ``sklearn``: ``KernelDensity(bandwidth=Scott).fit(whitened x).score_samples(whitened y)`` (exact
  tree, ``rtol=0``), log-density only.

Reported as ratios to our KDE (its seconds in one column for scale; other machines differ) and
the log-log slope of time against n per estimator (2 is the O(n·m) of every exact method here).
The transformers stop at ``--transformer-max-n`` (default 4096; each doubling costs about 4×).
The scipy and sklearn log-densities are checked against ours (1e-4 relative), so all time the same
thing.

**Large run** (``--n``, ``--m``): wall time and the peak resident memory of the transformer and
Scott KDE (each estimator runs in its own subprocess so the peaks do not mix). Uses the shipped
per-dimension model for ``dim`` if there is one, else a randomly initialised paper-size model
(same cost); ``--universal`` adds the universal model (shipped, or randomly initialised).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path


def _universal_model():
    from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer
    from pyro_disco.pretrained import available_models, load_model

    names = [name for name, dims in available_models().items() if len(dims) > 1]
    return load_model(names[0]) if names else UniversalDiScoFormer(UniversalConfig()).eval()


def _one(kind: str, n: int, m: int, dim: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = torch.randn(m, dim, generator=g)
    t0 = time.perf_counter()
    if kind in ("transformer", "universal"):
        from pyro_disco.estimators.transformer import DiScoFormerEstimator
        from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig
        from pyro_disco.pretrained import available_models, load_model

        if kind == "universal":
            model = _universal_model()
        else:
            per_dim = [name for name, dims in available_models().items() if dims == [dim]]
            model = load_model(per_dim[0]) if per_dim else DiScoFormer(DiScoFormerConfig(dim=dim)).eval()
        with torch.no_grad():
            est = DiScoFormerEstimator(model, x)
            t_enc = time.perf_counter() - t0
            logp, s = est.logdensity_and_score(y)
    else:
        from pyro_disco import GaussianKDE

        est = GaussianKDE(x)
        t_enc = time.perf_counter() - t0
        logp, s = est.logdensity_and_score(y)
    elapsed = time.perf_counter() - t0
    assert torch.isfinite(logp).all() and torch.isfinite(s).all()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "estimator": kind,
        "n": n,
        "m": m,
        "d": dim,
        "seconds": round(elapsed, 1),
        "encode_seconds": round(t_enc, 1),
        "peak_rss_mb": round(peak_mb),
    }


SWEEP_NAMES = ("auto", "per-d", "our KDE", "torch ref", "scipy", "sklearn")


def _sweep_fns(dim):
    """Name -> callable(x, y) for the sweep; each builds its estimator and answers the queries."""
    import torch
    from scipy.stats import gaussian_kde
    from sklearn.neighbors import KernelDensity

    from pyro_disco import GaussianKDE
    from pyro_disco._stats import scott_factor
    from pyro_disco.estimators.transformer import DiScoFormerEstimator
    from pyro_disco.pretrained import available_models, load_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kde_speed import reference_kde

    def sklearn_kde(x, y):
        n, d = x.shape
        xc = x - x.mean(0)
        chol = torch.linalg.cholesky(xc.T @ xc / (n - 1))
        u = torch.linalg.solve_triangular(chol, x.T, upper=False).T.numpy()
        v = torch.linalg.solve_triangular(chol, y.T, upper=False).T.numpy()
        kde = KernelDensity(bandwidth=scott_factor(n, d), rtol=0.0).fit(u)
        return torch.from_numpy(kde.score_samples(v)) - chol.diagonal().log().sum()

    fns = {}
    universal = [name for name, dims in available_models().items() if len(dims) > 1]
    per_d = [name for name, dims in available_models().items() if dims == [dim]]
    for label, names in (("auto", universal), ("per-d", per_d)):
        if names:
            model = load_model(names[0])
            fns[label] = lambda x, y, model=model: DiScoFormerEstimator(
                model, x, normalize=False
            ).logdensity_and_score(y)
    fns["our KDE"] = lambda x, y: GaussianKDE(x).logdensity_and_score(y)
    fns["torch ref"] = reference_kde
    fns["scipy"] = lambda x, y: torch.from_numpy(gaussian_kde(x.numpy().T).logpdf(y.numpy().T))
    fns["sklearn"] = sklearn_kde
    return fns


def _slope(ns, ts):
    """Least-squares slope of log t against log n."""
    lx = [math.log(n) for n in ns]
    ly = [math.log(t) for t in ts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def sweep(dims, sizes, *, repeats, transformer_max_n, out=None):
    import torch

    torch.set_num_threads(1)
    transformers = ("auto", "per-d")
    lines = [
        f"CPU-time ratio to our KDE (n = m, one thread, median of {repeats}; build + answer; `auto` and "
        "`per-d` log-density and score, scipy and sklearn log-density only). Slope: log-log, time vs n.",
        "",
    ]
    slopes = []
    for dim in dims:
        g = torch.Generator().manual_seed(dim)
        data = {n: torch.randn(2, n, dim, generator=g, dtype=torch.float64).unbind() for n in sizes}  # x, y
        fns = _sweep_fns(dim)
        names = list(fns)
        times = {name: {} for name in names}
        for fn in fns.values():  # warm-up: first-call costs (weights, kernels) out of the timings
            with torch.no_grad():
                fn(*data[sizes[0]])
        for n in sizes:
            x, y = data[n]
            for name, fn in fns.items():  # our KDE comes before scipy and sklearn
                if name in transformers and n > transformer_max_n:
                    continue
                samples = []
                for _ in range(repeats):
                    t0 = time.process_time()
                    with torch.no_grad():
                        res = fn(x, y)
                    samples.append(time.process_time() - t0)
                times[name][n] = sorted(samples)[len(samples) // 2]
                if name == "our KDE":
                    ours = res[0]
                elif name in ("scipy", "sklearn"):  # the same estimate, or the timing means nothing
                    # 1e-4: sklearn's tree sums in its own order (7e-6 seen at d = 10); a wrong
                    # bandwidth or whitening would be off by far more
                    err = float(((res - ours) / ours.abs().clamp_min(1)).abs().max())
                    assert err < 1e-4, f"{name} disagrees with our KDE by {err:.1e} at d={dim}, n={n}"
            row = " | ".join(
                f"{times[name][n] / times['our KDE'][n]:.2f}" if n in times[name] else "-" for name in names
            )
            print(f"d={dim} n={n}: our KDE {times['our KDE'][n]:.3f} s | " + row, flush=True)
        lines += [
            f"**d = {dim}**",
            "",
            "| n = m | our KDE (s) | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for n in sizes:
            cells = [
                f"{times[name][n] / times['our KDE'][n]:.2f}" if n in times[name] else "-" for name in names
            ]
            lines.append(f"| {n} | {times['our KDE'][n]:.3f} | " + " | ".join(cells) + " |")
        if "auto" in fns:
            from pyro_disco.estimators.transformer import DiScoFormerEstimator
            from pyro_disco.pretrained import load_model

            est = DiScoFormerEstimator(load_model(dim), data[sizes[0]][0])
            t0 = time.process_time()
            est.normalization  # noqa: B018 - computed on first access
            lines += [
                "",
                f"The log-normaliser of `auto` (once per estimator): {time.process_time() - t0:.2f} s.",
            ]
        lines.append("")
        slopes.append(
            (dim, {name: _slope(list(t), list(t.values())) for name, t in times.items() if len(t) > 1})
        )
    names_all = [k for k in SWEEP_NAMES if any(k in s for _, s in slopes)]
    lines += [
        "Log-log slope of time against n:",
        "",
        "| d | " + " | ".join(names_all) + " |",
        "|---|" + "---|" * len(names_all),
    ]
    for dim, s in slopes:
        lines.append(f"| {dim} | " + " | ".join(f"{s[k]:.2f}" if k in s else "-" for k in names_all) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    if out:
        Path(out).write_text(text + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="the ratio sweep over d and n (see above)")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10], help="sweep: dimensions")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384], help="sweep: n = m"
    )
    p.add_argument("--repeats", type=int, default=1, help="sweep: timings per cell (median)")
    p.add_argument(
        "--transformer-max-n", type=int, default=4096, help="sweep: largest n for the transformers"
    )
    p.add_argument("--out", help="sweep: also write the markdown tables here")
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--m", type=int, default=65536)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--universal", action="store_true", help="time the universal model as well")
    p.add_argument("--one", choices=["transformer", "universal", "kde"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sweep:
        sweep(
            args.dims,
            args.sizes,
            repeats=args.repeats,
            transformer_max_n=args.transformer_max_n,
            out=args.out,
        )
        return
    if args.one:
        print(json.dumps(_one(args.one, args.n, args.m, args.dim, args.threads)))
        return
    rows = []
    for kind in ("kde", "transformer") + (("universal",) if args.universal else ()):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                kind,
                "--n",
                str(args.n),
                "--m",
                str(args.m),
                "--dim",
                str(args.dim),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    print("\n| estimator | n | m | d | seconds | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['estimator']} | {r['n']} | {r['m']} | {r['d']} | {r['seconds']} | {r['peak_rss_mb']} |")
    print(f"\ntransformer / KDE time ratio: {ratio:.2f} ({args.threads} thread(s), same machine, same run)")
    if args.universal:
        print(f"universal / KDE time ratio: {rows[2]['seconds'] / rows[0]['seconds']:.2f} (same run)")


if __name__ == "__main__":
    main()
