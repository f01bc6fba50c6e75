r"""One DiScoFormer for every dimension, exactly rotation-equivariant.

After whitening, the only symmetry the per-dimension models still have to *learn* is O(d).
This network touches the whitened coordinates only through inner products and linear
combinations, so it is exactly O(d)-equivariant (rotations and reflections), and no weight
has a shape that depends on d: one set of weights serves every ``d ≤ max_dim``.

Each token carries an invariant state :math:`h_i` and its (fixed) whitened position
:math:`p_i`. Attention head :math:`h` of layer :math:`l` uses the logits

.. math:: q_i \cdot k_j / \sqrt{e} - \beta_{lh} \|p_i - p_j\|^2,

(one fused ``scaled_dot_product_attention`` call: ``[q/√e, 2βp_i, 1]`` against
``[k_j, p_j, −β‖p_j‖²]``; values are ``[v_j, p_j, 0]``, padded to the query width so PyTorch
stays on its fused kernel), with :math:`\beta_{lh} = e^{\theta_{lh}} / (2 h_n^2)` and Scott's
whitened bandwidth :math:`h_n = n^{-1/(d+4)}`. Each head returns invariant values and the
*score message* :math:`s_{ilh} = 2\beta_{lh} (\sum_j A_{ij} p_j - p_i)` (with ``q·k = 0`` this
is exactly the score of a Gaussian KDE of bandwidth :math:`(2\beta_{lh})^{-1/2}`). The Gram
matrix of :math:`\{p_i, s_{il1}, \dots, s_{ilH}\}` (divided by d) feeds the residual stream.
Invariant inputs: :math:`\|p\|^2/d`, :math:`\log d`, :math:`\log n` and Gaussian-KDE features
at several multiples of Scott's bandwidth (their log-density corrections and the Gram matrix of
their score corrections). Outputs, with invariant gates :math:`g, \gamma` from the final state:

.. math:: s(p) = -p + \sum_k \gamma_k\, c_k(p) + \sum_{l,h} g_{lh}\, s_{lh}(p), \qquad
          \log f(p) = -\tfrac d2 \log 2\pi - \tfrac12\|p\|^2 + \sum_k \gamma'_k\, \ell_k(p) + u(h),

where :math:`c_k, \ell_k` are the score and log-density corrections of the KDE at bandwidth
:math:`k`. At initialisation every gate is zero except :math:`\gamma_k = \gamma'_k = 1` on
Scott's bandwidth: the untrained network *is* Scott's KDE.

Example:
    >>> model = UniversalDiScoFormer(UniversalConfig())
    >>> ctx = model.encode(torch.randn(3, 100, 7))            # any d <= max_dim
    >>> logf, score = model.query(ctx, torch.randn(3, 5, 7))  # B m, B m d
"""

from __future__ import annotations

import math
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
from pyro_disco.nn.em import (
    COMPONENT_SIZES,
    MixtureFit,
    bic_mixture,
    fit_gaussian_mixtures,
    mixture_logdensity_and_score,
)

__all__ = ["UniversalConfig", "UniversalDiScoFormer", "UniversalContext"]


