"""The project's packaging files agree with each other and with README's commands."""
from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from the PyPI names used in pyproject.toml
CONDA_TO_PYPI = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("test", "book"):
        requirements += project["optional-dependencies"][extra]
    return dict(_split(r) for r in requirements)


def _conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pairs = {}
    for item in env["dependencies"]:
        if isinstance(item, dict):
            continue
        name, spec = _split(item)
        if name in CONDA_ONLY:
            continue
        pairs[CONDA_TO_PYPI.get(name, name)] = spec
    return pairs


def test_environment_yml_matches_pyproject():
    assert _conda_requirements() == _pyproject_requirements()


def test_benchmark_extra_is_not_a_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(r.lower().startswith("monai") for r in project["dependencies"])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    test_commands = [c.strip() for c in commands if "pytest" in c]
    assert len(test_commands) == 1, "README must show exactly one test command"
    assert test_commands[0] in (ROOT / ".ci" / "run").read_text()


def test_package_does_not_import_monai():
    for path in (ROOT / "neuroseg_lite").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+monai\b", path.read_text(), flags=re.M), path


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_set_in_one_place():
    import neuroseg_lite

    pyproject = _pyproject()
    assert "version" not in pyproject["project"], "the version lives in neuroseg_lite/__init__.py only"
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "neuroseg_lite.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", neuroseg_lite.__version__)
    # the installed metadata comes from the same attribute (.ci/setup.sh reinstalls the package every run)
    assert importlib.metadata.version("neuroseg-lite") == neuroseg_lite.__version__
    for path in (ROOT / "neuroseg_lite").glob("*.py"):
        if path.name != "__init__.py":
            assert not re.search(r"^\s*__version__\s*=", path.read_text(), flags=re.M), path.name


def test_requires_python_matches_ruff_and_ci():
    pyproject = _pyproject()
    match = re.fullmatch(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"])
    assert match, "requires-python should be a plain lower bound, e.g. '>=3.9'"
    minor = int(match.group(1))
    # ruff reports syntax newer than its target-version, so the package cannot silently outgrow requires-python
    assert pyproject["tool"]["ruff"]["target-version"] == f"py3{minor}"
    assert sys.version_info >= (3, minor)
    ci_python = re.search(r"Python 3\.(\d+)", (ROOT / "README.md").read_text())
    assert ci_python and int(ci_python.group(1)) >= minor


def test_ci_lints_before_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    project = _pyproject()["project"]
    assert any(r.startswith("ruff") for r in project["optional-dependencies"]["test"])
    lint = ci.index("ruff check neuroseg_lite tests benchmarks")
    assert "ruff check --line-length 88 notebooks" in ci
    assert lint < ci.index("python -m pytest")


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any level of its code)."""
    import ast

    graph = {}
    for path in (ROOT / "neuroseg_lite").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neuroseg_lite."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "neuroseg_lite":  # from neuroseg_lite import io
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("neuroseg_lite.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def test_imports_flow_one_way():
    graph = _package_imports()
    done, on_path = set(), []

    def visit(module):
        on_path.append(module)
        for dep in sorted(graph.get(module, ())):
            assert dep not in on_path, "import cycle: " + " -> ".join(on_path[on_path.index(dep):] + [dep])
            if dep not in done:
                visit(dep)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)


def test_the_wheel_carries_the_stored_grid(tmp_path):
    """Colab installs from git without the repository around it: chapters 7's and 8's stored grids must be in
    the wheel."""
    import subprocess
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("neuroseg_lite-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for grid in ("paired_grid", "qcanet_grid"):
        folder = ROOT / "neuroseg_lite" / "data" / grid
        stored = {f"neuroseg_lite/data/{grid}/{p.name}" for p in folder.iterdir() if p.suffix in (".csv", ".json")}
        assert stored and stored <= names, grid
