"""The GitHub Actions workflows (.github/workflows): valid, and doing what README and .ci/run say.

Validation has two layers. The schema check is check-jsonschema's vendored GitHub-workflow schema (offline;
actionlint, the usual linter, needs a binary download that this project's machines cannot make). The schema
knows the keys but not the references between them, so ``_lint`` adds the checks it misses: ``needs`` names a
job, ``steps.<id>`` names a step of the same job, every action is pinned to a version, expressions are closed.
The rest of the file checks the contents against README's commands, _config.yml and the notebooks.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def _readme_command(word: str) -> str:
    """README's one shell command that contains ``word`` (the same blocks tests/test_packaging.py reads)."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = [b.strip() for b in blocks if word in b]
    assert len(commands) == 1, f"README should show exactly one command with {word!r}, found {commands}"
    return commands[0]


def _load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def _triggers(workflow: dict) -> dict:
    on = workflow["on"]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on


def _steps(workflow: dict):
    """(job id, step index, step) for every step of every job."""
    for job_id, job in workflow["jobs"].items():
        for index, step in enumerate(job.get("steps", [])):
            yield job_id, index, step


def _uses(step: dict) -> str:
    return step.get("uses", "").split("@")[0]


def _run_lines(step: dict) -> list[str]:
    return [line.strip() for line in step.get("run", "").splitlines()]


def _workflow_on(event: str) -> tuple[Path, dict]:
    found = [(p, w) for p in WORKFLOW_FILES if event in _triggers(w := _load(p))]
    assert len(found) == 1, f"expected one workflow triggered by {event}, found {[p.name for p, _ in found]}"
    return found[0]


def _book_workflow() -> tuple[Path, dict]:
    path, workflow = _workflow_on("push")
    assert _triggers(workflow)["push"]["branches"] == ["main"]
    return path, workflow


def _schema_check(path: Path) -> subprocess.CompletedProcess:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        pytest.fail("check-jsonschema is not installed: it is in the test extra, run `bash .ci/setup.sh`")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120)


def _lint(text: str) -> list[str]:
    """What the schema does not check: references between jobs and steps, pinned actions, closed expressions."""
    problems = []
    if text.count("${{") != text.count("}}"):
        problems.append("an expression ${{ ... }} is not closed")
    workflow = yaml.safe_load(text)
    jobs = workflow.get("jobs", {})
    for job_id, job in jobs.items():
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in jobs:
                problems.append(f"job {job_id!r} needs {need!r}, which is not a job of this workflow")
        step_ids = {step["id"] for step in job.get("steps", []) if "id" in step}
        for name in re.findall(r"steps\.([A-Za-z0-9_-]+)\.", json.dumps(job)):
            if name not in step_ids:
                problems.append(f"job {job_id!r} refers to steps.{name}, which is not a step id of that job")
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses and not uses.startswith("./") and not re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+(\.\d+)*", uses):
                problems.append(f"action {uses!r} is not pinned to a release (owner/name@vN)")
    return problems


