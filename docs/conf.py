"""Sphinx configuration: API reference from the docstrings, the committed notebooks as tutorials
(rendered with their stored outputs, never executed), and the benchmark tables.

Build (offline, warnings as errors): ``python -m sphinx -W -b html docs docs/_build/html``
"""

import shutil
from pathlib import Path

import pyro_disco

ROOT = Path(__file__).resolve().parents[1]
GENERATED = Path(__file__).resolve().parent / "_generated"  # untracked copies, rebuilt every time

project = "pyro-disco"
author = "pyro-disco contributors"
release = version = pyro_disco.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_nb"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "README.md", "figures"]
nb_execution_mode = "off"  # render the committed outputs; the test suite executes the notebooks
myst_enable_extensions = ["dollarmath", "amsmath"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields: no second description of each attribute
html_theme = "alabaster"
html_static_path: list[str] = []
mathjax_path = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"  # loaded by the reader's browser


def _copy_sources() -> None:
    if GENERATED.exists():
        shutil.rmtree(GENERATED)
    (GENERATED / "notebooks").mkdir(parents=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(nb, GENERATED / "notebooks" / nb.name)
    (GENERATED / "benchmarks").mkdir()
    page = [
        "# Benchmark tables",
        "",
        "Written by the scripts in `benchmarks/` (each file names its command).",
        "",
    ]
    for table in sorted((ROOT / "benchmarks" / "results").glob("*")):
        if table.suffix not in (".md", ".txt"):
            continue
        shutil.copy2(table, GENERATED / "benchmarks" / (table.stem + "_" + table.suffix[1:] + ".inc"))
        inc = f"benchmarks/{table.stem}_{table.suffix[1:]}.inc"
        page += [f"## `{table.name}`", ""]
        if table.suffix == ".md":
            page += ["```{include} " + inc, ":heading-offset: 2", "```", ""]
        else:
            page += ["```{literalinclude} " + inc, ":language: text", "```", ""]
    (GENERATED / "benchmarks.md").write_text("\n".join(page))


_copy_sources()
