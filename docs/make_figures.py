"""Regenerate every figure the README shows (and the other tracked ones in docs/figures).

=====================  ==========================================================
figure                 made by
=====================  ==========================================================
demo.png               ``pyro_disco.demo.run_demo`` (n = 1024, 2000 queries, seed 0)
fisher_vs_n.png        ``notebooks/fisher_information.ipynb``, executed top to bottom
relative_fisher.png    the same notebook
debruijn.png           the same notebook
landau_relaxation.png  ``notebooks/landau_fokker_planck.ipynb``, executed top to bottom
=====================  ==========================================================

Every figure comes from the estimators the package picks today (``estimator="auto"`` and
``pretrained.default_model_name``), so rerunning this after a model or estimator change brings
the README up to date. Seeds are fixed in the demo and in the notebooks. The notebooks run in a
scratch directory with ``PYRO_DISCO_FIGURES`` pointing there; their committed files (outputs
included) are not touched. Each figure is written to a scratch directory inside ``--out`` and
moved into place with one ``os.replace`` once every figure exists, so an interrupted or failed
run leaves the previous figures as they were.

Run (from the repository root; the default ``--out`` is untracked)::

    OMP_NUM_THREADS=1 python docs/make_figures.py --out docs/figures
    python docs/make_figures.py --smoke --out /tmp/figures     # small mode, seconds

``--smoke`` runs the demo on 300 samples and the notebooks in their smoke mode
(``PYRO_DISCO_SMOKE=1``): same files, rough curves, for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# source -> the figures it writes (names as the README and docs/figures use them)
SOURCES = {
    "demo": ("demo.png",),
    "fisher_information.ipynb": ("fisher_vs_n.png", "relative_fisher.png", "debruijn.png"),
    "landau_fokker_planck.ipynb": ("landau_relaxation.png",),
}
FIGURES = tuple(f for figs in SOURCES.values() for f in figs)


@contextlib.contextmanager
def _env(**values: str):
    """Set environment variables for the block (the notebook kernels inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_demo(scratch: Path, smoke: bool) -> None:
    import torch

    from pyro_disco.demo import run_demo

    torch.manual_seed(0)
    kwargs = {"num_samples": 300, "num_queries": 500} if smoke else {}
    run_demo(seed=0, out=scratch / "demo.png", **kwargs)


def _run_notebook(name: str, scratch: Path, smoke: bool) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    workdir = scratch / "cwd"
    workdir.mkdir(exist_ok=True)
    with _env(PYRO_DISCO_SMOKE="1" if smoke else "0", PYRO_DISCO_FIGURES=str(scratch), MPLBACKEND="Agg"):
        client = nbclient.NotebookClient(
            nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        )
        client.execute()


def is_png(path: Path) -> bool:
    """The file starts with the PNG signature and is not truncated to it."""
    with open(path, "rb") as f:
        head = f.read(len(PNG_MAGIC) + 1)
    return head[: len(PNG_MAGIC)] == PNG_MAGIC and len(head) > len(PNG_MAGIC)


def make_figures(out: Path, *, smoke: bool = False, only: list[str] | None = None) -> dict[str, float]:
    """Write the figures into ``out``; returns the seconds each source took (and ``total``)."""
    wanted = set(FIGURES if not only else only)
    unknown = wanted - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)}; choose from {list(FIGURES)}")
    out = Path(out).resolve()  # the notebook kernels run in another working directory
    out.mkdir(parents=True, exist_ok=True)
    # scratch inside out: same file system, so os.replace is atomic
    scratch = Path(tempfile.mkdtemp(prefix=".make-figures-", dir=out))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        for source, figs in SOURCES.items():
            if not wanted & set(figs):
                continue
            t0 = time.perf_counter()
            print(f"[{source}] ...", flush=True)
            if source == "demo":
                _run_demo(scratch, smoke)
            else:
                _run_notebook(source, scratch, smoke)
            timings[source] = time.perf_counter() - t0
            print(f"[{source}] {timings[source]:.0f} s", flush=True)
        made = sorted(wanted)
        bad = [f for f in made if not (scratch / f).is_file() or not is_png(scratch / f)]
        if bad:
            raise RuntimeError(f"not produced (or not a PNG): {bad}; nothing in {out} was replaced")
        for f in made:
            os.replace(scratch / f, out / f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    timings["total"] = time.perf_counter() - start
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "_build" / "figures", help="output folder"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="small mode (demo n = 300, notebooks in smoke mode)"
    )
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="regenerate only these figures")
    args = parser.parse_args(argv)
    timings = make_figures(args.out, smoke=args.smoke, only=args.only)
    mode = "smoke" if args.smoke else "full"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
    print(
        f"figures in {args.out}: {timings['total']:.0f} s in {mode} mode ({parts}; OMP_NUM_THREADS={threads})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
