"""NUTS cost per leapfrog step: a ``LearnedScore`` prior from the transformer vs from a KDE.

    OMP_NUM_THREADS=1 python benchmarks/nuts_cost.py                 # d = 2, 10; n = 1024 (~2 min)
    OMP_NUM_THREADS=1 python benchmarks/nuts_cost.py --smoke         # seconds

Model: ``z ~ LearnedScore(samples)``, ``y ~ Normal(z, 1)`` observed at one point; the samples
are ``n`` standard normal draws. Both priors run side by side in the same process, alternating
``--repeats`` times (median kept; CPU time of this process, one thread, so that other jobs on a
shared machine do not count), with the same NUTS settings: fixed step size, no adaptation,
fixed ``max_tree_depth``. Every leapfrog step is one evaluation of the potential and its
gradient, i.e. one ``log_prob`` + backward of the prior; they are counted by wrapping the
estimator, so the cost per leapfrog is comparable even when the two trajectories differ in
length.

Columns: seconds per leapfrog step inside NUTS; of which one ``log_prob`` + backward outside
Pyro; of which the network alone at one point, no grad, as the estimator runs it (the prepared
query, ``nn.prepared.PreparedQuery``) and by the general ``model.query`` (the transformer's
floor per query against ``n`` context tokens); and the ratio transformer / KDE per leapfrog.
A second table gives the network's cost per query row for a few query sizes ``m`` and the
number of top-level ATen calls per query (``torch.profiler``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from torch.profiler import ProfilerActivity, profile

from pyro_disco import LearnedScore

F64 = torch.float64


def _count_calls(prior: LearnedScore) -> list[int]:
    """Count the estimator's per-query evaluations (one per leapfrog step)."""
    est, counter = prior.estimator, [0]
    inner = est._logdensity_and_score

    def counted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counter[0] += 1
        return inner(x)

    est._logdensity_and_score = counted
    return counter


def nuts_seconds_per_leapfrog(
    prior: LearnedScore, counter: list[int], y: torch.Tensor, *, num_samples: int, depth: int, seed: int
) -> float:
    def model() -> None:
        z = pyro.sample("z", prior)
        pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    kernel = NUTS(
        model,
        step_size=0.2,
        adapt_step_size=False,
        adapt_mass_matrix=False,
        max_tree_depth=depth,
        init_strategy=pyro.infer.autoguide.init_to_value(values={"z": torch.zeros_like(y)}),
    )
    pyro.set_rng_seed(seed)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=0, disable_progbar=True)
    start, t0 = counter[0], time.process_time()
    mcmc.run()
    return (time.process_time() - t0) / (counter[0] - start)


def log_prob_backward_seconds(prior: LearnedScore, d: int, k: int) -> float:
    z = torch.full((d,), 0.1, dtype=F64)

    def one() -> None:
        zz = z.clone().requires_grad_(True)
        prior.log_prob(zz).backward()

    for _ in range(3):
        one()
    t0 = time.process_time()
    for _ in range(k):
        one()
    return (time.process_time() - t0) / k


def _queries(prior: LearnedScore, m: int) -> dict[str, Callable[[], object]]:
    """The network at ``m`` whitened points: as the estimator runs it, and the general query."""
    est = prior.estimator
    y = torch.full((m, prior.dim), 0.1, dtype=est._net_dtype)
    return {
        "estimator": lambda: est._query(y),
        "general": lambda: est.model.query(est._encoded, y.unsqueeze(0), block_size=est.block_size),
    }


