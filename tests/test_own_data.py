"""The command-line walkthrough of book/own_data.md runs as written (smallest presets, in an empty folder)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from neuroseg_lite import cli

ROOT = Path(__file__).resolve().parents[1]


def _walkthrough() -> list[list[str]]:
    page = (ROOT / "book" / "own_data.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", page, flags=re.S) if "neuroseg-lite synth" in b]
    assert len(blocks) == 1, "own_data.md should show one bash walkthrough starting with neuroseg-lite synth"
    commands = [shlex.split(line, comments=True) for line in blocks[0].splitlines() if line.strip()]
    assert all(c[0] == "neuroseg-lite" for c in commands)
    return [c[1:] for c in commands]


def _smallest(argv: list[str]) -> list[str]:
    """The same command on tiny data and the smoke training budget, so the test takes seconds."""
    if argv[0] == "synth":
        return argv + ["--preset", "tiny"]
    return [("smoke" if previous == "--preset" else a) for previous, a in zip([None] + argv, argv)]


def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = _walkthrough()
    assert [c[0] for c in commands][:2] == ["synth", "info"] and "train" in [c[0] for c in commands]
    for argv in commands:
        status = cli.main(_smallest(argv))
        assert status == 0, (argv, capsys.readouterr().err)
    assert (tmp_path / "my_model.pt").is_file() and (tmp_path / "my_neurons.csv").is_file()
    assert (tmp_path / "my_prediction.ome.zarr" / "labels" / "mask").is_dir()


@pytest.mark.parametrize("argv", [["synth", "my_data"], ["train", "--preset", "cpu", "--out", "m.pt"]])
def test_smallest_only_shrinks_the_budget(argv):
    changed = _smallest(argv)
    assert changed[:len(argv)] != argv or changed[len(argv):] == ["--preset", "tiny"]
    assert "cpu" not in changed
