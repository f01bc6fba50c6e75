"""Helpers shared by the test files (plain functions and constants; fixtures live in conftest.py).

Test files import them as ``from helpers import ...``: pytest puts this folder on ``sys.path``
(``rootdir``-relative imports, no ``__init__.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyro_disco.targets import GaussianMixture
from pyro_disco.training import TrainConfig

F64 = torch.float64

# A correlated 2-D Gaussian (as a one-component mixture): the exact target of the sampler tests.
MEAN_2D = torch.tensor([1.0, -1.0], dtype=F64)
COV_2D = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=F64)
GAUSSIAN_2D = GaussianMixture(torch.ones(1, dtype=F64), MEAN_2D[None], COV_2D[None])


def gen(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def check_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 4.0) -> None:
    """Mean and covariance of iid draws ``x`` ``(n, d)`` within ``k`` Monte Carlo standard errors
    (normal-theory standard errors of the sample mean and of each covariance entry)."""
    n = x.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < k * se_mean).all(), (x.mean(0), mean)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < k * se_cov).all(), (torch.cov(x.T), cov)


def tiny_train_config(steps: int, **overrides) -> TrainConfig:
    """A training run of a few seconds: d = 2, a 2-layer width-32 network, small sets."""
    base = dict(
        dim=2,
        steps=steps,
        tokens_per_step=512,
        n_min=64,
        n_max=128,
        num_queries=32,
        checkpoint_every=5,
        eval_every=1000,
        lr=2e-3,
        warmup=5,
        model=dict(d_model=32, num_layers=2, num_heads=4, d_ff=64),
    )
    base.update(overrides)
    return TrainConfig(**base)


def read_log(run_dir: Path) -> list[dict]:
    """The records of a training run's ``log.jsonl``."""
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
