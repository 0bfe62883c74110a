"""Every chapter alone, as on a new Colab runtime, with its exercise solutions run after it.

One papermill execution per notebook of _toc.yml covers both: the notebook's own cells, then the code blocks of
its ``{admonition} Solution`` dropdowns appended as code cells, with the smoke parameters, in a fresh kernel whose
working folder (WORKDIR) and current directory are new empty folders. Nothing an earlier chapter saved is there,
so a chapter that silently relies on one fails here; the in-order run of tests/test_notebooks.py keeps the
book's shared-folder path tested. Each chapter must also say what it made in this session (a line
``newly made here: ...`` or ``newly trained here: ...``), and in an empty folder that must not be "nothing".

A solution that cannot run with smoke parameters says so on its first line: ``# solution: not run by the tests
(reason)``; keep that rare.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_notebooks import ROOT, toc_notebooks

SKIP_MARK = "# solution: not run by the tests"
LINE_LENGTH = 88  # as the notebooks' code cells (tests/test_notebook_format.py)
MADE_HERE = re.compile(r"newly (?:made|trained) here: (.+)")


def fences(text: str) -> list[tuple[str, str]]:
    """The top-level fenced blocks of a Markdown text, as ``(info string, content)``, by CommonMark's rules.

    A fence closes only at a bare line of at least as many backticks as opened it, so a ```python block inside a
    ```{admonition} closes the admonition early: such an admonition needs a longer fence (````).
    """
    blocks, opening, info, content = [], None, "", []
    for line in text.splitlines():
        if opening is None:
            match = re.match(r"^ {0,3}(`{3,})([^`]*)$", line)
            if match:
                opening, info, content = len(match.group(1)), match.group(2).strip(), []
            continue
        match = re.match(r"^ {0,3}(`{3,})\s*$", line)
        if match and len(match.group(1)) >= opening:
            blocks.append((info, "\n".join(content)))
            opening = None
        else:
            content.append(line)
    if opening is not None:
        blocks.append((info, "\n".join(content)))  # unclosed: runs to the end of the cell
    return blocks


def _markdown_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in cells if c["cell_type"] == "markdown"]


def solutions(notebook: Path) -> list[str]:
    """The ```python blocks of the notebook's Solution dropdowns, in order."""
    code = []
    for text in _markdown_cells(notebook):
        for info, content in fences(text):
            if info.startswith("{admonition} Solution"):
                code += [body for inner, body in fences(content) if inner == "python"]
    return code


def test_fence_parser_sees_a_short_outer_fence_close_early():
    broken = "```{admonition} Solution\n:class: dropdown\n\n```python\nx = 1\n```\n```\n"
    assert fences(broken) == [("{admonition} Solution", ":class: dropdown\n\n```python\nx = 1"), ("", "")]
    good = broken.replace("```{", "````{").removesuffix("```\n") + "````\n"
    assert [body for info, body in fences(fences(good)[0][1]) if info == "python"] == ["x = 1"]


@pytest.mark.parametrize("notebook", toc_notebooks(), ids=lambda p: p.stem)
def test_solutions_are_well_formed(notebook: Path):
    """Each Solution renders as one dropdown (no stray fence after it), and its code fits a rendered cell."""
    for text in _markdown_cells(notebook):
        for info, content in fences(text):
            assert info.startswith("{admonition}") or info == "python" or "{admonition} Solution" not in text, (
                f"a stray fence ({info!r}) in the exercises: an admonition holding a ```python block must open "
                f"with a longer fence (````{{admonition}} Solution ... ````):\n{content[:200]}")
    code = solutions(notebook)
    assert code, "no ```python block in any Solution dropdown"
    for block in code:
        compile(block.replace("%", "#"), notebook.name, "exec")  # a syntax error fails here, not in the run
        long_lines = [line for line in block.splitlines() if len(line) > LINE_LENGTH]
        assert long_lines == [], f"solution lines over {LINE_LENGTH} characters: {long_lines}"
    skipped = [block for block in code if block.startswith(SKIP_MARK)]
    assert all(re.match(re.escape(SKIP_MARK) + r" \(.{10,}\)", b) for b in skipped), "give the reason"
    assert len(skipped) <= 1, "at most one solution per chapter may be left out of the run"


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", toc_notebooks(), ids=lambda p: p.stem)
def test_chapter_runs_alone_with_its_solutions(notebook: Path, tmp_path: Path):
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    book = nbformat.read(notebook, as_version=4)
    for number, block in enumerate(solutions(notebook), start=1):
        if not block.startswith(SKIP_MARK):
            book.cells.append(nbformat.v4.new_code_cell(f"# solution block {number}\n{block}"))
    source = tmp_path / notebook.name
    nbformat.write(book, source)
    workdir, cwd = tmp_path / "new_runtime_workdir", tmp_path / "new_runtime_cwd"
    workdir.mkdir()
    cwd.mkdir()
    executed = papermill.execute_notebook(
        str(source), str(tmp_path / f"executed_{notebook.name}"),
        parameters={"SMOKE": True, "WORKDIR": str(workdir)},
        cwd=str(cwd), kernel_name="python3", progress_bar=False, execution_timeout=600,
    )
    printed = "\n".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", [])
                        if output.get("output_type") == "stream")
    made = MADE_HERE.findall(printed)
    assert made, "the chapter must print what it made in this session: 'newly made here: ...'"
    assert any(not line.startswith("nothing") for line in made), f"an empty WORKDIR, yet nothing made: {made}"
    assert list(cwd.iterdir()) == [], "the chapter wrote outside WORKDIR"


def runtime_text(notebook: Path) -> str:
    """The paragraph after ``**Runtime:**`` in the notebook's opening cell, on one line."""
    cells = json.loads(notebook.read_text())["cells"]
    opening = "".join(cells[0]["source"])
    paragraph = opening.split("**Runtime:**", 1)[1].split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def test_course_page_quotes_each_chapter_runtime_once():
    page = (ROOT / "book" / "course.md").read_text()
    rows = re.findall(r"^\| \{doc\}`\.\./notebooks/(\w+)` \| (.+?) \|$", page, flags=re.MULTILINE)
    names = [name for name, _ in rows]
    assert sorted(names) == names == [p.stem for p in toc_notebooks()], "every chapter once, in book order"
    stale = {name: text for name, text in rows if text != runtime_text(ROOT / "notebooks" / f"{name}.ipynb")}
    assert stale == {}, "copy the chapters' Runtime lines into book/course.md again"
    assert "{doc}`course`" in (ROOT / "book" / "running.md").read_text()
