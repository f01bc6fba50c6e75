"""The universal (every-d, exactly O(d)-equivariant) DiScoFormer against Scott's KDE and the
per-dimension models, over d in {1, 2, 3, 5, 7, 10, 16, 32} and n in {256, 1024, 4096}.

    python benchmarks/universal.py                       # shipped weights -> benchmarks/results/universal.md
    python benchmarks/universal.py --checkpoint training_runs/universal-mix/checkpoint.pt --reps 3

Held-out random Gaussian mixtures drawn exactly as in ``benchmarks/accuracy.py`` (same seeds,
so the per-dimension rows match that table): relative score MSE sum||s_hat - s||^2 / sum||s||^2
and log-density MSE at 512 fresh points from the mixture, mean ± sd over repetitions. The last
lines list the dimensions where the universal model beats Scott's KDE in both metrics at every
n and, where a per-dimension model ships, is at least as good as it on average over n in both
metrics: the ``--auto-dims`` to give ``pyro-disco export``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# the same cases and report format as accuracy.py (run as a script, its folder is on sys.path)
from accuracy import _summ, mixture_case, write_report

from pyro_disco import GaussianKDE
from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.metrics import logdensity_mse, relative_score_error

DIMS = [1, 2, 3, 5, 7, 10, 16, 32]


def _universal(args):
    from pyro_disco.pretrained import available_models, load_model
    from pyro_disco.training.export import load_checkpoint

    if args.checkpoint:
        return load_checkpoint(args.checkpoint), "checkpoint"
    names = [name for name, dims in available_models().items() if len(dims) > 1]
    if not names:
        raise SystemExit("no universal model ships with the package; pass --checkpoint PATH")
    return load_model(names[0]), names[0]


def _per_dim_models() -> dict[int, object]:
    from pyro_disco.pretrained import available_models, load_model

    return {dims[0]: load_model(name) for name, dims in available_models().items() if len(dims) == 1}


def run(universal, per_dim, dims, sizes, reps, num_queries=512):
    """Returns ``{(d, n, estimator): {"rel": [...], "ld": [...]}}``."""
    acc: dict[tuple, dict[str, list[float]]] = {}
    for d in dims:
        for n in sizes:
            if n <= d + 1:
                continue
            for r in range(reps):
                x, y, mix1 = mixture_case(d, n, r, num_queries)
                lp, s = mix1.logdensity_and_score(y)
                ests = {"Scott KDE": GaussianKDE(x, "scott"), "universal": DiScoFormerEstimator(universal, x)}
                if d in per_dim:
                    ests[f"per-d model (d={d})"] = DiScoFormerEstimator(per_dim[d], x)
                for name, est in ests.items():
                    elp, es = est.logdensity_and_score(y)
                    m = acc.setdefault((d, n, name), {"rel": [], "ld": []})
                    m["rel"].append(float(relative_score_error(es.detach(), s)))
                    m["ld"].append(float(logdensity_mse(elp.detach(), lp)))
            print(f"  d={d} n={n} done", flush=True)
    return acc


def recommend(acc, dims, sizes) -> list[int]:
    """Dimensions where the universal model beats Scott's KDE in both metrics at every n and is
    at least as good as the per-dimension model (mean over n, both metrics) where one exists."""

    def mean(d, n, name, k):
        return sum(acc[(d, n, name)][k]) / len(acc[(d, n, name)][k])

    good = []
    for d in dims:
        ns = [n for n in sizes if (d, n, "universal") in acc]
        beats_kde = all(
            mean(d, n, "universal", k) < mean(d, n, "Scott KDE", k) for n in ns for k in ("rel", "ld")
        )
        per = f"per-d model (d={d})"
        as_good = all(
            sum(mean(d, n, "universal", k) for n in ns) <= sum(mean(d, n, per, k) for n in ns)
            for k in ("rel", "ld")
            if (d, ns[0], per) in acc
        )
        if ns and beats_kde and as_good:
            good.append(d)
    return good


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a universal weight file or training checkpoint (default: shipped)")
    p.add_argument("--dims", type=int, nargs="+", default=DIMS)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "universal.md"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    universal, label = _universal(args)
    per_dim = _per_dim_models()
    acc = run(universal, per_dim, args.dims, args.sizes, args.reps)
    auto = recommend(acc, args.dims, args.sizes)
    shown = sys.argv[1:] if argv is None else argv
    lines = [
        f"# Universal model vs Scott KDE and the per-dimension models\n\n"
        f"`python benchmarks/universal.py {' '.join(shown)}`".rstrip()
        + f" — model: {label}; {args.reps} repetitions, mean ± sd, {time.perf_counter() - t0:.0f} s on "
        f"{torch.get_num_threads()} thread(s). Held-out random Gaussian mixtures, 512 fresh query points.\n",
        "| d | n | estimator | rel. score MSE (%) | log-density MSE |",
        "|---|---|---|---|---|",
    ]
    for (d, n, name), m in acc.items():
        lines.append(f"| {d} | {n} | {name} | {_summ(m['rel'], 100)} | {_summ(m['ld'], 1, 3)} |")
    lines += [
        "",
        f"Universal beats Scott KDE in both metrics at every n (and matches or beats the per-d model "
        f"where one ships) at d = {auto or 'none'}.",
        f"auto-dims: {' '.join(map(str, auto))}",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
