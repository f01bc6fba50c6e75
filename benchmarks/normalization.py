"""log ∫p̂ of each estimator on random-mixture samples, by importance sampling (issue: normalised densities).

    python benchmarks/normalization.py [--dims 1 2 5 10 16 32] [--n 1024] [--reps 3]

Writes benchmarks/results/normalization.md. Proposal and error bars: pyro_disco.estimators.normalizer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pyro_disco import build_estimator
from pyro_disco.estimators.normalizer import log_normalizer
from pyro_disco.training.tasks import random_mixtures

ESTIMATORS = ("transformer (raw)", "transformer", "auto", "gmm", "kde")


def _build(x: torch.Tensor, name: str):
    """``transformer (raw)`` is the network without its log-normaliser (``normalize=False``);
    ``transformer`` is the default, normalised where the importance sample's ESS allows."""
    if name == "transformer (raw)":
        return build_estimator(x, "transformer", normalize=False)
    return build_estimator(x, name)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2, 5, 10, 16, 32])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--draws", type=int, default=6144)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "normalization.md"))
    args = p.parse_args(argv)
    lines = [
        "# log ∫p̂ by importance sampling",
        "",
        f"`python benchmarks/normalization.py {' '.join(sys.argv[1:])}` — n = {args.n}, random mixtures "
        f"(seed 1000·d + rep), {args.draws} proposal draws (independent of the estimator's own), "
        "value ± se (min ESS). 0 means normalised. `transformer` subtracts its own estimate "
        "wherever that estimate's ESS ≥ 100, so its residual is the two samplers' error.",
        "",
        "| d | " + " | ".join(ESTIMATORS) + " |",
        "|---|" + "---|" * len(ESTIMATORS),
    ]
    for d in args.dims:
        cells = []
        for name in ESTIMATORS:
            vals = []
            for rep in range(args.reps):
                g = torch.Generator().manual_seed(1000 * d + rep)
                x = random_mixtures(1, d, generator=g).sample(args.n, generator=g)[0]
                est = _build(x, name)
                vals.append(log_normalizer(est, x, num_draws=args.draws, generator=g))
            mean = sum(v.value for v in vals) / len(vals)
            se = max(v.std_error for v in vals)
            cells.append(f"{mean:+.3f} ± {se:.3f} ({min(v.ess for v in vals):.0f})")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
