"""The docstring examples run with the suite (``--doctest-modules`` over ``pyro_disco/`` in
pyproject), and none hides where doctest cannot find it."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pyro_disco


def test_pytest_collects_the_package_doctests(pytestconfig):
    assert "pyro_disco" in pytestconfig.getini("testpaths")
    assert "--doctest-modules" in pytestconfig.getini("addopts")


def test_every_example_is_in_a_docstring_doctest_finds():
    """A ``>>>`` line outside a docstring (a comment, a plain string) would never run."""
    finder = doctest.DocTestFinder()
    missed = {}
    for info in pkgutil.walk_packages(pyro_disco.__path__, "pyro_disco."):
        module = importlib.import_module(info.name)
        lines = Path(module.__file__).read_text().splitlines()
        written = sum(line.lstrip().startswith(">>>") for line in lines)
        found = sum(len(test.examples) for test in finder.find(module))
        if written != found:
            missed[info.name] = (written, found)
    assert not missed, f"modules whose examples doctest does not find (written, found): {missed}"
