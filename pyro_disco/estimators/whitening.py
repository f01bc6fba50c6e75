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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from pyro_disco._validation import DegenerateSamplesError

__all__ = ["Whitening", "fit_whitening"]

_DEGENERATE = 1e-10  # smallest admissible correlation eigenvalue (relative to the largest)


class Whitening(NamedTuple):
    """``mean`` ``(*B, d)``, ``matrix`` :math:`A` ``(*B, d, d)``, ``logabsdet`` ``(*B,)``; float64."""

    mean: Tensor
    matrix: Tensor
    logabsdet: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """``(x - mean) @ A`` for ``x`` ``(*B, m, d)``, in float64."""
        return (x.double() - self.mean.unsqueeze(-2)) @ self.matrix

    def score_back(self, score_w: Tensor) -> Tensor:
        """Map whitened scores ``(*B, m, d)`` back: ``s_w @ A^T``."""
        return score_w.double() @ self.matrix.transpose(-1, -2)

    def score_forward(self, score: Tensor) -> Tensor:
        """Map scores in the original space to whitened space: ``s @ A^{-T}``."""
        return torch.linalg.solve(self.matrix, score.double().transpose(-1, -2)).transpose(-1, -2)


def fit_whitening(samples: Tensor) -> Whitening:
    """Fit the whitening map of ``samples`` ``(*B, n, d)`` (float64 arithmetic).

    Raises:
        DegenerateSamplesError: a coordinate is constant or the samples lie in a
            lower-dimensional affine subspace.
    """
    x = samples.double()
    n, d = x.shape[-2:]
    mean = x.mean(-2)  # *B d
    xc = x - mean.unsqueeze(-2)
    std = (xc.square().sum(-2) / (n - 1)).sqrt()  # *B d
    scale = x.abs().amax(dim=(-2, -1), keepdim=False).clamp_min(1.0)
    if bool((std <= 1e-12 * scale.unsqueeze(-1)).any()):
        raise DegenerateSamplesError(
            "samples are degenerate: at least one coordinate is constant (e.g. all samples identical)"
        )
    z = xc / std.unsqueeze(-2)
    corr = z.transpose(-1, -2) @ z / (n - 1)  # *B d d
    evals, evecs = torch.linalg.eigh(corr)
    if bool((evals[..., 0] <= _DEGENERATE * evals[..., -1]).any()):
        raise DegenerateSamplesError(
            "samples are degenerate: they lie in a lower-dimensional affine subspace "
            f"(smallest/largest correlation eigenvalue {float((evals[..., 0] / evals[..., -1]).min()):.2e})"
        )
    inv_sqrt = (evecs * evals.rsqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)
    matrix = inv_sqrt / std.unsqueeze(-1)  # D^{-1} R^{-1/2}: row j scaled by 1/std_j
    logabsdet = -std.log().sum(-1) - 0.5 * evals.log().sum(-1)
    return Whitening(mean, matrix, logabsdet)
