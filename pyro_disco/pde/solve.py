r"""One entry point for the particle solvers: :func:`solve`.

Particles move with the problem's velocity :math:`u(x) = u[x, s(x)]`, where the score
:math:`s = \nabla\log\rho_t` of the particle density comes from an estimator refitted to the
particles at every velocity evaluation (KDE "blob", DiScoFormer, ...), from the exact
solution (``score="exact"``, the default), or from a given ``score_fn(x, t)`` (``score_fn=``);
an estimator factory is passed as ``fit=``. Time stepping is a plain dict of functional
steppers (as in torchdiffeq): ``"euler"`` (order 1), ``"heun"`` (order 2) and the implicit
``"midpoint"`` rule (order 2), which keeps quadratic invariants — the Landau energy — exact up to
its fixed-point tolerance.

Example:
    >>> from pyro_disco import GaussianKDE
    >>> from pyro_disco.pde import BKW
    >>> bkw = BKW.standard_2d()
    >>> x0 = bkw.sample_initial(100, generator=torch.Generator().manual_seed(0))
    >>> traj = solve(bkw, x0, torch.linspace(0, 1, 3), fit=GaussianKDE, progress=False)
    >>> traj.particles.shape
    torch.Size([3, 100, 2])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_disco.estimators.base import EstimatorFactory, as_estimator_factory
from pyro_disco.estimators.whitening import quiet_outliers
from pyro_disco.pde import diagnostics as diag
from pyro_disco.pde.diagnostics import ExactSolution
from pyro_disco.pde.problems import FokkerPlanck, Landau

__all__ = ["solve", "Trajectory", "STEPPERS", "euler_step", "heun_step", "midpoint_step"]

VelocityFn = Callable[[float, Tensor], Tensor]
Problem = FokkerPlanck | Landau
TimeScoreFn = Callable[[Tensor, float], Tensor]  # score_fn(x (n, d), t) -> (n, d)
Evaluate = Callable[[float, Tensor], tuple[Tensor, Callable[[Tensor], Tensor] | None]]


class Trajectory(NamedTuple):
    """``times`` (T,), ``particles`` (T, n, d), ``diagnostics``: name -> (T, ...) tensor."""

    times: Tensor
    particles: Tensor
    diagnostics: dict


# --------------------------------------------------------------------------- steppers


def euler_step(velocity_fn: VelocityFn, t: float, x: Tensor, step_size: float, k1: Tensor) -> Tensor:
    """Forward Euler: ``x + h u(t, x)`` (``k1 = u(t, x)`` is passed in, already computed)."""
    return x + step_size * k1


def heun_step(velocity_fn: VelocityFn, t: float, x: Tensor, step_size: float, k1: Tensor) -> Tensor:
    """Heun (explicit trapezoid), order 2."""
    k2 = velocity_fn(t + step_size, x + step_size * k1)
    return x + 0.5 * step_size * (k1 + k2)


def midpoint_step(
    velocity_fn: VelocityFn,
    t: float,
    x: Tensor,
    step_size: float,
    k1: Tensor,
    *,
    tol: float = 1e-13,
    max_iter: int = 100,
) -> Tensor:
    r"""Implicit midpoint :math:`y = x + h\,u(t + h/2, (x + y)/2)` by fixed-point iteration.

    Conserves every quadratic invariant (Landau's energy) and every linear one (momentum).
    """
    y = x + step_size * k1
    for _ in range(max_iter):
        y_new = x + step_size * velocity_fn(t + 0.5 * step_size, 0.5 * (x + y))
        change = float((y_new - y).abs().max())
        y = y_new
        if change <= tol * (1.0 + float(y.abs().max())):
            return y
    raise RuntimeError(
        f"implicit midpoint did not converge in {max_iter} iterations "
        f"(last change {change:.2e}); "
        "use a smaller step_size"
    )


STEPPERS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step}


# --------------------------------------------------------------------------- score sources


def _exact_source(exact: ExactSolution | None) -> Evaluate:
    if exact is None or not hasattr(exact, "score"):
        raise ValueError(
            "score='exact' needs an exact solution with a score: pass it as `problem` "
            "(e.g. BKW, GaussianMixtureSolution)"
        )
    return lambda t, x: (exact.score(x, t), lambda y, t=t: exact.logdensity(y, t))


def _fit_source(fit: EstimatorFactory) -> Evaluate:
    factory = as_estimator_factory(fit)

    def evaluate(t: float, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
        est = factory(x)
        return est.score(x), (est.logdensity if hasattr(est, "logdensity") else None)

    return evaluate


def _legacy_source(score: Callable) -> Evaluate:
    """``score=<callable>``, the first release's spelling of ``fit=`` and ``score_fn=``: it is
    told apart by what one call does, once, at the first evaluation (no signature is read), and
    a :class:`DeprecationWarning` names the keyword to use. A call ``score(x)`` that fails to bind
    (no frame of ``score`` ran) means ``score_fn(x, t)``; one that returns an estimator means a
    factory; one that returns a tensor, a time-independent score."""
    kind: list[str] = []

    def evaluate(t: float, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
        if kind == ["score_fn"]:
            return score(x, t), None
        try:
            out = score(x)
        except TypeError as exc:
            if kind or exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
                raise  # raised inside `score`, not by the call: not ours to reinterpret
            kind.append("score_fn")
            warnings.warn(
                "solve(score=score_fn) with a score_fn(x, t) is deprecated; pass score_fn=",
                DeprecationWarning,
                stacklevel=4,
            )
            return score(x, t), None
        if not kind:
            kind.append("fit" if hasattr(out, "score") else "tensor")
            if kind == ["fit"]:
                warnings.warn(
                    "solve(score=factory) with an estimator factory is deprecated; pass fit=",
                    DeprecationWarning,
                    stacklevel=4,
                )
        if hasattr(out, "score"):
            return out.score(x), (out.logdensity if hasattr(out, "logdensity") else None)
        if not isinstance(out, Tensor):
            raise TypeError("the score factory must return an estimator with .score(x) (or a tensor)")
        return out, None

    return evaluate


def _score_source(
    score: str | Callable | None,
    score_fn: TimeScoreFn | None,
    fit: EstimatorFactory | None,
    exact: ExactSolution | None,
) -> tuple[Evaluate, str]:
    """Return ``evaluate(t, x) -> (score_values, logdensity_fn | None)`` and a label."""
    if sum(a is not None for a in (score, score_fn, fit)) > 1:
        raise ValueError("give one of score='exact', score_fn= or fit=")
    if fit is not None:
        return _fit_source(fit), getattr(fit, "__name__", type(fit).__name__)
    if score_fn is not None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be a function score_fn(x, t), got {type(score_fn).__name__}")
        return (lambda t, x: (score_fn(x, t), None)), getattr(score_fn, "__name__", "score_fn")
    if score is None or isinstance(score, str):
        if score not in (None, "exact"):
            raise ValueError(f"score must be 'exact' (or use fit= / score_fn=), got {score!r}")
        return _exact_source(exact), "exact"
    if not callable(score) or (hasattr(score, "score") and not isinstance(score, type)):
        raise TypeError(
            "score= takes 'exact'; an estimator factory `particles -> estimator` (e.g. GaussianKDE) "
            f"goes in fit=, a score_fn(x, t) in score_fn=; got {type(score).__name__}. A fixed "
            "estimator is not the score of the moving particles: pass `lambda x, t: ...` as "
            "score_fn= if you really mean it"
        )
    return _legacy_source(score), getattr(score, "__name__", type(score).__name__)


# --------------------------------------------------------------------------- solve


def _split(problem: Problem | ExactSolution) -> tuple[Problem, ExactSolution | None]:
    """``(problem, exact solution or None)`` from a problem or an exact-solution object."""
    if isinstance(problem, (FokkerPlanck, Landau)):
        return problem, None
    inner = getattr(problem, "problem", None)
    if isinstance(inner, (FokkerPlanck, Landau)):
        return inner, problem
    raise TypeError(
        f"problem must be FokkerPlanck, Landau or an exact solution of one, got {type(problem).__name__}"
    )


def solve(
    problem: Problem | ExactSolution,
    particles: Tensor,
    times: Tensor | Sequence[float],
    *,
    score: str | None = None,
    score_fn: TimeScoreFn | None = None,
    fit: EstimatorFactory | None = None,
    method: str = "euler",
    step_size: float | None = None,
    block_size: int | None = None,
    progress: bool = True,
) -> Trajectory:
    r"""Move ``particles`` with the score-based velocity of ``problem`` and record them at ``times``.

    .. math:: \frac{dx_p}{dt} = u\big[x, s(x)\big]_p

    Args:
        problem: :class:`FokkerPlanck`, :class:`Landau`, or an exact solution (``BKW``,
            ``GaussianMixtureSolution``, ``MaxwellRelaxation``): then errors against it are recorded.
        particles: ``(n, d)`` at ``times[0]`` (not modified).
        times: increasing 1-D times at which to record.
        score: ``"exact"`` (the default when neither ``score_fn`` nor ``fit`` is given): the
            exact solution's score. An estimator factory or a ``score_fn(x, t)`` passed here is the
            first release's spelling of ``fit=`` / ``score_fn=``: it still works, with a
            :class:`DeprecationWarning`.
        score_fn: a given score ``score_fn(x, t) -> (n, d)``.
        fit: an estimator factory ``particles -> estimator`` (e.g. ``GaussianKDE``,
            ``pretrained_estimator``), refitted at every velocity evaluation.
        method: ``"euler"``, ``"heun"`` or ``"midpoint"``.
        step_size: largest time step; each interval of ``times`` is split evenly. Default: one
            step per interval.
        block_size: Landau: particles per block of the ``O(n^2)`` velocity.
        progress: show a tqdm bar over the steps.

    Returns:
        :class:`Trajectory`; its ``diagnostics`` are listed in :func:`pyro_disco.pde.diagnostics.record`.
    """
    problem, exact = _split(problem)
    if method not in STEPPERS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(STEPPERS)}")
    if not isinstance(particles, Tensor) or particles.dim() != 2 or not particles.is_floating_point():
        raise ValueError("particles must be a floating tensor of shape (n, d)")
    if not bool(torch.isfinite(particles).all()):
        raise ValueError("particles contain non-finite values")
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 1 or (times.numel() > 1 and not bool((times.diff() > 0).all())):
        raise ValueError("times must be a non-empty, strictly increasing 1-D sequence")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    evaluate, label = _score_source(score, score_fn, fit, exact)
    stepper = STEPPERS[method]

    checked = []  # the first fit checks the starting particles for outliers; the refits skip it

    def velocity_and_score(t: float, x: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor] | None]:
        if checked:
            with quiet_outliers():  # an estimator refitted at every evaluation: no per-step check
                s, logdensity_fn = evaluate(t, x)
        else:
            s, logdensity_fn = evaluate(t, x)
            checked.append(True)
        s = s.to(x.dtype)
        if isinstance(problem, Landau):
            return problem.velocity(x, s, t, block_size=block_size), s, logdensity_fn
        return problem.velocity(x, s, t), s, logdensity_fn

    def velocity_fn(t: float, x: Tensor) -> Tensor:
        return velocity_and_score(t, x)[0]

    grid = times.tolist()
    substeps = [
        1 if step_size is None else max(1, math.ceil((b - a) / step_size - 1e-9))
        for a, b in zip(grid[:-1], grid[1:], strict=True)
    ]
    x = particles.clone()
    x0 = particles
    snapshots, records = [], []
    bar = tqdm(total=sum(substeps), disable=not progress, desc=f"{method}/{label}")
    for i, t in enumerate(grid):
        u, s, logdensity_fn = velocity_and_score(t, x)
        snapshots.append(x)
        records.append(diag.record(x, x0, u, s, t, logdensity_fn=logdensity_fn, exact=exact))
        if i + 1 == len(grid):
            break
        h = (grid[i + 1] - t) / substeps[i]
        for k in range(substeps[i]):
            tk = t + k * h
            if k > 0:
                u = velocity_fn(tk, x)
            x = stepper(velocity_fn, tk, x, h, u)
            bar.update(1)
        if not bool(torch.isfinite(x).all()):
            bar.close()
            raise FloatingPointError(f"particles became non-finite before t={grid[i + 1]}; reduce step_size")
    bar.close()
    diagnostics = {k: torch.stack([r[k] for r in records]) for k in records[0]}
    return Trajectory(times, torch.stack(snapshots), diagnostics)
