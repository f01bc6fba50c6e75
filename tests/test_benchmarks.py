"""Every benchmark script runs end to end in a small mode, so the README's commands cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest

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
        ("pde.py", ["--sizes", "300"], "BKW d=3"),
        (
            "universal.py",
            ["--dims", "2", "7", "--sizes", "256", "--reps", "1", "--out", "{tmp}/u.md"],
            "auto-dims:",
        ),
        ("peers.py", ["--smoke", "--out", "{tmp}/peers.md"], "sklearn GMM-BIC"),
        ("nuts_cost.py", ["--smoke"], "per leapfrog"),
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
