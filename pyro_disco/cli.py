"""The ``pyro-disco`` command line: ``demo``, ``estimate``, ``train``, ``export``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _cmd_train(args: argparse.Namespace) -> int:
    from pyro_disco.training import TrainConfig, train

    model = {
        k: v
        for k, v in {
            "d_model": args.d_model,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "d_ff": args.d_ff,
            "dropout": args.dropout,
            "kde_features": args.kde_features,
            "head_dim": args.head_dim,
        }.items()
        if v is not None
    }
    cfg = TrainConfig(
        dim=args.dim,
        steps=args.steps,
        tokens_per_step=args.tokens_per_step,
        n_min=args.n_min,
        n_max=args.n_max,
        alpha=args.alpha,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        eval_every=args.eval_every,
        model=model,
        arch=args.arch,
        dim_min=args.dim_min,
        dim_power=args.dim_power,
        score_metric=args.score_metric,
    )
    train(cfg, args.out, progress=not args.no_progress)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyro_disco.demo import run_demo

    run_demo(num_samples=args.num_samples, seed=args.seed, out=args.out)
    return 0


def _read_points(path: str):
    """User arrays: .npy (no pickles) or text/CSV, one point per row."""
    import numpy as np
    import torch

    if path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
    else:
        arr = np.loadtxt(path, delimiter="," if path.endswith(".csv") else None, ndmin=2)
    if arr.ndim == 1:
        arr = arr[:, None]
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))


def _cmd_estimate(args: argparse.Namespace) -> int:
    import numpy as np

    from pyro_disco.factory import build_estimator

    samples = _read_points(args.samples)
    queries = _read_points(args.queries) if args.queries else samples
    est = build_estimator(samples, args.estimator)
    if args.adapt_steps:
        est = est.adapt(args.adapt_steps)
    logp, score = est.logdensity_and_score(queries)
    np.savez(args.out, points=queries.numpy(), logdensity=logp.detach().numpy(), score=score.detach().numpy())
    print(
        f"{type(est).__name__} on n={samples.shape[0]}, d={samples.shape[1]}: "
        f"wrote logdensity {tuple(logp.shape)} and score {tuple(score.shape)} to {args.out}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pyro_disco.training.export import export_run

    notes = open(args.notes).read() if args.notes else ""
    auto = args.auto_dims if args.auto_dims is not None else not args.not_default
    info = export_run(args.run, args.name, notes=notes, auto=auto)
    print(f"wrote {info['file']} (sha256 {info['sha256']}), {info['steps']} steps")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-disco", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DiScoFormer on random Gaussian mixtures (resumable)")
    p.add_argument("--dim", type=int, required=True, help="dimension d of the samples")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt and log.jsonl; reused to resume")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--tokens-per-step", type=int, default=4096, help="context points per step")
    p.add_argument("--n-min", type=int, default=128)
    p.add_argument("--n-max", type=int, default=2048)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the log-density loss")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--num-heads", type=int, default=None)
    p.add_argument("--d-ff", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument(
        "--kde-features",
        type=float,
        nargs="+",
        default=None,
        help="KDE input features and gated outputs at these multiples of Scott's bandwidth",
    )
    p.add_argument(
        "--arch",
        choices=("discoformer", "universal"),
        default="discoformer",
        help="per-dimension paper model, or the exactly rotation-equivariant model for every d <= --dim",
    )
    p.add_argument("--dim-min", type=int, default=1, help="universal: smallest training dimension")
    p.add_argument("--dim-power", type=float, default=0.5, help="universal: P(d) ∝ d ** dim_power")
    p.add_argument("--head-dim", type=int, default=None, help="universal: width of each attention head")
    p.add_argument(
        "--score-metric",
        choices=("whitened", "both"),
        default="whitened",
        help="universal: relative score error in whitened coordinates, or averaged with original ones",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="2-D bimodal mixture: transformer vs KDE vs exact, table and figure")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo.png", help="where to save the figure")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("estimate", help="log-density and score of your samples at your query points")
    p.add_argument("samples", help="samples, (n, d): .npy (no pickles), .csv or whitespace-separated text")
    p.add_argument("--queries", help="query points (m, d), same formats; default: the samples themselves")
    p.add_argument(
        "--estimator", default="auto", help="auto | transformer | kde | silverman-kde | sdkde | emp-sdkde"
    )
    p.add_argument("--adapt-steps", type=int, default=0, help="test-time adaptation steps (transformer only)")
    p.add_argument("--out", default="estimate.npz", help="output .npz with points, logdensity, score")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser(
        "export", help="ship a training run's weights inside the package (sha256 + model card)"
    )
    p.add_argument("run", help="training run folder (with checkpoint.pt and log.jsonl)")
    p.add_argument("--name", required=True, help="model name, e.g. discoformer-d2")
    p.add_argument("--notes", help="a markdown file appended to the model card")
    p.add_argument(
        "--not-default",
        action="store_true",
        help="ship it, but let estimator='auto' keep Scott's KDE for this d (the benchmark says KDE wins)",
    )
    p.add_argument(
        "--auto-dims",
        type=int,
        nargs="*",
        default=None,
        help="universal model: the dimensions where estimator='auto' picks it (the benchmark decides)",
    )
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
