r"""Score-based ("blob" / probability-flow) particle dynamics toward a target.

The particles follow the deterministic flow whose density :math:`\rho_t` solves the
Fokker–Planck equation of Langevin dynamics, with the Brownian noise replaced by the score of
the particle cloud itself:

.. math:: \frac{dx}{dt} = \nabla \log \pi(x) - \nabla \log \rho_t(x),

where :math:`\nabla \log \rho_t` is estimated from the current particles by any estimator
factory (``lambda particles: GaussianKDE(particles)`` is the blob method; a pretrained
DiScoFormer is the paper's use). Forward Euler in time.

A KDE of bandwidth :math:`H = f^2 \mathrm{Cov}` over-spreads the cloud, so with a Gaussian
target :math:`\mathcal N(\mu, \Sigma)` the flow with a Scott KDE settles where
:math:`(1 + f^2)\,\mathrm{Cov} = \Sigma`, i.e. the particles are too narrow by :math:`1+f^2`.

References: Carrillo, Craig & Patacchini (2019), *A blob method for diffusion*,
arXiv:1709.09195; Maoutsa, Reich & Opper (2020), arXiv:2004.09813; DiScoFormer,
arXiv:2511.05924.

The functional core is :func:`init`, :func:`step` and :func:`run` (BlackJAX's naming);
``flow_init``, ``flow_step`` and ``flow_run`` are the same functions under the names of the first
release, kept for compatibility.

Example:
    >>> from pyro_disco import GaussianKDE
    >>> out = run(torch.randn(100, 2), lambda x: -x, lambda p: GaussianKDE(p), 0.1, 10)
    >>> out.particles.shape
    torch.Size([100, 2])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._compat import renamed_kwargs
from pyro_disco.estimators.base import EstimatorFactory, ScoreLike, as_score_fn
from pyro_disco.estimators.kde import GaussianKDE
from pyro_disco.estimators.whitening import quiet_outliers
from pyro_disco.infer._loop import run_loop

__all__ = [
    "FlowState",
    "FlowInfo",
    "FlowRun",
    "init",
    "step",
    "run",
    "flow_init",
    "flow_step",
    "flow_run",
    "kde_factory",
]


class FlowState(NamedTuple):
    """``particles`` ``(n, d)`` at ``time`` (0-dim tensor)."""

    particles: Tensor
    time: Tensor


class FlowInfo(NamedTuple):
    """Mean speed :math:`\\frac1n\\sum_i \\|v(x_i)\\|` of the step (0-dim tensor)."""

    mean_speed: Tensor


class FlowRun(NamedTuple):
    """Final ``particles`` ``(n, d)``; ``trajectory`` ``(num_saved, n, d)`` (start included;
    ``None`` if ``save_every=0``); ``times`` ``(num_saved,)``; stacked info."""

    particles: Tensor
    trajectory: Tensor | None
    times: Tensor | None
    info: FlowInfo


def kde_factory(particles: Tensor) -> GaussianKDE:
    """The default estimator factory: Gaussian KDE with Scott's bandwidth (the blob method)."""
    return GaussianKDE(particles)


def init(particles: Tensor) -> FlowState:
    """Start at time 0 from ``particles`` ``(n, d)`` (not modified)."""
    if particles.dim() != 2:
        raise ValueError(f"particles must be (n, d), got {tuple(particles.shape)}")
    return FlowState(particles.detach(), particles.new_zeros(()))


@renamed_kwargs(target_score="score", estimator_fn="fit")
def step(
    state: FlowState, score: ScoreLike, step_size: float, fit: EstimatorFactory = kde_factory
) -> tuple[FlowState, FlowInfo]:
    """One Euler step :math:`x \\mathrel{+}= h(\\nabla\\log\\pi(x) - \\widehat{\\nabla\\log\\rho}(x))`,
    with :math:`\\nabla\\log\\pi` from ``score`` and :math:`\\widehat{\\nabla\\log\\rho}` from
    ``fit(particles)`` (``target_score=`` and ``estimator_fn=`` are their deprecated names)."""
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    x = state.particles
    velocity = as_score_fn(score)(x).detach() - as_score_fn(fit(x))(x).detach()  # n d
    return (
        FlowState(x + step_size * velocity, state.time + step_size),
        FlowInfo(velocity.norm(dim=-1).mean()),
    )


@renamed_kwargs(target_score="score", estimator_fn="fit")
def run(
    particles: Tensor,
    score: ScoreLike,
    fit: EstimatorFactory = kde_factory,
    step_size: float = 0.05,
    num_steps: int = 100,
    *,
    save_every: int = 0,
    progress: bool = False,
) -> FlowRun:
    """Run :func:`step` ``num_steps`` times from ``particles`` ``(n, d)``.

    Args:
        score: an estimator or ``score_fn`` of the target :math:`\\pi` (deprecated name:
            ``target_score=``).
        fit: ``particles -> estimator`` (anything with ``.score``), rebuilt every step
            (deprecated name: ``estimator_fn=``).
        save_every: keep the particles every this many steps (0: keep none).
    """

    def flow_step(i: int, state: FlowState) -> tuple[FlowState, FlowInfo]:
        if i == 0:  # the first fit checks the starting particles for outliers (OutlierWarning)
            return step(state, score, step_size, fit)
        with quiet_outliers():  # the refits of every later step skip that check (~2-7 ms)
            return step(state, score, step_size, fit)

    state, info, saved = run_loop(
        init(particles), flow_step, num_steps, save_every=save_every, desc="particle flow", progress=progress
    )
    if not saved:
        return FlowRun(state.particles, None, None, info)
    return FlowRun(
        state.particles, torch.stack([s.particles for s in saved]), torch.stack([s.time for s in saved]), info
    )


# The first release's names, kept for compatibility (pyro_disco.infer exports flow_run).
flow_init, flow_step, flow_run = init, step, run
