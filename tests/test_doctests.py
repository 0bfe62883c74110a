"""The ``Examples`` sections of every module's docstrings run and print what they show.

Every module of the package is collected, so examples that anyone adds to any module are run here too; a module
without examples passes. Every module must also say its one job in a module docstring.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import numpy as np
import pytest

import neuroseg_lite

MODULES = sorted(f"neuroseg_lite.{info.name}" for info in pkgutil.iter_modules(neuroseg_lite.__path__))
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    # Examples print Python scalars (float(...), int(...)), whose repr does not change between numpy versions.
    result = doctest.testmod(module, optionflags=OPTIONS, extraglobs={"np": np}, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see above)"


# The API page shows examples in code blocks as wide as a notebook's code cells (see test_notebook_format.py).
EXAMPLE_LINE_LENGTH = 88


@pytest.mark.parametrize("name", MODULES)
def test_examples_fit_the_rendered_page(name):
    long_lines = []
    for test in doctest.DocTestFinder().find(importlib.import_module(name)):
        for example in test.examples:
            shown = [">>> " + line for line in example.source.splitlines()] + example.want.splitlines()
            shown += (example.exc_msg or "").splitlines()
            long_lines += [f"{test.name}: {line}" for line in shown if len(line) > EXAMPLE_LINE_LENGTH]
    assert long_lines == [], f"example lines over {EXAMPLE_LINE_LENGTH} characters (shorten them):\n" + "\n".join(
        long_lines)


@pytest.mark.parametrize("name", MODULES)
def test_module_says_its_job(name):
    module = importlib.import_module(name)
    doc = (module.__doc__ or "").strip()
    assert doc, f"{name} has no module docstring: say in one line what the module is for"
    assert len(doc.splitlines()[0]) >= 20, f"{name}: the docstring's first line should say the module's one job"


def test_the_leaf_modules_have_examples():
    for name in ("io", "sparse", "synth", "synthconfig", "unet3d", "datasets"):
        tests = doctest.DocTestFinder().find(importlib.import_module(f"neuroseg_lite.{name}"))
        assert sum(len(t.examples) for t in tests) > 0, f"neuroseg_lite.{name} lost its examples"


def test_the_api_page_documents_every_public_module():
    """book/api.md has a section per public module, and every module it lists imports."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "book" / "api.md").read_text()
    listed = re.findall(r"^\.\. automodule:: (neuroseg_lite\.\w+)$", page, flags=re.M)
    public = [name for name in MODULES if not name.rsplit(".", 1)[1].startswith("_")]
    assert set(public) - set(listed) == set(), "add these modules to book/api.md"
    assert set(listed) - set(public) == set(), "book/api.md lists modules that do not exist (or are private)"
    for name in listed:
        importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_attribute_comments_do_not_read_as_a_type(name):
    """A ``#:`` comment whose first line holds "words: more" is rendered by napoleon as the type "words".

    The book is built with nitpicky references, so such a type is a broken link and fails the build.
    """
    from pathlib import Path

    source = Path(importlib.import_module(name).__file__).read_text().splitlines()
    first_lines = [(number, line.strip()) for number, line in enumerate(source, start=1)
                   if line.strip().startswith("#:") and not source[number - 2].strip().startswith("#:")]
    # Colons inside ``code`` or :role:`targets` are not read as a type separator.
    bad = [f"{name}:{number}: {line}" for number, line in first_lines
           if ": " in re.sub(r"``[^`]*``|:\w+:`[^`]*`", "", line[2:])]
    assert bad == [], "rephrase these first lines without a colon:\n" + "\n".join(bad)
