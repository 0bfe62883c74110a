"""The findings page (notebooks/09_findings) re-runs chapters 6, 7 and 8: its parameters must stay theirs.

The page names each chapter's parameters with the chapter's number in front (``CH7_K_VALUES`` is chapter 7's
``K_VALUES``), because the chapters use some names with different defaults. These tests read the notebooks'
source only (nothing is executed): a default, a SMOKE fallback (``X = X or (...)``) or the arguments of chapter
7's verdict calls (``paired.load_stored_grid``, ``paired.paired_differences``, ``paired.steps_to_reach``,
``paired.reach_table``, ``paired.paper_claims``) that differ between a chapter and the page fail here, so the page
can never silently report other runs or another rule than the chapters'.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "notebooks" / "09_findings.ipynb"
CHAPTERS = {6: "06_evaluation", 7: "07_sparsity_sweep", 8: "08_real_data"}
# Parameters of a chapter that do not change which runs it makes (what it shows, where it works).
NOT_SHARED = {"SMOKE", "WORKDIR", "N_NEURONS"}


def _code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def _parse(source: str) -> ast.Module:
    # IPython magics (the Colab install cell's %pip) are not Python: read them as `pass`
    lines = [line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
             for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def parameters(path: Path) -> dict[str, object]:
    """Name -> default value of the notebook's one ``parameters``-tagged cell."""
    tagged = [c for c in _code_cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, path.name
    return {node.targets[0].id: ast.literal_eval(node.value) for node in _parse(_source(tagged[0])).body
            if isinstance(node, ast.Assign)}


def resolutions(path: Path) -> dict[str, str]:
    """Name -> the fallback of every top-level ``X = X or (fallback)`` of the notebook, as an AST dump."""
    found = {}
    for cell in _code_cells(path):
        for node in _parse(_source(cell)).body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.BoolOp)
                    and isinstance(node.value.op, ast.Or) and len(node.value.values) == 2):
                continue
            name, (first, fallback) = node.targets[0].id, node.value.values
            if isinstance(first, ast.Name) and first.id == name:
                found[name] = ast.dump(fallback)
    return found


def _chapter_path(number: int) -> Path:
    return ROOT / "notebooks" / f"{CHAPTERS[number]}.ipynb"


def _page_names(number: int) -> dict[str, str]:
    """Page name -> chapter name for every parameter of the page that mirrors chapter ``number``."""
    prefix = f"CH{number}_"
    return {name: name[len(prefix):] for name in parameters(PAGE) if name.startswith(prefix)}


def test_page_parameters_are_smoke_workdir_and_the_chapters():
    names = set(parameters(PAGE))
    mirrored = {name for number in CHAPTERS for name in _page_names(number)}
    assert names - mirrored == {"SMOKE", "WORKDIR"}


@pytest.mark.parametrize("number", sorted(CHAPTERS))
def test_page_mirrors_every_parameter_of_the_chapter(number):
    chapter = set(parameters(_chapter_path(number))) - NOT_SHARED
    on_page = set(_page_names(number).values())
    assert chapter - on_page == set(), f"add CH{number}_<name> to the findings page's parameters cell"
    assert on_page - chapter == set(), f"the findings page has CH{number}_ parameters chapter {number} lacks"


@pytest.mark.parametrize("number", sorted(CHAPTERS))
def test_shared_defaults_are_equal(number):
    chapter, page = parameters(_chapter_path(number)), parameters(PAGE)
    differ = {page_name: (page[page_name], chapter[name]) for page_name, name in _page_names(number).items()
              if page[page_name] != chapter[name]}
    assert differ == {}, f"page default vs chapter {number}'s default"


@pytest.mark.parametrize("number", sorted(CHAPTERS))
def test_smoke_fallbacks_are_equal(number):
    chapter, page = resolutions(_chapter_path(number)), resolutions(PAGE)
    names = _page_names(number)
    assert {n for n in page if n in names} == {p for p, n in names.items() if n in chapter}, (
        f"the page resolves other parameters than chapter {number} (X = X or (...))")
    differ = [page_name for page_name, name in names.items() if name in chapter
              and page[page_name] != chapter[name]]
    assert differ == [], f"fallbacks differ from chapter {number}'s"


# The calls that make chapter 7's verdicts: the stored grid, the paired rule and what it is applied to.
VERDICT_CALLS = ("load_stored_grid", "paired_differences", "steps_to_reach", "reach_table", "paper_claims")


def _verdict_calls(path: Path) -> list[str]:
    """Every ``paired.<verdict call>(...)`` of the notebook's cells, in order, its arguments as an AST dump."""
    return [ast.dump(ast.Call(func=node.func, args=node.args, keywords=node.keywords))
            for cell in _code_cells(path) for node in ast.walk(_parse(_source(cell)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "paired"
            and node.func.attr in VERDICT_CALLS]


def _renamed(dump: str, number: int = 7) -> str:
    """A page call's dump with the page's ``CH7_X`` names read as the chapter's ``X``."""
    return dump.replace(f"id='CH{number}_", "id='")


def test_verdict_rule_is_chapter_7s():
    chapter = _verdict_calls(_chapter_path(7))
    page = [_renamed(call) for call in _verdict_calls(PAGE)]
    names = [call.split("attr='", 1)[1].split("'", 1)[0] for call in chapter]
    assert names.count("paired_differences") == 2 and "paper_claims" in names, (
        "chapter 7 compares scores and steps to target with paired.paired_differences, and reads the claims")
    assert page == chapter, "the findings page must make chapter 7's verdict calls, with its arguments, in order"


def test_verdict_call_reader_sees_a_changed_argument():
    # a guard on the reader itself: another metric list in the page would be a different dump
    chapter = _verdict_calls(_chapter_path(7))
    changed = [call.replace("Constant(value='surface_dice')", "Constant(value='precision')") for call in chapter]
    assert changed != chapter


def test_resolutions_reader_sees_the_chapters_fallbacks():
    # a guard on the reader itself: chapter 7 resolves its live data preset and budgets
    assert {"DATA_PRESET", "PRESET"} <= set(resolutions(_chapter_path(7)))