def network_seconds(fn: Callable[[], object], k: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn()
        t0 = time.process_time()
        for _ in range(k):
            fn()
    return (time.process_time() - t0) / k


def aten_calls(fn: Callable[[], object]) -> int:
    """Top-level ATen calls of one ``fn()`` (those not made by another ATen call)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--num-samples", type=int, default=40, help="NUTS draws per run")
    p.add_argument("--depth", type=int, default=4, help="max_tree_depth (at most 2^depth - 1 leapfrogs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--query-sizes", type=int, nargs="+", default=[1, 8, 64], help="m for the per-row table")
    p.add_argument("--smoke", action="store_true", help="tiny run (d = 2, n = 256, 1 repeat)")
    p.add_argument("--out", help="write the markdown table to this file")
    args = p.parse_args(argv)
    if args.smoke:
        args.dims, args.n, args.num_samples, args.depth, args.repeats = [2], 256, 5, 2, 1
        args.query_sizes = [1, 8]
    torch.set_num_threads(args.threads)
    k = 20 if args.smoke else 100
    lines = [
        f"NUTS, n = {args.n} samples, {args.num_samples} draws, step size 0.2, max_tree_depth "
        f"{args.depth}, no adaptation; {args.threads} thread(s), process CPU time, median of {args.repeats} "
        "alternating runs.",
        "",
        "| d | prior | model | s / leapfrog (NUTS) | log_prob + backward | network query (prepared) "
        "| network query (general) | ratio to KDE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print(lines[0])
    summaries: list[str] = []
    per_row = [
        "",
        f"Network query per query row (CPU time, median of {args.repeats}), n = {args.n}; top-level ATen "
        "calls per query in brackets. `estimator`: the path `DiScoFormerEstimator` takes (the prepared "
        "query up to `PREPARED_MAX_QUERIES` rows); `general`: `model.query`.",
        "",
        "| d | m | estimator | general |",
        "|---|---|---|---|",
    ]
    for d in args.dims:
        g = torch.Generator().manual_seed(d)
        samples = torch.randn(args.n, d, generator=g, dtype=F64)
        y = torch.randn(d, generator=g, dtype=F64)
        priors = {name: LearnedScore(samples, estimator=name) for name in ("kde", "transformer")}
        for prior in priors.values():  # warm-up: the transformer's log-normaliser is estimated once
            log_prob_backward_seconds(prior, d, 3)
        counters = {name: _count_calls(prior) for name, prior in priors.items()}
        times: dict[str, list[float]] = {name: [] for name in priors}
        directs: dict[str, list[float]] = {name: [] for name in priors}
        nets: dict[str, list[float]] = {"estimator": [], "general": []}
        one_point = _queries(priors["transformer"], 1)
        for r in range(args.repeats):  # all measurements alternate, so a load change hits all alike
            for name, prior in priors.items():
                times[name].append(
                    nuts_seconds_per_leapfrog(
                        prior, counters[name], y, num_samples=args.num_samples, depth=args.depth, seed=r
                    )
                )
                directs[name].append(log_prob_backward_seconds(prior, d, k))
            for path, fn in one_point.items():
                nets[path].append(network_seconds(fn, k))
        leaps = {name: statistics.median(t) for name, t in times.items()}
        direct = {name: statistics.median(t) for name, t in directs.items()}
        net, general = (statistics.median(nets[path]) for path in ("estimator", "general"))
        kde = leaps["kde"]
        for name, prior in priors.items():
            is_net = name == "transformer"
            nets_ms = f"{net * 1e3:.2f} ms | {general * 1e3:.2f} ms" if is_net else "- | -"
            model = type(prior.estimator.model).__name__ if is_net else "GaussianKDE (Scott)"
            row = (
                f"| {d} | {name} | {model} | {leaps[name] * 1e3:.2f} ms | {direct[name] * 1e3:.2f} ms | "
                f"{nets_ms} | {leaps[name] / kde:.2f} |"
            )
            lines.append(row)
            print(row, flush=True)
        ratio = leaps["transformer"] / kde
        summaries.append(
            f"- d = {d}: transformer / KDE per leapfrog {ratio:.2f} (target <= 2: "
            f"{'met' if ratio <= 2 else 'missed'}); the network query is "
            f"{net / leaps['transformer']:.0%} of the transformer's leapfrog; Pyro's own work per "
            f"leapfrog (KDE row: NUTS minus log_prob + backward) is {(kde - direct['kde']) * 1e3:.2f} ms."
        )
        for m in args.query_sizes:
            fns = _queries(priors["transformer"], m)
            reps = max(3, k // m)
            cost = {
                path: statistics.median(network_seconds(fn, reps) for _ in range(args.repeats)) / m
                for path, fn in fns.items()
            }
            calls = {path: aten_calls(fn) for path, fn in fns.items()}
            row = f"| {d} | {m} | " + " | ".join(f"{cost[p] * 1e3:.3f} ms ({calls[p]})" for p in fns) + " |"
            per_row.append(row)
            print(row, flush=True)
    lines += ["", *summaries, *per_row]
    print("\n".join(summaries))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
