"""The first release's public names still work, with a DeprecationWarning (``pyro_disco._compat``)."""

import pytest
import torch

import pyro_disco
from pyro_disco import GaussianKDE


def test_as_logdensity_fn_still_works_with_a_deprecation_warning():
    kde = GaussianKDE(torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="as_logdensity_fn"):
        fn = pyro_disco.as_logdensity_fn(kde)
    assert torch.equal(fn(x), kde.logdensity(x))
    with pytest.warns(DeprecationWarning):
        assert pyro_disco.as_logdensity_fn(torch.sin) is torch.sin
