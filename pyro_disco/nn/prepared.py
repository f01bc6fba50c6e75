r"""The universal network's query with everything that depends only on the context prepared once.

:meth:`UniversalDiScoFormer.query <pyro_disco.nn.universal.UniversalDiScoFormer.query>` at one
point against ``n = 1024`` context tokens is about 4 MFLOP, a tenth of a millisecond of
arithmetic, but about 380 ATen calls through ``nn.Module`` s, each a few microseconds of
dispatch: a NUTS leapfrog pays for the calls, not the FLOPs. :class:`PreparedQuery` computes the
same function with 161 calls (the shipped ``discoformer-universal-mix10``), about half the time
at one point (``benchmarks/results/nuts_cost.md``). Held once per encoded context:

- per layer, the context's keys :math:`k_{jh}` (a contiguous copy, ``(H, e, n)``) and values
  :math:`[v_{jh}, p_j]` (a view of the encoded ones); the heads' :math:`\beta_{lh}`; the query
  projection per head with its :math:`1/\sqrt e` folded in; the output projection, the Gram
  update (spread over the full Gram matrix) and both biases as one matrix;
- the context positions' :math:`-\|p_j\|^2`, so that one ``addmm`` gives
  :math:`D_{ij} = 2\, y_i \cdot p_j - \|p_j\|^2`, shared by every layer's positional logits
  (:math:`\beta_{lh} D_{ij}`, equal to :math:`-\beta_{lh}\|y_i - p_j\|^2` up to a per-row
  constant that the softmax drops) and by the KDE features
  (:math:`\|y_i - p_j\|^2 = \|y_i\|^2 - D_{ij}`), all bandwidths in one batched call;
- the mixture's inverse Cholesky factors :math:`L_c^{-1}`, whitened means
  :math:`L_c^{-1}\mu_c` and :math:`\log w_c - \log|L_c| - \tfrac d2\log 2\pi`;
- the embedding with its constant inputs folded into the bias, and both output heads' layers
  as one matrix each (the second block-diagonal).

Outputs equal the general path's up to float round-off (``tests/test_prepared_query.py``), in
the context's dtype. It is differentiable in the queries to any order (the attention is spelt
out, so no fused kernel stands in the way of a double backward), not in the weights: it holds
detached copies of them, so build it from a trained, fixed model (as
:class:`~pyro_disco.estimators.transformer.DiScoFormerEstimator` does) and use the general
path for training. Attention scores are held as ``(H, m, n)``: meant for few queries at a
time (the estimator uses it up to ``PREPARED_MAX_QUERIES``).

Example:
    >>> from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer
    >>> model = UniversalDiScoFormer(UniversalConfig()).eval()
    >>> encoded = model.encode(torch.randn(1, 100, 3))
    >>> logf, score = PreparedQuery(model, encoded)(torch.randn(5, 3))  # m, m d
    >>> logf.shape, score.shape
    (torch.Size([5]), torch.Size([5, 3]))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_disco._stats import scott_factor
from pyro_disco.nn.em import MixtureFit
from pyro_disco.nn.universal import EquivariantBlock, UniversalContext, UniversalDiScoFormer

__all__ = ["PreparedQuery", "PREPARED_MAX_QUERIES"]

# Up to this many query rows the prepared path is the faster (one thread, n = 1024, d = 2 and
# 10: 0.45 vs 0.67 ms per row at m = 8, 0.28 vs 0.28-0.31 at m = 32, even at m = 64); beyond it
# the general path's blocked fused attention is as fast per row and bounded in memory.
PREPARED_MAX_QUERIES = 32


class _Layer(NamedTuple):
    """One encoder block, prepared: see the module docstring."""

    ln1: tuple[Tensor, Tensor, float]
    q_weight: Tensor  # H C e (× 1/√e)
    q_bias: Tensor  # H 1 e (× 1/√e)
    keys_t: Tensor  # H e n
    values: Tensor  # H n (e + d): [v, p]
    two_beta: Tensor  # H 1 1
    update_weight_t: Tensor  # H (e + d) + (H + 1)² + 1, C: [proj | 0 | Gram (upper triangle) | bias]
    ln2: tuple[Tensor, Tensor, float]
    ffn: tuple[Tensor, Tensor, Tensor, Tensor, str]  # up (C, 4C), its bias, down (4C, C), its bias, GELU


class _Mixture(NamedTuple):
    """The fitted mixture of the context, prepared (float64)."""

    inv_tril_t: Tensor  # d, k d: [L₁⁻¹ᵀ … L_k⁻¹ᵀ]
    neg_whitened_loc: Tensor  # k d: -L⁻¹ μ, flat
    neg_inv_tril: Tensor  # k d, d: -L⁻¹ stacked
    const: Tensor  # k: log w - log|L| - d/2 log 2π


def _ln(module: torch.nn.LayerNorm) -> tuple[Tensor, Tensor, float]:
    return module.weight.detach(), module.bias.detach(), module.eps


def _t(weight: Tensor) -> Tensor:
    """A linear layer's weight ``(out, in)`` as ``(in, out)`` for ``addmm``, stored with the wider
    of the two contiguous: one-row products read a layer's weights up to twice as fast along its
    longer side (MKL, one thread, weights out of L2)."""
    w = weight.detach()
    return w.t().contiguous() if w.shape[0] > w.shape[1] else w.contiguous().t()


def _upper_gram_weight(weight: Tensor, v: int) -> Tensor:
    """Spread a linear layer's columns over the ``v × v`` Gram matrix's upper triangle (row-major,
    as ``torch.triu_indices``), zeros below: the layer then takes the flattened full matrix."""
    i, j = torch.triu_indices(v, v, device=weight.device)
    full = weight.new_zeros(weight.shape[0], v * v)
    full[:, i * v + j] = weight
    return full


class PreparedQuery:
    """``PreparedQuery(model, encoded)(y) -> (logf, score)``: the universal network's log-density
    ``(m,)`` and score ``(m, d)`` at whitened queries ``y`` ``(m, d)`` against one encoded
    context (``encoded.context`` of shape ``(1, n, d)``); see the module docstring.

    Raises:
        ValueError: the encoded context holds more than one sample set.
    """

    def __init__(self, model: UniversalDiScoFormer, encoded: UniversalContext) -> None:
        if encoded.context.shape[0] != 1:
            raise ValueError(f"PreparedQuery takes one sample set, got {encoded.context.shape[0]}")
        cfg = model.config
        with torch.no_grad():
            p = encoded.context[0].detach()  # n d
            n, d = p.shape
            dtype = p.dtype
            scott = scott_factor(n, d)
            self.num_samples, self.dim, self.dtype = n, d, dtype
            self._two_positions_t = 2 * p.t()  # d n
            self._neg_sq = -p.square().sum(-1)  # n
            bw = torch.tensor([c * scott for c in cfg.kde_features], dtype=torch.float64, device=p.device)
            bw = bw.view(-1, 1, 1)
            self._kde_coef = (-0.5 / bw**2).to(dtype)  # K 1 1
            self._kde_keep = (1 - 1 / bw**2).to(dtype)  # K 1 1: the part of y a KDE score correction keeps
            self._kde_positions = (p.double() / bw**2).to(dtype)  # K n d
            self._kde_const = (math.log(n) + d * bw.log()).to(dtype)  # K 1 1
            self._mixture = None if encoded.mixture is None else self._prepare_mixture(encoded.mixture)
            k = len(cfg.kde_features) + (encoded.mixture is not None)
            self._num_features = k
            self._prepare_embed(model, k, n, d)
            blocks = model.blocks
            self._betas = torch.cat([b.beta(scott) for b in blocks]).to(dtype).view(-1, 1, 1)  # (L H) 1 1
            self._num_heads = cfg.num_heads
            self._zero = p.new_zeros(1, 1, 1)  # baddbmm's ignored input (beta=0)
            self._layers = [
                self._prepare_layer(block, kx[0].detach(), vx[0].detach(), scott, d)
                for block, kx, vx in zip(blocks, encoded.keys, encoded.values)
            ]
            self._ln_f = _ln(model.ln_f)
            lh, sh = model.logdensity_head, model.score_head
            self._head_act = lh[1].approximate
            self._head1 = (torch.cat([lh[0].bias, sh[0].bias]), _t(torch.cat([lh[0].weight, sh[0].weight])))
            w2 = torch.block_diag(lh[2].weight, sh[2].weight)  # (1 + K) + (K + L H), 2 C
            self._head2 = (torch.cat([lh[2].bias, sh[2].bias]), _t(w2))
            self._gauss_const = 0.5 * d * math.log(2 * math.pi)

    def _prepare_embed(self, model: UniversalDiScoFormer, k: int, n: int, d: int) -> None:
        """Fold ``_inputs``' constant columns (log d, log n / 8, 1 / d) into the embedding's bias,
        its per-column affine maps into one scale and shift, and spread its Gram columns over
        the full ``(K+1)²`` Gram matrix (see :meth:`_inputs`)."""
        w, b = model.embed.weight.detach(), model.embed.bias.detach()
        like = dict(dtype=w.dtype, device=w.device)
        const = torch.tensor([math.log(d), math.log(n) / 8, 1.0 / d], **like)
        self._embed_bias = b + w[:, 2:5] @ const
        gram = _upper_gram_weight(w[:, 5 + 2 * k :], k + 1)
        self._embed_weight_t = _t(torch.cat([w[:, :2], w[:, 5 : 5 + 2 * k], gram], 1))
        rd = math.sqrt(d)
        ones = torch.ones(k, **like)
        head = torch.tensor([1.0 / d, rd / d], **like)
        gram_scale = torch.full(((k + 1) ** 2,), 1.0 / d, **like)
        self._input_scale = torch.cat([head, ones, ones / d, gram_scale])
        self._input_shift = torch.zeros_like(self._input_scale)
        self._input_shift[1] = -rd

    @staticmethod
    def _prepare_mixture(fit: MixtureFit) -> _Mixture:
        tril = fit.scale_tril[0]  # k d d
        k, d = tril.shape[:2]
        eye = torch.eye(d, dtype=tril.dtype, device=tril.device).expand(k, d, d)
        inv = torch.linalg.solve_triangular(tril, eye, upper=False)  # k d d
        half_logdet = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return _Mixture(
            inv_tril_t=inv.reshape(k * d, d).t().contiguous(),
            neg_whitened_loc=-(inv @ fit.loc[0].unsqueeze(-1)).reshape(k * d),
            neg_inv_tril=-inv.reshape(k * d, d),
            const=fit.log_weights[0] - half_logdet - 0.5 * d * math.log(2 * math.pi),
        )

    @staticmethod
    def _prepare_layer(block: EquivariantBlock, kx: Tensor, vx: Tensor, scott: float, d: int) -> _Layer:
        """``kx`` ``(H, n, e + d + 1)`` = ``[k, p, -β‖p‖²]`` and ``vx`` = ``[v, p, 0]`` of the encode."""
        h, e = block.h, block.e
        width = h * e
        scale = 1.0 / math.sqrt(e)
        proj = block.proj.weight.detach().view(-1, h, e)  # C H e
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], h, d)], -1).flatten(1)  # C H(e+d): p unused
        gram = _upper_gram_weight(block.gram.weight.detach(), h + 1)
        bias = (block.proj.bias + block.gram.bias).detach().unsqueeze(-1)
        ffn, act = block.ffn, block.ffn[1].approximate
        return _Layer(
            ln1=_ln(block.ln1),
            q_weight=(block.qkv.weight[:width].detach() * scale).view(h, e, -1).transpose(1, 2).contiguous(),
            q_bias=(block.qkv.bias[:width].detach() * scale).view(h, 1, e),
            keys_t=kx[..., :e].transpose(-1, -2).contiguous(),  # a contiguous copy: 2x faster
            values=vx[..., : e + d],
            two_beta=(2 * block.beta(scott)).to(kx.dtype).view(h, 1, 1),
            update_weight_t=_t(torch.cat([proj, gram, bias], 1)),
            ln2=_ln(block.ln2),
            ffn=(_t(ffn[0].weight), ffn[0].bias.detach(), _t(ffn[2].weight), ffn[2].bias.detach(), act),
        )

    def _mixture_features(self, y: Tensor, half_yy: Tensor) -> tuple[Tensor, Tensor]:
        r"""The mixture's log-density correction ``(1, m, 1)`` and score correction ``(1, m, d)``
        (``nn.em.mixture_logdensity_and_score``, float64, by :math:`L_c^{-1}`)."""
        mix = self._mixture
        m, d = y.shape
        z = torch.addmm(mix.neg_whitened_loc, y.to(mix.const.dtype), mix.inv_tril_t)  # m (k d): L⁻¹(y - μ)
        joint = torch.add(mix.const, (z * z).view(m, -1, d).sum(-1), alpha=-0.5)  # m k
        logf = torch.logsumexp(joint, -1, keepdim=True)  # m 1
        resp = (joint - logf).exp()  # m k
        score = (resp.repeat_interleave(d, -1) * z) @ mix.neg_inv_tril  # m d: -Σ_c r_c Σ_c⁻¹(y - μ_c)
        return (logf.to(y.dtype) + half_yy).unsqueeze(0), (score.to(y.dtype) + y).unsqueeze(0)

    def _features(self, y: Tensor, yy: Tensor, half_yy: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
        """KDE (and mixture) corrections over the standard normal, feature-major: ``(K, m, 1)``
        and ``(K, m, d)`` (``nn.common.kde_features``, every bandwidth at once)."""
        logk = self._kde_coef * (yy - dist).clamp_min(0)  # K m n
        lse = torch.logsumexp(logk, -1, keepdim=True)  # K m 1
        scores = torch.baddbmm(self._kde_keep * y, (logk - lse).exp(), self._kde_positions)  # K m d
        logs = torch.add(lse - self._kde_const, yy, alpha=0.5)  # K m 1
        if self._mixture is None:
            return logs, scores
        mix_logs, mix_scores = self._mixture_features(y, half_yy)
        return torch.cat([logs, mix_logs]), torch.cat([scores, mix_scores])

    def _inputs(self, y0: Tensor, yy: Tensor, logs_t: Tensor, scores: Tensor) -> Tensor:
        """The embedded input tokens ``(m, C)``: ``UniversalDiScoFormer._inputs`` then ``embed``,
        with one asinh over ``[‖y‖², ‖y‖², logs, logs, Gram]`` scaled and shifted per column."""
        m = yy.shape[0]
        vectors = torch.cat([y0, scores]).transpose(0, 1)  # m (K+1) d
        gram = torch.bmm(vectors, vectors.transpose(1, 2)).view(m, -1)  # m (K+1)²
        raw = torch.cat([yy, yy, logs_t, logs_t, gram], -1)
        x = torch.asinh(torch.addcmul(self._input_shift, raw, self._input_scale))
        return torch.addmm(self._embed_bias, x, self._embed_weight_t)

    def _layer(
        self, layer: _Layer, g: Tensor, y0: Tensor, one: Tensor, beta_dist: Tensor, neg_two_beta_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One block (``EquivariantBlock.keys_values`` + ``attend`` for queries): new states
        ``(m, C)`` and score messages ``(H, m, d)``."""
        m, d = y0.shape[1:]
        heads, e = layer.keys_t.shape[:2]
        x = F.layer_norm(g, g.shape[-1:], *layer.ln1)
        q = torch.baddbmm(layer.q_bias, x.expand(heads, m, -1), layer.q_weight)  # H m e
        logits = torch.baddbmm(beta_dist, q, layer.keys_t)  # H m n
        out = torch.bmm(torch.softmax(logits, -1), layer.values)  # H m (e + d)
        msg = torch.addcmul(neg_two_beta_y, out[..., e:], layer.two_beta)  # H m d: 2β (Σ_j A_j p_j - y)
        vectors = torch.cat([y0, msg]).transpose(0, 1)  # m (H+1) d
        gram = torch.baddbmm(self._zero, vectors, vectors.transpose(1, 2), beta=0, alpha=1 / d)  # m (H+1)²
        gram = torch.asinh(gram.view(m, -1))
        update = torch.cat([out.transpose(0, 1).reshape(m, -1), gram, one], -1)  # [v p per head, Gram, 1]
        g = torch.addmm(g, update, layer.update_weight_t)
        w1, b1, w2, b2, act = layer.ffn
        hidden = F.gelu(torch.addmm(b1, F.layer_norm(g, g.shape[-1:], *layer.ln2), w1), approximate=act)
        return torch.addmm(b2, hidden, w2).add_(g), msg

    def __call__(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Log-density ``(m,)`` and score ``(m, d)`` at whitened queries ``y`` ``(m, d)`` (in the
        context's dtype and device)."""
        m = y.shape[0]
        yy = y.square().sum(-1, keepdim=True)  # m 1
        half_yy = yy * 0.5 + self._gauss_const  # m 1: -log φ(y)
        y0, one = y.unsqueeze(0), y.new_ones(m, 1)
        dist = torch.addmm(self._neg_sq, y, self._two_positions_t)  # m n: 2 y·p - ‖p‖²
        logs, scores = self._features(y, yy, half_yy, dist)
        logs_t = logs.view(-1, m).t()  # m K
        g = self._inputs(y0, yy, logs_t, scores)
        messages = [scores]
        beta_dist = (self._betas * dist).split(self._num_heads)  # L × (H m n)
        neg_two_beta_y = (self._betas * -2 * y).split(self._num_heads)  # L × (H m d)
        for layer, bd, by in zip(self._layers, beta_dist, neg_two_beta_y):
            g, msg = self._layer(layer, g, y0, one, bd, by)
            messages.append(msg)
        k = self._num_features
        h = F.layer_norm(g, g.shape[-1:], *self._ln_f)
        hidden = F.gelu(torch.addmm(self._head1[0], h, self._head1[1]), approximate=self._head_act)
        out = torch.addmm(self._head2[0], hidden, self._head2[1])  # m (1 + K) + (K + L H)
        logf = torch.linalg.vecdot(out[:, : 1 + k], torch.cat([one, logs_t], -1)) - half_yy.view(m)
        score = torch.bmm(out[:, 1 + k :].unsqueeze(1), torch.cat(messages).transpose(0, 1)).view(m, -1)
        return logf, score - y
