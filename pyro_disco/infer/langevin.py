r"""Langevin samplers driven by a score: ULA and MALA, the functional core (the Pyro
``MCMCKernel`` shells are in :mod:`pyro_disco.infer.mcmc`).

One step from ``x`` with step size :math:`h` proposes

.. math:: y = x + h\, s(x) + \sqrt{2h}\,\xi, \qquad \xi \sim \mathcal N(0, I),

where :math:`s \approx \nabla \log \pi`. ULA always accepts (biased by :math:`O(h)`); MALA
accepts with probability :math:`\min\{1, \pi(y) q(x|y) / (\pi(x) q(y|x))\}`,
:math:`q(y|x) \propto \exp(-\|y - x - h s(x)\|^2 / 4h)`, which needs a log-density
consistent with the score. Positions are ``(..., d)``: every leading index is an independent
chain, so ``(num_chains, d)`` runs chains in parallel.

References: Roberts & Tweedie (1996), *Exponential convergence of Langevin distributions*;
Hoffman & Gelman (2014), dual averaging (arXiv:1111.4246) for the step size (Pyro's own
:class:`~pyro.ops.dual_averaging.DualAveraging`, the scheme its HMC/NUTS adapt with);
Roberts & Rosenthal (1998): optimal MALA acceptance 0.574.

Example:
    >>> from pyro_disco import GaussianMixture
    >>> target = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    >>> out = run(torch.zeros(4, 2), target, 0.3, 50, method="mala", num_warmup=50)
    >>> out.samples.shape  # chains, draws, d
    torch.Size([4, 50, 2])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.ops.dual_averaging import DualAveraging
from torch import Tensor

from pyro_disco._compat import renamed_kwargs
from pyro_disco.estimators.base import ScoreLike, as_logdensity_and_score_fn, as_score_fn
from pyro_disco.infer._loop import run_loop

__all__ = [
    "LangevinState",
    "LangevinInfo",
    "StepSizeState",
    "LangevinRun",
    "init",
    "step",
    "ula_step",
    "mala_step",
    "step_size_init",
    "step_size_update",
    "run",
    "logdensity_and_score_fn",
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
    """Step-size adaptation on :math:`\\log h`: the current and the averaged log step size, and
    Pyro's :class:`~pyro.ops.dual_averaging.DualAveraging` scheme that produced them (never
    mutated: :func:`step_size_update` steps a copy)."""

    log_step_size: float
    log_step_size_avg: float
    scheme: DualAveraging


class LangevinRun(NamedTuple):
    """``samples`` ``(..., num_steps, d)``; ``info`` fields ``(..., num_steps)``; the step size
    used after warm-up; the final state."""

    samples: Tensor
    info: LangevinInfo
    step_size: float
    state: LangevinState


# The coercion lives with the vocabulary (pyro_disco.estimators.base); this name is kept.
logdensity_and_score_fn = as_logdensity_and_score_fn


def _checked_score(score: Tensor, position: Tensor) -> Tensor:
    """A user's score must have the positions' shape (an ``(n, 1)`` score for ``d = 2`` would
    broadcast silently)."""
    if not isinstance(score, Tensor) or score.shape != position.shape:
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ValueError(f"the score must have the positions' shape {tuple(position.shape)}, got {got}")
    return score.detach()


def _checked_logdensity(logp: Tensor, position: Tensor) -> Tensor:
    batch = position.shape[:-1]
    if not isinstance(logp, Tensor) or logp.numel() != batch.numel():
        got = tuple(logp.shape) if isinstance(logp, Tensor) else type(logp).__name__
        raise ValueError(f"the log-density must have shape {tuple(batch)}, got {got}")
    return logp.detach().reshape(batch)  # (1,) for one chain of shape (d,) is fine


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
        return LangevinState(position, _checked_logdensity(logp, position), _checked_score(score, position))
    logp = None if logdensity_fn is None else _checked_logdensity(logdensity_fn(position), position)
    return LangevinState(position, logp, _checked_score(score_fn(position), position))


def _propose(
    state: LangevinState, step_size: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
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
    score = _checked_score(score_fn(proposal), proposal)
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
    logp_y, score_y = logdensity_and_score_fn(proposal)
    logp_y, score_y = _checked_logdensity(logp_y, proposal), _checked_score(score_y, proposal)
    # a chain whose current state is not finite cannot be judged: it is divergent and stays put
    ok = ok & torch.isfinite(logp_y) & torch.isfinite(score_y).all(-1) & _finite_state(state)
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


def step(
    state: LangevinState,
    fn: Callable,
    step_size: float,
    *,
    method: str = "mala",
    generator: torch.Generator | None = None,
) -> tuple[LangevinState, LangevinInfo]:
    """One Langevin step, :func:`mala_step` (``fn`` is a ``logdensity_and_score_fn``) or
    :func:`ula_step` (``method="ula"``: ``fn`` is a ``score_fn``), so that the module reads
    ``init``/``step``/``run`` like the other samplers."""
    if method == "mala":
        return mala_step(state, fn, step_size, generator=generator)
    if method == "ula":
        return ula_step(state, fn, step_size, generator=generator)
    raise ValueError(f"method must be 'ula' or 'mala', got {method!r}")


def _finite_state(state: LangevinState) -> Tensor:
    """Per chain ``(...)``: position, score (and log-density) all finite."""
    ok = torch.isfinite(state.position).all(-1) & torch.isfinite(state.score).all(-1)
    return ok if state.logdensity is None else ok & torch.isfinite(state.logdensity)


def step_size_init(
    step_size: float, *, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75
) -> StepSizeState:
    """Start dual averaging at ``step_size`` with shrinkage point :math:`\\log(10 h_0)` and
    Pyro's (= Hoffman & Gelman's) defaults for ``gamma``, ``t0``, ``kappa``."""
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    scheme = DualAveraging(prox_center=math.log(10.0 * step_size), t0=t0, kappa=kappa, gamma=gamma)
    return StepSizeState(math.log(step_size), math.log(step_size), scheme)


def step_size_update(
    state: StepSizeState, acceptance_prob: float, target_accept_prob: float = 0.574
) -> StepSizeState:
    r"""One dual-averaging update toward ``target_accept_prob`` (statistic
    :math:`\delta - \alpha`, as in Pyro's HMC); :math:`\exp(\text{log\_step\_size\_avg})`
    is the step size to keep after warm-up. ``state`` is not modified."""
    scheme = copy.copy(state.scheme)  # Pyro's scheme is stateful; ours stays a value
    scheme.step(target_accept_prob - acceptance_prob)
    log_h, log_h_avg = scheme.get_state()
    return StepSizeState(float(log_h), float(log_h_avg), scheme)


@renamed_kwargs(target="score")
def run(
    position: Tensor,
    score: ScoreLike,
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
        score: the score source, an estimator (``logdensity``/``score``) or a bare ``score_fn``
            (ULA; MALA then needs ``logdensity_fn``). ``target=`` is its deprecated name.
        step_size: initial step size :math:`h` (kept fixed for ULA).
        num_steps: draws kept after ``num_warmup`` warm-up steps.
        adapt_step_size: MALA only: dual averaging during warm-up toward
            ``target_accept_prob``, on the acceptance probability averaged over the chains whose
            state is finite (a chain at a NaN log-density is flagged divergent, stays put, and is
            left out, so it cannot freeze the others).

    Returns:
        :class:`LangevinRun` with ``samples`` ``(..., num_steps, d)``.
    """
    if method not in ("ula", "mala"):
        raise ValueError(f"method must be 'ula' or 'mala', got {method!r}")
    score_fn = as_score_fn(score)
    if method == "mala":
        both = as_logdensity_and_score_fn(score, logdensity_fn)
        state = init(position, score_fn, logdensity_and_score_fn=both)
    else:
        state = init(position, score_fn)

    def adapting_step(
        i: int, carry: tuple[LangevinState, StepSizeState, float]
    ) -> tuple[tuple[LangevinState, StepSizeState, float], LangevinInfo]:
        state, adapt, h = carry
        healthy = _finite_state(state)  # chains that can inform the step size
        if method == "mala":
            state, info = mala_step(state, both, h, generator=generator)
        else:
            state, info = ula_step(state, score_fn, h, generator=generator)
        if i < num_warmup and method == "mala" and adapt_step_size and bool(healthy.any()):
            # adapt on finite chains only: one NaN chain made the mean, and h, NaN for all
            accept = float(info.acceptance_prob[healthy].mean())
            adapt = step_size_update(adapt, accept, target_accept_prob)
            h = math.exp(adapt.log_step_size if i + 1 < num_warmup else adapt.log_step_size_avg)
        return (state, adapt, h), info

    (state, _, h), info, kept = run_loop(
        (state, step_size_init(step_size), step_size),
        adapting_step,
        num_steps,
        num_warmup=num_warmup,
        save_every=1,
        save_start=False,
        info_dim=-1,
        desc=method.upper(),
        progress=progress,
    )
    samples = torch.stack([s.position for s, _, _ in kept], dim=-2)
    return LangevinRun(samples, info, h, state)
