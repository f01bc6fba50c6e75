"""Accuracy benchmark: DiScoFormer (with and without TTA) vs the KDE family, side by side.

    python benchmarks/accuracy.py                    # shipped weights, writes benchmarks/results/accuracy.md
    python benchmarks/accuracy.py --checkpoint 2=runs/d2/checkpoint.pt --reps 3 --quick

Cases (every estimator sees the same samples and queries in each repetition):
- held-out random Gaussian mixtures (the training recipe, seeds disjoint from training and
  validation) for every d with a model and n in {256, 1024, 4096}: relative score MSE
  sum||s_hat - s||^2 / sum||s||^2 and log-density MSE at 512 fresh points from the mixture, and
  the relative score MSE at the samples themselves;
- 2-D Laplace(0, 1) and 2-D Student-t (nu = 3), independent coordinates: per-entry score MSE;
- the 1-D bimodal mixture 0.4 N(-1.5, 0.5^2) + 0.6 N(1.5, 0.7^2), n = 2048: density MSE on
  a grid of 801 points over [-5, 5].
Bandwidths: Scott and Silverman are scipy's rules on the sample covariance; SD-KDE and
Emp-SD-KDE use h = 0.4 n^(-1/(d+8)) times the sample scale (the SD-KDE paper's rule).
Mean and standard deviation over repetitions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.distributions import Independent, Laplace, StudentT

from pyro_disco import SDKDE, EmpSDKDE, ExactDistribution, GaussianKDE, GaussianMixture
from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.metrics import logdensity_mse, relative_score_error
from pyro_disco.training.tasks import random_mixtures

BENCH_SEED = 424242  # training uses seed 0 streams, validation 2**31 - 7 + d


def _models(args) -> dict[int, object]:
    from pyro_disco.pretrained import available_models, load_model
    from pyro_disco.training.export import load_checkpoint

    # the per-dimension models (the universal one has its own benchmark, benchmarks/universal.py)
    models = {dims[0]: load_model(name) for name, dims in available_models().items() if len(dims) == 1}
    for spec in args.checkpoint or []:
        d, path = spec.split("=", 1)
        models[int(d)] = load_checkpoint(path)
    return models


def _estimators(model, x, tta_steps: int, with_tta: bool):
    out = {}
    if model is not None:
        t0 = time.perf_counter()
        disco = DiScoFormerEstimator(model, x)
        disco.at_samples()
        out["DiScoFormer"] = (disco, time.perf_counter() - t0)
        if with_tta:
            out[f"DiScoFormer+TTA{tta_steps}"] = (
                disco.adapt(tta_steps, generator=torch.Generator().manual_seed(0)),
                0.0,
            )
        out["SD-KDE (DiScoFormer score)"] = (SDKDE(x, disco), 0.0)
    out["Scott KDE"] = (GaussianKDE(x, "scott"), 0.0)
    out["Silverman KDE"] = (GaussianKDE(x, "silverman"), 0.0)
    out["Emp-SD-KDE"] = (EmpSDKDE(x), 0.0)
    return out


def write_report(lines: list[str], out: str) -> None:
    """Write the markdown report ``lines`` to ``out`` and print it."""
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    print(f"written to {out}")


def mixture_case(d: int, n: int, r: int, num_queries: int = 512):
    """Repetition ``r`` of the held-out mixture case (d, n): samples ``(n, d)``, fresh queries
    ``(num_queries, d)`` and the exact mixture (float64). Shared with ``universal.py``."""
    g = torch.Generator().manual_seed(BENCH_SEED + 1000 * d + r)
    mix = random_mixtures(1, d, generator=g)
    x = mix.sample(n, generator=g)[0]
    y = mix.sample(num_queries, generator=g)[0]
    return x, y, GaussianMixture(mix.weights[0], mix.means[0], mix.covariances[0])


def _summ(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    t = torch.tensor(values, dtype=torch.float64) * scale
    sd = float(t.std()) if len(values) > 1 else 0.0
    return f"{float(t.mean()):.{digits}f} ± {sd:.{digits}f}"


def mixtures(models, sizes, reps, tta_steps, tta_max_n, num_queries=512):
    rows = []
    for d, model in sorted(models.items()):
        for n in sizes:
            acc: dict[str, dict[str, list[float]]] = {}
            for r in range(reps):
                x, y, mix1 = mixture_case(d, n, r, num_queries)
                lp, s = mix1.logdensity_and_score(y)
                s_at = mix1.score(x)
                for name, (est, _) in _estimators(model, x, tta_steps, n <= tta_max_n).items():
                    elp, es = est.logdensity_and_score(y)
                    es_at = est.score(x)
                    m = acc.setdefault(name, {"rel": [], "ld": [], "at": []})
                    m["rel"].append(float(relative_score_error(es.detach(), s)))
                    m["ld"].append(float(logdensity_mse(elp.detach(), lp)))
                    m["at"].append(float(relative_score_error(es_at.detach(), s_at)))
            for name, m in acc.items():
                rows.append((d, n, name, _summ(m["rel"], 100), _summ(m["ld"], 1, 3), _summ(m["at"], 100)))
            print(f"  mixtures d={d} n={n} done", flush=True)
    return rows


def heavy_tails(models, reps, tta_steps, num_queries=1024):
    rows = []
    if 2 not in models:
        return rows
    cases = {
        "Laplace(0, 1)": (
            Independent(Laplace(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)), 1),
            [512, 1024],
        ),
        "Student-t (ν = 3)": (
            Independent(
                StudentT(3.0, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)), 1
            ),
            [256, 1024],
        ),
    }
    for label, (dist, sizes) in cases.items():
        target = ExactDistribution(dist)
        for n in sizes:
            acc: dict[str, list[float]] = {}
            for r in range(reps):
                torch.manual_seed(BENCH_SEED + r)
                x, y = target.sample(n), target.sample(num_queries)
                s = target.score(y)
                for name, (est, _) in _estimators(models[2], x, tta_steps, True).items():
                    acc.setdefault(name, []).append(float((est.score(y).detach() - s).square().mean()))
            for name, v in acc.items():
                rows.append((label, n, name, _summ(v, 1, 4)))
            print(f"  {label} n={n} done", flush=True)
    return rows


def bimodal_1d(models, reps):
    gm = GaussianMixture(
        torch.tensor([0.4, 0.6], dtype=torch.float64),
        torch.tensor([[-1.5], [1.5]], dtype=torch.float64),
        torch.tensor([[[0.25]], [[0.49]]], dtype=torch.float64),
    )
    grid = torch.linspace(-5, 5, 801, dtype=torch.float64).unsqueeze(-1)
    truth = gm.logdensity(grid).exp()
    acc: dict[str, list[float]] = {}
    for r in range(reps):
        x = gm.sample(2048, generator=torch.Generator().manual_seed(BENCH_SEED + r))
        ests = {
            "Silverman KDE": GaussianKDE(x, "silverman"),
            "Scott KDE": GaussianKDE(x, "scott"),
            "Emp-SD-KDE": EmpSDKDE(x),
            "SD-KDE (exact score)": SDKDE(x, gm),
        }
        if 1 in models:
            disco = DiScoFormerEstimator(models[1], x)
            ests["DiScoFormer density"] = disco
            ests["SD-KDE (DiScoFormer score)"] = SDKDE(x, disco)
        for name, est in ests.items():
            acc.setdefault(name, []).append(
                float((est.logdensity(grid).exp().detach() - truth).square().mean())
            )
    return [(name, _summ(v, 1e4, 3)) for name, v in acc.items()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", action="append", help="d=PATH: use this weight file or training checkpoint for d"
    )
    p.add_argument("--dims", type=int, nargs="+", default=None, help="only these d (default: every model)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--tta-steps", type=int, default=4)
    p.add_argument(
        "--tta-max-n", type=int, default=1024, help="TTA rows only up to this n (it needs double backward)"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy.md"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    models = _models(args)
    if args.dims:
        models = {d: m for d, m in models.items() if d in args.dims}
    print(f"models for d = {sorted(models)}", flush=True)
    mix_rows = mixtures(models, args.sizes, args.reps, args.tta_steps, args.tta_max_n)
    tail_rows = heavy_tails(models, args.reps, args.tta_steps)
    bi_rows = bimodal_1d(models, args.reps) if not args.dims or 1 in args.dims else []
    shown = sys.argv[1:] if argv is None else argv
    lines = [
        f"# Accuracy benchmark\n\n`python benchmarks/accuracy.py {' '.join(shown)}`".rstrip()
        + f" — {args.reps} repetitions, mean ± sd, {time.perf_counter() - t0:.0f} s on "
        f"{torch.get_num_threads()} thread(s).\n",
        "## Held-out random Gaussian mixtures (512 fresh query points from the mixture)\n",
        "| d | n | estimator | rel. score MSE (%) | log-density MSE | rel. score MSE at the samples (%) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {d} | {n} | {name} | {a} | {b} | {c} |" for d, n, name, a, b, c in mix_rows]
    if tail_rows:
        lines += [
            "\n## 2-D heavy tails (per-entry score MSE at 1024 points from the target)\n",
            "| target | n | estimator | score MSE |",
            "|---|---|---|---|",
        ]
        lines += [f"| {t} | {n} | {name} | {v} |" for t, n, name, v in tail_rows]
    if bi_rows:
        lines += [
            "\n## 1-D bimodal mixture, n = 2048 (density MSE × 1e4 on 801 grid points in [-5, 5])\n",
            "| estimator | density MSE × 1e4 |",
            "|---|---|",
        ]
        lines += [f"| {name} | {v} |" for name, v in bi_rows]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