@dataclass(frozen=True)
class UniversalConfig:
    """Architecture of the universal model; saved inside every checkpoint."""

    max_dim: int = 32
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 8
    head_dim: int = 16  # width of each head's invariant query/key/value
    d_ff: int = 512
    kde_features: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)  # multiples of Scott's bandwidth
    head_bandwidths: tuple[float, float] = (0.5, 2.0)  # initial range of the heads' bandwidths (× Scott)
    # > 0: the BIC-averaged Gaussian mixture (EM, k = 1 … this) of the context is one more
    # feature column beside the KDEs, and the untrained network *is* that mixture (see _features)
    mixture_components: int = 0
    mixture_shrinkage: float = 0.0  # the EM's covariance shrinkage (nn.em.fit_gaussian_mixtures)
    mixture_split_init: bool = False  # the EM's second, split start per k (nn.em.fit_gaussian_mixtures)
    mixture_component_size: str = "params"  # the EM's cap on k (nn.em.max_components_for)
    arch: str = "universal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kde_features", tuple(float(c) for c in self.kde_features))
        object.__setattr__(self, "head_bandwidths", tuple(float(c) for c in self.head_bandwidths))
        if self.max_dim < 1 or self.num_heads < 1 or self.head_dim < 1 or 1.0 not in self.kde_features:
            raise ValueError(
                f"invalid config: max_dim={self.max_dim}, heads={self.num_heads}, head_dim={self.head_dim}, "
                f"kde_features={self.kde_features} (must contain 1.0, Scott's bandwidth)"
            )
        lo, hi = self.head_bandwidths
        if not 0 < lo <= hi or min(self.d_model, self.d_ff, self.num_layers) < 1:
            raise ValueError(
                f"invalid config: head_bandwidths={self.head_bandwidths} (need 0 < lo <= hi), "
                f"d_model={self.d_model}, d_ff={self.d_ff}, num_layers={self.num_layers}"
            )
        if self.mixture_components < 0 or not self.mixture_shrinkage >= 0:
            raise ValueError(
                f"need mixture_components >= 0 and mixture_shrinkage >= 0, got "
                f"{self.mixture_components}, {self.mixture_shrinkage}"
            )
        if self.mixture_component_size not in COMPONENT_SIZES:
            raise ValueError(
                f"mixture_component_size must be one of {COMPONENT_SIZES}, "
                f"got {self.mixture_component_size!r}"
            )
        if self.arch != "universal":
            raise ValueError(f"UniversalConfig.arch must be 'universal', got {self.arch!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def dims(self) -> range:
        return range(1, self.max_dim + 1)


class UniversalContext(NamedTuple):
    """The encoded context: per-layer keys/values ``(B, H, n, ·)`` and positional key terms,
    the final states ``(B, n, C)``, the per-layer score messages ``(B, n, L·H, d)``, the
    whitened context ``(B, n, d)``, its KDE (and mixture) features, and the fitted mixture
    (``None`` without ``mixture_components``)."""

    keys: list[Tensor]
    values: list[Tensor]
    states: Tensor
    messages: Tensor
    context: Tensor
    features: tuple[Tensor, Tensor]
    mixture: MixtureFit | None = None


def _gram_features(vectors: Tensor, dim: int) -> Tensor:
    """Upper triangle of the Gram matrix of ``vectors`` ``(..., V, d)``, divided by ``d``, asinh'd."""
    gram = vectors @ vectors.transpose(-1, -2) / dim  # ... V V
    i, j = torch.triu_indices(gram.shape[-1], gram.shape[-1], device=gram.device)
    return torch.asinh(gram[..., i, j])


class EquivariantBlock(nn.Module):
    """Pre-LN block: distance-biased attention with vector messages, Gram update, FFN."""

    def __init__(self, cfg: UniversalConfig) -> None:
        super().__init__()
        self.h, self.e = cfg.num_heads, cfg.head_dim
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.num_heads * cfg.head_dim)
        self.proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.d_model)
        v = cfg.num_heads + 1
        self.gram = nn.Linear(v * (v + 1) // 2, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        lo, hi = cfg.head_bandwidths
        mult = torch.exp(torch.linspace(math.log(lo), math.log(hi), cfg.num_heads))
        self.log_beta = nn.Parameter(-2 * torch.log(mult))  # β = e^θ / (2 h_n²): bandwidth = mult · h_n

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.h, self.e).transpose(1, 2)  # B H n e

    def beta(self, scott: float) -> Tensor:
        return self.log_beta.exp() / (2 * scott**2)  # H

    def keys_values(
        self, h: Tensor, p: Tensor, scott: float, *, queries_only: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """Queries, keys and values (``None`` with ``queries_only``) of the tokens ``h``
        ``(B, n, C)`` at positions ``p`` ``(B, n, d)``, and the heads' β ``(1, H, 1, 1)``."""
        x = self.ln1(h)
        width = self.h * self.e
        if queries_only:  # query tokens never serve as keys: skip two thirds of the projection
            q, k, v = F.linear(x, self.qkv.weight[:width], self.qkv.bias[:width]), None, None
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        beta = self.beta(scott).to(p.dtype).view(1, -1, 1, 1)  # 1 H 1 1
        pp = p.unsqueeze(1).expand(-1, self.h, -1, -1)  # B H n d
        sq = p.square().sum(-1, keepdim=True).unsqueeze(1)  # B 1 n 1
        ones = torch.ones_like(sq).expand(-1, self.h, -1, -1)
        qx = torch.cat([self._split(q) / math.sqrt(self.e), 2 * beta * pp, ones], dim=-1)
        if queries_only:
            return qx, None, None, beta
        kx = torch.cat([self._split(k), pp, -beta * sq], dim=-1)
        vx = torch.cat([self._split(v), pp, torch.zeros_like(ones)], dim=-1)  # padded: width of q and k
        return qx, kx, vx, beta

    def attend(
        self, h: Tensor, p: Tensor, qx: Tensor, beta: Tensor, k: Tensor, v: Tensor, block: int
    ) -> tuple[Tensor, Tensor]:
        """Update states ``h`` ``(B, m, C)`` of tokens at ``p`` attending to ``k``, ``v``; returns the
        new states and the score messages ``(B, m, H, d)``."""
        out = blocked_attention(qx, k, v, block, scale=1.0)
        d = p.shape[-1]
        vals = out[..., : self.e].transpose(1, 2).flatten(-2)  # B m (H e)
        msg = (2 * beta * (out[..., self.e : self.e + d] - p.unsqueeze(1))).transpose(1, 2)  # B m H d
        vectors = torch.cat([p.unsqueeze(-2), msg], dim=-2)  # B m (H+1) d
        h = h + self.proj(vals) + self.gram(_gram_features(vectors, d))
        return h + self.ffn(self.ln2(h)), msg


class UniversalDiScoFormer(nn.Module):
    """The universal network on *whitened* coordinates of any ``d ≤ max_dim``; see the module
    docstring. Same interface as :class:`~pyro_disco.nn.discoformer.DiScoFormer`."""

    def __init__(self, config: UniversalConfig) -> None:
        super().__init__()
        self.config = config
        k = len(config.kde_features) + (1 if config.mixture_components else 0)  # feature columns
        n_in = 5 + 2 * k + (k + 1) * (k + 2) // 2
        self.embed = nn.Linear(n_in, config.d_model)
        self.blocks = nn.ModuleList(EquivariantBlock(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        n_msg = config.num_layers * config.num_heads
        self.logdensity_head = mlp_head(config.d_model, 1 + k)
        self.score_head = mlp_head(config.d_model, k + n_msg)
        # start exactly as the BIC mixture (last column) if there is one, else as Scott's KDE
        j = k - 1 if config.mixture_components else config.kde_features.index(1.0)
        init_gates((self.logdensity_head, 1 + j), (self.score_head, j))

    def check_dim(self, dim: int) -> None:
        """Raise a clear error when ``dim`` is outside the dimensions the weights were trained on."""
        if not 1 <= dim <= self.config.max_dim:
            raise ValueError(
                f"the universal DiScoFormer covers d = 1 … {self.config.max_dim}, but the samples have "
                f"d={dim}; use estimator='kde' (Gaussian KDE) for higher dimensions"
            )

    def _inputs(self, y: Tensor, n: int, features: tuple[Tensor, Tensor]) -> Tensor:
        """Invariant input features of tokens at ``y`` ``(B, m, d)``."""
        d = y.shape[-1]
        logs, scores = features  # B m K, B m K d
        r2 = y.square().sum(-1, keepdim=True) / d
        const = y.new_tensor([math.log(d), math.log(n) / 8, 1.0 / d]).expand(*y.shape[:-1], 3)
        vectors = torch.cat([y.unsqueeze(-2), scores], dim=-2)  # B m (K+1) d
        return torch.cat(
            [
                torch.asinh(r2),
                torch.asinh((r2 - 1) * math.sqrt(d)),
                const,
                torch.asinh(logs),
                torch.asinh(logs / d),
                _gram_features(vectors, d),
            ],
            dim=-1,
        )

    def _features(self, y: Tensor, context: Tensor, mixture: MixtureFit | None) -> tuple[Tensor, Tensor]:
        """KDE corrections over the standard normal ``(B, m, K)``, ``(B, m, K, d)``, with the
        mixture's corrections appended as one more column when it is given."""
        n, d = context.shape[-2:]
        scott = scott_factor(n, d)
        return self._append_mixture(
            y, kde_features(y, context, [c * scott for c in self.config.kde_features]), mixture
        )

    @staticmethod
    def _append_mixture(
        y: Tensor, features: tuple[Tensor, Tensor], mixture: MixtureFit | None
    ) -> tuple[Tensor, Tensor]:
        if mixture is None:
            return features
        logs, scores = features
        logf, score = mixture_logdensity_and_score(mixture, y.to(mixture.loc.dtype))
        gauss = -0.5 * y.square().sum(-1) - 0.5 * y.shape[-1] * math.log(2 * math.pi)
        logs = torch.cat([logs, (logf.to(y.dtype) - gauss).unsqueeze(-1)], -1)
        return logs, torch.cat([scores, (score.to(y.dtype) + y).unsqueeze(-2)], -2)

    def _fit_mixture(self, context: Tensor, kde_logs: Tensor) -> MixtureFit | None:
        """The BIC-averaged EM fit of the whitened ``context`` (float64, not trained through;
        a fixed number of EM steps so that equivariance holds to round-off)."""
        if not self.config.mixture_components:
            return None
        j = self.config.kde_features.index(1.0)
        rank = kde_logs[..., j].double() - 0.5 * context.double().square().sum(-1)  # log Scott-KDE + const
        with torch.no_grad():
            fits = fit_gaussian_mixtures(
                context.detach().double(),
                self.config.mixture_components,
                tol=-1.0,
                num_iters=30,
                logdensity=rank,
                shrinkage=self.config.mixture_shrinkage,
                split_init=self.config.mixture_split_init,
                component_size=self.config.mixture_component_size,
            )
        return bic_mixture(fits)

    def _heads(
        self, y: Tensor, h: Tensor, messages: Tensor, features: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        k = len(self.config.kde_features) + (1 if self.config.mixture_components else 0)
        h = self.ln_f(h)
        lh = self.logdensity_head(h)  # B m (1 + K)
        sh = self.score_head(h)  # B m (K + L H)
        logs, scores = features
        logf = lh[..., 0] + gated_sum(lh[..., 1:], logs)
        score = gated_vector_sum(sh[..., :k], scores) + gated_vector_sum(sh[..., k:], messages)
        return gaussian_residual(logf, score, y)

    def encode(
        self, context: Tensor, *, block_size: int = 4096, progress: Callable[[str], None] | None = None
    ) -> UniversalContext:
        """Run the encoder over whitened samples ``(B, n, d)``; ``progress(stage)``, if given, is
        called after each of its ``2 + num_layers`` stages (the KDE features, the mixture fit,
        each layer): the encode is O(n²) and takes minutes at n ≈ 10⁴ on a CPU."""
        tick = progress if progress is not None else no_progress
        n, d = context.shape[-2:]
        self.check_dim(d)
        scott = scott_factor(n, d)
        kde = self._features(context, context, None)
        tick("KDE features")
        mixture = self._fit_mixture(context, kde[0])
        tick("mixture fit")
        features = self._append_mixture(context, kde, mixture)
        h = self.embed(self._inputs(context, n, features))
        keys, values, messages = [], [], []
        for i, block in enumerate(self.blocks):
            qx, kx, vx, beta = block.keys_values(h, context, scott)
            h, msg = block.attend(h, context, qx, beta, kx, vx, block_size)
            keys.append(kx)
            values.append(vx)
            messages.append(msg)
            tick(f"layer {i + 1}")
        return UniversalContext(keys, values, h, torch.cat(messages, dim=-2), context, features, mixture)

    def at_context(self, context: Tensor, encoded: UniversalContext) -> tuple[Tensor, Tensor]:
        """Log-density ``(B, n)`` and score ``(B, n, d)`` at the samples themselves (free)."""
        return self._heads(context, encoded.states, encoded.messages, encoded.features)

    def query(self, encoded: UniversalContext, y: Tensor, *, block_size: int = 4096) -> tuple[Tensor, Tensor]:
        """Log-density ``(B, m)`` and score ``(B, m, d)`` at whitened queries ``y`` ``(B, m, d)``."""
        context = encoded.context
        n, d = context.shape[-2:]
        if y.shape[-1] != d:
            raise ValueError(f"queries have d={y.shape[-1]} but the context has d={d}")
        scott = scott_factor(n, d)
        features = self._features(y, context, encoded.mixture)
        g = self.embed(self._inputs(y, n, features))
        messages = []
        for block, kx, vx in zip(self.blocks, encoded.keys, encoded.values):
            qx, _, _, beta = block.keys_values(g, y, scott, queries_only=True)
            g, msg = block.attend(g, y, qx, beta, kx, vx, block_size)
            messages.append(msg)
        return self._heads(y, g, torch.cat(messages, dim=-2), features)

    def forward(self, context: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.query(self.encode(context), y)
