r"""Choose a score estimator on the user's own samples, without the truth: the Hyvärinen score.

For a score estimate :math:`s`, integration by parts (under mild tail conditions) gives

.. math:: J(s) = \mathbb E_p\big[\tfrac12\|s(x)\|^2 + \nabla\cdot s(x)\big]
               = \tfrac12\,\mathbb E_p\|s - \nabla\log p\|^2 - \tfrac12\,\mathbb E_p\|\nabla\log p\|^2,

so differences of :math:`J` between estimators are differences of their Fisher divergences to
the truth (half their score MSE), with no normalising constant. :func:`select_estimator`
estimates :math:`J` by K-fold cross-fitting — every candidate is built on the other folds and
scored on the held-out one, all candidates on the same points — and picks the lowest; a
candidate within a quarter of a paired standard error of the best counts as tied, and ties go
to the earliest (simplest) candidate. The terms are those of the scores in the samples'
whitened coordinates, so the choice does not depend on units or on any affine map of the
samples. The divergence is exact, by autograd (``d`` backward
passes). The defaults (2 folds, 1024 held-out points up to d = 5 and 512 from d = 10, band
0.25 se) are the rule that
``benchmarks/selection_rules.py`` found to match the classical peers in the most cells at
about the old cost; the old band of one se gave the simplest candidate too many wins (a KDE
within one se of a transformer with an eighth of its score error).

Reference: Hyvärinen, "Estimation of non-normalized statistical models by score matching",
JMLR 6 (2005).

Example:
    >>> from pyro_disco.estimators.kde import GaussianKDE
    >>> from pyro_disco.estimators.mixture import GaussianMixtureEstimator
    >>> x = torch.randn(400, 2, dtype=torch.float64)
    >>> sel = select_estimator(x, {"gmm": GaussianMixtureEstimator, "kde": GaussianKDE})
    >>> sel.chosen
    'gmm'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._validation import checked_once
from pyro_disco.estimators.base import Estimator
from pyro_disco.estimators.whitening import fit_whitening, quiet_outliers

__all__ = ["hyvarinen_terms", "select_estimator", "Selection", "default_max_points", "fold_indices", "pick"]


def hyvarinen_terms(estimator: Estimator, x: Tensor, basis: Tensor | None = None) -> Tensor:
    r"""Per-point Hyvärinen terms :math:`\tfrac12\|s(x_i)\|^2 + \nabla\cdot s(x_i)` ``(m,)`` at
    ``x`` ``(m, d)`` (the divergence by autograd, one backward pass per coordinate).

    With ``basis`` :math:`B` ``(d, d)`` the terms are those of the score in the coordinates
    :math:`y` with :math:`x = \mu + y B`: :math:`s_y = s\,B^\top` and
    :math:`\nabla_y\cdot s_y = \sum_i B_i \cdot \nabla_x (s \cdot B_i)` (rows :math:`B_i`). With
    :math:`B = A^{-1}` for the samples' whitening :math:`A`, the terms do not change when the
    samples are mapped by any affine map (units, rotations), up to round-off."""
    with torch.enable_grad():
        y = x.detach().clone().requires_grad_(True)
        s = estimator.score(y)  # m d
        if not s.requires_grad:
            raise TypeError(
                f"{type(estimator).__name__}.score is not differentiable in x; "
                "the Hyvärinen score needs its divergence"
            )
        d = x.shape[1]
        b = torch.eye(d, dtype=s.dtype, device=s.device) if basis is None else basis.to(s)
        sw = s @ b.T  # m d: the score in the basis' coordinates
        div = torch.zeros(x.shape[0], dtype=s.dtype, device=s.device)
        for i in range(d):
            (g,) = torch.autograd.grad(sw[:, i].sum(), y, retain_graph=i + 1 < d)
            div = div + g.to(s.dtype) @ b[i]
    return (0.5 * sw.detach().square().sum(-1) + div.detach()).to(torch.float64)


class Selection(NamedTuple):
    """What :func:`select_estimator` found: the ``chosen`` name; per candidate the mean
    Hyvärinen score ``scores[name]`` (lower is better) and the standard error of its paired
    difference to the best, ``std_errors[name]``; the number of held-out points and the
    wall time of the selection in seconds; ``note``: why the choice departs from the ranking,
    if it does (e.g. ``auto`` passing over a candidate whose log-density it cannot normalise)."""

    chosen: str
    scores: dict[str, float]
    std_errors: dict[str, float]
    num_points: int
    seconds: float
    note: str = ""
    terms: dict[str, Tensor] | None = None  # per candidate, its held-out terms (m,)
    tie_band: float = 0.25

    def without(self, name: str, note: str) -> Selection:
        """The choice with candidate ``name`` set aside, re-picked by the same rule from the same
        held-out terms (nothing is refitted); ``note`` says why. ``name``'s own score stays in
        the report."""
        rest = {k: v for k, v in (self.terms or {}).items() if k != name}
        if rest:
            chosen, means, ses = pick(rest, self.tie_band)
        else:  # not scored (tiny samples): the simplest of the others
            chosen = next(k for k in self.scores if k != name)
            means, ses = {k: v for k, v in self.scores.items() if k != name}, dict(self.std_errors)
        scores = {k: means.get(k, self.scores[k]) for k in self.scores}
        std_errors = {k: ses.get(k, math.nan) for k in self.scores}
        return self._replace(chosen=chosen, scores=scores, std_errors=std_errors, note=note)

    def __str__(self) -> str:
        rows = [f"{'candidate':>12} | Hyvärinen J | se(diff to best)"]
        for name, j in self.scores.items():
            mark = " <- chosen" if name == self.chosen else ""
            rows.append(f"{name:>12} | {j:11.4f} | {self.std_errors[name]:.4f}{mark}")
        rows.append(f"({self.num_points} held-out points, {self.seconds:.2f} s)")
        if self.note:
            rows.append(self.note)
        return "\n".join(rows)


def select_estimator(
    samples: Tensor,
    candidates: Mapping[str, Callable[[Tensor], Estimator]],
    *,
    folds: int = 2,
    max_points: int | None = None,
    tie_band: float = 0.25,
    seed: int = 0,
) -> Selection:
    """Rank ``candidates`` (name → ``samples -> estimator``, simplest first) by K-fold Hyvärinen score.

    Args:
        samples: ``(n, d)``.
        candidates: builders; a builder that raises ``ValueError`` on a fold (e.g. too few
            samples for it) drops out.
        folds: K of the K-fold split (each candidate is built K times on ``(K-1)/K`` of the data).
        max_points: held-out points scored in all (spread evenly over the folds): bounds the
            cost of the divergences (``d`` backward passes each). Default
            :func:`default_max_points` ``(d)``: 1024 up to d = 5, 512 from d = 10.
        tie_band: a candidate whose mean score is within ``tie_band`` paired standard errors
            of the best counts as tied; the earliest tied candidate wins (see :func:`pick`).
        seed: the split is a fixed function of it (deterministic selection).

    Tiny samples (fewer than ``4 (d + 1)`` points per fold) are not split: the simplest
    candidate is chosen.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    names = list(candidates)
    if not names:
        raise ValueError("no candidates to select from")
    n, d = samples.shape
    start = time.perf_counter()
    if n // folds < 4 * (d + 1):
        nan = {name: math.nan for name in names}
        return Selection(names[0], nan, dict(nan), 0, time.perf_counter() - start)
    per_fold = max(1, (default_max_points(d) if max_points is None else max_points) // folds)
    # scored in the samples' whitened coordinates: a change of units or any affine map of the
    # samples leaves every term, and so the choice, unchanged
    basis = torch.linalg.inv(fit_whitening(samples.detach()).matrix)
    terms: dict[str, list[Tensor]] = {name: [] for name in names}
    alive = set(names)
    for train, held in fold_indices(n, folds, seed, device=samples.device):
        with checked_once(samples[train]) as fold:  # checked once per fold, not per candidate
            for name in names:
                if name not in alive:
                    continue
                try:
                    with quiet_outliers():  # the refit on all samples warns once
                        est = candidates[name](fold)
                except ValueError:
                    alive.discard(name)
                    continue
                terms[name].append(hyvarinen_terms(est, samples[held[:per_fold]], basis))
    if not alive:
        raise ValueError("every candidate failed on the cross-validation folds")
    values = {name: torch.cat(terms[name]) for name in names if name in alive}
    chosen, means, ses = pick(values, tie_band)
    m = values[chosen].shape[0]
    return Selection(chosen, means, ses, m, time.perf_counter() - start, terms=values, tie_band=tie_band)


def default_max_points(dim: int) -> int:
    """Held-out points :func:`select_estimator` scores by default: a budget of 5120
    point-dimensions (the divergence costs ``dim`` backward passes per point), clipped to
    [512, 1024]. More points than 512 helped the selection at d <= 5 and not at d = 10
    (``benchmarks/selection_rules.py``)."""
    return min(1024, max(512, 5120 // dim))


def fold_indices(
    n: int, folds: int, seed: int = 0, *, device: torch.device | str | None = None
) -> list[tuple[Tensor, Tensor]]:
    """The K-fold split of :func:`select_estimator`: per fold ``(train, held)`` index tensors; the
    held-out indices are in random order (a prefix of them is a random subset)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    parts = perm.chunk(folds)
    return [(torch.cat([p for j, p in enumerate(parts) if j != k]), parts[k]) for k in range(folds)]


def pick(values: Mapping[str, Tensor], tie_band: float) -> tuple[str, dict[str, float], dict[str, float]]:
    """The selection rule on per-point Hyvärinen terms ``values[name]`` ``(m,)`` (same points for
    every candidate, simplest first): ``(chosen, means, std_errors)``. The lowest mean wins, but
    the earliest candidate within ``tie_band`` paired standard errors of it counts as tied and
    is chosen instead. Candidates with non-finite terms drop out."""
    values = {name: v for name, v in values.items() if bool(torch.isfinite(v).all())}
    if not values:
        raise ValueError("every candidate gave non-finite scores on the held-out samples")
    means = {name: float(v.mean()) for name, v in values.items()}
    best = min(means, key=means.get)
    m = values[best].shape[0]
    ses = {
        name: float((v - values[best]).std() / math.sqrt(m)) if name != best else 0.0
        for name, v in values.items()
    }
    chosen = next(name for name in values if means[name] - means[best] <= tie_band * ses[name])
    return chosen, means, ses
