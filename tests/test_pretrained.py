"""Weight files: safe loading, sha256 checks, clear errors, the shipped models and the wheel."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig
from pyro_disco.pretrained import (
    WEIGHTS_DIR,
    available_dims,
    available_models,
    load_model,
    load_weights,
    pretrained_estimator,
    save_weights,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"


def _small_model():
    torch.manual_seed(0)
    return DiScoFormer(DiScoFormerConfig(dim=2, d_model=16, num_layers=1, num_heads=2, d_ff=32))


def test_save_and_load_roundtrip_with_sha256(tmp_path):
    model = _small_model()
    path = tmp_path / "m.pt"
    sha = save_weights(model, path, {"note": "test"})
    loaded = load_weights(path, sha256=sha)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_modified_file_is_rejected(tmp_path):
    path = tmp_path / "m.pt"
    sha = save_weights(_small_model(), path)
    with open(path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_weights(path, sha256=sha)


def test_pickled_objects_are_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    path = tmp_path / "evil.pt"
    torch.save({"config": {"dim": 2}, "state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_weights(path)


def test_unsupported_dimension_names_the_supported_ones():
    d = 37
    assert d not in available_dims()
    with pytest.raises(ValueError, match=r"no pretrained DiScoFormer for d=37; shipped dimensions"):
        pretrained_estimator(torch.randn(100, d, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(available_models()))
def test_golden_outputs_of_shipped_weights(name):
    """The shipped weights' outputs on a fixed input are pinned (tests/golden/<name>.json)."""
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    d = golden["d"]
    assert d in available_models()[name]
    g = torch.Generator().manual_seed(golden["seed"])
    x = torch.randn(golden["n"], d, generator=g, dtype=torch.float64)
    y = torch.randn(golden["m"], d, generator=g, dtype=torch.float64)
    logp, s = DiScoFormerEstimator(load_model(name), x, normalize=False).logdensity_and_score(y)
    # float32 network: reductions may be reordered across CPUs, nothing more
    torch.testing.assert_close(
        logp, torch.tensor(golden["logdensity"], dtype=torch.float64), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(s, torch.tensor(golden["score"], dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_every_shipped_model_has_a_golden_file_and_a_model_card():
    for name in available_models():
        assert (GOLDEN / f"{name}.json").exists(), name
        assert (WEIGHTS_DIR / f"{name}.md").exists(), name


def test_wheel_contains_and_loads_the_weights(tmp_path):
    """A wheel built from the repository ships the weights, and they load from the wheel."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pyro_disco-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert "pyro_disco/pretrained/registry.json" in names
    for entry in json.loads((ROOT / "pyro_disco/pretrained/registry.json").read_text()).values():
        assert f"pyro_disco/pretrained/weights/{entry['file']}" in names
    code = (
        f"import torch, pyro_disco.pretrained as p; assert p.__file__.startswith({str(site)!r}); "
        "[p.load_model(d) for d in p.available_dims()]; print(p.available_dims())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(available_dims())


def test_default_model_follows_the_benchmark_flags(tmp_path, monkeypatch):
    """The universal model is the default only where its registry ``auto`` list says the benchmark
    found it at least as good; elsewhere the per-dimension model, else the universal one."""
    import pyro_disco.pretrained as pretrained

    registry = {
        "per-d2": {"file": "a.pt", "sha256": "0", "dim": 2, "auto": True},
        "per-d10": {"file": "b.pt", "sha256": "0", "dim": 10, "auto": False},
        "per-d1": {"file": "c.pt", "sha256": "0", "dim": 1, "auto": True},
        "universal": {"file": "u.pt", "sha256": "0", "dims": [1, 32], "auto": [1, 3, 10]},
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(registry))
    monkeypatch.setattr(pretrained, "_REGISTRY_FILE", path)
    assert pretrained.registry_path() == path
    assert pretrained.available_dims() == list(range(1, 33))
    assert pretrained.available_models()["universal"] == list(range(1, 33))
    assert pretrained.auto_dims() == [1, 2, 3, 10]
    assert pretrained.default_model_name(1) == "universal"  # both auto: the universal model
    assert pretrained.default_model_name(2) == "per-d2"  # universal not marked at d = 2
    assert pretrained.default_model_name(10) == "universal"
    assert pretrained.default_model_name(7) == "universal"  # only model covering d = 7
    with pytest.raises(ValueError, match="no pretrained DiScoFormer for d=33"):
        pretrained.default_model_name(33)
