"""The GPU path as one prepared command (issue 15 item 6): training throughput, large-n estimates
and the accuracy table, written to one markdown file after every case.

    python benchmarks/gpu.py --device cuda --out benchmarks/results/gpu.md     # a GPU machine, < 10 min
    OMP_NUM_THREADS=1 python benchmarks/gpu.py --small --out /tmp/gpu.md       # CPU, seconds (tests)

Needs nothing outside the repository and its installed packages (no network, no download).

Sections, in order (each skipped, and said so in the file, once ``--budget-s`` seconds have passed
since the start; the file is rewritten after every case, so a killed run leaves what it measured):

1. **Reference rates**: a large float32 matmul (and bf16 on CUDA), GFLOP/s, same run.
2. **Training throughput** of the universal model: the real training step of
   :func:`pyro_disco.training.train.train` (its data draw ``_draw_step``, the
   :class:`~pyro_disco.training.distributed.TaskLoss` around ``task_loss``, backward, gradient
   clipping, AdamW), the network built from the shipped default model's config (the
   mixture-aware universal model, ``discoformer-universal-mix10`` when this was written) with the
   recipe it was trained with (``d`` drawn from 1 … 32 with P(d) ∝ d, ``n`` log-uniform in
   [128, 4096], 128 queries per set, 4096 context tokens per step: its model card; the paper
   summary gives no batch size). float32, and bf16 autocast
   on CUDA; the same seed, so every precision sees the same steps. Reported: steps/s, context
   tokens/s, the share of the step spent drawing the data (on the CPU), peak memory.
3. **Large-n estimates**: ``GaussianKDE`` (Scott), ``GaussianMixtureEstimator`` and
   ``build_estimator(x, "transformer")`` on ``n = 2^16, 2^17`` standard-normal samples (float32),
   ``m`` queries: wall time of the build and of ``score`` then ``logdensity`` (the transformer's
   first log-density also estimates its log-normaliser), with ``torch.cuda.synchronize``; peak
   memory: ``torch.cuda.max_memory_allocated`` per case on CUDA, the process's peak RSS so far
   (``resource.getrusage``) on CPU. A case that raises is reported with its error, not dropped.
4. **Accuracy**: relative score MSE :math:`\\sum\\|\\hat s - s\\|^2 / \\sum\\|s\\|^2` at 512 fresh
   points of random Gaussian mixtures (``benchmarks/peers.py``'s ``make_case``, same seeds), for
   the transformer, our GMM and Scott's KDE, mean over repetitions, on the chosen device.

``--small``: tiny sizes (training 3 steps at 512 tokens, estimates at n = 2^9, 2^10, accuracy
d = 2, n = 256, one repetition), for the test suite on CPU.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MIB = 2**20

# the shipped mixture-aware universal model's training recipe (its model card's command)
RECIPE = dict(
    dim=32,
    arch="universal",
    dim_min=1,
    dim_power=1.0,
    score_metric="both",
    n_min=128,
    n_max=4096,
    num_queries=128,
    tokens_per_step=4096,
    lr=1e-4,
)


class Budget:
    """Seconds left of ``--budget-s`` since the start."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def spent(self) -> bool:
        return self.left() <= 0


class Report:
    """The markdown file, rewritten whole after every case."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header, self.sections = path, header, {}

    def set(self, name: str, lines: list[str]) -> None:
        self.sections[name] = lines
        self.write()

    def write(self) -> None:
        text = "\n".join(self.header + [line for lines in self.sections.values() for line in lines]) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(text)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float:
    """Peak memory: CUDA's allocated peak since the last reset; on CPU the process peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {first[:160]}".replace("|", "/")


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------- 1. reference rates


def matmul_rates(device: torch.device, size: int) -> list[str]:
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    rows = ["## Reference rates", "", "| operation | GFLOP/s |", "|---|---|"]
    for dtype in dtypes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t0 < 0.5:
            a @ b
            reps += 1
        _sync(device)
        rate = 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9
        rows.append(f"| matmul {size}×{size} {str(dtype).removeprefix('torch.')} | {rate:,.0f} |")
    tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else False
    return rows + ["", f"(TF32 matmul allowed: {tf32}.)", ""]


