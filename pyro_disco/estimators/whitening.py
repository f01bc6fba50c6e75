r"""Affine normalisation of a sample set (float64), the source of DiScoFormer's affine equivariance.

The whitening map is :math:`x \mapsto (x - \mu) A` with

.. math:: A = D^{-1} R^{-1/2}, \qquad D = \operatorname{diag}(\sigma_1, \dots, \sigma_d),

where :math:`\sigma_j` are the coordinates' standard deviations and :math:`R^{-1/2}` is the
*symmetric* inverse square root of the correlation matrix. Then :math:`A^\top \Sigma A = I`
(to round-off: no ridge is added — samples whose correlation matrix is near-singular are
rejected instead). Standardising first makes the map exactly equivariant under translations
and under isotropic *and* anisotropic (diagonal) scalings — the whitened coordinates do not
change at all — while any other invertible linear map of the input (a rotation, a reflection)
becomes an orthogonal map of the whitened coordinates, since any two whitening maps of the
same samples differ by one. The per-dimension networks learn that symmetry (DiScoFormer,
arXiv:2511.05924, §3.1); the universal network is exactly O(d)-equivariant, so it inherits
exact equivariance under every affine map.
Outputs map back as :math:`\log f(y) = \log f_w(y_w) + \log|\det A|` and
:math:`\nabla \log f(y) = A\, \nabla \log f_w(y_w)` (row vectors: ``s_w @ A.T``).

**Degenerate samples.** Every threshold is relative to the data, so units, scales and offsets
do not matter (``N(0, I)·1e-20``, a column in 1e5 next to one in 1e-7, an offset of 1e12 in
float64 are all fine): the samples are centred first (on one sample plus the mean of the exact
differences to it, so an offset costs no accuracy), each column is scaled by its own spread, and

- a column is *constant* when its standard deviation is at most ``CONSTANT_ULPS`` units of
  round-off of its magnitude (``std <= 4 · eps · max|x_j|``, ``eps`` of the samples' dtype);
- the samples lie in a lower-dimensional affine subspace when the correlation matrix's smallest
  eigenvalue is at most ``DEGENERATE`` (1e-10) times its largest.

Both raise :class:`~pyro_disco._validation.DegenerateSamplesError` (a ``ValueError``) with the
same message from every estimator (:func:`check_not_degenerate` is shared with the KDE family).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._validation import DegenerateSamplesError

__all__ = ["Whitening", "fit_whitening", "centre", "check_not_degenerate", "DEGENERATE", "CONSTANT_ULPS"]

DEGENERATE = 1e-10  # smallest admissible correlation eigenvalue, relative to the largest
# a column whose spread is this many units of round-off of its magnitude or less is constant:
# arithmetic on a constant leaves at most ~1 ulp of noise, while float32 data of sd 1 at an
# offset of 1e6 (16 representable levels per sd, a coarse but genuine sample) is ~8 units.
CONSTANT_ULPS = 4


class Whitening(NamedTuple):
    """The map ``x -> ((x - origin) - offset) @ matrix``, float64: ``origin`` ``(*B, d)`` (one of
    the samples), ``offset`` ``(*B, d)`` (the mean of the samples' differences to it),
    ``matrix`` :math:`A` ``(*B, d, d)``, ``logabsdet`` ``(*B,)``. The mean is kept as two parts
    because rounding their sum would shift queries against samples by an ulp of the offset."""

    origin: Tensor
    offset: Tensor
    matrix: Tensor
    logabsdet: Tensor

    @property
    def mean(self) -> Tensor:
        """The centre :math:`\\mu` ``(*B, d)`` (rounded to one float64)."""
        return self.origin + self.offset

    def apply(self, x: Tensor) -> Tensor:
        """``(x - mean) @ A`` for ``x`` ``(*B, m, d)``, in float64."""
        return ((x.double() - self.origin.unsqueeze(-2)) - self.offset.unsqueeze(-2)) @ self.matrix

    def invert(self, x_w: Tensor) -> Tensor:
        """The inverse map: whitened points ``(*B, m, d)`` back to the samples' space (float64)."""
        x = torch.linalg.solve(self.matrix.transpose(-1, -2), x_w.double().transpose(-1, -2))
        return (x.transpose(-1, -2) + self.offset.unsqueeze(-2)) + self.origin.unsqueeze(-2)

    def score_back(self, score_w: Tensor) -> Tensor:
        """Map whitened scores ``(*B, m, d)`` back: ``s_w @ A^T``."""
        return score_w.double() @ self.matrix.transpose(-1, -2)

    def score_forward(self, score: Tensor) -> Tensor:
        """Map scores in the original space to whitened space: ``s @ A^{-T}``."""
        return torch.linalg.solve(self.matrix, score.double().transpose(-1, -2)).transpose(-1, -2)


def centre(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(origin, offset, x - origin - offset)`` of ``x`` ``(*B, n, d)`` in float64, accurate at
    any offset: ``origin`` is the first sample, ``offset`` the mean of the differences to it
    (exact for samples within a factor 2 of each other). Centre other points the same way,
    ``(y - origin) - offset``."""
    x = x.double()
    origin = x[..., 0, :]
    dx = x - origin.unsqueeze(-2)
    offset = dx.mean(-2)
    return origin, offset, dx - offset.unsqueeze(-2)


def check_not_degenerate(cov: Tensor, magnitude: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Raise :class:`DegenerateSamplesError` if the covariance ``cov`` ``(*B, d, d)`` of centred
    samples is singular relative to the data; ``magnitude`` ``(*B, d)`` is each column's largest
    ``|x|`` (offset included) in the same units as ``cov``, ``dtype`` the samples' own.

    Returns the standard deviations ``(*B, d)`` and the eigenvalues ``(*B, d)`` and
    eigenvectors ``(*B, d, d)`` of the correlation matrix (float64, no graph).
    """
    cov = cov.detach().double()
    std = cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    constant = std <= CONSTANT_ULPS * torch.finfo(dtype).eps * magnitude.detach().double()
    if bool(constant.any()):
        cols = sorted({int(j) for j in constant.nonzero()[:, -1]})
        raise DegenerateSamplesError(
            f"samples are degenerate: coordinate(s) {cols} are constant (e.g. all samples identical)"
        )
    corr = cov / (std.unsqueeze(-1) * std.unsqueeze(-2))
    evals, evecs = torch.linalg.eigh(corr)
    ratio = evals[..., 0] / evals[..., -1]
    if bool((ratio <= DEGENERATE).any()):
        raise DegenerateSamplesError(
            "samples are degenerate: they lie in a lower-dimensional affine subspace "
            f"(smallest/largest correlation eigenvalue {float(ratio.min()):.2e} <= {DEGENERATE:.0e})"
        )
    return std, evals, evecs


def fit_whitening(samples: Tensor) -> Whitening:
    """Fit the whitening map of ``samples`` ``(*B, n, d)`` (float64 arithmetic).

    Raises:
        DegenerateSamplesError: a coordinate is constant or the samples lie in a
            lower-dimensional affine subspace (thresholds relative to the data, see the module
            docstring).
    """
    n = samples.shape[-2]
    origin, offset, xc = centre(samples.detach())
    # each column in units of its own largest deviation, so that squares neither overflow
    # nor underflow at any scale (1e-200 or 1e200) and mixed units are fine
    spread = xc.abs().amax(-2)  # *B d
    unit = torch.where(spread > 0, spread, torch.ones_like(spread))
    z = xc / unit.unsqueeze(-2)
    cov_z = z.transpose(-1, -2) @ z / (n - 1)  # *B d d
    magnitude = samples.detach().double().abs().amax(-2) / unit
    std_z, evals, evecs = check_not_degenerate(cov_z, magnitude, samples.dtype)
    std = std_z * unit
    inv_sqrt = (evecs * evals.rsqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)
    matrix = inv_sqrt / std.unsqueeze(-1)  # D^{-1} R^{-1/2}: row j scaled by 1/std_j
    logabsdet = -std.log().sum(-1) - 0.5 * evals.log().sum(-1)
    return Whitening(origin, offset, matrix, logabsdet)
