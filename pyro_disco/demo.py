"""The demo: samples of a 2-D bimodal mixture -> density and score, against the exact ones and KDE.

``pyro-disco demo`` prints a table (relative score MSE, log-density MSE, time) for every
estimator on the same samples — ``auto`` (named with the estimator it chose), the
transformer, the Gaussian mixture, SD-KDE and the KDE family — and saves a figure of the
densities and score fields.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pyro_disco.factory import build_estimator
from pyro_disco.metrics import logdensity_mse, relative_score_error
from pyro_disco.pretrained import available_dims
from pyro_disco.targets import GaussianMixture

__all__ = ["bimodal_2d", "compare", "run_demo"]


def bimodal_2d(dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """The demo's target: two tilted Gaussian blobs with weights 0.35 / 0.65."""
    c1 = torch.tensor([[0.6, 0.25], [0.25, 0.3]], dtype=dtype)
    c2 = torch.tensor([[0.3, -0.1], [-0.1, 0.5]], dtype=dtype)
    return GaussianMixture(
        torch.tensor([0.35, 0.65], dtype=dtype),
        torch.tensor([[-1.5, 0.5], [1.2, -0.4]], dtype=dtype),
        torch.stack([c1, c2]),
    )


def compare(
    target: GaussianMixture, samples: torch.Tensor, queries: torch.Tensor, estimators: list[str]
) -> list[dict]:
    """Relative score MSE and log-density MSE of each named estimator at ``queries``."""
    true_logp, true_s = target.logdensity_and_score(queries)
    rows = []
    for name in estimators:
        t0 = time.perf_counter()
        est = build_estimator(samples, name)
        logp, s = est.logdensity_and_score(queries)
        elapsed = time.perf_counter() - t0
        chosen = getattr(getattr(est, "selection", None), "chosen", None)
        rows.append(
            {
                "estimator": f"auto -> {chosen}" if name == "auto" and chosen else name,
                "rel_score_mse": float(relative_score_error(s, true_s)),
                "logdensity_mse": float(logdensity_mse(logp, true_logp)),
                "seconds": elapsed,
                "object": est,
            }
        )
    return rows


def _plot(target: GaussianMixture, samples: torch.Tensor, rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    g = torch.linspace(-4, 4, 120, dtype=samples.dtype)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([xx, yy], -1).reshape(-1, 2)
    q = torch.linspace(-3.5, 3.5, 15, dtype=samples.dtype)
    qx, qy = torch.meshgrid(q, q, indexing="xy")
    qgrid = torch.stack([qx, qy], -1).reshape(-1, 2)
    panels = [("exact", target)] + [(r["estimator"], r["object"]) for r in rows]
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4 * ncols, 4 * nrows), sharex=True, sharey=True, squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, est) in zip(axes.flat, panels):
        dens = est.logdensity(grid).exp().reshape(120, 120)
        ax.contourf(xx.numpy(), yy.numpy(), dens.numpy(), levels=20, cmap="viridis")
        s = est.score(qgrid)
        s = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        ax.quiver(qx.numpy(), qy.numpy(), s[:, 0].numpy(), s[:, 1].numpy(), color="white", scale=25)
        ax.scatter(samples[:200, 0].numpy(), samples[:200, 1].numpy(), s=2, c="red")
        ax.set_title(name)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
    fig.suptitle("density (colour) and score direction (arrows); red: 200 of the samples")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_demo(
    num_samples: int = 1024, num_queries: int = 2000, seed: int = 0, out: str | Path = "demo.png"
) -> list[dict]:
    """Run the demo, print the table, save the figure; returns the table rows."""
    target = bimodal_2d()
    g = torch.Generator().manual_seed(seed)
    samples = target.sample(num_samples, generator=g)
    queries = target.sample(num_queries, generator=g)
    names = ["auto", "gmm", "kde", "silverman-kde", "emp-sdkde"]
    if 2 in available_dims():
        names = ["auto", "transformer", "gmm", "sdkde", "kde", "silverman-kde", "emp-sdkde"]
    rows = compare(target, samples, queries, names)
    print(
        f"2-D bimodal Gaussian mixture, n = {num_samples} samples, {num_queries} query points from the target"
    )
    print(f"{'estimator':>21} | {'rel. score MSE':>14} | {'log-density MSE':>15} | {'seconds':>7}")
    print("-" * 69)
    for r in rows:
        print(
            f"{r['estimator']:>21} | {100 * r['rel_score_mse']:13.2f}% | "
            f"{r['logdensity_mse']:15.4f} | {r['seconds']:7.3f}"
        )
    print("seconds: build + evaluate at the queries; auto's include its held-out selection")
    if 2 not in available_dims():
        print("(no pretrained 2-D DiScoFormer in this install: auto chose among the mixture and KDE)")
    path = _plot(target, samples, rows, Path(out))
    print(
        f"figure saved to {path}"
        if path
        else "matplotlib is not installed: no figure (pip install 'pyro-disco[plot]')"
    )
    return rows
