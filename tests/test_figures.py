"""docs/make_figures.py regenerates every README figure: it covers them all, runs in a small
mode, writes valid PNGs, and leaves the old figures alone when a source fails."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "make_figures.py"


def _load():
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_readme_figure_has_a_source():
    shown = set(re.findall(r"!\[[^\]]*\]\(docs/figures/([^)]+)\)", (ROOT / "README.md").read_text()))
    assert shown, "the README shows no figure from docs/figures: update this test"
    assert shown <= set(_load().FIGURES), shown - set(_load().FIGURES)


def test_smoke_run_writes_valid_pngs(tmp_path):
    # one figure from the demo and one from a notebook: both kinds of source, ~10 s on 2 cores
    wanted = ["demo.png", "landau_relaxation.png"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", "figs", "--only", *wanted],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smoke mode" in proc.stdout
    out = tmp_path / "figs"  # relative --out: the notebooks' kernels run elsewhere
    assert sorted(p.name for p in out.iterdir()) == wanted  # no scratch folder left behind
    mf = _load()
    for name in wanted:
        assert mf.is_png(out / name) and (out / name).stat().st_size > 10_000


def test_a_failed_source_replaces_nothing(tmp_path, monkeypatch):
    mf = _load()
    old = tmp_path / "fisher_vs_n.png"
    old.write_bytes(mf.PNG_MAGIC + b"previous figure")
    monkeypatch.setattr(
        mf, "_run_notebook", lambda name, scratch, smoke: None
    )  # a source that writes nothing
    with pytest.raises(RuntimeError, match="not produced"):
        mf.make_figures(tmp_path, smoke=True, only=["fisher_vs_n.png"])
    assert old.read_bytes() == mf.PNG_MAGIC + b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fisher_vs_n.png"]
    with pytest.raises(ValueError, match="unknown figure"):
        mf.make_figures(tmp_path, only=["nope.png"])