# ---------------------------------------------------------------- 2. training throughput


def _shipped_model_overrides() -> dict:
    """The default universal model's architecture (from the shipped weights), as TrainConfig.model."""
    from pyro_disco.pretrained import default_model_name, load_model

    config = load_model(default_model_name(2)).config.to_dict()
    return {k: v for k, v in config.items() if k not in ("max_dim", "arch")}


def training_throughput(
    device: torch.device, precision: str, tokens: int, steps: int, warmup: int, budget: Budget, small: bool
) -> dict:
    """The training step of ``train()`` timed ``steps`` times after ``warmup`` steps."""
    from pyro_disco.training.distributed import TaskLoss
    from pyro_disco.training.train import TrainConfig, _draw_step, build_model, task_loss

    recipe = dict(RECIPE, tokens_per_step=tokens, device=str(device), model=_shipped_model_overrides())
    if small:
        recipe.update(n_max=256, num_queries=32)
    cfg = TrainConfig(**recipe)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step_loss = TaskLoss(model, task_loss, alpha=cfg.alpha, normalize=True, score_metric=cfg.score_metric)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    draw_s, total_s, done, losses = 0.0, 0.0, 0, []
    _reset_peak(device)
    for i in range(warmup + steps):
        if budget.spent():
            break
        _sync(device)
        t0 = time.perf_counter()
        _, _, task = _draw_step(cfg, gen, device)
        _sync(device)
        t1 = time.perf_counter()
        with _autocast(device, precision):
            loss, _ = step_loss(task)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        losses.append(float(loss.detach()))  # synchronises, as train() does when it logs
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            draw_s += t1 - t0
            total_s += t2 - t0
            done += 1
    return {
        "precision": precision,
        "tokens": tokens,
        "steps": done,
        "steps_per_s": done / total_s if total_s > 0 else float("nan"),
        "tokens_per_s": done * tokens / total_s if total_s > 0 else float("nan"),
        "draw_share": draw_s / total_s if total_s > 0 else float("nan"),
        "peak_mib": _peak_mib(device),
        "loss": sum(losses[warmup:]) / max(1, len(losses[warmup:])),
    }


