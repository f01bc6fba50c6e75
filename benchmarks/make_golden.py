"""Write tests/golden/<name>.json for every shipped model (run after `pyro-disco export`)."""

import json
from pathlib import Path

import torch

from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.pretrained import available_models, load_model

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, dims in available_models().items():
        d = dims[0] if len(dims) == 1 else 5  # the universal model: pinned at d = 5
        g = torch.Generator().manual_seed(0)
        x = torch.randn(300, d, generator=g, dtype=torch.float64)
        y = torch.randn(16, d, generator=g, dtype=torch.float64)
        logp, s = DiScoFormerEstimator(load_model(name), x, normalize=False).logdensity_and_score(y)
        (OUT / f"{name}.json").write_text(
            json.dumps(
                {"seed": 0, "d": d, "n": 300, "m": 16, "logdensity": logp.tolist(), "score": s.tolist()}
            )
            + "\n"
        )
        print("wrote", OUT / f"{name}.json")
