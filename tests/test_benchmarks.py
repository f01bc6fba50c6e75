"""Every benchmark script runs end to end in a small mode, so the README's commands cannot rot."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

NUMBER = re.compile(r"-?[0-9][0-9,]*(\.[0-9]+)?( %)?")  # a table cell that is one number
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script, args, expect",
    [
        ("samplers.py", ["--smoke"], "MALA"),
        ("fisher.py", ["--quick"], "KSD"),
        ("equivariance.py", ["--trials", "1", "--universal-dims", "3"], "| permutation |"),
        (
            "accuracy.py",
            ["--reps", "1", "--sizes", "256", "--tta-max-n", "256", "--out", "{tmp}/acc.md"],
            "Scott KDE",
        ),
        ("scale.py", ["--n", "512", "--m", "256", "--universal"], "universal / KDE time ratio"),
        ("scale.py", ["--sweep", "--dims", "2", "--sizes", "256", "512"], "Log-log slope"),
        ("pde.py", ["--sizes", "300", "--peers", "CV-KDE"], "BKW d=3"),
        (
            "universal.py",
            ["--dims", "2", "7", "--sizes", "256", "--reps", "1", "--out", "{tmp}/u.md"],
            "auto-dims:",
        ),
        ("peers.py", ["--smoke", "--out", "{tmp}/peers.md"], "sklearn GMM-BIC"),
        ("selection_rules.py", ["--smoke", "--out", "{tmp}/sel.md"], "(**new default**)"),
        ("nuts_cost.py", ["--smoke"], "per leapfrog"),
        ("memory.py", ["--small", "--kinds", "kde", "--out", "{tmp}/memory.md"], "delta / model"),
    ],
)
def test_benchmark_script_runs(script, args, expect, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert expect in out.stdout
    assert "Error:" not in out.stdout, out.stdout[-3000:]  # no estimator silently dropped from a table


def test_gpu_script_small_mode_writes_finite_tables(tmp_path):
    """``benchmarks/gpu.py --small`` (the GPU machine's one command, in its CPU mode) writes all four
    tables, and every number in them is finite: no case skipped, failed or non-finite."""
    out_file = tmp_path / "gpu.md"
    out = subprocess.run(
        [sys.executable, str(BENCH / "gpu.py"), "--small", "--device", "cpu", "--out", str(out_file)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out_file.read_text()
    headings = ("## Reference rates", "## Training throughput", "## Large-n estimates", "## Accuracy")
    for heading in headings:
        assert heading in text, heading
    tables = {}
    for block in text.split("\n## ")[1:]:
        rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("|---")]
        tables[block.splitlines()[0]] = rows[1:]  # without the header row
    expected_rows = {"Reference": 1, "Training": 1, "Large-n": 6, "Accuracy": 1}
    for title, rows in tables.items():
        want = next(v for k, v in expected_rows.items() if title.startswith(k))
        assert len(rows) == want, (title, rows)
        for row in rows:
            lowered = row.lower()
            for bad in ("error", "skipped", "nan", "inf", "non-finite", "| - |", "|  |"):
                assert bad not in lowered, row  # nothing failed, skipped, missing or non-finite
            cells = [c.strip() for c in row.strip("|").split("|")]
            values = [float(c.replace(",", "").rstrip(" %")) for c in cells if NUMBER.fullmatch(c)]
            assert len(values) >= len(cells) - 3, row  # every measurement cell is a number
            assert all(math.isfinite(v) for v in values), row
