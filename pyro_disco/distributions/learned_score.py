r"""``LearnedScore``: a differentiable Pyro distribution built from samples.

The estimator (pretrained transformer, KDE, SD-KDE, ...) is built once from ``samples``
``(n, d)``; afterwards every ``log_prob(x)`` is one query. ``log_prob`` is differentiable in
``x`` and its gradient is *the estimator's score head*, not the autograd of its log-density
head:

.. math:: \frac{\partial}{\partial x}\,\mathtt{log\_prob}(x) := \hat s(x) \approx \nabla_x \log p(x).

For the KDE family the two coincide; for the transformer they differ slightly, and the score
head is the better-trained quantity, so that is what NUTS, HMC, SVI and SVGD follow. This is
what makes yesterday's posterior draws usable as today's prior (Pyro's ``Empirical`` has no
gradient).

Reference: DiScoFormer, arXiv:2511.05924 (§5 of ``DESIGN.md``).

Example:
    >>> import pyro
    >>> prior = LearnedScore(torch.randn(500, 2, dtype=torch.float64), estimator="kde")
    >>> def model():
    ...     return pyro.sample("z", prior)
    >>> prior.log_prob(torch.zeros(2, dtype=torch.float64)).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.autograd.function import once_differentiable

from pyro_disco._validation import as_samples
from pyro_disco.factory import resolve_estimator

__all__ = ["LearnedScore"]


class _LogDensityWithScore(torch.autograd.Function):
    """Value: the estimator's log-density; gradient: the estimator's score head."""

    @staticmethod
    def forward(ctx, x: Tensor, estimator, dtype: torch.dtype) -> Tensor:
        xq = x.detach().to(dtype)
        if hasattr(estimator, "logdensity_and_score"):
            logp, score = estimator.logdensity_and_score(xq)
        else:
            logp, score = estimator.logdensity(xq), estimator.score(xq)
        ctx.save_for_backward(score.to(x.dtype))
        return logp.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        (score,) = ctx.saved_tensors
        return grad_output.unsqueeze(-1) * score, None, None


class LearnedScore(TorchDistribution):
    r"""A distribution known through samples, with a density and score from an estimator.

    Args:
        samples: ``(n, d)`` draws of the distribution (not modified, not copied).
        estimator: ``"auto"`` (default: the shipped transformer for ``d`` — the universal model
            or the per-dimension one, whichever the accuracy benchmark found better — where
            it beats Scott's KDE, see ``pretrained.auto_dims()``; else Gaussian KDE with
            Scott's bandwidth), ``"transformer"``, ``"kde"``,
            ``"sdkde"``, ``"emp-sdkde"``, or any object with ``dim``, ``logdensity(x)``,
            ``score(x)``. ``estimator_name`` records which one was built.
        adapt_steps: test-time adaptation steps (transformer only; ``0`` = none).
        validate_args: Pyro/torch argument validation.
        **estimator_kwargs: passed to the estimator's constructor (e.g. ``bandwidth=``).

    ``event_shape = (d,)``, ``support = real_vector``; ``expand`` shares the estimator.

    Example:
        >>> ls = LearnedScore(torch.randn(400, 2, dtype=torch.float64), estimator="kde")
        >>> ls.score(torch.zeros(5, 2, dtype=torch.float64)).shape
        torch.Size([5, 2])
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        samples: Tensor,
        estimator="auto",
        *,
        adapt_steps: int = 0,
        validate_args=None,
        **estimator_kwargs,
    ):
        samples = as_samples(samples)
        est, name = resolve_estimator(samples.detach(), estimator, **estimator_kwargs)
        if adapt_steps:
            est = self._adapted(est, adapt_steps)
        self._set(samples, est, name)
        super().__init__(torch.Size(), torch.Size([self.dim]), validate_args=validate_args)

    def _set(self, samples: Tensor, estimator, name: str) -> None:
        self.samples, self.estimator, self.estimator_name = samples, estimator, name
        self.dim = samples.shape[1]
        self._dtype = getattr(estimator, "dtype", samples.dtype)

    def _copy(self, estimator, batch_shape, _instance=None) -> LearnedScore:
        new = self._get_checked_instance(LearnedScore, _instance)
        new._set(self.samples, estimator, self.estimator_name)
        TorchDistribution.__init__(new, torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @staticmethod
    def _adapted(estimator, num_steps: int):
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"adapt_steps must be a non-negative int, got {num_steps!r}")
        if not callable(getattr(estimator, "adapt", None)):
            raise ValueError(
                f"{type(estimator).__name__} has no test-time adaptation (.adapt); use adapt_steps=0"
            )
        return estimator.adapt(num_steps=num_steps)

    def adapt(self, num_steps: int = 4) -> LearnedScore:
        """A new ``LearnedScore`` whose estimator took ``num_steps`` test-time adaptation steps."""
        est = self._adapted(self.estimator, num_steps)
        return self._copy(est, self.batch_shape)

    def expand(self, batch_shape, _instance=None) -> LearnedScore:
        return self._copy(self.estimator, batch_shape, _instance)

    def _broadcast(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        batch = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        return x.expand(*batch, self.dim)

    def log_prob(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\log p(x)`, ``(*batch, d) -> (*batch)``; its gradient in ``x`` is
        :meth:`score` (the estimator's score head). Not normalised for the transformer."""
        if self._validate_args:
            self._validate_sample(x)
        return _LogDensityWithScore.apply(self._broadcast(x), self.estimator, self._dtype)

    def score(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\nabla_x \\log p(x)`, shape of ``x``.

        This is the Stein/Hyvärinen score in ``x``; it is *not* Pyro's ``score_parts``
        (the REINFORCE score-function estimator, a gradient in the parameters).
        """
        xb = self._broadcast(x)
        return self.estimator.score(xb.detach().to(self._dtype)).to(x.dtype)

    def kernel_covariance(self) -> Tensor:
        """``(d, d)``: the jitter covariance of :meth:`sample`, the estimator's kernel covariance
        when it has one (KDE family), else Scott's :math:`n^{-2/(d+4)}\\,\\mathrm{Cov}(X)`."""
        cov = getattr(self.estimator, "covariance", None)
        if isinstance(cov, Tensor) and cov.shape == (self.dim, self.dim):
            return cov.to(self.samples.dtype)
        x = self.samples.detach()
        xc = x - x.mean(0)
        n = x.shape[0]
        return (xc.T @ xc / (n - 1)) * n ** (-2.0 / (self.dim + 4))

    def sample(self, sample_shape=()) -> Tensor:
        """A *smoothed bootstrap*: pick stored samples uniformly with replacement and add
        Gaussian jitter with covariance :meth:`kernel_covariance`. For ``estimator="kde"`` this
        is an exact draw from the KDE; for other estimators it is a draw from the Scott-KDE of the
        samples, not from the estimator's (unnormalised) density. Uses torch's global RNG, as
        Pyro does. Shape ``(*sample_shape, *batch_shape, d)``."""
        shape = torch.Size(sample_shape) + self.batch_shape
        x = self.samples.detach()
        idx = torch.randint(0, x.shape[0], shape, device=x.device)
        chol = torch.linalg.cholesky(self.kernel_covariance())
        eps = torch.randn(*shape, self.dim, dtype=x.dtype, device=x.device)
        return x[idx] + eps @ chol.T

    @property
    def mean(self) -> Tensor:
        """The sample mean (the exact mean of :meth:`sample`'s smoothed bootstrap)."""
        return self.samples.detach().mean(0).expand(*self.batch_shape, self.dim)

    def __repr__(self) -> str:
        n, d = self.samples.shape
        return (
            f"LearnedScore(n={n}, d={d}, estimator={self.estimator_name!r}, "
            f"batch_shape={tuple(self.batch_shape)})"
        )
