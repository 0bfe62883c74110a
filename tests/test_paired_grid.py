"""benchmarks/paired_grid.py on tiny data and smoke budgets, in a temporary folder: the blur stage, the estimate."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from neuroseg_lite import paired

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_grid.py"


@pytest.fixture
def grid_script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("paired_grid_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # never the committed tables (a running grid owns them), and budgets that take seconds
    monkeypatch.setattr(module, "OUT", tmp_path / "out")
    monkeypatch.setattr(module, "DATA_PRESET", "tiny")
    monkeypatch.setattr(module, "PRESET", "smoke")
    return module


def test_the_blur_stage_reuses_the_main_grid_cell_writes_blur_csv_and_resumes(grid_script, tmp_path):
    args = ["--data-seeds", "0", "--seeds", "0", "--k", "1", "--ablation-data-seeds", "--blur-data-seeds", "0",
            "--blur-sigmas-z", "1.0", "--workdir", str(tmp_path / "work"), "--threads", "1"]
    grid_script.main(args)
    stored = paired.load_stored_grid(tmp_path / "out")
    default = stored.meta["blur"]["default_sigma_z_um"]
    assert stored.meta["blur"]["default_is_main_grid"] == {"0": True}  # the same digests: not run again
    assert set(stored.blur["sigma_z_um"]) == {1.0} and len(stored.blur) == 3
    assert set(stored.blur["method"]) == set(grid_script.BLUR_METHODS)
    assert set(stored.blur["data"]) == {"synth-tiny-seed0-psfz1p0"} and stored.blur["machine"].notna().all()
    assert not set(stored.blur["key"]) & set(stored.results["key"])  # other data, other runs
    gains = paired.knob_gains(stored.blur, stored.results, default=default)
    assert sorted(set(gains["sigma_z_um"])) == [1.0, default] and (gains["pairs"] == 1).all()

    before = (tmp_path / "out" / "blur.csv").read_text()
    grid_script.main(args)  # resumed: every key is done, nothing changes
    assert (tmp_path / "out" / "blur.csv").read_text() == before


def test_estimate_prints_json_and_trains_nothing(grid_script, tmp_path, capsys, monkeypatch):
    stored = Path(paired.__file__).parent / "data" / "paired_grid"
    if paired.load_stored_grid(stored).results.empty:
        pytest.skip("no stored grid in this checkout")
    monkeypatch.setattr(grid_script, "OUT", stored)  # read only: --estimate writes nothing
    grid_script.main(["--estimate", "--speedup", "4", "--workdir", str(tmp_path / "work")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["gpu_speedup"] == 4.0 and printed["gpu_speedup_is"] == "given"
    assert printed["cpu_hours"] > printed["gpu_hours"] > 0
    assert set(printed["parts"]) == {"main grid", "dense bound", "ablations", "axial blur"}
    assert not (tmp_path / "work").exists()
