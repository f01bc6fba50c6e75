r"""``LearnedScore``: a differentiable Pyro distribution built from samples.

The estimator (pretrained transformer, KDE, SD-KDE, ...) is built once from ``samples``
``(n, d)``; afterwards every ``log_prob(x)`` is one query. ``log_prob`` is differentiable in
``x`` and its gradient is *the estimator's score head*, not the autograd of its log-density
head:

.. math:: \frac{\partial}{\partial x}\,\mathtt{log\_prob}(x) := \hat s(x) \approx \nabla_x \log p(x).

For the KDE family the two coincide; for the transformer they differ slightly, and the score
head is the better-trained quantity, so that is what NUTS, HMC, SVI and SVGD follow. Second
and third derivatives are those of the score head (:math:`\partial \hat s/\partial x`, by
recomputation with a graph), so Hessians, ``AutoLaplaceApproximation`` and ``torch.func``
see the prior's curvature; see :mod:`pyro_disco.distributions._autograd`. This is what makes
yesterday's posterior draws usable as today's prior (Pyro's ``Empirical`` has no gradient);
:func:`pyro_disco.distributions.posterior_prior` does it for a whole ``mcmc.get_samples()``.

Reference: DiScoFormer, arXiv:2511.05924.

Example:
    >>> import pyro
    >>> prior = LearnedScore(torch.randn(500, 2, dtype=torch.float64), estimator="kde")
    >>> def model():
    ...     return pyro.sample("z", prior)
    >>> prior.log_prob(torch.zeros(2, dtype=torch.float64)).shape
    torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from numpy.typing import ArrayLike
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from pyro_disco._stats import scott_factor, weighted_covariance
from pyro_disco._validation import checked_once
from pyro_disco.distributions._autograd import log_prob_with_score, score_with_jacobian
from pyro_disco.estimators.base import Estimator
from pyro_disco.estimators.grouped import GroupedEstimator
from pyro_disco.estimators.weighted import WeightedGaussianKDE, effective_sample_size, resample
from pyro_disco.factory import resolve_estimator
from pyro_disco.pretrained import auto_dims

__all__ = ["LearnedScore"]

_WEIGHTED = ("auto", "kde", "silverman-kde", "transformer")


def _as_draws(samples: Tensor | ArrayLike) -> Tensor:
    """``(n,)`` -> ``(n, 1)`` (the only reading of a vector of draws); ``(*groups, n, d)`` kept."""
    x = samples if isinstance(samples, Tensor) else torch.as_tensor(samples)
    if x.dim() == 1:
        x = x.unsqueeze(-1)
    if x.dim() < 2:
        raise ValueError(f"samples must have shape (n,), (n, d) or (*groups, n, d), got {tuple(x.shape)}")
    return x


class LearnedScore(TorchDistribution):
    r"""A distribution known through samples, with a density and score from an estimator.

    Args:
        samples: ``(n, d)`` draws of the distribution (not modified, not copied); ``(n,)`` means
            ``d = 1``; ``(*groups, n, d)`` builds one estimator per group and gives the
            distribution ``batch_shape = groups`` (e.g. one prior per hierarchy group).
        estimator: ``"auto"`` (default: the shipped transformer for ``d`` — the universal model
            or the per-dimension one, whichever the accuracy benchmark found better — where
            it beats Scott's KDE, see ``pretrained.auto_dims()``; else Gaussian KDE with
            Scott's bandwidth), ``"transformer"``, ``"kde"``, ``"silverman-kde"``,
            ``"sdkde"``, ``"emp-sdkde"``, or any object with ``dim``, ``logdensity(x)``,
            ``score(x)``. ``estimator_name`` records which one was built.
        weights: optional non-negative weights ``samples.shape[:-1]`` (importance sampling, SMC;
            any scale). ``"kde"``/``"silverman-kde"`` use them exactly
            (:class:`~pyro_disco.estimators.weighted.WeightedGaussianKDE`, scipy's
            ``gaussian_kde(weights=)``); the transformer takes ``n`` multinomial resamples
            instead (:func:`~pyro_disco.estimators.weighted.resample`, drawn with
            ``generator``), which adds resampling noise and leaves about ``n_eff`` distinct
            points. :meth:`sample` and :attr:`mean` use the weights in every case.
        adapt_steps: test-time adaptation steps (transformer only; ``0`` = none).
        generator: randomness for the weighted resampling.
        validate_args: Pyro/torch argument validation.
        **estimator_kwargs: passed to the estimator's constructor (e.g. ``bandwidth=``).

    ``event_shape = (d,)``, ``support = real_vector``; ``expand`` shares the estimator(s).

    **dtype and device.** Queries of any floating dtype and device are evaluated in the
    estimator's dtype and device; ``log_prob``, its derivatives and :meth:`score` come back in
    the query's dtype and device (as for the estimators themselves).

    Example:
        >>> ls = LearnedScore(torch.randn(400, 2, dtype=torch.float64), estimator="kde")
        >>> ls.score(torch.zeros(5, 2, dtype=torch.float64)).shape
        torch.Size([5, 2])
        >>> LearnedScore(torch.randn(3, 200, 1, dtype=torch.float64), estimator="kde").batch_shape
        torch.Size([3])
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        samples: Tensor,
        estimator: str | Estimator = "auto",
        *,
        weights: Tensor | ArrayLike | None = None,
        adapt_steps: int = 0,
        generator: torch.Generator | None = None,
        validate_args: bool | None = None,
        **estimator_kwargs: Any,
    ) -> None:
        samples = _as_draws(samples)
        groups, (n, d) = samples.shape[:-2], samples.shape[-2:]
        if weights is not None:
            weights = torch.as_tensor(weights).to(device=samples.device)
            if weights.shape != samples.shape[:-1]:
                raise ValueError(
                    f"weights must have shape {tuple(samples.shape[:-1])} (the samples' without d), "
                    f"got {tuple(weights.shape)}"
                )
        build = dict(adapt_steps=adapt_steps, generator=generator, **estimator_kwargs)
        if groups:
            if not isinstance(estimator, str):
                raise TypeError("per-group samples (*groups, n, d) need an estimator name, not an object")
            flat = samples.reshape(-1, n, d)
            flat_w = weights.reshape(-1, n) if weights is not None else [None] * flat.shape[0]
            built = [self._build(x, w, estimator, **build) for x, w in zip(flat, flat_w)]
            est, name = GroupedEstimator([b[0] for b in built], groups), built[0][1]
        else:
            est, name = self._build(samples, weights, estimator, **build)
        self._set(samples, weights, est, name)
        super().__init__(groups, torch.Size([d]), validate_args=validate_args)

    @classmethod
    def _build(
        cls,
        x: Tensor,
        w: Tensor | None,
        estimator: str | Estimator,
        *,
        adapt_steps: int,
        generator: torch.Generator | None,
        **kwargs: Any,
    ) -> tuple[Estimator, str]:
        # checked here once: the factory and the constructors it calls skip the repeat check
        with checked_once(x.detach()) as x:
            if w is None:
                est, name = resolve_estimator(x, estimator, **kwargs)
            else:
                if not isinstance(estimator, str) or estimator not in _WEIGHTED:
                    raise ValueError(f"weights= works with estimator in {_WEIGHTED}, got {estimator!r}")
                name = estimator
                if name == "auto":
                    name = "transformer" if x.shape[1] in auto_dims() else "kde"
                if name == "transformer":
                    est, _ = resolve_estimator(resample(x, w, generator=generator), name, **kwargs)
                else:
                    bandwidth = "silverman" if name == "silverman-kde" else kwargs.pop("bandwidth", "scott")
                    est = WeightedGaussianKDE(x, w, bandwidth, **kwargs)
        if adapt_steps:
            est = cls._adapted(est, adapt_steps)
        return est, name

    def _set(self, samples: Tensor, weights: Tensor | None, estimator: Estimator, name: str) -> None:
        self.samples, self.weights, self.estimator, self.estimator_name = samples, weights, estimator, name
        self.dim = samples.shape[-1]
        self._spec = (
            getattr(estimator, "dtype", samples.dtype),
            getattr(estimator, "device", samples.device),
        )

    @property
    def _groups(self) -> torch.Size:
        return self.samples.shape[:-2]

    def _copy(
        self, estimator: Estimator, batch_shape: Sequence[int], _instance: LearnedScore | None = None
    ) -> LearnedScore:
        new = self._get_checked_instance(LearnedScore, _instance)
        new._set(self.samples, self.weights, estimator, self.estimator_name)
        TorchDistribution.__init__(new, torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @staticmethod
    def _adapted(estimator: Estimator, num_steps: int) -> Estimator:
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"adapt_steps must be a non-negative int, got {num_steps!r}")
        if not callable(getattr(estimator, "adapt", None)):
            raise ValueError(
                f"{type(estimator).__name__} has no test-time adaptation (.adapt); use adapt_steps=0"
            )
        return estimator.adapt(num_steps=num_steps)

    def adapt(self, num_steps: int = 4) -> LearnedScore:
        """A new ``LearnedScore`` whose estimator took ``num_steps`` test-time adaptation steps."""
        if isinstance(self.estimator, GroupedEstimator):
            ests = [self._adapted(e, num_steps) for e in self.estimator.estimators]
            return self._copy(GroupedEstimator(ests, self._groups), self.batch_shape)
        return self._copy(self._adapted(self.estimator, num_steps), self.batch_shape)

    def expand(self, batch_shape: Sequence[int], _instance: LearnedScore | None = None) -> LearnedScore:
        batch_shape = torch.Size(batch_shape)
        if any(b < 0 for b in batch_shape):
            raise ValueError(f"batch_shape must have non-negative sizes, got {tuple(batch_shape)}")
        k = len(self._groups)
        if k and batch_shape[len(batch_shape) - k :] != self._groups:
            raise ValueError(
                f"cannot expand groups {tuple(self._groups)} to batch shape {tuple(batch_shape)}"
            )
        return self._copy(self.estimator, batch_shape, _instance)

    def _broadcast(self, x: Tensor) -> Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}; "
                "convert with x.double() or x.float()"
            )
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        if not self.batch_shape:  # a leapfrog step: nothing to broadcast (broadcast_shapes costs ~0.1 ms)
            return x
        batch = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        return x.expand(*batch, self.dim)

    def log_prob(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\log p(x)`, ``(*batch, d) -> (*batch)``; its gradient in ``x`` is
        :meth:`score` (the estimator's score head), and that gradient is differentiable again.
        Not normalised for the transformer."""
        if self._validate_args and x.numel() > 0:  # torch's support check fails on empty x
            self._validate_sample(x)
        return log_prob_with_score(self._broadcast(x), self.estimator, self._spec)

    def score(self, x: Tensor) -> Tensor:
        """Estimated :math:`\\nabla_x \\log p(x)`, shape of ``x`` broadcast with the batch shape;
        differentiable in ``x``.

        This is the Stein/Hyvärinen score in ``x``; it is *not* Pyro's ``score_parts``
        (the REINFORCE score-function estimator, a gradient in the parameters).
        """
        return score_with_jacobian(self._broadcast(x), self.estimator, self._spec)

    def _flat_groups(self) -> tuple[Tensor, Tensor | None, list]:
        """Samples ``(G, n, d)``, weights ``(G, n)`` normalised or ``None``, estimators ``[G]``."""
        n, d = self.samples.shape[-2:]
        xs = self.samples.detach().reshape(-1, n, d)
        ws = None
        if self.weights is not None:
            w = self.weights.detach().reshape(-1, n).to(xs.dtype)
            ws = w / w.sum(-1, keepdim=True)
        ests = self.estimator.estimators if isinstance(self.estimator, GroupedEstimator) else [self.estimator]
        return xs, ws, ests

    def kernel_covariance(self) -> Tensor:
        """``(*groups, d, d)``: the jitter covariance of :meth:`sample`, the estimator's kernel
        covariance when it has one (KDE family), else Scott's
        :math:`n_\\text{eff}^{-2/(d+4)}\\,\\mathrm{Cov}_w(X)` (``n_eff = n`` without weights)."""
        xs, ws, ests = self._flat_groups()
        d = self.dim
        covs = []
        for g, est in enumerate(ests):
            cov = getattr(est, "covariance", None)
            if isinstance(cov, Tensor) and cov.shape == (d, d):
                covs.append(cov.to(xs.dtype))
                continue
            w = ws[g] if ws is not None else torch.full_like(xs[g, :, 0], 1.0 / xs.shape[1])
            covs.append(weighted_covariance(xs[g], w) * scott_factor(effective_sample_size(w), d) ** 2)
        return torch.stack(covs).reshape(*self._groups, d, d)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """A *smoothed bootstrap*: pick stored samples with replacement (uniformly, or by
        ``weights``) and add Gaussian jitter with covariance :meth:`kernel_covariance`. For
        ``estimator="kde"`` this is an exact draw from the (weighted) KDE; for other estimators
        it is a draw from the Scott-KDE of the samples, not from the estimator's (unnormalised)
        density. Uses torch's global RNG, as Pyro does. Shape ``(*sample_shape, *batch_shape, d)``."""
        shape = torch.Size(sample_shape) + self.batch_shape
        outer = shape[: len(shape) - len(self._groups)]
        xs, ws, _ = self._flat_groups()  # G n d
        G, n, d = xs.shape
        m = math.prod(outer)
        if ws is None:
            idx = torch.randint(0, n, (m, G), device=xs.device)
        else:
            idx = (
                torch.multinomial(ws, m, replacement=True).T if m else xs.new_zeros((0, G), dtype=torch.long)
            )
        chol = torch.linalg.cholesky(self.kernel_covariance().reshape(G, d, d))  # G d d
        eps = torch.randn(m, G, d, dtype=xs.dtype, device=xs.device)
        draws = xs[torch.arange(G, device=xs.device), idx] + torch.einsum("gij,mgj->mgi", chol, eps)  # m G d
        return draws.reshape(*outer, *self._groups, d)

    @property
    def mean(self) -> Tensor:
        """The (weighted) sample mean: the exact mean of :meth:`sample`'s smoothed bootstrap."""
        x = self.samples.detach()
        if self.weights is None:
            m = x.mean(-2)
        else:
            w = self.weights.to(x.dtype)
            m = (w.unsqueeze(-1) * x).sum(-2) / w.sum(-1, keepdim=True)
        return m.expand(*self.batch_shape, self.dim)

    def __repr__(self) -> str:
        n, d = self.samples.shape[-2:]
        groups = f", groups={tuple(self._groups)}" if self._groups else ""
        weighted = ", weighted" if self.weights is not None else ""
        return (
            f"LearnedScore(n={n}, d={d}{groups}{weighted}, estimator={self.estimator_name!r}, "
            f"batch_shape={tuple(self.batch_shape)})"
        )
