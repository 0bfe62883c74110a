"""benchmarks/calibrate_cpu_preset.py: the "cpu" preset is chosen on the dense and sparse baselines only."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from neuroseg_lite import runs, trainconfig, unet3d

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_cpu_preset.py"


def load_script(name="calibrate_cpu_preset"):
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def script(tmp_path, monkeypatch):
    module = load_script()
    monkeypatch.setattr(module, "OUT", tmp_path / "tables")
    monkeypatch.setattr(module, "DATA_PRESET", "tiny")
    monkeypatch.setattr(module, "TRAIN_3D", "smoke")  # seconds per model; the rule is the same
    monkeypatch.setattr(module, "CANDIDATES", {"cheap": ({"base_channels": 4, "depth": 2}, {"steps": 4}),
                                               "ref": ({"base_channels": 4, "depth": 2}, {"steps": 8})})
    return module


def test_the_calibration_runs_both_baselines_resumes_and_reports_a_choice(script, tmp_path, capsys):
    options = ["--seeds", "0", "--threads", "1", "--workdir", str(tmp_path / "work")]
    script.main(options)
    table = pd.read_csv(script.OUT / "calibration.csv")
    assert sorted(zip(table["candidate"], table["method"])) == [
        ("cheap", "3d_dense"), ("cheap", "3d_sparse"), ("ref", "3d_dense"), ("ref", "3d_sparse")]
    assert 2 in set(table["n_slices"])
    chosen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["chosen"]
    assert chosen == script.chosen_candidate(table)
    meta = json.loads((script.OUT / "grid.json").read_text())
    assert meta["candidates"] == ["cheap", "ref"] and len(meta["done"]) == 4
    # a new machine (an empty working folder) takes the committed rows as done
    script.main([*options[:-1], str(tmp_path / "fresh")])
    pd.testing.assert_frame_equal(pd.read_csv(script.OUT / "calibration.csv"), table)
    assert not (tmp_path / "fresh" / "models").exists()


def test_the_rule_picks_the_cheapest_candidate_within_the_tolerance_of_the_reference():
    script = load_script("calibrate_cpu_preset_rule")
    names = list(script.CANDIDATES)
    dense = {names[0]: 0.90, names[1]: 0.945} | {name: 0.95 for name in names[2:]}  # the cheapest: 0.05 short
    rows = [{"data": "d", "candidate": name, "seed": seed, "method": method,
             "dice": dense[name] - (0.03 if method == "3d_sparse" else 0.0)}
            for name in names for seed in (0, 1) for method in ("3d_dense", "3d_sparse")]
    assert script.chosen_candidate(pd.DataFrame(rows)) == names[1]


def test_the_cpu_preset_is_the_calibrated_choice():
    script = load_script("calibrate_cpu_preset_stored")
    stored = script.OUT / "calibration.csv"
    if not stored.exists():
        pytest.skip("the cpu calibration has not been run")
    table = pd.read_csv(stored)
    reference = table[table["candidate"] == list(script.CANDIDATES)[-1]]
    if reference["seed"].nunique() < 3 or len(reference) < 6:
        pytest.skip("the stored calibration is partial (the reference needs dense and sparse on 3 seeds)")
    chosen = script.chosen_candidate(table)
    for cheaper in list(script.CANDIDATES)[:list(script.CANDIDATES).index(chosen)]:
        if (table["candidate"] == cheaper).sum() < 6:
            pytest.skip(f"the stored calibration is partial: {cheaper} needs dense and sparse on 3 seeds")
    model_3d, overrides_3d = script.CANDIDATES[chosen]
    preset = runs.PRESETS["cpu"]
    assert (preset.train_2d, preset.train_3d) == (script.TRAIN_2D, script.TRAIN_3D)
    assert unet3d.UNet3DConfig(**preset.model_3d) == unet3d.UNet3DConfig(**model_3d)
    assert (trainconfig.make_train_config(preset.train_3d, **preset.overrides_3d)
            == trainconfig.make_train_config(script.TRAIN_3D, **overrides_3d))
