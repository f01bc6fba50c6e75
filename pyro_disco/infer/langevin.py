r"""Langevin samplers driven by a score: ULA and MALA, functional core and Pyro kernels.

One step from ``x`` with step size :math:`h` proposes

.. math:: y = x + h\, s(x) + \sqrt{2h}\,\xi, \qquad \xi \sim \mathcal N(0, I),

where :math:`s \approx \nabla \log \pi`. ULA always accepts (biased by :math:`O(h)`); MALA
accepts with probability :math:`\min\{1, \pi(y) q(x|y) / (\pi(x) q(y|x))\}`,
:math:`q(y|x) \propto \exp(-\|y - x - h s(x)\|^2 / 4h)`, which needs a log-density
consistent with the score. Positions are ``(..., d)``: every leading index is an independent
chain, so ``(num_chains, d)`` runs chains in parallel.

References: Roberts & Tweedie (1996), *Exponential convergence of Langevin distributions*;
Hoffman & Gelman (2014), dual averaging (arXiv:1111.4246) for the step size;
Roberts & Rosenthal (1998): optimal MALA acceptance 0.574.

Example:
    >>> from pyro_disco import GaussianMixture
    >>> target = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    >>> out = run(torch.zeros(4, 2), target, 0.3, 50, method="mala", num_warmup=50)
    >>> out.samples.shape  # chains, draws, d
    torch.Size([4, 50, 2])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.infer.mcmc.util import initialize_model
from torch import Tensor
from tqdm.auto import tqdm

from pyro_disco.estimators.base import as_score_fn

__all__ = [
    "LangevinState",
    "LangevinInfo",
    "StepSizeState",
    "LangevinRun",
    "init",
    "ula_step",
    "mala_step",
    "step_size_init",
    "step_size_update",
    "run",
    "logdensity_and_score_fn",
    "ULA",
    "MALA",
]

MAX_LOG_RATIO = 1000.0  # |log acceptance ratio| beyond this counts as a divergence (Pyro HMC's rule)


class LangevinState(NamedTuple):
    """``position`` ``(..., d)``, ``logdensity`` ``(...)`` (``None`` for ULA without one),
    ``score`` ``(..., d)``."""

    position: Tensor
    logdensity: Tensor | None
    score: Tensor


class LangevinInfo(NamedTuple):
    """Per chain ``(...)``: acceptance probability, accepted flag, divergence flag."""

    acceptance_prob: Tensor
    is_accepted: Tensor
    is_divergent: Tensor


class StepSizeState(NamedTuple):
    """Dual-averaging state (Hoffman & Gelman 2014, Alg. 5) on :math:`\\log h`."""

    log_step_size: float
    log_step_size_avg: float
    grad_avg: float
    mu: float
    count: int


class LangevinRun(NamedTuple):
    """``samples`` ``(..., num_steps, d)``; ``info`` fields ``(..., num_steps)``; the step size
    used after warm-up; the final state."""

    samples: Tensor
    info: LangevinInfo
    step_size: float
    state: LangevinState


def logdensity_and_score_fn(target, logdensity_fn: Callable | None = None) -> Callable:
    """``fn(x) -> (logdensity (...), score (..., d))`` from an estimator, or from a
    ``score_fn`` plus a ``logdensity_fn``."""
    if logdensity_fn is None:
        if callable(getattr(target, "logdensity_and_score", None)):
            return target.logdensity_and_score
        if callable(getattr(target, "logdensity", None)):
            logdensity_fn = target.logdensity
        else:
            raise ValueError("MALA needs a log-density: pass an estimator, or logdensity_fn= with score_fn")
    score_fn = as_score_fn(target)
    return lambda x: (logdensity_fn(x), score_fn(x))


def init(
    position: Tensor,
    score_fn: Callable,
    logdensity_fn: Callable | None = None,
    *,
    logdensity_and_score_fn: Callable | None = None,
) -> LangevinState:
    """Evaluate the score (and the log-density, when given) at ``position`` ``(..., d)``."""
    position = position.detach()
    if logdensity_and_score_fn is not None:
        logp, score = logdensity_and_score_fn(position)
        return LangevinState(position, logp.detach(), score.detach())
    logp = None if logdensity_fn is None else logdensity_fn(position).detach()
    return LangevinState(position, logp, score_fn(position).detach())


def _propose(state: LangevinState, step_size: float, generator) -> tuple[Tensor, Tensor]:
    x = state.position
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    proposal = x + step_size * state.score + math.sqrt(2.0 * step_size) * noise
    finite = torch.isfinite(proposal).all(-1)
    return torch.where(finite.unsqueeze(-1), proposal, x), finite


def ula_step(
    state: LangevinState, score_fn: Callable, step_size: float, *, generator: torch.Generator | None = None
) -> tuple[LangevinState, LangevinInfo]:
    """One unadjusted Langevin step; a chain whose proposal is not finite stays put and is
    flagged divergent."""
    proposal, ok = _propose(state, step_size, generator)
    score = score_fn(proposal).detach()
    ok = ok & torch.isfinite(score).all(-1)
    position = torch.where(ok.unsqueeze(-1), proposal, state.position)
    score = torch.where(ok.unsqueeze(-1), score, state.score)
    prob = ok.to(state.position.dtype)
    return LangevinState(position, None, score), LangevinInfo(prob, ok, ~ok)


def mala_step(
    state: LangevinState,
    logdensity_and_score_fn: Callable,
    step_size: float,
    *,
    generator: torch.Generator | None = None,
) -> tuple[LangevinState, LangevinInfo]:
    """One Metropolis-adjusted Langevin step (per-chain accept/reject)."""
    if state.logdensity is None:
        raise ValueError("MALA state has no log-density: use init(..., logdensity_and_score_fn=...)")
    x = state.position
    proposal, ok = _propose(state, step_size, generator)
    logp_y, score_y = (t.detach() for t in logdensity_and_score_fn(proposal))
    ok = ok & torch.isfinite(logp_y) & torch.isfinite(score_y).all(-1)
    fwd = ((proposal - x - step_size * state.score) ** 2).sum(-1)
    bwd = ((x - proposal - step_size * score_y) ** 2).sum(-1)
    log_ratio = logp_y - state.logdensity - (bwd - fwd) / (4.0 * step_size)
    log_ratio = torch.where(ok, log_ratio, torch.full_like(log_ratio, -math.inf))
    divergent = ~ok | (log_ratio < -MAX_LOG_RATIO)
    prob = log_ratio.clamp(max=0.0).exp()
    u = torch.rand(prob.shape, generator=generator, dtype=prob.dtype, device=prob.device)
    accept = u < prob
    a = accept.unsqueeze(-1)
    new = LangevinState(
        torch.where(a, proposal, x),
        torch.where(accept, logp_y, state.logdensity),
        torch.where(a, score_y, state.score),
    )
    return new, LangevinInfo(prob, accept, divergent)


def step_size_init(step_size: float) -> StepSizeState:
    """Start dual averaging at ``step_size`` (shrinkage point :math:`\\log(10 h_0)`)."""
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    return StepSizeState(math.log(step_size), math.log(step_size), 0.0, math.log(10.0 * step_size), 0)


def step_size_update(
    state: StepSizeState,
    acceptance_prob: float,
    target_accept_prob: float = 0.574,
    *,
    gamma: float = 0.05,
    t0: float = 10.0,
    kappa: float = 0.75,
) -> StepSizeState:
    r"""One dual-averaging update toward ``target_accept_prob``;
    :math:`\exp(\text{log\_step\_size\_avg})` is the step size to keep after warm-up."""
    t = state.count + 1
    eta = 1.0 / (t + t0)
    grad_avg = (1.0 - eta) * state.grad_avg + eta * (target_accept_prob - acceptance_prob)
    log_h = state.mu - math.sqrt(t) / gamma * grad_avg
    w = t ** (-kappa)
    return StepSizeState(log_h, w * log_h + (1.0 - w) * state.log_step_size_avg, grad_avg, state.mu, t)


def run(
    position: Tensor,
    target,
    step_size: float,
    num_steps: int,
    *,
    method: str = "mala",
    logdensity_fn: Callable | None = None,
    num_warmup: int = 0,
    adapt_step_size: bool = True,
    target_accept_prob: float = 0.574,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LangevinRun:
    """Run ULA or MALA chains from ``position`` ``(..., d)``.

    Args:
        target: an estimator (``logdensity``/``score``) or a bare ``score_fn`` (ULA; MALA
            then needs ``logdensity_fn``).
        step_size: initial step size :math:`h` (kept fixed for ULA).
        num_steps: draws kept after ``num_warmup`` warm-up steps.
        adapt_step_size: MALA only: dual averaging during warm-up on the chain-averaged
            acceptance probability toward ``target_accept_prob``.

    Returns:
        :class:`LangevinRun` with ``samples`` ``(..., num_steps, d)``.
    """
    if method not in ("ula", "mala"):
        raise ValueError(f"method must be 'ula' or 'mala', got {method!r}")
    if num_steps < 1 or num_warmup < 0:
        raise ValueError(f"need num_steps >= 1 and num_warmup >= 0, got {num_steps}, {num_warmup}")
    score_fn = as_score_fn(target)
    if method == "mala":
        both = logdensity_and_score_fn(target, logdensity_fn)
        state = init(position, score_fn, logdensity_and_score_fn=both)
    else:
        state = init(position, score_fn)
    adapt = step_size_init(step_size)
    h = step_size
    kept, infos = [], []
    for i in tqdm(range(num_warmup + num_steps), disable=not progress, desc=method.upper()):
        if method == "mala":
            state, info = mala_step(state, both, h, generator=generator)
        else:
            state, info = ula_step(state, score_fn, h, generator=generator)
        if i < num_warmup:
            if method == "mala" and adapt_step_size:
                adapt = step_size_update(adapt, float(info.acceptance_prob.mean()), target_accept_prob)
                h = math.exp(adapt.log_step_size if i + 1 < num_warmup else adapt.log_step_size_avg)
            continue
        kept.append(state.position)
        infos.append(info)
    samples = torch.stack(kept, dim=-2)
    info = LangevinInfo(*(torch.stack(f, dim=-1) for f in zip(*infos, strict=True)))
    return LangevinRun(samples, info, h, state)


# --------------------------------------------------------------------------- Pyro kernels


class _LangevinKernel(MCMCKernel):
    """Shared shell: packs Pyro's ``params`` dict into one flat vector and calls the core."""

    method = "mala"

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        logdensity_fn=None,
        *,
        step_size: float = 0.1,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.574,
        transforms=None,
        site: str = "x",
        initial_params=None,
    ):
        given = [a is not None for a in (model, potential_fn, score_fn)]
        if sum(given) != 1:
            raise ValueError("give exactly one of model=, potential_fn= or score_fn=")
        if not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"step_size must be a positive number, got {step_size!r}")
        if not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
        if (
            score_fn is not None
            and self.method == "mala"
            and logdensity_fn is None
            and not callable(getattr(score_fn, "logdensity", None))
        ):
            raise ValueError("MALA with a bare score_fn needs logdensity_fn= (or pass an estimator object)")
        self.model, self.potential_fn = model, potential_fn
        self.score_fn, self.logdensity_fn = score_fn, logdensity_fn
        self.init_step_size, self.adapt_step_size = float(step_size), adapt_step_size
        self.target_accept_prob, self.site = target_accept_prob, site
        self.transforms = transforms if transforms is not None else (None if model is not None else {})
        self._user_params = initial_params
        self._initial_params = initial_params
        self._reset(0)

    def _reset(self, warmup_steps: int) -> None:
        self._warmup_steps, self._t = warmup_steps, 0
        self._adapt = step_size_init(self.init_step_size)
        self.step_size = self.init_step_size
        self._state, self._last = None, None
        self._divergences, self._accept_probs, self._accept_count = [], [], 0
        self._mean_accept_prob = 0.0

    @property
    def initial_params(self):
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params):
        self._user_params = params
        self._initial_params = params

    def setup(self, warmup_steps, *args, **kwargs):
        self._reset(warmup_steps)
        if self.model is not None:
            init_params, potential_fn, transforms, _ = initialize_model(
                self.model, model_args=args, model_kwargs=kwargs
            )
            self.potential_fn, self.transforms = potential_fn, transforms
            self._initial_params = self._user_params if self._user_params is not None else init_params
        if self._initial_params is None:
            raise ValueError(
                "initial_params are required with potential_fn= or score_fn= "
                f"(e.g. MCMC(..., initial_params={{'{self.site}': x0}}))"
            )
        if self.score_fn is not None and set(self._initial_params) != {self.site}:
            got = sorted(self._initial_params)
            raise ValueError(f"with score_fn= the only site is {self.site!r}, got {got}")
        self._names = sorted(self._initial_params)
        self._shapes = [self._initial_params[k].shape for k in self._names]

    def _pack(self, params) -> Tensor:
        return torch.cat([params[k].detach().reshape(-1) for k in self._names])

    def _unpack(self, flat: Tensor) -> dict:
        out, pos = {}, 0
        for k, shape in zip(self._names, self._shapes, strict=True):
            out[k] = flat[pos : pos + shape.numel()].reshape(shape)
            pos += shape.numel()
        return out

    def _logdensity_and_score(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        if self.score_fn is not None:
            x = flat.reshape(self._shapes[0])
            if self.logdensity_fn is None and not callable(getattr(self.score_fn, "logdensity", None)):
                logp = torch.zeros((), dtype=flat.dtype)  # ULA only: never used for acceptance
                return logp, as_score_fn(self.score_fn)(x).reshape(-1)
            logp, score = logdensity_and_score_fn(self.score_fn, self.logdensity_fn)(x)
            return logp.reshape(()), score.reshape(-1)
        with torch.enable_grad():
            z = flat.detach().requires_grad_(True)
            potential = self.potential_fn(self._unpack(z))
            (grad,) = torch.autograd.grad(potential, z)
        return -potential.detach(), -grad

    def sample(self, params):
        flat = self._pack(params)
        if self._state is None or self._last is not params:
            self._state = init(flat, None, logdensity_and_score_fn=self._logdensity_and_score)
        if self.method == "mala":
            state, info = mala_step(self._state, self._logdensity_and_score, self.step_size)
        else:
            state, info = ula_step(self._state, lambda z: self._logdensity_and_score(z)[1], self.step_size)
            state = state._replace(logdensity=self._state.logdensity)
        self._state = state
        prob = float(info.acceptance_prob)
        self._t += 1
        if self._t <= self._warmup_steps:
            if self.method == "mala" and self.adapt_step_size:
                self._adapt = step_size_update(self._adapt, prob, self.target_accept_prob)
                last = self._t == self._warmup_steps
                log_h = self._adapt.log_step_size_avg if last else self._adapt.log_step_size
                self.step_size = math.exp(log_h)
            n = self._t
        else:
            n = self._t - self._warmup_steps
            self._accept_probs.append(prob)
            self._accept_count += int(info.is_accepted)
            if bool(info.is_divergent):
                self._divergences.append(n - 1)
        self._mean_accept_prob += (prob - self._mean_accept_prob) / n
        self._last = self._unpack(state.position)
        return self._last

    def logging(self):
        return OrderedDict(
            [("step size", f"{self.step_size:.2e}"), ("acc. prob", f"{self._mean_accept_prob:.3f}")]
        )

    def diagnostics(self):
        """``divergences`` (post-warm-up draw indices, as arviz's ``from_pyro`` reads them),
        ``acceptance rate``, per-draw ``acceptance_prob`` and the final ``step_size``."""
        n = max(self._t - self._warmup_steps, 1)
        return {
            "divergences": list(self._divergences),
            "acceptance rate": self._accept_count / n,
            "acceptance_prob": list(self._accept_probs),
            "step_size": self.step_size,
        }


class ULA(_LangevinKernel):
    r"""Unadjusted Langevin kernel for :class:`pyro.infer.MCMC`.

    Driven by exactly one of ``model`` (a Pyro model; latent sites in unconstrained space),
    ``potential_fn`` (``dict -> scalar`` potential energy :math:`-\log \pi`, Pyro's
    convention) or ``score_fn`` (a bare ``score_fn(x)`` or an estimator, one site named
    ``site``). Step size is fixed (there is no acceptance to adapt on); the chain is biased by
    :math:`O(h)`.

    Example:
        >>> from pyro.infer import MCMC
        >>> k = ULA(score_fn=lambda x: -x, step_size=0.1, initial_params={"x": torch.zeros(2)})
        >>> mcmc = MCMC(k, num_samples=20, warmup_steps=10, disable_progbar=True)
        >>> mcmc.run()
        >>> mcmc.get_samples()["x"].shape
        torch.Size([20, 2])
    """

    method = "ula"

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        *,
        step_size: float = 0.05,
        transforms=None,
        site: str = "x",
        initial_params=None,
    ):
        super().__init__(
            model,
            potential_fn,
            score_fn,
            None,
            step_size=step_size,
            adapt_step_size=False,
            transforms=transforms,
            site=site,
            initial_params=initial_params,
        )


class MALA(_LangevinKernel):
    r"""Metropolis-adjusted Langevin kernel for :class:`pyro.infer.MCMC`.

    Same drivers as :class:`ULA`; with ``score_fn`` a log-density is needed too (an
    estimator object carries one, or pass ``logdensity_fn``). During warm-up the step size
    is adapted by dual averaging toward ``target_accept_prob`` (default 0.574, the optimal
    MALA rate of Roberts & Rosenthal 1998).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import MCMC
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> mcmc = MCMC(MALA(model), num_samples=20, warmup_steps=20, disable_progbar=True)
        >>> mcmc.run()
        >>> mcmc.get_samples()["z"].shape
        torch.Size([20, 2])
    """

    method = "mala"
