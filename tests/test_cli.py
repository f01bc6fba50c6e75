"""The command line: demo, estimate on user files (no pickles), train + export."""

import json

import numpy as np
import pytest
import torch

from pyro_disco import GaussianKDE
from pyro_disco.cli import main
from pyro_disco.pretrained import load_weights, sha256_file
from pyro_disco.training.export import export_run


def test_demo_prints_a_table_and_saves_a_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--num-samples", "300", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rel. score MSE" in text and "kde" in text
    assert out.exists() and out.stat().st_size > 10_000


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_estimate_on_user_files(tmp_path, suffix, capsys):
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(200, 2)), rng.normal(size=(7, 2))
    paths = [tmp_path / f"x{suffix}", tmp_path / f"q{suffix}"]
    for arr, path in zip((x, q), paths):
        np.save(path, arr) if suffix == ".npy" else np.savetxt(path, arr, delimiter=",")
    out = tmp_path / "out.npz"
    main(["estimate", str(paths[0]), "--queries", str(paths[1]), "--estimator", "kde", "--out", str(out)])
    res = np.load(out, allow_pickle=False)
    ref = GaussianKDE(torch.from_numpy(x)).score(torch.from_numpy(q))
    np.testing.assert_allclose(res["score"], ref.numpy(), rtol=1e-10)  # the same float64 computation
    assert res["logdensity"].shape == (7,)


def test_estimate_refuses_pickled_arrays(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        main(["estimate", str(path), "--estimator", "kde", "--out", str(tmp_path / "o.npz")])


def test_train_then_export(tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--dim",
        "2",
        "--out",
        str(run),
        "--steps",
        "3",
        "--tokens-per-step",
        "256",
        "--n-min",
        "32",
        "--n-max",
        "64",
        "--d-model",
        "16",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--d-ff",
        "32",
        "--eval-every",
        "3",
        "--no-progress",
    ]
    assert main(args) == 0
    info = export_run(run, "tiny", weights_dir=tmp_path / "w", registry=tmp_path / "registry.json")
    entry = json.loads((tmp_path / "registry.json").read_text())["tiny"]
    assert entry["sha256"] == sha256_file(tmp_path / "w" / "tiny.pt") == info["sha256"]
    model = load_weights(tmp_path / "w" / "tiny.pt", sha256=entry["sha256"])
    assert model.config.dim == 2 and info["steps"] == 3
    card = (tmp_path / "w" / "tiny.md").read_text()
    assert "pyro-disco train --dim 2" in card and "--steps 3" in card
