"""Time and peak memory at large n on CPU, one thread, each case in its own process (issue 15 item 4).

    OMP_NUM_THREADS=1 python benchmarks/memory.py                    # writes benchmarks/results/memory.md
    OMP_NUM_THREADS=1 python benchmarks/memory.py --small --out /tmp/memory.md   # seconds (tests)

Cases (float32 standard-normal samples and queries, seed 0; ``m`` queries):

- ``kde``: ``GaussianKDE(x)`` (Scott) then ``logdensity_and_score(y)``, n = 2^13, 2^15, 2^17,
  d = 2 and 10, m = 4096;
- ``gmm``: ``GaussianMixtureEstimator(x)`` (EM, k by BIC) then ``logdensity_and_score(y)``, same grid;
- ``transformer``: ``build_estimator(x, "transformer")`` (the shipped default for d) then
  ``logdensity_and_score(y)``, n = 2^12, 2^13, 2^14, d = 2 and 10, m = 1024. The first
  log-density request also computes the log-normaliser (a GMM and a KDE on the samples and 4096
  importance draws through the network), as it does for a user; ``build`` is the encode alone.

The transformer's attention costs O(n^2) time (one forward at n = 16384 took ~140 s on one core),
so n = 2^17 is not run for it on CPU: its time and memory at 2^17 are *extrapolated* from a
least-squares fit over the measured n (time: log-log slope; memory: a straight line in n) and
labelled so. Each case runs in a fresh subprocess, so ``ru_maxrss`` (the process's peak resident
set) is that case's alone; ``base`` is the peak after imports, weights and data, ``delta`` the
growth past it. ``model`` is the memory model of ``docs/memory.md``
(:func:`memory_model`), shown beside the measured delta.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory.md"
MIB = 2**20

# the shipped universal models (UniversalConfig widths; one mixture feature column) and the library's
# block sizes: nn.common.kde_features and kde_logsumexp (the EM's ranking) take 1024 rows at a time,
# GaussianKDE 2^18 elements, DiScoFormerEstimator 8192 queries per pass
WIDTH, LAYERS, HEADS, HEAD_DIM, FFN, BANDWIDTHS = 128, 4, 8, 16, 512, 5
ROWS, KDE_ELEMENTS, QUERY_BLOCK, GMM_K = 1024, 2**18, 8192, 10


def memory_model(kind: str, n: int, m: int, d: int) -> dict[str, float]:
    """The memory model of ``docs/memory.md``: bytes of the live tensors at each phase's peak.

    Returns the terms (bytes) and ``"peak"``, the predicted growth of the process's peak past
    what it held before (the samples themselves, the weights). float32 samples and network;
    float64 whitening, EM and the EM's KDE ranking."""
    if kind == "kde":
        block = max(1, KDE_ELEMENTS // n)
        # whitening and outlier check: ~6 float64 (n, d) arrays; the fit kept: u (f8), [u, -|u|^2/2, 1]
        # and [u, 1]^T (f4)
        t = {
            "samples": n * (48 * d + 16 * d + 12),
            "block": 4 * min(block, m) * n,
            "queries": m * (40 * d + 30),
        }
        t["peak"] = t["samples"] + t["block"] + t["queries"]
        return t
    if kind == "gmm":
        k = min(GMM_K, max(1, n // (4 * (d + 1))))
        t = {
            "samples": n * (8 * d + 48 * d),  # whitened copy + the outlier check
            "ranking": 3 * 8 * min(ROWS, n) * n,  # three live float64 (1024, n) distance blocks
            "em": n * (4 * 8 * k * d + 3 * 8 * k),  # (k, n, d) differences/residuals, (n, k) responsibilities
            "queries": m * 4 * 8 * (k * (k + 1) // 2) * d,  # all K(K+1)/2 components of the BIC average
        }
        t["peak"] = t["samples"] + max(t["ranking"], t["em"], t["queries"])
        return t
    if kind == "transformer":
        tok = HEAD_DIM + d + 1  # width of an attention token [q|k|v, p, 1]
        kept = (
            LAYERS * 2 * HEADS * tok * 4  # keys and values of every layer, float32
            + WIDTH * 4  # final states
            + LAYERS * HEADS * d * 4  # score messages
            + (BANDWIDTHS + 1) * (d + 1) * 4  # KDE and mixture features
        )
        layer = 4 * (3 * HEADS * HEAD_DIM + 2 * WIDTH + 4 * HEADS * tok + 2 * FFN)  # one layer's transients
        t = {
            "kept": n * kept,
            # five live float32 (1024, n) blocks: distances, the previous bandwidth's log-kernel and
            # weights, the new log-kernel, logsumexp's shifted copy
            "features": 5 * 4 * min(ROWS, n) * n,
            "layers": n * layer,
            "normaliser": 3 * 8 * min(ROWS, n) * n + n * 56 * d,  # its GMM's ranking, as "gmm"
            # a pass of up to 8192 queries: their layer transients and their KDE features' blocks
            "queries": min(m, QUERY_BLOCK) * layer + 5 * 4 * min(ROWS, m) * n,
        }
        t["peak"] = t["kept"] + max(t["features"], t["layers"], t["normaliser"], t["queries"])
        return t
    raise ValueError(kind)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(kind: str, n: int, m: int, d: int) -> dict:
    """One case, in this process: seconds and peak RSS."""
    import torch

    torch.set_num_threads(1)
    from pyro_disco import build_estimator
    from pyro_disco.estimators.kde import GaussianKDE
    from pyro_disco.estimators.mixture import GaussianMixtureEstimator

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(m, d, generator=g)
    builders = {
        "kde": GaussianKDE,
        "gmm": GaussianMixtureEstimator,
        "transformer": lambda x: build_estimator(x, "transformer"),
    }
    with torch.no_grad():  # warm-up on 300 points: weights, lazy imports, kernels out of the baseline
        builders[kind](x[:300]).logdensity_and_score(y[:10])
    base = _rss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        est = builders[kind](x)
        t_build = time.perf_counter() - t0
        peak_build = _rss_mb()
        logp, score = est.logdensity_and_score(y)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not (bool(torch.isfinite(logp).all()) and bool(torch.isfinite(score).all())):
        raise RuntimeError(f"{kind} n={n} d={d}: non-finite outputs")
    peak = _rss_mb()
    return {
        "kind": kind,
        "n": n,
        "m": m,
        "d": d,
        "build_s": round(t_build, 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "base_mb": round(base),
        "build_peak_mb": round(peak_build),
        "peak_mb": round(peak),
        "delta_mb": round(peak - base),
    }


def _run_case(kind: str, n: int, m: int, d: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, "--n", str(n), "--m", str(m), "--dim", str(d)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} n={n} d={d} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def _pow2(n: int) -> str:
    k = int(round(math.log2(n)))
    return f"2^{k}" if 2**k == n else str(n)


def report(rows: list[dict], *, command: str, extrapolate_to: int, note: str = "") -> str:
    big = _pow2(extrapolate_to)
    lines = [
        "# Time and peak memory at large n (CPU, one thread)",
        "",
        f"`{command}` — each case in its own process, one after the other "
        f"({platform.machine()}, {os.cpu_count()} cores shared with other jobs, so wall time is noisy: "
        "CPU time is the one to compare). Times: build + `logdensity_and_score` at the m queries. "
        "Memory in MiB: `base` the process's peak RSS before the build (imports, weights, data, a "
        "warm-up on 300 points), `build` its peak after the build, `peak` after the queries, `delta` = "
        "peak - base; `model` the memory model of `docs/memory.md` for delta (`delta / model` checks it).",
        *([note] if note else []),
        "",
        "| estimator | d | n | m | build (s) | wall (s) | CPU (s) | base | build | peak | delta | model | "
        "delta / model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model_mb = memory_model(r["kind"], r["n"], r["m"], r["d"])["peak"] / MIB
        lines.append(
            f"| {r['kind']} | {r['d']} | {_pow2(r['n'])} | {r['m']} | {r['build_s']} | {r['wall_s']} | "
            f"{r['cpu_s']} | {r['base_mb']} | {r.get('build_peak_mb', '-')} | {r['peak_mb']} | "
            f"{r['delta_mb']} | {model_mb:.0f} | {r['delta_mb'] / model_mb:.2f} |"
        )
    lines += [
        "",
        "Fits over n per estimator and d (time: log-log slope of CPU time against n; memory: "
        "least-squares line of delta against n, its slope in bytes per sample). Cells marked "
        "*extrapolated* were not measured: they follow the fits to n = " + big + " (time also at slope 2 "
        "from the largest n: the O(n^2) encode alone, which the fitted slope, still lowered by the O(n) "
        "and O(nm) parts at these n, underestimates).",
        "",
        f"| estimator | d | n measured | time slope | bytes per sample | CPU (s) at {big} | "
        f"delta (MiB) at {big} | model (MiB) at {big} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for d in dict.fromkeys(r["d"] for r in rows if r["kind"] == kind):
            sub = [r for r in rows if r["kind"] == kind and r["d"] == d]
            if len(sub) < 2:
                continue
            ns = [r["n"] for r in sub]
            a, slope = _fit_line([math.log(n) for n in ns], [math.log(max(r["cpu_s"], 1e-3)) for r in sub])
            b0, b1 = _fit_line([float(n) for n in ns], [r["delta_mb"] * MIB for r in sub])
            measured = [r for r in sub if r["n"] == extrapolate_to]
            if measured:
                t_cell, m_cell = f"{measured[0]['cpu_s']} (measured)", f"{measured[0]['delta_mb']} (measured)"
            else:
                t_big = math.exp(a + slope * math.log(extrapolate_to))
                m_big = (b0 + b1 * extrapolate_to) / MIB
                t_quad = sub[-1]["cpu_s"] * (extrapolate_to / ns[-1]) ** 2  # the O(n^2) term alone
                t_cell = f"**{t_big:,.0f} (extrapolated; {t_quad:,.0f} at slope 2)**"
                m_cell = f"**{m_big:,.0f} (extrapolated)**"
            model_big = memory_model(kind, extrapolate_to, sub[-1]["m"], d)["peak"] / MIB
            lines.append(
                f"| {kind} | {d} | {', '.join(_pow2(n) for n in ns)} | {slope:.2f} | {b1:,.0f} | {t_cell} | "
                f"{m_cell} | {model_big:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny grid that runs in seconds (tests)")
    p.add_argument("--out", default=str(RESULTS), help="markdown results file")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    p.add_argument("--kinds", nargs="+", default=["kde", "gmm", "transformer"])
    p.add_argument("--rows", help="re-write the report from the JSON lines a run printed (no new runs)")
    p.add_argument("--note", default="", help="a sentence for the report's header (how the rows were run)")
    p.add_argument("--one", choices=["kde", "gmm", "transformer"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--m", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.n, args.m, args.dim)))
        return
    if args.small:
        grid = {"kde": ([512, 2048], 256), "gmm": ([512, 2048], 256), "transformer": ([256, 512], 64)}
        dims, target = [2], 2048
    else:
        big = [2**13, 2**15, 2**17]
        grid = {"kde": (big, 4096), "gmm": (big, 4096), "transformer": ([2**12, 2**13, 2**14], 1024)}
        dims, target = args.dims, 2**17
    command = "OMP_NUM_THREADS=1 python benchmarks/memory.py" + (" --small" if args.small else "")
    if args.rows:
        lines = Path(args.rows).read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith('{"kind"')]
        Path(args.out).write_text(report(rows, command=command, extrapolate_to=target, note=args.note))
        return
    rows = []
    for kind in args.kinds:
        sizes, m = grid[kind]
        for d in dims:
            for n in sizes:
                rows.append(_run_case(kind, n, m, d))
                print(json.dumps(rows[-1]), flush=True)
                Path(args.out).write_text(report(rows, command=command, extrapolate_to=target))
    text = report(rows, command=command, extrapolate_to=target)
    Path(args.out).write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
