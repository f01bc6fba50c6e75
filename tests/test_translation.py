"""Translation equivariance of the kernel computations at large offsets (issue 12, item 2).

Squared distances expanded as |x|^2 + |y|^2 - 2 x.y (``torch.cdist`` for more than 25 points,
the Stein kernel's matrix products, the Landau moment expansion, SVGD's repulsion) lose every
digit to cancellation at an offset: float32 at 1e3 already. They are centred first now.

The data sit on a grid coarse enough that ``x + offset`` is exact in the working dtype, so the
shifted problem is exactly the unshifted one; the reference is computed in float64 at offset 0.
Tolerances are round-off of O(1) quantities in the working dtype, relative to the largest entry.
"""

import pytest
import torch

from pyro_disco.infer.svgd import svgd_direction
from pyro_disco.kernels import IMQ, RBF, median_bandwidth
from pyro_disco.pde.problems import landau_velocity
from pyro_disco.stein.ksd import ksd, stein_kernel, stein_kernel_matrix

DT = torch.float64
CASES = [(torch.float32, 1e3), (torch.float32, 1e6), (torch.float64, 1e6), (torch.float64, 1e12)]
IDS = [f"{str(dt)[6:]}-{o:.0e}" for dt, o in CASES]
TOL = {torch.float32: 1e-4, torch.float64: 1e-9}  # relative to the largest entry


def _grid(n: int, d: int, seed: int) -> torch.Tensor:
    """sd-4 draws on a 1/16 grid: exact in float32 up to offsets of 2^20 > 1e6 and in float64
    far beyond 1e12."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=DT) * 64).round() / 16


def _close(got: torch.Tensor, ref: torch.Tensor, dtype) -> None:
    scale = float(ref.abs().max())
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=TOL[dtype] * scale)


def _score(offset: float):
    """The N(offset, 16 I) score, exact on the grid: (x - offset) is exact there."""
    return lambda z: -(z - offset) / 16.0


@pytest.mark.parametrize("dtype, offset", CASES, ids=IDS)
def test_stein_kernels_are_translation_equivariant(dtype, offset):
    x, y = _grid(120, 3, 0), _grid(40, 3, 1)
    q = lambda z: -(z - 1.0) / 9.0  # noqa: E731 - a q != p, so that KSD^2 is O(1), not ~0
    xs, ys = (x + offset).to(dtype), (y + offset).to(dtype)
    assert xs.double().sub(offset).equal(x)  # the shift is exact
    q_shift = lambda z: -(z - offset - 1.0) / 9.0  # noqa: E731
    for kernel in (IMQ(), RBF()):
        _close(
            stein_kernel_matrix(xs, q_shift, kernel=kernel), stein_kernel_matrix(x, q, kernel=kernel), dtype
        )
        ref = stein_kernel(x, y, q(x), q(y), kernel=kernel)
        _close(stein_kernel(xs, ys, q_shift(xs), q_shift(ys), kernel=kernel), ref, dtype)
        for stat in ("u", "v"):
            got = ksd(xs, q_shift, kernel=kernel, statistic=stat, block_size=17)
            _close(got.reshape(1), ksd(x, q, kernel=kernel, statistic=stat).reshape(1), dtype)
    _close(median_bandwidth(xs).reshape(1), median_bandwidth(x).reshape(1), dtype)
    _close(RBF(2.0)(xs, ys), RBF(2.0)(x, y), dtype)


@pytest.mark.parametrize("dtype, offset", CASES, ids=IDS)
def test_svgd_direction_is_translation_equivariant(dtype, offset):
    x = _grid(150, 2, 2)
    xs = (x + offset).to(dtype)
    for kernel in (RBF(), IMQ()):
        phi, h = svgd_direction(x, _score(0.0), kernel)
        phi_s, h_s = svgd_direction(xs, _score(offset), kernel)
        _close(phi_s, phi, dtype)
        _close(h_s.reshape(1), h.reshape(1), dtype)


@pytest.mark.parametrize("dtype, offset", CASES, ids=IDS)
@pytest.mark.parametrize("algorithm", ["moments", "pairwise"])
def test_landau_velocity_is_translation_equivariant(dtype, offset, algorithm):
    """u depends on v_p - v_q and s_p - s_q only. The Maxwell moment expansion was the part
    that cancelled (at offset 1e3 in float32 it was off by more than the velocity itself)."""
    v = _grid(200, 3, 3)
    s = -v / 16.0 + 0.25 * torch.sin(v)  # not the Maxwellian's score: u != 0
    ref = landau_velocity(v, s, B=0.5, algorithm=algorithm)
    got = landau_velocity((v + offset).to(dtype), s.to(dtype), B=0.5, algorithm=algorithm)
    _close(got, ref, dtype)
