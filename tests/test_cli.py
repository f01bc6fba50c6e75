"""The command line: demo, estimate on user files (no pickles), train + export."""

import json
import os

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
    assert "gmm" in text and "auto -> " in text  # auto names the estimator it chose
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


def _one_line_error(argv, capsys) -> str:
    """Run the CLI expecting a usage error: exit status 2 and one 'error:' line, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_estimate_refuses_pickled_arrays(tmp_path, capsys):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    line = _one_line_error(
        ["estimate", str(path), "--estimator", "kde", "--out", str(tmp_path / "o.npz")], capsys
    )
    assert "Python objects, refused" in line


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_every_user_mistake_is_one_line(tmp_path, capsys):
    good = _write(tmp_path / "x.csv", "\n".join(f"{i % 7},{(i * 3) % 11}" for i in range(40)))
    out = str(tmp_path / "o.npz")
    cases = {
        "does not exist": ["estimate", str(tmp_path / "missing.csv")],
        "is a folder": ["estimate", str(tmp_path)],
        "invalid choice: 'kdee'": ["estimate", good, "--estimator", "kdee"],
        "could not read numbers": ["estimate", _write(tmp_path / "t.csv", "a,b\nc,d\n1,2\n")],
        "d=3 coordinates": ["estimate", good, "--queries", _write(tmp_path / "q.csv", "1,2,3\n")],
        "n > d": ["estimate", _write(tmp_path / "few.csv", "1,2\n3,5\n")],
        "--adapt-steps needs the transformer": ["estimate", good, "--estimator", "kde", "--adapt-steps", "2"],
        "must be >= 0": ["estimate", good, "--adapt-steps", "-1"],
        "output folder": ["estimate", good, "--estimator", "kde", "--out", str(tmp_path / "no" / "o.npz")],
    }
    for expected, argv in cases.items():
        if "--out" not in argv:
            argv = [*argv, "--out", out]
        line = _one_line_error(argv, capsys)
        assert expected in line, (expected, line)


def test_csv_header_output_name_and_format(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 2))
    path = tmp_path / "x.csv"
    np.savetxt(path, x, delimiter=",", header="a,b", comments="")  # a header row, skipped
    out = tmp_path / "est.csv"
    assert main(["estimate", str(path), "--estimator", "kde", "--out", str(out), "--no-progress"]) == 0
    assert f"to {out} (CSV)" in capsys.readouterr().out
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (100, 5) and out.read_text().startswith("x0,x1,logdensity,score0,score1")
    ref = GaussianKDE(torch.from_numpy(x))
    np.testing.assert_allclose(
        table[:, 2], ref.logdensity(torch.from_numpy(x)).numpy(), rtol=1e-6
    )  # %.18e text
    other = tmp_path / "result.bin"  # any other name: npz content under exactly that name
    main(["estimate", str(path), "--estimator", "kde", "--out", str(other), "--no-progress"])
    assert other.exists() and not (tmp_path / "result.bin.npz").exists()
    assert np.load(other, allow_pickle=False)["score"].shape == (100, 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pyro-disco-")] == []  # no temp left
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual permissions, not mkstemp's 0600


def test_version_help_and_choices(capsys):
    import pyro_disco
    from pyro_disco.cli import ESTIMATOR_CHOICES
    from pyro_disco.factory import ESTIMATORS

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pyro-disco {pyro_disco.__version__}"
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert "(default: auto)" in text and "(default: estimate.npz)" in text
    assert "``" not in text and ":math:" not in text  # no RST markup
    assert tuple(ESTIMATOR_CHOICES) == tuple(ESTIMATORS)


def test_progress_bar_on_long_estimates(tmp_path, capsys, monkeypatch):
    import pyro_disco.cli as cli

    monkeypatch.setattr(cli, "_PROGRESS_CHUNK", 50)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(2).normal(size=(300, 2)))
    seen = {}
    import tqdm.auto

    real = tqdm.auto.tqdm

    class Spy(real):
        def __init__(self, *a, **k):
            seen.update(k)
            super().__init__(*a, **k)

    monkeypatch.setattr(tqdm.auto, "tqdm", Spy)
    main(["estimate", str(x), "--estimator", "kde", "--out", str(tmp_path / "o.npz")])
    assert seen["total"] == 300 and seen["delay"] == 2.0 and not seen["disable"]


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


def test_a_failed_write_leaves_the_previous_result_intact(tmp_path):
    """Issue 12, item 8: a failed ``estimate`` write truncated the previous result file."""
    from pyro_disco.cli import _write_atomically

    path = tmp_path / "result.npz"
    path.write_bytes(b"previous result")

    def fail_midway(f):
        f.write(b"half a new result")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_atomically(str(path), fail_midway)
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.npz"]  # no temporary file left
