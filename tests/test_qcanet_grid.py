"""benchmarks/qcanet_grid.py: chapter 8's calibrated, two-fold, three-seed grid on the QCANet stacks."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from neuroseg_lite import calibration, runs

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "qcanet_grid.py"


@pytest.fixture()
def script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("qcanet_grid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "tables")
    return module


def test_calibration_stage_runs_resumes_and_stores_its_rows(script, tmp_path, capsys):
    workdir = tmp_path / "work"
    options = ["--stages", "calibrate", "--steps", "4", "8", "--calibration-seeds", "0", "--workdir",
               str(workdir), "--threads", "1"]
    script.main(options)
    table = pd.read_csv(script.OUT / "calibration.csv")
    # dense: 2 folds x 2 candidates x 1 seed; sparse from the cheapest candidate up to the first that passes
    dense, sparse = table[table["method"] == "3d_dense"], table[table["method"] == "3d_sparse"]
    assert len(dense) == 4 and set(dense["steps_3d"]) == {4, 8} and set(table["fold"]) == set(script.FOLDS)
    passes_at_4 = calibration.budget_table(table).xs(4, level="steps_3d")["passes"].all()
    assert set(sparse["steps_3d"]) == ({4} if passes_at_4 else {4, 8})
    assert len(sparse) == 2 * sparse["steps_3d"].nunique()
    meta = json.loads((script.OUT / "grid.json").read_text())
    assert meta["chosen_steps_3d"] == calibration.choose_budget(table)
    # a second call (a new machine: empty working folder) takes the committed rows as done
    capsys.readouterr()
    script.main([*options[:-3], str(tmp_path / "fresh"), "--threads", "1"])
    again = pd.read_csv(script.OUT / "calibration.csv")
    pd.testing.assert_frame_equal(again, table)


def test_the_grid_reuses_the_calibration_runs_at_the_chosen_budget(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "BASE_PRESET", "smoke")  # seconds per model; the rule is the same
    workdir = tmp_path / "work"
    script.main(["--stages", "calibrate", "--steps", "4", "--calibration-seeds", "0", "--workdir", str(workdir),
                 "--threads", "1"])
    # the grid's preset is the calibrated candidate under the name "qcanet" (as runs.PRESETS is set by hand)
    monkeypatch.setitem(runs.PRESETS, "qcanet", dataclasses.replace(script.candidate_preset(4), name="qcanet"))
    calibrated = pd.read_csv(script.OUT / "calibration.csv")
    meta = json.loads((script.OUT / "grid.json").read_text())
    script.run_grid(seeds=[0], workdir=tmp_path / "fresh", meta=meta, device="cpu", folds=["qcanet-8to16"])
    results = pd.read_csv(script.OUT / "results.csv")
    assert set(results["preset"]) == {"qcanet"} and set(results["fold"]) == {"qcanet-8to16"}
    fold_calibration = calibrated[calibrated["fold"] == "qcanet-8to16"]
    # the dense model and the k = 3 sparse one are the calibration's runs, found by key, not trained again
    reused = results[results["key"].isin(fold_calibration["key"])]
    assert sorted(reused["method"]) == ["3d_dense", "3d_sparse"] and set(reused["n_slices"]) - {3} == {51}
    pd.testing.assert_series_equal(reused.set_index("key")["dice"].sort_index(),
                                   fold_calibration.set_index("key")["dice"].sort_index())
    done = json.loads((script.OUT / "grid.json").read_text())["done"]["grid: qcanet-8to16, seed 0"]
    assert done["runs"] == len(results) and done["new_runs"] == len(results) - 2


def test_the_grid_refuses_an_uncalibrated_preset(script, tmp_path):
    meta = {"done": {}, "this_machine": "test", "chosen_steps_3d": 123456}
    with pytest.raises(SystemExit, match="calibrated budget"):
        script.run_grid(seeds=[0], workdir=tmp_path, meta=meta, device="cpu")


STORED = Path(calibration.__file__).parent / "data" / "qcanet_grid"


@pytest.mark.skipif(not (STORED / "calibration.csv").exists(), reason="the QCANet calibration has not been run")
def test_the_qcanet_preset_is_the_calibrated_budget():
    spec = importlib.util.spec_from_file_location("qcanet_grid_stored", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = pd.read_csv(STORED / "calibration.csv")
    if set(table["steps_3d"]) != set(module.CANDIDATE_STEPS):
        pytest.skip("the stored calibration is partial")
    chosen = calibration.choose_budget(table)
    preset = runs.PRESETS["qcanet"]
    assert preset.overrides_3d["steps"] == chosen
    base = runs.PRESETS[module.BASE_PRESET]
    assert {**base.overrides_3d, "steps": chosen} == preset.overrides_3d
    assert (preset.train_2d, preset.train_3d, preset.model_3d, preset.overrides_2d) == (
        base.train_2d, base.train_3d, base.model_3d, base.overrides_2d)
