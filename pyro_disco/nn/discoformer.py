r"""DiScoFormer: a set transformer that reads samples and answers log-density and score.

Context tokens (the whitened samples) attend to each other; query tokens attend to the
context only, with the *same* layer weights, so a query placed on a sample gets exactly that
sample's context output, and the output at :math:`y` depends on :math:`(X, y)` alone. There is
no positional encoding: the model is permutation-equivariant in the samples. Heads predict a
correction to the whitened standard normal (``residual=True``):

.. math:: \log f_w(y) = -\tfrac12\|y\|^2 - \tfrac d2 \log 2\pi + g(h_y), \qquad
          s_w(y) = -y + G(h_y).

Reference: DiScoFormer, arXiv:2511.05924 (architecture §3; paper size: 4 layers, width 128,
8 heads, ≈0.8 M parameters).

Example:
    >>> model = DiScoFormer(DiScoFormerConfig(dim=2))
    >>> ctx = model.encode(torch.randn(3, 100, 2))          # B n d
    >>> logf, score = model.query(ctx, torch.randn(3, 7, 2))  # B m, B m d
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_disco._stats import scott_factor
from pyro_disco.nn.common import (
    blocked_attention,
    gated_sum,
    gated_vector_sum,
    gaussian_residual,
    init_gates,
    kde_features,
    mlp_head,
    no_progress,
)

__all__ = ["DiScoFormerConfig", "DiScoFormer", "EncodedContext"]


@dataclass(frozen=True)
class DiScoFormerConfig:
    """Architecture of one DiScoFormer; saved inside every checkpoint."""

    dim: int
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 8
    d_ff: int = 512
    dropout: float = 0.0
    residual: bool = True
    kde_features: tuple[float, ...] = ()  # bandwidths (multiples of Scott's factor) of KDE input features

    def __post_init__(self) -> None:
        if self.dim < 1 or self.d_model % self.num_heads:
            raise ValueError(
                f"invalid config: dim={self.dim}, d_model={self.d_model}, heads={self.num_heads}"
            )
        object.__setattr__(self, "kde_features", tuple(float(c) for c in self.kde_features))
        if self.kde_features and not self.residual:
            raise ValueError("kde_features need residual=True (they are gated corrections to the Gaussian)")

    def to_dict(self) -> dict:
        return asdict(self)


class EncodedContext(NamedTuple):
    """The context after the encoder: per-layer keys/values ``(B, H, n, d_head)``, the final
    context states ``(B, n, d_model)``, the whitened context ``(B, n, d)`` and its KDE
    features (or ``None``)."""

    keys: list[Tensor]
    values: list[Tensor]
    states: Tensor
    context: Tensor
    features: tuple[Tensor, Tensor] | None


class Block(nn.Module):
    """Pre-LayerNorm transformer block; queries reuse the context's keys and values."""

    def __init__(self, cfg: DiScoFormerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # B H n e

    def _merge(self, t: Tensor) -> Tensor:
        b, h, n, e = t.shape
        return t.transpose(1, 2).reshape(b, n, h * e)  # B n (H e)

    def _finish(self, h: Tensor, attn: Tensor) -> Tensor:
        h = h + self.drop(self.proj(self._merge(attn)))
        return h + self.drop(self.ffn(self.ln2(h)))

    def context(self, h: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention over the context ``h`` ``(B, n, C)``; returns new states, keys, values."""
        q, k, v = (self._heads(t) for t in self.qkv(self.ln1(h)).chunk(3, dim=-1))
        return self._finish(h, blocked_attention(q, k, v, block_size)), k, v

    def query(self, g: Tensor, k: Tensor, v: Tensor, block_size: int) -> Tensor:
        """Queries ``g`` ``(B, m, C)`` attend to the context's keys/values only."""
        w_q, b_q = self.qkv.weight[: g.shape[-1]], self.qkv.bias[: g.shape[-1]]
        q = self._heads(F.linear(self.ln1(g), w_q, b_q))
        return self._finish(g, blocked_attention(q, k, v, block_size))


class DiScoFormer(nn.Module):
    """The network on *whitened* coordinates. See the module docstring."""

    def __init__(self, config: DiScoFormerConfig) -> None:
        super().__init__()
        self.config = config
        k = len(config.kde_features)
        self.embed = nn.Linear(config.dim * (1 + k) + k, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.logdensity_head = mlp_head(config.d_model, 1 + k)
        self.score_head = mlp_head(config.d_model, config.dim + k)
        if config.residual:  # start exactly at the whitened Gaussian (or at Scott's KDE, see below)
            # gate 1 on Scott's bandwidth, if it is a feature: the model starts as Scott's KDE
            j = config.kde_features.index(1.0) if 1.0 in config.kde_features else None
            init_gates(
                (self.logdensity_head, None if j is None else 1 + j),
                (self.score_head, None if j is None else config.dim + j),
            )

    def check_dim(self, dim: int) -> None:
        """Raise a clear error unless ``dim`` is the dimension this model was trained for."""
        if dim != self.config.dim:
            raise ValueError(
                f"this DiScoFormer was trained for d={self.config.dim}, but the samples have d={dim}; "
                "use a model for that dimension (pyro_disco.pretrained.available_dims()) or a KDE"
            )

    def _bandwidths(self, n: int) -> list[float]:
        scott = scott_factor(n, self.config.dim)
        return [c * scott for c in self.config.kde_features]

    def _tokens(self, y: Tensor, features: tuple[Tensor, Tensor] | None) -> Tensor:
        if features is None:
            return self.embed(y)
        logs, scores = features  # B m K, B m K d
        extra = torch.cat([logs, scores.flatten(-2)], dim=-1)
        return self.embed(torch.cat([y, torch.asinh(extra)], dim=-1))  # asinh: far-off values stay tame

    def _heads(self, y: Tensor, h: Tensor, features: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        h = self.ln_f(h)
        d = self.config.dim
        lh = self.logdensity_head(h)  # B m (1 + K)
        sh = self.score_head(h)  # B m (d + K)
        logf, score = lh[..., 0], sh[..., :d]
        if features is not None:  # gated, per-token mixture of KDE corrections
            logs, scores = features
            logf = logf + gated_sum(lh[..., 1:], logs)
            score = score + gated_vector_sum(sh[..., d:], scores)
        if self.config.residual:
            logf, score = gaussian_residual(logf, score, y)
        return logf, score

    def encode(
        self, context: Tensor, *, block_size: int = 4096, progress: Callable[[str], None] | None = None
    ) -> EncodedContext:
        """Run the encoder over whitened samples ``(B, n, d)``; ``progress(stage)``, if given, is
        called after each of its ``2 + num_layers`` stages (the KDE features, the tokens, each
        layer)."""
        tick = progress if progress is not None else no_progress
        features = None
        if self.config.kde_features:
            features = kde_features(context, context, self._bandwidths(context.shape[-2]))
        tick("KDE features")
        h = self._tokens(context, features)  # B n C
        tick("tokens")
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            h, k, v = block.context(h, block_size)
            keys.append(k)
            values.append(v)
            tick(f"layer {i + 1}")
        return EncodedContext(keys, values, h, context, features)

    def at_context(self, context: Tensor, encoded: EncodedContext) -> tuple[Tensor, Tensor]:
        """Log-density ``(B, n)`` and score ``(B, n, d)`` at the samples themselves (free)."""
        return self._heads(context, encoded.states, encoded.features)

    def query(self, encoded: EncodedContext, y: Tensor, *, block_size: int = 4096) -> tuple[Tensor, Tensor]:
        """Log-density ``(B, m)`` and score ``(B, m, d)`` at whitened queries ``y`` ``(B, m, d)``."""
        features = None
        if self.config.kde_features:
            features = kde_features(y, encoded.context, self._bandwidths(encoded.context.shape[-2]))
        g = self._tokens(y, features)
        for block, k, v in zip(self.blocks, encoded.keys, encoded.values):
            g = block.query(g, k, v, block_size)
        return self._heads(y, g, features)

    def forward(self, context: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.query(self.encode(context), y)