def test_there_are_workflows():
    assert {p.name for p in WORKFLOW_FILES} >= {"tests.yml", "book.yml"}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_passes_the_schema_check(path: Path):
    result = _schema_check(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_passes_the_reference_checks(path: Path):
    assert _lint(path.read_text()) == []


# each broken workflow, and where in it the schema check must find the error
BROKEN = {
    "no runs-on": ("on: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n", "$.jobs.build"),
    "unknown event": ("on: pulls_request\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo\n", "$.on"),
    "step key misspelt": ("on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    step:\n      - run: echo\n",
                          "$.jobs.build"),
    "bad permission": ("on: push\npermissions:\n  pages: publish\njobs:\n  b:\n    runs-on: x\n    steps:\n"
                       "      - run: echo\n", "$.permissions"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_schema_check_rejects_a_broken_workflow(tmp_path: Path, name: str):
    text, where = BROKEN[name]
    path = tmp_path / "broken.yml"
    path.write_text(text)
    result = _schema_check(path)
    assert result.returncode == 1
    assert "Schema validation errors were encountered" in result.stdout and f"broken.yml::{where}:" in result.stdout


def test_reference_checks_reject_a_broken_workflow():
    text = """on: push
jobs:
  deploy:
    needs: biuld
    runs-on: ubuntu-latest
    environment:
      url: ${{ steps.deploy.outputs.page_url }}
    steps:
      - id: deployment
        uses: actions/deploy-pages@main
      - run: echo "${{ github.sha"
"""
    problems = " | ".join(_lint(text))
    for expected in ("needs 'biuld'", "steps.deploy,", "'actions/deploy-pages@main'", "not closed"):
        assert expected in problems


def test_pull_requests_run_the_linter_then_the_readme_test_command_verbatim():
    _, workflow = _workflow_on("pull_request")
    test_command = _readme_command("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    lint_commands = [line for line in ci.splitlines() if line.startswith(".venv/bin/ruff check")]
    assert len(lint_commands) == 2
    lines = [(job, i, line) for job, i, step in _steps(workflow) for line in _run_lines(step)]
    test_at = [(job, i) for job, i, line in lines if line == test_command]
    assert len(test_at) == 1, f"no step runs {test_command!r} as one line"
    for lint in lint_commands:
        assert any(job == test_at[0][0] and i < test_at[0][1] and line == lint for job, i, line in lines), lint


def test_main_builds_checks_and_deploys_the_book():
    _, workflow = _book_workflow()
    book_command = _readme_command("jupyter-book")
    build_job = None
    order = {}
    for job_id, index, step in _steps(workflow):
        if book_command in _run_lines(step):
            build_job, order["build"] = job_id, index
        if "NEUROSEG_REQUIRE_BOOK=1 .venv/bin/python -m pytest -m browser tests/test_book_browser.py" in \
                _run_lines(step):
            order["browser"] = index
        if _uses(step) == "actions/upload-pages-artifact":
            assert Path(step["with"]["path"]) == Path("_build/html")
            assert "HTML in `_build/html`" in (ROOT / "README.md").read_text()
            order["upload"] = index
        if _uses(step) == "actions/configure-pages":
            order["configure"] = index
    assert build_job is not None, f"no step runs README's main command {book_command!r}"
    # the browser check of the built pages comes before the upload, so a broken book is never published
    assert order["configure"] < order["build"] < order["browser"] < order["upload"], order

    deploy = [j for j, job in workflow["jobs"].items()
              if any(_uses(s) == "actions/deploy-pages" for s in job.get("steps", []))]
    assert len(deploy) == 1
    job = workflow["jobs"][deploy[0]]
    assert build_job in ([job["needs"]] if isinstance(job["needs"], str) else job["needs"])
    assert job["permissions"]["pages"] == "write" and job["permissions"]["id-token"] == "write"
    step_id = next(s["id"] for s in job["steps"] if _uses(s) == "actions/deploy-pages")
    assert job["environment"] == {"name": "github-pages", "url": f"${{{{ steps.{step_id}.outputs.page_url }}}}"}
    assert workflow.get("concurrency", job.get("concurrency"))["group"]


def _notebook_workdir() -> str:
    workdirs = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, path.name
        workdirs |= set(re.findall(r'^WORKDIR\s*=\s*"([^"]+)"', "".join(params[0]["source"]), flags=re.M))
    assert len(workdirs) == 1, f"the chapters should share one WORKDIR, found {workdirs}"
    return workdirs.pop()


def test_the_execution_cache_is_kept_between_runs():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]
    assert config["execute_notebooks"] == "force"
    # Jupyter Book runs each notebook in its own folder unless run_in_temp is set
    assert not config.get("run_in_temp", False)
    _, workflow = _book_workflow()
    caches = [s for _, _, s in _steps(workflow) if _uses(s) == "actions/cache"]
    work = [s for s in caches if s["with"]["path"].strip() == f"notebooks/{_notebook_workdir()}"]
    assert len(work) == 1, "the notebooks' working folder is not cached"
    key, restore = work[0]["with"]["key"], work[0]["with"]["restore-keys"].split()
    hashed = re.search(r"hashFiles\((.*)\)", key).group(1)
    assert "neuroseg_lite/" in hashed and "notebooks/" in hashed
    assert restore and key.startswith(restore[0]) and "hashFiles" not in restore[0]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_cpu_python_and_data_are_set_up_as_in_ci(path: Path):
    workflow = _load(path)
    if not any("bash .ci/setup.sh" in s.get("run", "") for _, _, s in _steps(workflow)):
        pytest.skip(f"{path.name} does not set up the project")
    requires = re.search(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    pythons = [s["with"] for _, _, s in _steps(workflow) if _uses(s) == "actions/setup-python"]
    assert pythons and all(w["python-version"] == requires and w["cache"] == "pip" for w in pythons)
    env = workflow["env"]
    assert env["TORCH_INDEX_URL"] == CPU_TORCH_INDEX
    # the same local copy that .ci/run and tests/conftest.py look for, downloaded there (hash-verified) if absent
    assert env["NEUROSEG_DATA_DIR"].endswith("/../shared/data/qcanet-embryo-nuclei")
    assert "shared/data/qcanet-embryo-nuclei" in (ROOT / ".ci" / "run").read_text()
    data = [s for _, _, s in _steps(workflow)
            if _uses(s) == "actions/cache" and s["with"]["path"] == "${{ env.NEUROSEG_DATA_DIR }}"]
    assert len(data) == 1 and "hashFiles('neuroseg_lite/datasets.py')" in data[0]["with"]["key"]


def test_readme_shows_the_badge_and_the_book_address_once_near_the_top():
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    owner, name = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+)", repo).groups()
    book_file = _book_workflow()[0].name
    badge = f"[![book]({repo}/actions/workflows/{book_file}/badge.svg)]({repo}/actions/workflows/{book_file})"
    address = f"https://{owner.lower()}.github.io/{name}/"
    readme = (ROOT / "README.md").read_text()
    top = "\n".join(readme.splitlines()[:8])
    for text in (badge, address):
        assert text in top, f"README's first lines should show {text}"
        assert readme.count(text) == 1, f"{text} should appear in one place only"
