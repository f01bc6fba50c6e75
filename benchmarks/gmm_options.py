"""What the GMM's covariance shrinkage and second (split) EM start buy, on held-out random mixtures.

    OMP_NUM_THREADS=1 python benchmarks/gmm_options.py [--reps 5]

Same cases as ``benchmarks/peers.py`` (``make_case``, same seeds); relative score MSE (%) at 512
fresh points of ``GaussianMixtureEstimator`` with shrinkage 0 / 0.2, the split start off / on,
and the cap on k at 1 + d + d(d+1)/2 or 4(d + 1) samples per component
(``component_size="params"`` / ``"dims"``), and the fit time, all in one run. Writes
``benchmarks/results/gmm_options.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import make_case  # noqa: E402

from pyro_disco.estimators.mixture import GaussianMixtureEstimator  # noqa: E402
from pyro_disco.metrics import relative_score_error  # noqa: E402

OPTIONS = {
    "plain EM": dict(shrinkage=0.0, split_init=False, component_size="params"),
    "shrinkage 0.2": dict(shrinkage=0.2, split_init=False, component_size="params"),
    "shrinkage 0.2 + split": dict(shrinkage=0.2, split_init=True, component_size="params"),
    "shrinkage 0.2 + split + 4(d+1) cap (default)": dict(
        shrinkage=0.2, split_init=True, component_size="dims"
    ),
}
CELLS = [
    ("mixture", 5, 1024),
    ("mixture", 10, 256),
    ("mixture", 10, 1024),
    ("mixture", 16, 256),
    ("mixture", 32, 1024),
    ("Student-t3", 2, 256),
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gmm_options.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        "# GMM options: covariance shrinkage, the split start and the cap on k",
        "",
        f"`python benchmarks/gmm_options.py --reps {args.reps}`: relative score MSE (%) at 512 fresh "
        f"points, mean over {args.reps} sets (peers.py seeds); fit seconds in brackets.",
        "",
        "| family | d | n | " + " | ".join(OPTIONS) + " |",
        "|---|---|---|" + "---|" * len(OPTIONS),
    ]
    for fam, d, n in CELLS:
        err = {k: [] for k in OPTIONS}
        sec = {k: 0.0 for k in OPTIONS}
        for r in range(args.reps):
            x, y, truth = make_case(fam, d, n, r)
            s = truth.score(y)
            for name, kw in OPTIONS.items():
                t0 = time.perf_counter()
                est = GaussianMixtureEstimator(x, **kw)
                sec[name] += time.perf_counter() - t0
                err[name].append(float(relative_score_error(est.score(y), s)))
        cells = [f"{100 * sum(v) / len(v):.1f} ({sec[k] / args.reps:.2f} s)" for k, v in err.items()]
        lines.append(f"| {fam} | {d} | {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
