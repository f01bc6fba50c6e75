"""Equivariance errors of DiScoFormer, like Table 1 of arXiv:2511.05924 (relative errors, float64).

    python benchmarks/equivariance.py [--trials 50] [--checkpoint 2=runs/d2/checkpoint.pt]

For each transformation T of the samples and queries, the relative error between the
estimator's outputs on T(X), T(Y) mapped back and its outputs on X, Y. Permutation, translation
and (isotropic, anisotropic) scaling are exact by construction; rotations and general affine maps
are learned by the per-dimension models (through random rotations in training), so a random-init
model shows large errors there and a trained one small ones. The universal model is exactly
O(d)-equivariant by construction: its rotation errors (Haar-random orthogonal matrices, half of
them reflections) are at round-off, trained or not.
"""

from __future__ import annotations

import argparse
import copy

import torch

from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.metrics import relative_error
from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig
from pyro_disco.training.tasks import random_mixtures, random_rotation


def _rel(a, b):
    return float(relative_error(a, b))


def errors(
    model: DiScoFormer, trials: int, d: int | None = None, n: int = 512, m: int = 128, seed: int = 0
) -> dict[str, float]:
    """Mean relative errors per transformation; ``d`` defaults to the model's own dimension."""
    d = model.config.dim if d is None else d
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {}
    for _ in range(trials):
        mix = random_mixtures(1, d, generator=g)
        x, y = mix.sample(n, generator=g)[0], mix.sample(m, generator=g)[0]
        lp, s = DiScoFormerEstimator(model, x).logdensity_and_score(y)

        def check(name, x2, y2, a_lin, logdet_shift, lp=lp, s=s):
            # x2 = x A_lin + b: log f2(y2) = log f(y) - log|det A_lin|, s2(y2) = s(y) A_lin^{-T}
            lp2, s2 = DiScoFormerEstimator(model, x2).logdensity_and_score(y2)
            back_s = s2 @ a_lin.T
            out.setdefault(name, []).append(max(_rel(lp2 + logdet_shift, lp), _rel(back_s, s)))

        eye = torch.eye(d, dtype=torch.float64)
        perm = torch.randperm(n, generator=g)
        check("permutation", x[perm], y, eye, 0.0)
        b = torch.randn(d, generator=g, dtype=torch.float64) * 3
        check("translation", x + b, y + b, eye, 0.0)
        c = float(torch.rand((), generator=g, dtype=torch.float64) * 4 + 0.25)
        check("isotropic scaling", x * c, y * c, eye * c, d * torch.log(torch.tensor(c, dtype=torch.float64)))
        D = torch.diag(torch.rand(d, generator=g, dtype=torch.float64) * 4 + 0.25)
        check("anisotropic scaling", x @ D, y @ D, D, torch.logdet(D))
        R = random_rotation(1, d, generator=g)[0]
        check("rotation", x @ R, y @ R, R, 0.0)
        A = R @ D
        check("affine", x @ A + b, y @ A + b, A, torch.logdet(D))
    return {k: sum(v) / len(v) for k, v in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--checkpoint", action="append", help="d=PATH of a trained model to report as well")
    p.add_argument(
        "--universal-dims",
        type=int,
        nargs="+",
        default=[2, 10, 32],
        help="d at which to test universal models",
    )
    args = p.parse_args(argv)
    from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer
    from pyro_disco.pretrained import available_models, load_model
    from pyro_disco.training.export import load_checkpoint

    models = {}
    for d in (2, 10):
        torch.manual_seed(d)
        model = DiScoFormer(DiScoFormerConfig(dim=d)).eval()
        with torch.no_grad():  # non-zero heads so that the network, not only the baseline, is tested
            for prm in model.parameters():
                if prm.dim() > 1:
                    prm.normal_(0, 0.1)
        models[f"random init, d={d}"] = (model, d)
    torch.manual_seed(0)
    universal = UniversalDiScoFormer(UniversalConfig()).eval()
    with torch.no_grad():
        for prm in universal.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    for d in args.universal_dims:
        models[f"universal, random init, d={d}"] = (universal, d)
    for name, dims in available_models().items():
        if len(dims) == 1:
            models[f"{name} (d={dims[0]})"] = (load_model(name), dims[0])
        else:
            for d in args.universal_dims:
                models[f"{name}, d={d}"] = (load_model(name), d)
    for spec in args.checkpoint or []:
        d, path = spec.split("=", 1)
        models[f"{path}"] = (load_checkpoint(path), int(d))
    names = ["permutation", "translation", "isotropic scaling", "anisotropic scaling", "rotation", "affine"]
    print(f"mean relative error over {args.trials} trials (float64 inference)\n")
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, (model, d) in models.items():
        with torch.no_grad():
            errs = errors(copy.deepcopy(model).double(), args.trials, d)  # never convert the shared model
        print(f"| {label} | " + " | ".join(f"{errs[k]:.1e}" for k in names) + " |", flush=True)


if __name__ == "__main__":
    main()
