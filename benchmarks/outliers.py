"""One gross outlier among N(0, I) draws: every estimator with the standard and the robust
whitening, against the same draws without it (issue 12, item 7); and the outlier ratio of
heavy-tailed samples that must not warn.

    python benchmarks/outliers.py [--n 512] [--d 2] [--at 1e6]

Writes benchmarks/results/outliers.md (about 30 s on one core).
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch

from pyro_disco import OutlierWarning
from pyro_disco.estimators.whitening import OUTLIER_FACTOR, outlier_ratio
from pyro_disco.factory import ESTIMATORS, build_estimator


def _errors(est, y: torch.Tensor) -> tuple[float, float]:
    """Log-density MSE and score MSE against N(0, I) at the queries ``y``."""
    logp, s = est.logdensity_and_score(y)
    true = -0.5 * y.square().sum(-1) - 0.5 * y.shape[1] * math.log(2 * math.pi)
    return float((logp - true).square().mean()), float((s + y).square().sum(-1).mean())


def _row(name: str, x: torch.Tensor, y: torch.Tensor, **kwargs) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp, sc = _errors(build_estimator(x, name, **kwargs), y)
    warned = any(issubclass(w.category, OutlierWarning) for w in caught)
    return f"{lp:.4g} / {sc:.4g}{' (warned)' if warned else ''}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--d", type=int, default=2)
    parser.add_argument("--at", type=float, default=1e6, help="every coordinate of the outlier")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "outliers.md"))
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    dirty = torch.randn(args.n, args.d, generator=g, dtype=torch.float64)
    dirty[-1] = args.at
    clean = dirty[:-1]
    y = torch.randn(512, args.d, generator=g, dtype=torch.float64)
    lines = [
        f"One point at {args.at:g} in every coordinate among {args.n - 1} N(0, I) draws, d = {args.d}:",
        "log-density MSE / score MSE at 512 fresh N(0, I) queries.",
        "",
        "| estimator | without the outlier | with it, standard | with it, whitening='robust' |",
        "|---|---|---|---|",
    ]
    for name in ESTIMATORS:
        cells = [_row(name, clean, y), _row(name, dirty, y), _row(name, dirty, y, whitening="robust")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Outlier ratio (warning above {OUTLIER_FACTOR:g}), n = 4096:", ""]
    lines += ["| samples | d = 1 | d = 2 | d = 5 |", "|---|---|---|---|"]
    for family in ("normal", "Laplace", "Student-t(3)"):
        cells = []
        for d in (1, 2, 5):
            gd = torch.Generator().manual_seed(d)
            z = torch.randn(4096, d, generator=gd, dtype=torch.float64)
            if family == "Laplace":
                u = torch.rand(4096, d, generator=gd, dtype=torch.float64) - 0.5
                z = -u.sign() * torch.log1p(-2 * u.abs())
            elif family == "Student-t(3)":
                chi2 = torch.randn(4096, 3, generator=gd, dtype=torch.float64).square().sum(-1, keepdim=True)
                z = z / (chi2 / 3).sqrt()
            cells.append(f"{float(outlier_ratio(z)):.2f}")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines.append(
        f"| the outlier case above (n = {args.n}, d = {args.d}) | {float(outlier_ratio(dirty)):.3g} | | |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
