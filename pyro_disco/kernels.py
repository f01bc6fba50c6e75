r"""Radial kernels for Stein discrepancies and SVGD: RBF and IMQ with the median heuristic.

A radial kernel is :math:`k(x, y) = \varphi(\|x - y\|^2)`. Everything a Stein operator or
SVGD needs follows from :math:`\varphi, \varphi', \varphi''` (derivatives in the squared
distance :math:`r^2`):

.. math::
    \nabla_x k = 2\varphi'(r^2)(x - y), \qquad \nabla_y k = -\nabla_x k, \qquad
    \operatorname{tr} \nabla_x \nabla_y k = -2d\,\varphi'(r^2) - 4 r^2 \varphi''(r^2).

Why not Pyro's :class:`~pyro.infer.svgd.RBFSteinKernel` / ``IMQSteinKernel``: they return only
:math:`\log k` and its first derivative per coordinate (``N N D`` tensors), while the kernel
Stein discrepancy needs the trace term above (second derivatives); their bandwidth is
per coordinate, median / log(n + 1), a different kernel from the isotropic median heuristic
that the KSD test and Gorham & Mackey's IMQ result assume; and they check arguments with
``assert``. SVGD accepts them as they are (:func:`pyro_disco.infer.svgd.svgd_direction`).

Example:
    >>> x = torch.randn(100, 2)
    >>> k = RBF()
    >>> k(x, x).shape
    torch.Size([100, 100])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["median_bandwidth", "RadialKernel", "RBF", "IMQ"]


def median_bandwidth(x: Tensor, *, max_points: int = 2000) -> Tensor:
    """Median pairwise Euclidean distance of ``x`` ``(n, d)`` (on at most ``max_points`` rows,
    taken evenly spaced, so it stays cheap for large ``n``). Returns a 0-dim tensor > 0.
    The points are centred first: ``cdist`` expands squared distances, which loses everything
    to cancellation at an offset (float32 at 1e3 already)."""
    if x.shape[0] > max_points:
        x = x[torch.linspace(0, x.shape[0] - 1, max_points, device=x.device).long()]
    x = x - x.mean(0)
    dist = torch.cdist(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    med = dist[iu[0], iu[1]].median()
    if not bool(med > 0):
        raise ValueError("median heuristic failed: the points are (nearly) all identical")
    return med


class RadialKernel:
    """Base class. ``bandwidth`` is ``"median"`` (median heuristic on the first argument's
    points at each call) or a positive number."""

    def __init__(self, bandwidth: str | float = "median") -> None:
        if not (bandwidth == "median" or (isinstance(bandwidth, (int, float)) and bandwidth > 0)):
            raise ValueError(f"bandwidth must be 'median' or a positive number, got {bandwidth!r}")
        self.bandwidth = bandwidth

    def bandwidth_for(self, x: Tensor) -> Tensor:
        """The bandwidth ``h`` used for points ``x`` ``(n, d)``."""
        if self.bandwidth == "median":
            return median_bandwidth(x.detach())
        return torch.tensor(float(self.bandwidth), dtype=x.dtype, device=x.device)

    def profile(self, sqdist: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:math:`(\\varphi, \\varphi', \\varphi'')` at squared distances ``sqdist``."""
        raise NotImplementedError

    def __call__(self, x: Tensor, y: Tensor, h: Tensor | None = None) -> Tensor:
        """Gram matrix ``(n, m)`` of ``x`` ``(n, d)`` against ``y`` ``(m, d)`` (both centred on
        ``x``'s mean first, so the distances keep their accuracy at any offset)."""
        h = self.bandwidth_for(x) if h is None else h
        c = x.detach().mean(0)
        return self.profile(torch.cdist(x - c, y - c).square(), h)[0]


class RBF(RadialKernel):
    r"""Gaussian kernel :math:`k(x, y) = \exp(-\|x - y\|^2 / (2h^2))`."""

    def profile(self, sqdist: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        inv = 1.0 / (2.0 * h**2)
        phi = torch.exp(-sqdist * inv)
        return phi, -inv * phi, inv**2 * phi


class IMQ(RadialKernel):
    r"""Inverse multiquadric :math:`k(x, y) = (c^2 + \|x - y\|^2 / h^2)^{\beta}`, ``c = 1``,
    ``β = -1/2`` by default (Gorham & Mackey, 2017: it detects non-convergence)."""

    def __init__(self, bandwidth: str | float = "median", c: float = 1.0, beta: float = -0.5) -> None:
        super().__init__(bandwidth)
        if not (c > 0 and -1 < beta < 0):
            raise ValueError(f"IMQ needs c > 0 and beta in (-1, 0), got c={c}, beta={beta}")
        self.c, self.beta = c, beta

    def profile(self, sqdist: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        inv = 1.0 / h**2
        base = self.c**2 + sqdist * inv
        b = self.beta
        return base**b, b * inv * base ** (b - 1), b * (b - 1) * inv**2 * base ** (b - 2)
