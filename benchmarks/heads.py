"""Do the transformer's two heads describe the same distribution? (issue 16, item 5)

    python benchmarks/heads.py [--model NAME_OR_PATH ...] [--reps 3]

MALA/HMC/NUTS on a ``LearnedScore`` target exp(log-density head) exactly; ULA and SVGD follow the
score head (``tests/test_mcmc_target.py``). In 1-D both are densities we can compute by
quadrature on a fine grid: p_head ∝ exp(logdensity), and p_score ∝ exp(∫ score) (cumulative
trapezoid). For each we report the total-variation distance to the truth, the TV between the
two heads, and the difference of their means: where TV(head, score) is well below each head's TV
to the truth, which head a sampler follows does not matter at the accuracy reached. Cases: the
1-D random mixtures, Laplace and Student-t (ν = 3) of ``benchmarks/peers.py`` (same seeds),
n ∈ {256, 1024}. Writes ``benchmarks/results/heads.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import load_network, make_case  # noqa: E402

from pyro_disco.estimators.transformer import DiScoFormerEstimator  # noqa: E402

torch.set_default_dtype(torch.float64)


def _normalise(logp: torch.Tensor, dx: float) -> torch.Tensor:
    p = (logp - logp.max()).exp()
    return p / (p.sum() * dx)


def compare(est, truth, x: torch.Tensor) -> dict[str, float]:
    lo, hi = float(x.min()), float(x.max())
    pad = 0.5 * (hi - lo)
    grid = torch.linspace(lo - pad, hi + pad, 8001).unsqueeze(-1)
    dx = float(grid[1, 0] - grid[0, 0])
    with torch.no_grad():
        logf, score = est.logdensity_and_score(grid)
    s = score[:, 0]
    potential = torch.cat([torch.zeros(1), torch.cumsum(0.5 * (s[1:] + s[:-1]) * dx, 0)])
    p_head, p_score = _normalise(logf, dx), _normalise(potential, dx)
    p_true = _normalise(truth.logdensity(grid), dx)
    tv = lambda a, b: float(0.5 * (a - b).abs().sum() * dx)  # noqa: E731
    mean = lambda p: float((p * grid[:, 0]).sum() * dx)  # noqa: E731
    return {
        "tv_head": tv(p_head, p_true),
        "tv_score": tv(p_score, p_true),
        "tv_heads": tv(p_head, p_score),
        "dmean": abs(mean(p_head) - mean(p_score)),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None, help="shipped name, weight file or checkpoint")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "heads.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = args.model or ["discoformer-d1", "discoformer-universal"]
    lines = [
        "# The two heads of the transformer, 1-D (issue 16, item 5)",
        "",
        f"`python benchmarks/heads.py {' '.join(sys.argv[1:] if argv is None else argv)}` — means over "
        f"{args.reps} reps; TV distances by quadrature on 8001 grid points (see the script's docstring).",
        "",
        "| model | family | n | TV(head, truth) | TV(score, truth) | TV(head, score) | abs mean diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in models:
        net = load_network(spec)
        for fam in ("mixture", "Laplace", "Student-t3"):
            for n in (256, 1024):
                rows = []
                for r in range(args.reps):
                    x, _, truth = make_case(fam, 1, n, r)
                    rows.append(compare(DiScoFormerEstimator(net, x), truth, x))
                m = {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]}
                lines.append(
                    f"| {Path(spec).name} | {fam} | {n} | {m['tv_head']:.3f} | {m['tv_score']:.3f} | "
                    f"{m['tv_heads']:.3f} | {m['dmean']:.3f} |"
                )
                print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
