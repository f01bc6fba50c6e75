r"""Pieces both networks share: KDE input features, blocked attention and the gated heads.

Both :class:`~pyro_disco.nn.discoformer.DiScoFormer` and
:class:`~pyro_disco.nn.universal.UniversalDiScoFormer` work on whitened coordinates and
predict a gated correction to the standard normal:

.. math:: \log f(y) = u(h_y) + \sum_k \gamma'_k\, \ell_k(y) - \tfrac12\|y\|^2 - \tfrac d2 \log 2\pi,
          \qquad s(y) = v(h_y) + \sum_k \gamma_k\, c_k(y) - y,

where :math:`\ell_k, c_k` are corrections (KDE features, score messages) and the gates
:math:`\gamma, \gamma'` come out of the same heads as :math:`u, v`.

Example:
    >>> ctx = torch.randn(1, 50, 2)
    >>> logs, scores = kde_features(torch.randn(1, 4, 2), ctx, [0.5, 1.0])
    >>> logs.shape, scores.shape  # B m K, B m K d
    (torch.Size([1, 4, 2]), torch.Size([1, 4, 2, 2]))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "kde_features",
    "kde_logsumexp",
    "blocked_attention",
    "mlp_head",
    "init_gates",
    "gated_sum",
    "gated_vector_sum",
    "gaussian_residual",
    "no_progress",
]


def no_progress(stage: str) -> None:
    """The encoders' default progress callback (``encode(progress=...)``): does nothing."""


def kde_features(
    y: Tensor, context: Tensor, bandwidths: list[float], *, block_size: int = 1024
) -> tuple[Tensor, Tensor]:
    r"""Isotropic Gaussian KDEs of the (whitened) ``context`` ``(B, n, d)`` at ``y`` ``(B, m, d)``
    for each bandwidth, as corrections over the standard normal: log-densities
    :math:`\log\hat f_h(y) - \log\varphi(y)` ``(B, m, K)`` and scores :math:`\hat s_h(y) + y`
    ``(B, m, K, d)``. Functions of inner products and linear combinations only, so they keep
    every equivariance of the whitened coordinates."""
    n, d = context.shape[-2:]
    c_sq = context.square().sum(-1).unsqueeze(-2)  # B 1 n
    logs, scores = [], []
    for yb in y.split(block_size, dim=1):
        sq = _squared_distances(yb, context, c_sq)  # B b n
        gauss = -0.5 * yb.square().sum(-1)  # B b (the 2π terms cancel below)
        lb, sb = [], []
        for h in bandwidths:
            logk = -0.5 * sq / h**2
            lse = torch.logsumexp(logk, dim=-1)  # B b
            w = (logk - lse.unsqueeze(-1)).exp()
            lb.append(lse - math.log(n) - d * math.log(h) - gauss)
            sb.append((w @ context - yb) / h**2 + yb)
        logs.append(torch.stack(lb, -1))
        scores.append(torch.stack(sb, -2))
    return torch.cat(logs, 1), torch.cat(scores, 1)


def kde_logsumexp(y: Tensor, context: Tensor, bandwidth: float, *, block_size: int = 1024) -> Tensor:
    r""":math:`\log \sum_i \exp(-\|y - c_i\|^2 / 2h^2)` ``(B, m)`` for ``y`` ``(B, m, d)`` and
    ``context`` ``(B, n, d)``: an isotropic Gaussian KDE's log-density up to the constant
    :math:`-\log n - d \log(h\sqrt{2\pi})`, with the distances of :func:`kde_features`."""
    c_sq = context.square().sum(-1).unsqueeze(-2)  # B 1 n
    out = [
        torch.logsumexp(-0.5 * _squared_distances(yb, context, c_sq) / bandwidth**2, dim=-1)  # B b
        for yb in y.split(block_size, dim=1)
    ]
    return torch.cat(out, dim=1)


def _squared_distances(y: Tensor, context: Tensor, c_sq: Tensor) -> Tensor:
    """``(B, m, n)`` squared distances from ``y`` ``(B, m, d)`` to ``context`` ``(B, n, d)``, whose
    squared norms ``c_sq`` ``(B, 1, n)`` are given: by inner products (equivariant), floored at 0."""
    return (y.square().sum(-1, keepdim=True) + c_sq - 2 * y @ context.transpose(-1, -2)).clamp_min(0)


def blocked_attention(
    q: Tensor, k: Tensor, v: Tensor, block_size: int, *, scale: float | None = None
) -> Tensor:
    """Softmax attention ``(B, H, m, e)`` computed over blocks of ``block_size`` query rows
    (bounded memory); ``scale`` as in :func:`torch.nn.functional.scaled_dot_product_attention`
    (``None``: :math:`1/\\sqrt{e}`).

    q, k and v share the head width, which keeps PyTorch on its fused CPU kernel."""
    if q.shape[-2] <= block_size:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return torch.cat(
        [F.scaled_dot_product_attention(qb, k, v, scale=scale) for qb in q.split(block_size, dim=-2)], dim=-2
    )


def mlp_head(d_model: int, out: int) -> nn.Sequential:
    """The output head: ``Linear(d_model, d_model) → GELU → Linear(d_model, out)``."""
    return nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, out))


def init_gates(*gates: tuple[nn.Sequential, int | None]) -> None:
    """Zero each head's last layer, then open gate ``index`` (bias 1) where one is given: the
    network starts exactly at the whitened Gaussian plus those corrections (Scott's KDE)."""
    for head, _ in gates:
        nn.init.zeros_(head[-1].weight)
        nn.init.zeros_(head[-1].bias)
    with torch.no_grad():
        for head, index in gates:
            if index is not None:
                head[-1].bias[index] = 1.0


def gated_sum(gates: Tensor, values: Tensor) -> Tensor:
    """Per-token gated sum of scalar corrections: ``(..., K) × (..., K) → (...)``."""
    return (gates * values).sum(-1)


def gated_vector_sum(gates: Tensor, vectors: Tensor) -> Tensor:
    """Per-token gated sum of vector corrections: ``(..., K) × (..., K, d) → (..., d)``."""
    return (gates.unsqueeze(-1) * vectors).sum(-2)


def gaussian_residual(logf: Tensor, score: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Add the standard normal at ``y`` ``(..., d)`` to corrections ``logf`` ``(...)`` and
    ``score`` ``(..., d)``."""
    d = y.shape[-1]
    return logf - 0.5 * y.square().sum(-1) - 0.5 * d * math.log(2 * math.pi), score - y
