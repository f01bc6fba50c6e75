"""Safe export and registry (issue 12, item 5): names, overwrites, untrained runs, sha256, a
missing or corrupt registry."""

import json

import pytest
import torch

import pyro_disco.pretrained as pretrained
from pyro_disco.training import TrainConfig, train
from pyro_disco.training.export import export_run
from pyro_disco.training.train import CHECKPOINT


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        dim=2,
        steps=2,
        tokens_per_step=256,
        n_min=32,
        n_max=64,
        num_queries=16,
        warmup=1,
        model=dict(d_model=16, num_layers=1, num_heads=2, d_ff=32),
    )
    train(cfg, out, progress=False)
    return out


def _export(run, tmp_path, name="tiny", **kw):
    return export_run(run, name, weights_dir=tmp_path / "w", registry=tmp_path / "registry.json", **kw)


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "", ".hidden", "a\\b", "x" * 101])
def test_export_names_are_validated(name, run, tmp_path):
    """Was: --name ../../escaped wrote outside the weights folder."""
    with pytest.raises(ValueError, match="invalid model name"):
        _export(run, tmp_path, name)
    assert not (tmp_path / "w").exists()


def test_existing_model_is_not_overwritten_without_force(run, tmp_path):
    """Was: --name discoformer-d2 silently replaced the shipped weights and their sha."""
    first = _export(run, tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        _export(run, tmp_path)
    assert json.loads((tmp_path / "registry.json").read_text())["tiny"]["sha256"] == first["sha256"]
    _export(run, tmp_path, force=True)
    backups = list((tmp_path / "w" / "backup").glob("*/tiny.pt"))
    assert len(backups) == 1 and pretrained.sha256_file(backups[0]) == first["sha256"]
    assert list((tmp_path / "w" / "backup").glob("*/tiny.registry.json"))


def test_untrained_run_is_never_auto(run, tmp_path):
    """Was: a run with --steps -5 exported with auto: true."""
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["step"] = 0
    torch.save(state, untrained / CHECKPOINT)
    (untrained / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="cannot be the default"):
        _export(untrained, tmp_path)
    _export(untrained, tmp_path, auto=False)
    assert json.loads((tmp_path / "registry.json").read_text())["tiny"]["auto"] is False


def test_corrupt_registry_is_not_replaced_by_export(run, tmp_path):
    (tmp_path / "registry.json").write_text('{"discoformer-d2": {"file": ')
    with pytest.raises(ValueError, match="corrupt"):
        _export(run, tmp_path)


def _with_registry(monkeypatch, tmp_path, text):
    path = tmp_path / "registry.json"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(pretrained, "_REGISTRY_FILE", path)
    pretrained.load_model.cache_clear()


def test_registry_entry_without_sha256_is_refused(monkeypatch, tmp_path):
    """Was: sha256: null loaded with no verification."""
    entry = {"file": "discoformer-d2.pt", "sha256": None, "dim": 2, "auto": True}
    _with_registry(monkeypatch, tmp_path, json.dumps({"discoformer-d2": entry}))
    with pytest.raises(pretrained.RegistryError, match="no sha256"):
        pretrained.load_model("discoformer-d2")


@pytest.mark.parametrize(
    "text", [None, "{not json", "[]", '{"m": {"file": "../x.pt", "sha256": "ab", "dim": 2}}']
)
def test_missing_or_corrupt_registry_is_a_clear_error(text, monkeypatch, tmp_path):
    """Was: a missing registry.json silently turned every 'auto' into KDE."""
    import pyro_disco

    _with_registry(monkeypatch, tmp_path, text)
    with pytest.raises(pretrained.RegistryError):
        pretrained.available_models()
    x = torch.randn(200, 2, dtype=torch.float64)
    with pytest.raises(pretrained.RegistryError):
        pyro_disco.build_estimator(x, "auto")
    pretrained.load_model.cache_clear()


def test_model_card_command_reproduces_a_warm_started_mixture_run(monkeypatch):
    """The card's ``pyro-disco train`` line parses back to the same run (flags for booleans,
    the warm start included)."""
    import pyro_disco.training
    from pyro_disco.cli import main
    from pyro_disco.training import TrainConfig
    from pyro_disco.training.export import train_command

    cfg = TrainConfig(
        dim=32,
        arch="universal",
        steps=600,
        n_max=4096,
        lr=1e-4,
        dim_power=0.5,
        score_metric="both",
        model={"mixture_components": 6, "mixture_shrinkage": 0.2, "mixture_split_init": True},
        init_from="discoformer-universal",
        init_blend=0.5,
        warmup=30,
        heavy_tail_fraction=0.5,
    )
    seen = {}
    monkeypatch.setattr(pyro_disco.training, "train", lambda c, out, **kw: seen.update(cfg=c, out=out))
    assert main(train_command(cfg, "RUN").split()[1:]) == 0  # drop "pyro-disco"
    got = seen["cfg"]
    assert str(seen["out"]) == "RUN"
    for field in (
        "dim",
        "arch",
        "steps",
        "n_max",
        "lr",
        "dim_power",
        "score_metric",
        "init_from",
        "init_blend",
        "warmup",
        "heavy_tail_fraction",
    ):
        assert getattr(got, field) == getattr(cfg, field), field
    assert got.model == cfg.model
