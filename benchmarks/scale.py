"""Large-n run: DiScoFormer and Gaussian KDE on n samples with m queries, side by side.

    python benchmarks/scale.py --n 65536 --m 65536 --dim 2

Reports wall time and the peak resident memory of each (each estimator runs in its own
subprocess so the peaks do not mix). Uses the shipped per-dimension model for ``dim`` if there
is one, else a randomly initialised paper-size model (same cost); ``--universal`` adds the
universal model (shipped, or randomly initialised if none ships).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--m", type=int, default=65536)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--universal", action="store_true", help="time the universal model as well")
    p.add_argument("--one", choices=["transformer", "universal", "kde"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
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
