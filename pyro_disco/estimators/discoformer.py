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

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    def __post_init__(self):
        if self.dim < 1 or self.d_model % self.num_heads:
            raise ValueError(f"invalid config: dim={self.dim}, d_model={self.d_model}, heads={self.num_heads}")

    def to_dict(self) -> dict:
        return asdict(self)


class EncodedContext(NamedTuple):
    """The context after the encoder: per-layer keys/values ``(B, H, n, d_head)`` and the
    final context states ``(B, n, d_model)``."""

    keys: list[Tensor]
    values: list[Tensor]
    states: Tensor


def _attention(q: Tensor, k: Tensor, v: Tensor, block_size: int) -> Tensor:
    """Softmax attention ``(B, H, m, e)`` computed over blocks of query rows (bounded memory).

    q, k and v share the head width, which keeps PyTorch on its fused CPU kernel."""
    if q.shape[-2] <= block_size:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat(
        [F.scaled_dot_product_attention(qb, k, v) for qb in q.split(block_size, dim=-2)], dim=-2
    )


class Block(nn.Module):
    """Pre-LayerNorm transformer block; queries reuse the context's keys and values."""

    def __init__(self, cfg: DiScoFormerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
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
        return self._finish(h, _attention(q, k, v, block_size)), k, v

    def query(self, g: Tensor, k: Tensor, v: Tensor, block_size: int) -> Tensor:
        """Queries ``g`` ``(B, m, C)`` attend to the context's keys/values only."""
        w_q, b_q = self.qkv.weight[: g.shape[-1]], self.qkv.bias[: g.shape[-1]]
        q = self._heads(F.linear(self.ln1(g), w_q, b_q))
        return self._finish(g, _attention(q, k, v, block_size))


class DiScoFormer(nn.Module):
    """The network on *whitened* coordinates. See the module docstring."""

    def __init__(self, config: DiScoFormerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.dim, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.logdensity_head = nn.Sequential(
            nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.Linear(config.d_model, 1)
        )
        self.score_head = nn.Sequential(
            nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.Linear(config.d_model, config.dim)
        )
        if config.residual:  # start exactly at the whitened Gaussian
            for head in (self.logdensity_head, self.score_head):
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)

    def _heads(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.ln_f(h)
        logf = self.logdensity_head(h).squeeze(-1)  # B m
        score = self.score_head(h)  # B m d
        if self.config.residual:
            d = self.config.dim
            logf = logf - 0.5 * y.square().sum(-1) - 0.5 * d * math.log(2 * math.pi)
            score = score - y
        return logf, score

    def encode(self, context: Tensor, *, block_size: int = 4096) -> EncodedContext:
        """Run the encoder over whitened samples ``(B, n, d)``."""
        h = self.embed(context)  # B n C
        keys, values = [], []
        for block in self.blocks:
            h, k, v = block.context(h, block_size)
            keys.append(k)
            values.append(v)
        return EncodedContext(keys, values, h)

    def at_context(self, context: Tensor, encoded: EncodedContext) -> tuple[Tensor, Tensor]:
        """Log-density ``(B, n)`` and score ``(B, n, d)`` at the samples themselves (free)."""
        return self._heads(context, encoded.states)

    def query(self, encoded: EncodedContext, y: Tensor, *, block_size: int = 4096) -> tuple[Tensor, Tensor]:
        """Log-density ``(B, m)`` and score ``(B, m, d)`` at whitened queries ``y`` ``(B, m, d)``."""
        g = self.embed(y)
        for block, k, v in zip(self.blocks, encoded.keys, encoded.values):
            g = block.query(g, k, v, block_size)
        return self._heads(y, g)

    def forward(self, context: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.query(self.encode(context), y)
