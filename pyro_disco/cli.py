"""The ``pyro-disco`` command line: ``demo``, ``estimate``, ``train``, ``export``.

Every user mistake (a missing or unreadable file, a typo in an option, samples the estimator
cannot use) ends in one argparse-style line, ``pyro-disco estimate: error: ...``, and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # annotations only: --help must not import torch
    import numpy as np
    from torch import Tensor

    from pyro_disco.estimators.base import Estimator

__all__ = ["main", "build_parser"]

DESCRIPTION = (
    "Density and score from samples with a pretrained transformer (DiScoFormer), for Pyro. "
    "Run 'pyro-disco COMMAND --help' for a command's options."
)
# estimator names, as pyro_disco.factory.ESTIMATORS (kept literal so --help needs no torch import;
# tests/test_cli.py checks the two agree)
ESTIMATOR_CHOICES = ("auto", "transformer", "gmm", "kde", "silverman-kde", "sdkde", "emp-sdkde")
_PROGRESS_CHUNK = 2048  # queries per progress-bar step


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` where there is a default worth showing (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class UsageError(Exception):
    """A mistake in the user's input: reported as one line by :func:`main`."""


def _version() -> str:
    """The installed distribution's version (pyproject reads it from ``pyro_disco.__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro-disco")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from pyro_disco import __version__

        return __version__


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from pyro_disco.training import TrainConfig, train
    from pyro_disco.training.distributed import init_from_env

    distributed = init_from_env(args.device)  # under torchrun: join the process group

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
            "mixture_components": args.mixture_components,
            "mixture_shrinkage": args.mixture_shrinkage,
            "mixture_split_init": True if args.mixture_split_init else None,
            "mixture_component_size": args.mixture_component_size,
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
        warmup=args.warmup,
        model=model,
        arch=args.arch,
        dim_min=args.dim_min,
        dim_power=args.dim_power,
        score_metric=args.score_metric,
        init_from=args.init_from,
        init_blend=args.init_blend,
        heavy_tail_fraction=args.heavy_tail_fraction,
        data_seeding=args.data_seeding or ("per-set" if distributed else "stream"),
    )
    try:
        train(cfg, args.out, progress=not args.no_progress)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyro_disco.demo import run_demo

    run_demo(num_samples=args.num_samples, seed=args.seed, out=args.out)
    return 0


def _read_points(path: str, what: str) -> Tensor:
    """User arrays ``(n, d)``: .npy (never unpickled), or text/CSV with one point per row; a
    non-numeric first row (a CSV header) is skipped. Raises :class:`UsageError`."""
    import numpy as np
    import torch

    if not os.path.exists(path):
        raise UsageError(f"{what} file {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{what} path {path!r} is a folder, not a file")
    try:
        if path.endswith(".npy"):
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as exc:  # numpy's message names allow_pickle
                raise UsageError(f"{what} file {path!r} holds Python objects, refused ({exc})") from None
        else:
            delimiter = "," if path.endswith(".csv") else None
            try:
                arr = np.loadtxt(path, delimiter=delimiter, ndmin=2)
            except ValueError:
                arr = np.loadtxt(path, delimiter=delimiter, ndmin=2, skiprows=1)  # a header row
    except UsageError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"could not read numbers from {what} file {path!r}: {reason}") from None
    if arr.dtype.kind not in "fiu":
        raise UsageError(f"{what} file {path!r} does not hold numbers (dtype {arr.dtype})")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise UsageError(f"{what} must be a table of points (n, d), got shape {arr.shape} from {path!r}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))


def _estimate_all(est: Estimator, samples: Tensor, queries: Tensor, progress: bool) -> tuple[Tensor, Tensor]:
    """Log-density ``(m,)`` and score ``(m, d)`` at the queries, with a progress bar (shown after
    2 s, with an ETA) over blocks of queries."""
    import torch
    from tqdm.auto import tqdm

    if queries is samples and callable(getattr(est, "at_samples", None)):
        return est.at_samples()  # the transformer's own outputs at its context: one pass
    logps, scores = [], []
    with tqdm(total=queries.shape[0], unit="pt", desc="estimate", delay=2.0, disable=not progress) as bar:
        for block in queries.split(_PROGRESS_CHUNK):
            lp, sc = est.logdensity_and_score(block)
            logps.append(lp.detach())
            scores.append(sc.detach())
            bar.update(block.shape[0])
    return torch.cat(logps), torch.cat(scores)


def _write_atomically(path: str, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pyro-disco-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_result(path: str, points: np.ndarray, logp: np.ndarray, score: np.ndarray) -> str:
    """CSV (header ``x0..,logdensity,score0..``) if ``path`` ends in .csv, else .npz with arrays
    ``points``, ``logdensity``, ``score``; the file gets exactly the name asked for."""
    import numpy as np

    if path.lower().endswith(".csv"):
        d = points.shape[1]
        header = ",".join([f"x{i}" for i in range(d)] + ["logdensity"] + [f"score{i}" for i in range(d)])
        table = np.column_stack([points, logp[:, None], score])
        _write_atomically(path, lambda f: np.savetxt(f, table, delimiter=",", header=header, comments=""))
        return "CSV"
    _write_atomically(path, lambda f: np.savez(f, points=points, logdensity=logp, score=score))
    return "npz"


def _cmd_estimate(args: argparse.Namespace) -> int:
    from pyro_disco.factory import build_estimator

    samples = _read_points(args.samples, "samples")
    queries = _read_points(args.queries, "queries") if args.queries else samples
    if queries.shape[1] != samples.shape[1]:
        raise UsageError(
            f"queries have d={queries.shape[1]} coordinates but the samples have d={samples.shape[1]}"
        )
    try:
        # the transformer's encode is O(n²): a bar over its stages (after 2 s, on stderr)
        extra = {"progress": not args.no_progress} if args.estimator == "transformer" else {}
        est = build_estimator(samples, args.estimator, **extra)
        if args.adapt_steps:
            if not callable(getattr(est, "adapt", None)):
                name = type(est).__name__
                raise UsageError(
                    f"--adapt-steps needs the transformer; --estimator {args.estimator} built {name}"
                )
            est = est.adapt(args.adapt_steps)
        logp, score = _estimate_all(est, samples, queries, progress=not args.no_progress)
    except (ValueError, TypeError) as exc:  # the estimator's own checks: n > d, degenerate, ...
        raise UsageError(str(exc).splitlines()[0]) from None
    kind = _write_result(args.out, queries.numpy(), logp.double().numpy(), score.double().numpy())
    print(
        f"{type(est).__name__} on n={samples.shape[0]}, d={samples.shape[1]}: "
        f"wrote logdensity {tuple(logp.shape)} and score {tuple(score.shape)} to {args.out} ({kind})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pyro_disco.training.export import export_run

    notes = open(args.notes).read() if args.notes else ""
    auto = args.auto_dims if args.auto_dims is not None else not args.not_default
    info = export_run(args.run, args.name, notes=notes, auto=auto, force=args.force)
    print(f"wrote {info['file']} (sha256 {info['sha256']}), {info['steps']} steps")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="pyro-disco", description=DESCRIPTION, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", formatter_class=fmt, help="train a DiScoFormer on random Gaussian mixtures (resumable)"
    )
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
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument(
        "--mixture-components",
        type=int,
        default=None,
        help="universal arch: feed the BIC Gaussian mixture (EM, k <= this) and start as it",
    )
    p.add_argument(
        "--mixture-shrinkage",
        type=float,
        default=None,
        help="with --mixture-components: the EM's covariance shrinkage (GaussianMixtureEstimator's is 0.2)",
    )
    p.add_argument(
        "--mixture-split-init",
        action="store_true",
        help="with --mixture-components: a second EM start per k, splitting the widest component",
    )
    p.add_argument(
        "--mixture-component-size",
        choices=("params", "dims"),
        default=None,
        help="with --mixture-components: the EM's cap on k, at least 1 + d + d(d+1)/2 ('params', the "
        "default) or 4(d + 1) ('dims') samples per component",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="universal with --mixture-components: start a new run from this universal model (shipped "
        "name or weight file), with or without a mixture column",
    )
    p.add_argument(
        "--init-blend",
        type=float,
        default=0.5,
        help="with --init-from: start at (1-b)·old network + b·BIC mixture",
    )
    p.add_argument(
        "--heavy-tail-fraction",
        type=float,
        default=0.0,
        help="the fraction of steps trained on heavy-tailed mixtures (Student-t and Laplace products) "
        "instead of Gaussian mixtures",
    )
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
    p.add_argument(
        "--data-seeding",
        choices=("stream", "per-set"),
        default=None,
        help="draw each step's sets together from the run's stream, or each from its own seed (the "
        "default under torchrun: N ranks then train exactly as one process)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train, parser=p)

    p = sub.add_parser(
        "demo", formatter_class=fmt, help="2-D bimodal mixture: transformer vs KDE vs exact, table and figure"
    )
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo.png", help="where to save the figure")
    p.set_defaults(func=_cmd_demo, parser=p)

    p = sub.add_parser(
        "estimate", formatter_class=fmt, help="log-density and score of your samples at your query points"
    )
    p.add_argument("samples", help="samples, (n, d): .npy (no pickles), .csv or whitespace-separated text")
    p.add_argument("--queries", help="query points (m, d), same formats; default: the samples themselves")
    p.add_argument(
        "--estimator",
        default="auto",
        choices=ESTIMATOR_CHOICES,
        help="auto: the best of the mixture, KDE and shipped transformer by held-out Hyvärinen score",
    )
    p.add_argument(
        "--adapt-steps",
        type=_non_negative_int,
        default=0,
        help="test-time adaptation steps (transformer only)",
    )
    p.add_argument(
        "--out",
        default="estimate.npz",
        help="output file, written under exactly this name: CSV if it ends in .csv "
        "(columns x0.., logdensity, score0..), else .npz (arrays points, logdensity, score)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows after 2 s, on stderr)"
    )
    p.set_defaults(func=_cmd_estimate, parser=p)

    p = sub.add_parser(
        "export",
        formatter_class=fmt,
        help="ship a training run's weights inside the package (sha256 + model card)",
    )
    p.add_argument("run", help="training run folder (with checkpoint.pt and log.jsonl)")
    p.add_argument("--name", required=True, help="model name, e.g. discoformer-d2")
    p.add_argument("--notes", help="a markdown file appended to the model card")
    p.add_argument(
        "--force", action="store_true", help="replace a shipped model of this name (a backup is kept)"
    )
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
    p.set_defaults(func=_cmd_export, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        args.parser.error(str(exc))  # one line on stderr, exit status 2
        return 2  # pragma: no cover - error() exits


if __name__ == "__main__":
    sys.exit(main())
