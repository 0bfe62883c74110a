"""Every notebook in _toc.yml, in order, executed by papermill with its smoke parameters in a fresh kernel."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_notebooks() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]
    return [ROOT / f"{name}.ipynb" for name in files if (ROOT / f"{name}.ipynb").exists()]


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory) -> Path:
    # One working folder for the whole run, as in the book: later chapters reload what earlier ones saved.
    return tmp_path_factory.mktemp("neuroseg_work")


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", toc_notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_with_smoke_parameters(notebook: Path, shared_workdir: Path, tmp_path: Path):
    papermill = pytest.importorskip("papermill")
    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / notebook.name),
        parameters={"SMOKE": True, "WORKDIR": str(shared_workdir)},
        cwd=str(notebook.parent),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=600,
    )