def training_section(device, args, budget: Budget, report: Report) -> None:
    precisions = ["float32"] + (["bf16"] if device.type == "cuda" else [])
    tokens_list = [512] if args.small else args.tokens
    head = [
        "## Training throughput (universal model, the real training step)",
        "",
        f"Recipe of the shipped default model: d ~ 1 … 32 (P ∝ d), n log-uniform in "
        f"[{RECIPE['n_min']}, {256 if args.small else RECIPE['n_max']}], "
        f"{32 if args.small else RECIPE['num_queries']} queries per set; "
        f"{args.train_steps} timed steps after {args.train_warmup} warm-up steps, same seed for every row. "
        "`tokens`: context points per step (4096 is the shipped recipe's batch). "
        "`draw`: share of the step spent drawing the training sets on the CPU.",
        "",
        "| precision | tokens | steps timed | steps/s | tokens/s | draw | peak memory (MiB) | mean loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for tokens in tokens_list:
        for precision in precisions:
            if budget.spent():
                rows.append(f"| {precision} | {tokens} | skipped (time budget) | | | | | |")
                continue
            print(f"training: {precision}, {tokens} tokens per step", flush=True)
            try:
                r = training_throughput(
                    device, precision, tokens, args.train_steps, args.train_warmup, budget, args.small
                )
                rows.append(
                    f"| {precision} | {tokens} | {r['steps']} | {r['steps_per_s']:.3f} | "
                    f"{r['tokens_per_s']:,.0f} | {100 * r['draw_share']:.0f} % | {r['peak_mib']:,.0f} | "
                    f"{r['loss']:.4f} |"
                )
            except Exception as exc:  # reported, not fatal: the other sections still run
                traceback.print_exc()
                rows.append(f"| {precision} | {tokens} | {_error(exc)} | | | | | |")
            report.set("training", head + rows + [""])


# ---------------------------------------------------------------- 3. large-n estimates


def _builders():
    from pyro_disco import build_estimator
    from pyro_disco.estimators.kde import GaussianKDE
    from pyro_disco.estimators.mixture import GaussianMixtureEstimator

    return {
        "Scott KDE": GaussianKDE,
        "gmm": GaussianMixtureEstimator,
        "transformer": lambda x: build_estimator(x, "transformer"),
    }


def estimate_case(name: str, build, n: int, m: int, d: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g).to(device)
    y = torch.randn(m, d, generator=g).to(device)
    _sync(device)
    _reset_peak(device)
    out = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        est = build(x)
        _sync(device)
        t1 = time.perf_counter()
        score = est.score(y)
        _sync(device)
        t2 = time.perf_counter()
        out.update(build_s=t1 - t0, score_s=t2 - t1)
        try:  # the transformer's first log-density estimates its log-normaliser
            logp = est.logdensity(y)
            _sync(device)
            out["logdensity_s"] = time.perf_counter() - t2
            out["finite"] = bool(torch.isfinite(score).all()) and bool(torch.isfinite(logp).all())
        except Exception as exc:
            traceback.print_exc()
            out["logdensity_s"] = _error(exc)
            out["finite"] = bool(torch.isfinite(score).all())
    out["peak_mib"] = _peak_mib(device)
    return out


def estimates_section(device, args, budget: Budget, report: Report) -> None:
    sizes = [2**9, 2**10] if args.small else args.estimate_sizes
    dims = [2] if args.small else args.estimate_dims
    m = 256 if args.small else args.queries
    builders = _builders()
    peak_label = "peak CUDA memory (MiB)" if device.type == "cuda" else "process peak RSS so far (MiB)"
    head = [
        "## Large-n estimates",
        "",
        f"Standard-normal samples (float32), m = {m} queries; wall seconds with "
        f"`torch.cuda.synchronize`; score first, then log-density (for the transformer this includes "
        "its one-off log-normaliser).",
        "",
        f"| estimator | d | n | build (s) | score (s) | log-density (s) | {peak_label} |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for build in builders.values():  # warm-up: weights, kernels, CUDA context out of the timings
        if args.small:
            break
        try:
            with torch.no_grad():
                build(torch.randn(512, dims[0]).to(device)).logdensity_and_score(
                    torch.randn(8, dims[0]).to(device)
                )
        except Exception:
            traceback.print_exc()
    for d in dims:
        for n in sizes:
            for name, build in builders.items():
                label = f"| {name} | {d} | {f'2^{int(math.log2(n))}' if n & (n - 1) == 0 else n} |"
                if budget.spent():
                    rows.append(f"{label} skipped (time budget) | | | |")
                    continue
                print(f"estimate: {name}, d={d}, n={n}", flush=True)
                try:
                    r = estimate_case(name, build, n, m, d, device)
                    ld = r["logdensity_s"]
                    ld = f"{ld:.2f}" if isinstance(ld, float) else ld
                    bad = "" if r["finite"] else " (non-finite outputs)"
                    cells = f"{r['build_s']:.2f} | {r['score_s']:.2f} | {ld} | {r['peak_mib']:,.0f}{bad}"
                    rows.append(f"{label} {cells} |")
                except Exception as exc:
                    traceback.print_exc()
                    rows.append(f"{label} {_error(exc)} | | | |")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                report.set("estimates", head + rows + [""])


# ---------------------------------------------------------------- 4. accuracy


def _make_case():
    """``benchmarks/peers.py``'s ``make_case``, imported without keeping its float64 default dtype."""
    previous = torch.get_default_dtype()
    sys.path.insert(0, str(HERE))
    try:
        from peers import make_case
    finally:
        torch.set_default_dtype(previous)
    return make_case


def accuracy_section(device, args, budget: Budget, report: Report) -> None:
    from pyro_disco.metrics import relative_score_error

    make_case = _make_case()
    builders = _builders()
    names = list(builders)
    if args.small:
        dims, sizes, reps = [2], [256], 1
    else:
        dims, sizes, reps = args.accuracy_dims, args.accuracy_sizes, args.reps
    head = [
        "## Accuracy: relative score MSE at fresh points (%)",
        "",
        f'Random Gaussian mixtures (`benchmarks/peers.py` `make_case`, family "mixture", its seeds), 512 '
        f"fresh points, mean over {reps} repetition(s); seconds: mean build + score time.",
        "",
        "| d | n | " + " | ".join(names) + " | " + " | ".join(f"{k} (s)" for k in names) + " |",
        "|---|---|" + "---|" * (2 * len(names)),
    ]
    rows = []
    for d in dims:
        for n in sizes:
            if budget.spent():
                rows.append(f"| {d} | {n} | skipped (time budget) |" + " |" * (2 * len(names) - 1))
                continue
            print(f"accuracy: d={d}, n={n}", flush=True)
            errs = {k: [] for k in names}
            secs = {k: [] for k in names}
            failed = {}
            for r in range(reps):
                x, y, truth = make_case("mixture", d, n, r, m=512)
                s_true = truth.score(y)
                for name, build in builders.items():
                    if name in failed:
                        continue
                    try:
                        _sync(device)
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            s = build(x.to(device)).score(y.to(device))
                        _sync(device)
                        secs[name].append(time.perf_counter() - t0)
                        errs[name].append(float(relative_score_error(s.double().cpu(), s_true)))
                    except Exception as exc:
                        traceback.print_exc()
                        failed[name] = _error(exc)
            cells = [failed.get(k) or f"{100 * sum(errs[k]) / len(errs[k]):.2f}" for k in names]
            times = [f"{sum(secs[k]) / len(secs[k]):.2f}" if secs[k] else "-" for k in names]
            rows.append(f"| {d} | {n} | " + " | ".join(cells + times) + " |")
            report.set("accuracy", head + rows + [""])


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(HERE / "results" / "gpu.md"))
    p.add_argument("--small", action="store_true", help="tiny sizes, runs on CPU in seconds (tests)")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no case after this many seconds")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: 1 on CPU; torch's default with CUDA)"
    )
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768], help="context tokens per step")
    p.add_argument("--train-steps", type=int, default=None, help="timed steps (default 30; small: 3)")
    p.add_argument("--train-warmup", type=int, default=None, help="untimed steps first (default 3; small: 1)")
    p.add_argument("--queries", type=int, default=4096, help="large-n estimates: queries")
    p.add_argument(
        "--estimate-sizes", type=int, nargs="+", default=[2**16, 2**17], help="large-n estimates: n"
    )
    p.add_argument("--estimate-dims", type=int, nargs="+", default=[2, 10])
    p.add_argument("--accuracy-dims", type=int, nargs="+", default=[2, 10, 32])
    p.add_argument("--accuracy-sizes", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--reps", type=int, default=3, help="accuracy: repetitions per cell")
    p.add_argument(
        "--sections", nargs="+", default=["rates", "training", "estimates", "accuracy"], help="what to run"
    )
    args = p.parse_args(argv)
    if args.train_steps is None:
        args.train_steps = 3 if args.small else 30
    if args.train_warmup is None:
        args.train_warmup = 1 if args.small else 3
    if args.threads is not None or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)  # the training sets are drawn on the CPU
    device = torch.device(args.device)
    budget = Budget(args.budget_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = Report(
        Path(args.out),
        [
            "# The GPU path: training throughput, large-n estimates, accuracy",
            "",
            f"`{command}` on {device.type} ({name}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU thread(s), budget {args.budget_s:.0f} s.",
            "",
        ],
    )
    report.write()
    sections = {
        "rates": lambda: report.set("rates", matmul_rates(device, 512 if args.small else 8192)),
        "training": lambda: training_section(device, args, budget, report),
        "estimates": lambda: estimates_section(device, args, budget, report),
        "accuracy": lambda: accuracy_section(device, args, budget, report),
    }
    for key in args.sections:
        print(f"== {key} ({budget.left():.0f} s of the budget left)", flush=True)
        sections[key]()
    report.sections["end"] = [
        f"Finished with {budget.left():.0f} s of the {args.budget_s:.0f} s budget left."
    ]
    report.write()
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
