"""What the mixture features alone buy a trained mixture-aware universal network (issue 11).

    OMP_NUM_THREADS=1 python benchmarks/mixture_features.py --dims 2 5 10 16 [--model NAME_OR_FILE]

The network's weights do not depend on the EM's options (``mixture_components``, the cap on k),
so a trained network can be re-run with other options, and with its heads moved to the BIC
mixture alone (``reblend_mixture(..., blend=1)``), without any training. For each variant:
relative score MSE (%) in original coordinates at fresh points on the training code's own
held-out validation mixtures (``validation_tasks(d, sizes, num_sets=8)``, its fixed seed), at
n = 256, 1024 and 4096. Writes ``benchmarks/results/mixture_features.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import load_network  # noqa: E402

from pyro_disco.training.train import evaluate, validation_tasks  # noqa: E402
from pyro_disco.training.warm_start import reblend_mixture  # noqa: E402

SIZES = (256, 1024, 4096)


def variants(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    cfg = net.config
    return {
        f"as trained (K = {cfg.mixture_components}, cap {cfg.mixture_component_size!r})": net,
        "K = 10": reblend_mixture(
            net, mixture_components=10, mixture_component_size=cfg.mixture_component_size
        ),
        "K = 10, cap 4(d+1)": reblend_mixture(net, mixture_components=10, mixture_component_size="dims"),
        "mixture alone (K = 10, cap 4(d+1))": reblend_mixture(
            net, blend=1.0, mixture_components=10, mixture_component_size="dims"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="discoformer-universal-mix")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10, 16])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mixture_features.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)  # peers.py sets float64; the network runs in float32, as shipped
    net = load_network(args.model)
    models = variants(net)
    lines = [
        "# Mixture features without training",
        "",
        f"`python benchmarks/mixture_features.py --model {args.model} "
        f"--dims {' '.join(map(str, args.dims))}`: "
        "relative score MSE (%) at fresh points, original coordinates, 8 validation mixtures per cell "
        "(`training.train.validation_tasks`), n = " + " / ".join(map(str, SIZES)) + ".",
        "",
        "| d | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    t0 = time.perf_counter()
    for d in args.dims:
        tasks = {f"d{d}_n{n}": t for n, t in validation_tasks(d, SIZES, num_sets=8).items()}
        cells = []
        for model in models.values():
            r = evaluate(model.eval(), tasks)
            cells.append(" / ".join(f"{100 * r[f'orig_rel_score_d{d}_n{n}']:.1f}" for n in SIZES))
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s, one thread."]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
