import os

import pytest
import torch

# The suite runs on 2 shared cores: one intra-op thread keeps timings predictable.
torch.set_num_threads(int(os.environ.get("PYRO_DISCO_TEST_THREADS", "1")))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def random_model():
    """A randomly initialised float64 DiScoFormer whose heads are *not* zero (so the network,
    not only the Gaussian baseline, shapes the output)."""
    from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig

    def make(dim: int, **kw):
        torch.manual_seed(dim)
        model = DiScoFormer(DiScoFormerConfig(dim=dim, d_model=32, num_layers=2, num_heads=4, d_ff=64, **kw))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.3)
        return model.double().eval()

    return make
