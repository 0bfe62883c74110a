"""Every notebook follows the book's fixed format, and every page is in the table of contents."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def test_every_page_is_in_the_toc_and_exists():
    listed = set(_toc_files())
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in NOTEBOOKS}
    pages |= {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").glob("*.md")}
    assert pages - listed == set(), "orphan pages: add them to _toc.yml or delete them"
    missing = [f for f in listed if not any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb"))]
    assert missing == []


def test_notebooks_are_numbered_in_toc_order():
    toc_notebooks = [f for f in _toc_files() if f.startswith("notebooks/")]
    assert toc_notebooks == sorted(toc_notebooks)
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_outputs(path: Path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, _source(cell)[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_fixed_opening(path: Path):
    cells = _cells(path)
    title = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and title.startswith("# ")
    assert "Learning goals" in title and "Runtime" in title and "CPU" in title and "GPU" in title

    install = _source(cells[1])
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert cells[1]["cell_type"] == "code" and "google.colab" in install and "%pip install" in install
    assert repository in install, "the install cell must use the repository URL from _config.yml"
    assert "torch" not in install.split("%pip install", 1)[1].split("\n")[0], "keep Colab's own torch"

    assert "parameters" in cells[2].get("metadata", {}).get("tags", [])
    assert "environment_report" in _source(cells[3])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_flat_parameters_cell(path: Path):
    cells = _cells(path)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    names = set()
    for node in ast.parse(_source(tagged[0])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        target = node.targets[0]
        assert isinstance(target, ast.Name) and target.id.isupper(), target
        ast.literal_eval(node.value)  # flat literals only, so papermill can override them
        names.add(target.id)
    assert {"SMOKE", "WORKDIR"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ends_with_summary_and_exercises_with_hidden_solutions(path: Path):
    markdown = "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown
    n_solutions = markdown.count(":class: dropdown")
    assert 2 <= n_solutions <= 6, "2-4 exercises, each with a solution hidden behind a toggle"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_are_short_and_clean(path: Path):
    for cell in _cells(path):
        source = _source(cell)
        if cell["cell_type"] == "code":
            assert source.count("\n") < 40, f"long cell (move code into the package): {source[:80]}"
            assert "import *" not in source and "exec(" not in source


# The rendered book cuts code lines longer than this off at the right edge of a code cell; ruff checks the
# notebooks at the same width (.ci/run: `ruff check --line-length 88 notebooks`).
NOTEBOOK_LINE_LENGTH = 88


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_fit_the_rendered_cell(path: Path):
    long_lines = [
        f"cell {index}: {len(line)} characters: {line[:60]}..."
        for index, cell in enumerate(_cells(path)) if cell["cell_type"] == "code"
        for line in _source(cell).splitlines() if len(line) > NOTEBOOK_LINE_LENGTH
    ]
    assert long_lines == [], f"code lines over {NOTEBOOK_LINE_LENGTH} characters (wrap them):\n" + "\n".join(long_lines)
