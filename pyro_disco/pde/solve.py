r"""One entry point for the particle solvers: :func:`solve`.

Particles move with the problem's velocity :math:`u(x) = u[x, s(x)]`, where the score
:math:`s = \nabla\log\rho_t` of the particle density comes from an estimator refitted to the
particles at every velocity evaluation (KDE "blob", DiScoFormer, ...), from the exact
solution, or from a given ``score_fn(x, t)``. Time stepping is a plain dict of functional
steppers (as in torchdiffeq): ``"euler"`` (order 1), ``"heun"`` (order 2) and the implicit
``"midpoint"`` rule (order 2), which keeps quadratic invariants — the Landau energy — exact up to
its fixed-point tolerance.

Example:
    >>> from pyro_disco import GaussianKDE
    >>> from pyro_disco.pde import BKW
    >>> bkw = BKW.standard_2d()
    >>> x0 = bkw.sample_initial(100, generator=torch.Generator().manual_seed(0))
    >>> traj = solve(bkw, x0, torch.linspace(0, 1, 3), score=GaussianKDE, progress=False)
    >>> traj.particles.shape
    torch.Size([3, 100, 2])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_disco.pde import diagnostics as diag
from pyro_disco.pde.diagnostics import ExactSolution
from pyro_disco.pde.problems import FokkerPlanck, Landau

__all__ = ["solve", "Trajectory", "STEPPERS", "euler_step", "heun_step", "midpoint_step"]

VelocityFn = Callable[[float, Tensor], Tensor]
Problem = FokkerPlanck | Landau
# "exact", an estimator factory ``particles -> estimator`` or ``score_fn(x, t)``
ScoreSource = str | Callable[..., object]


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
ORDER = {"euler": 1, "heun": 2, "midpoint": 2}


# --------------------------------------------------------------------------- score sources


def _num_required_positional(fn: Callable) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


def _score_source(score: ScoreSource, exact: ExactSolution | None) -> tuple[Callable, str]:
    """Return ``evaluate(t, x) -> (score_values, logdensity_fn | None)`` and a label."""
    if isinstance(score, str):
        if score != "exact":
            raise ValueError(f"score must be 'exact', an estimator factory or score_fn(x, t), got {score!r}")
        if exact is None or not hasattr(exact, "score"):
            raise ValueError(
                "score='exact' needs an exact solution with a score: pass it as `problem` "
                "(e.g. BKW, GaussianMixtureSolution)"
            )
        return (lambda t, x: (exact.score(x, t), lambda y, t=t: exact.logdensity(y, t))), "exact"
    if not callable(score):
        raise TypeError(
            "score must be an estimator factory `particles -> estimator` (e.g. GaussianKDE), "
            f"'exact', or score_fn(x, t); got {type(score).__name__}. A fixed estimator is not "
            "the score of the moving particles: pass `lambda x: ...` if you really mean it"
        )
    nargs = _num_required_positional(score)
    if nargs == 2:
        return (lambda t, x: (score(x, t), None)), getattr(score, "__name__", "score_fn")
    if nargs == 1:

        def evaluate(t: float, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
            est = score(x)
            s = est.score(x) if hasattr(est, "score") else est
            if not isinstance(s, Tensor):
                raise TypeError("the score factory must return an estimator with .score(x) (or a tensor)")
            return s, (est.logdensity if hasattr(est, "logdensity") else None)

        return evaluate, getattr(score, "__name__", type(score).__name__)
    raise TypeError(
        "cannot tell whether `score` is a factory `particles -> estimator` (one argument) or "
        "score_fn(x, t) (two arguments); wrap it in a lambda with one of these signatures"
    )


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
    score: ScoreSource = "exact",
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
        score: an estimator factory ``particles -> estimator`` (e.g. ``GaussianKDE``,
            ``pretrained_estimator``), ``"exact"``, or ``score_fn(x, t) -> (n, d)``.
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
    evaluate, label = _score_source(score, exact)
    stepper = STEPPERS[method]

    def velocity_and_score(t: float, x: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor] | None]:
        s, logdensity_fn = evaluate(t, x)
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
