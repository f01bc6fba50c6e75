r"""The DiScoFormer estimator: samples in, log-density and score at any point out.

``DiScoFormerEstimator(model, samples)`` whitens the samples (float64, see
:mod:`pyro_disco.estimators.whitening`), encodes them once, and answers any number of query
batches by cross-attention. Outputs map back through the whitening exactly:

.. math:: \log \hat f(y) = \log \hat f_w(y_w) + \log|\det A|, \qquad
          \hat s(y) = A\, \hat s_w(y_w).

Reference: DiScoFormer, arXiv:2511.05924.

Example:
    >>> from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig
    >>> est = DiScoFormerEstimator(DiScoFormer(DiScoFormerConfig(dim=2)), torch.randn(200, 2))
    >>> est.score(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from pyro_disco._validation import NormalizationWarning, as_samples
from pyro_disco.estimators.base import SampleEstimator
from pyro_disco.estimators.normalizer import LogNormalizer, log_normalizer
from pyro_disco.estimators.whitening import fit_whitening, warn_if_outliers
from pyro_disco.nn.discoformer import DiScoFormer
from pyro_disco.nn.prepared import PREPARED_MAX_QUERIES, PreparedQuery
from pyro_disco.nn.universal import UniversalDiScoFormer

__all__ = ["DiScoFormerEstimator", "consistency_loss", "TAIL_START", "TAIL_END"]

# The far-field guarantee: in whitened coordinates, beyond TAIL_START × the samples' largest
# radius the outputs blend (smoothstep) into the standard normal's, reached at TAIL_END ×; there
# the score is exactly -y_w (points back at the data, grows linearly) and the log-density falls
# quadratically, whatever the network would extrapolate (DESIGN §8: the d = 1 model pointed
# outward beyond ~15 sd).
TAIL_START, TAIL_END = 1.25, 2.0
MIN_ESS = 100.0  # below this the importance-sampling log-normaliser is not applied


class _RawLogdensity:
    """The un-normalised log-density of an estimator, for the importance sampler."""

    def __init__(self, est: DiScoFormerEstimator) -> None:
        self.est, self.dtype = est, est.dtype

    def logdensity(self, x: Tensor) -> Tensor:
        flat, batch = self.est._prepare(x)
        return self.est._raw(flat)[0].reshape(batch)


class DiScoFormerEstimator(SampleEstimator):
    """Estimator protocol over a (pretrained) :class:`DiScoFormer`.

    Args:
        model: a :class:`DiScoFormer` or :class:`UniversalDiScoFormer`; it is never modified
            (test-time adaptation works on a copy).
        samples: ``(n, d)`` float32 or float64, ``n > d``; ``d`` must be one the model covers.
        block_size: rows of attention computed at once (memory ``O(block_size · n)``).
        query_block: queries answered per forward pass.
        far_field: blend into the whitened standard normal's log-density and score beyond
            ``TAIL_START`` × the samples' largest whitened radius (``tail_radii``), fully past
            ``TAIL_END`` ×; ``False`` returns the raw network everywhere.
        normalize: subtract the network's log-normaliser (default), estimated once by
            importance sampling (:mod:`pyro_disco.estimators.normalizer`, 4096 draws, fixed
            seed) on the first log-density request, wherever its effective sample size is at
            least ``MIN_ESS`` (a second, costlier proposal is tried where the first falls
            short); the estimate, its standard error and ESS are in ``normalization``. Where
            the ESS stays too low — in practice d ≳ 16 — nothing is subtracted, and a
            :class:`~pyro_disco.NormalizationWarning` says so. Scores are unaffected. The
            importance sample is random (fixed seed), so a rotated or permuted copy of the
            samples gets a log-normaliser that differs by Monte Carlo error (about
            ``normalization.std_error``): the log-density is equivariant up to that constant,
            the score exactly. ``False`` gives the raw network, exactly equivariant.
        progress: show a progress bar over the encode's stages (the KDE features, the mixture
            fit, each layer; off by default, on in the CLI): the encode is O(n²), minutes at
            n ≈ 10⁴ on a CPU.
        whitening: ``"standard"`` (default: the samples' mean and covariance) or ``"robust"``
            (a robust location and scatter that give far outliers no weight, see
            :mod:`pyro_disco.estimators.whitening`). With ``"standard"``, samples whose standard
            deviation in some direction exceeds 10 robust scales raise an
            :class:`~pyro_disco._validation.OutlierWarning` that names this option.

    Raises:
        DegenerateSamplesError: the samples are degenerate (see the whitening).
        ValueError: ``block_size`` or ``query_block`` is not a positive int.

    The score at the samples themselves is free (the context tokens' own outputs) and is
    returned when ``score`` is called with the very ``samples`` tensor.
    """

    def __init__(
        self,
        model: DiScoFormer | UniversalDiScoFormer,
        samples: Tensor,
        *,
        block_size: int = 2048,
        query_block: int = 8192,
        far_field: bool = True,
        normalize: bool = True,
        whitening: str = "standard",
        progress: bool = False,
    ) -> None:
        x = as_samples(samples)
        model.check_dim(x.shape[1])
        for label, value in (("block_size", block_size), ("query_block", query_block)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{label} must be a positive int (queries or rows per block), got {value!r}")
        param = next(model.parameters())
        if param.device != x.device:
            model = copy.deepcopy(model).to(x.device)
        self.model = model
        self.samples, self.dim, self.dtype, self.device = x, x.shape[1], x.dtype, x.device
        self.num_samples = x.shape[0]
        self.block_size, self.query_block = block_size, query_block
        self._net_dtype = param.dtype
        self.whitening_method = whitening
        self.whitening = fit_whitening(x.detach(), whitening)
        if whitening == "standard":
            warn_if_outliers(x, self.whitening)
        self._context = self.whitening.apply(x.detach()).to(self._net_dtype).unsqueeze(0)  # 1 n d
        model.eval()
        stages = 2 + len(model.blocks)
        with (
            torch.no_grad(),
            tqdm(total=stages, desc=f"encode n={x.shape[0]}", delay=2.0, disable=not progress) as bar,
        ):
            self._encoded = model.encode(
                self._context,
                block_size=block_size,
                progress=lambda stage: bar.set_postfix_str(stage) or bar.update(),
            )
        # the universal network's query with its context-only parts computed once, built on the
        # first small query: a few points (a NUTS leapfrog) at under half the general query's
        # kernel calls; its key copies (2 KB per sample) are not made for large batches alone
        self._use_prepared = isinstance(model, UniversalDiScoFormer)
        self._prepared: PreparedQuery | None = None
        self._at_samples: tuple[Tensor, Tensor] | None = None
        radius = float(self._context[0].double().norm(dim=-1).max())
        self._normalize, self._normalization = normalize, None
        self.tail_radii = (TAIL_START * radius, TAIL_END * radius) if far_field else (math.inf, math.inf)

    def _map_back(self, logf_w: Tensor, score_w: Tensor) -> tuple[Tensor, Tensor]:
        logf = logf_w.double() + self.whitening.logabsdet
        return logf.to(self.dtype), self.whitening.score_back(score_w).to(self.dtype)

    def _logdensity_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logf, score = self._raw(x)
        return logf - self.log_normalizer_value(), score

    @property
    def normalization(self) -> LogNormalizer | None:
        """The importance-sampling estimate of :math:`\\log\\int \\hat f` of the raw network (computed
        on the first log-density request; ``None`` with ``normalize=False``)."""
        if self._normalize and self._normalization is None:
            raw = _RawLogdensity(self)
            z = log_normalizer(
                raw,
                self.samples,
                generator=torch.Generator().manual_seed(0),
                whitening=self.whitening_method,
                min_ess=MIN_ESS,
            )
            self._normalization = z
            if z.ess < MIN_ESS:
                warnings.warn(
                    f"the transformer's log-density is not normalised (d={self.dim}): the importance "
                    f"sampling estimate of log Z ({z.value:+.2f} ± {z.std_error:.2f}) has an effective "
                    f"sample size of {z.ess:.0f} < {MIN_ESS:.0f}, so nothing is subtracted; scores are "
                    "unaffected. For log-likelihoods use estimator='gmm' or 'kde'.",
                    NormalizationWarning,
                    stacklevel=3,
                )
        return self._normalization

    @property
    def normalized(self) -> bool:
        """Whether ``logdensity`` is a normalised density: the importance-sampling log-normaliser
        reached an effective sample size of ``MIN_ESS`` (estimated here, without the
        :class:`~pyro_disco.NormalizationWarning`, if no log-density was asked for yet);
        ``False`` with ``normalize=False``."""
        if not self._normalize:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NormalizationWarning)
            z = self.normalization
        return z.ess >= MIN_ESS

    def log_normalizer_value(self) -> float:
        """What ``logdensity`` subtracts: the estimated :math:`\\log Z` where its effective sample
        size is at least ``MIN_ESS``, else 0 (see ``normalization`` for the estimate itself)."""
        z = self.normalization
        return z.value if z is not None and z.ess >= MIN_ESS else 0.0

    def _raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._is_samples(x):
            return self._raw_at_samples()
        yw = self.whitening.apply(x)  # m d, float64
        r = yw.norm(dim=-1)
        start, end = self.tail_radii
        if r.numel() and bool((r < start).all()):  # inside the data's extent the blend weight is exactly 0
            logf, score = self._query(yw.to(self._net_dtype))
            return self._map_back(logf, score)
        tail_logf = -0.5 * yw.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        inner = torch.nonzero(r < end).squeeze(-1)  # the network never sees points past the tail
        if inner.numel() == 0:
            return self._map_back(tail_logf, -yw)
        logf, score = self._query(yw[inner].to(self._net_dtype))
        net_logf = tail_logf.index_put((inner,), logf.double())
        net_score = (-yw).index_put((inner,), score.double())
        t = ((r - start) / (end - start)).clamp(0.0, 1.0) if math.isfinite(start) else torch.zeros_like(r)
        w = (t * t * (3 - 2 * t)).unsqueeze(-1)  # smoothstep: 0 inside the data's extent, 1 past the tail
        logf = (1 - w[:, 0]) * net_logf + w[:, 0] * tail_logf
        return self._map_back(logf, (1 - w) * net_score - w * yw)

    def _query(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The network's log-density ``(m,)`` and score ``(m, d)`` at whitened ``y`` ``(m, d)``
        (network dtype): the prepared query for a few points, else the general one by blocks."""
        if self._use_prepared and y.shape[0] <= PREPARED_MAX_QUERIES:
            if self._prepared is None:
                with torch.inference_mode(False):  # plain tensors: later queries may need a graph
                    self._prepared = PreparedQuery(self.model, self._encoded)
            # without a graph to record, inference mode skips autograd's per-call bookkeeping
            # (about 15 % of a one-point query); every caller in this class maps the results
            # to new tensors outside it, so no inference tensor leaves the estimator
            with torch.inference_mode(not torch.is_grad_enabled()):
                return self._prepared(y)
        logs, scores = [], []
        for yb in y.unsqueeze(0).split(self.query_block, dim=1):  # 1 m' d
            lf, sc = self.model.query(self._encoded, yb, block_size=self.block_size)
            logs.append(lf[0])
            scores.append(sc[0])
        return torch.cat(logs), torch.cat(scores)

    def _is_samples(self, x: Tensor) -> bool:
        """``x`` is the samples tensor itself (or a detached view of it) and needs no gradient."""
        s = self.samples
        return (
            not x.requires_grad
            and x.shape == s.shape
            and x.stride() == s.stride()
            and x.data_ptr() == s.data_ptr()
        )

    def _logdensity(self, x: Tensor) -> Tensor:
        return self._logdensity_and_score(x)[0]

    def _score(self, x: Tensor) -> Tensor:
        return self._raw(x)[1]

    def at_samples(self) -> tuple[Tensor, Tensor]:
        """Log-density ``(n,)`` (normalised as ``logdensity``) and score ``(n, d)`` at the samples,
        from the encoder's own outputs."""
        logf, score = self._raw_at_samples()
        return logf - self.log_normalizer_value(), score

    def _raw_at_samples(self) -> tuple[Tensor, Tensor]:
        if self._at_samples is None:
            with torch.no_grad():
                lf, sc = self.model.at_context(self._context, self._encoded)
            self._at_samples = self._map_back(lf[0], sc[0])
        return self._at_samples

    def adapt(
        self,
        num_steps: int = 4,
        step_size: float = 1e-4,
        *,
        num_queries: int = 512,
        generator: torch.Generator | None = None,
    ) -> DiScoFormerEstimator:
        r"""Test-time adaptation: a few Adam steps on a *copy* of the weights that lower the
        label-free consistency loss
        :math:`\frac1m\sum_i \|s_\theta(x_i) - \nabla_{x_i} \log f_\theta(x_i)\|^2`
        at (a subset of) the samples, the context held fixed (DiScoFormer §4, TTA).

        Returns a new estimator; this one and the shared pretrained weights are unchanged.
        The loss at each step is kept in ``adaptation_losses``.
        """
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        model = copy.deepcopy(self.model)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()  # no dropout while adapting
        opt = torch.optim.Adam(model.parameters(), lr=step_size)
        losses = []
        n = self._context.shape[1]
        for _ in range(num_steps):
            idx = torch.randperm(n, generator=generator)[:num_queries]
            loss = consistency_loss(model, self._context, self._context[:, idx], block_size=self.block_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        for p in model.parameters():
            p.requires_grad_(False)
        adapted = DiScoFormerEstimator(
            model,
            self.samples,
            block_size=self.block_size,
            query_block=self.query_block,
            far_field=math.isfinite(self.tail_radii[0]),
            normalize=self._normalize,
            whitening=self.whitening_method,
        )
        adapted.adaptation_losses = losses
        return adapted

    def consistency(self, num_queries: int = 512) -> float:
        """The consistency loss of the current weights at (the first ``num_queries``) samples."""
        with torch.enable_grad():
            return float(
                consistency_loss(
                    self.model, self._context, self._context[:, :num_queries], block_size=self.block_size
                ).detach()
            )


def consistency_loss(
    model: DiScoFormer | UniversalDiScoFormer, context: Tensor, queries: Tensor, *, block_size: int = 2048
) -> Tensor:
    """Mean squared gap between the score head and the gradient of the log-density head, at
    whitened ``queries`` ``(B, m, d)`` given whitened ``context`` ``(B, n, d)``."""
    y = queries.detach().requires_grad_(True)
    # The fused CPU attention kernel has no double backward; the math kernel does.
    with sdpa_kernel(SDPBackend.MATH):
        encoded = model.encode(context, block_size=block_size)
        logf, score = model.query(encoded, y, block_size=block_size)
        (grad,) = torch.autograd.grad(logf.sum(), y, create_graph=True)
    return (score - grad).square().sum(-1).mean()
