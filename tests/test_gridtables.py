"""neuroseg_lite.gridtables: committed tables of resumable grids, their machines and stage times."""
from __future__ import annotations

import json
import os
import sys

import pandas as pd

from neuroseg_lite import gridtables


def test_merge_into_replaces_rows_with_equal_keys_and_keeps_the_rest(tmp_path):
    path = tmp_path / "results.csv"
    gridtables.merge_into(path, pd.DataFrame({"key": ["a", "b"], "dice": [0.1, 0.2]}), ["key"])
    table = gridtables.merge_into(path, pd.DataFrame({"key": ["b", "c"], "dice": [0.3, 0.4]}), ["key"])
    assert table.to_dict("list") == {"key": ["a", "b", "c"], "dice": [0.1, 0.3, 0.4]}
    assert gridtables.read_table(path).equals(table)
    assert gridtables.read_table(tmp_path / "missing.csv").empty


def test_seed_working_file_takes_the_committed_rows_of_one_data_set_once(tmp_path):
    stored = pd.DataFrame({"data": ["x", "x", "y"], "key": ["a", "a", "b"], "dice": [0.5, 0.5, 0.6],
                           "machine": ["m1", "m1", "m2"]})
    working = tmp_path / "work" / "results.csv"
    gridtables.seed_working_file(working, stored, data_name="x", drop=["machine"])
    seeded = pd.read_csv(working)
    assert seeded.to_dict("list") == {"data": ["x"], "key": ["a"], "dice": [0.5]}
    # an existing working file is never overwritten
    gridtables.seed_working_file(working, stored, data_name="y")
    assert pd.read_csv(working).equals(seeded)


def test_machines_of_keeps_the_committed_rows_machine():
    stored = pd.DataFrame({"key": ["a"], "machine": ["old machine"]})
    assert gridtables.machines_of(["a", "b"], stored, "this one") == ["old machine", "this one"]
    assert gridtables.machines_of(["a"], pd.DataFrame(), "this one") == ["this one"]


def test_record_stage_adds_sessions_and_keeps_a_complete_stage(tmp_path):
    path = tmp_path / "grid.json"
    meta = {"done": {"old": {"seconds_this_session": 840.0, "finished": "2026-11-30T10:00:00"}}}
    gridtables.record_stage(meta, path, "old", seconds=0.1, new_runs=0, runs=8)  # found complete
    assert meta["done"]["old"]["seconds_this_session"] == 840.0
    gridtables.record_stage(meta, path, "old", seconds=60.0, new_runs=2, runs=10)  # grown in a later session
    assert meta["done"]["old"]["seconds"] == 900.0 and meta["done"]["old"]["new_runs"] == 2
    gridtables.record_stage(meta, path, "new", seconds=12.34, new_runs=3, runs=3)
    written = json.loads(path.read_text())
    assert written["done"]["new"]["seconds"] == 12.3 and written["updated"] == written["done"]["new"]["finished"]


def test_record_stage_reports_the_stage_unless_told_not_to(tmp_path, capsys):
    gridtables.record_stage({}, tmp_path / "grid.json", "seed 1", seconds=61.4, new_runs=2, runs=7)
    assert capsys.readouterr().out == "seed 1: 7 runs (2 new), 61 s\n"
    gridtables.record_stage({}, tmp_path / "grid.json", "seed 2", seconds=1.0, new_runs=0, runs=7, report=False)
    assert capsys.readouterr().out == ""


def test_describe_machine_names_cores():
    assert f"{os.cpu_count()} cores" in gridtables.describe_machine()


def test_two_processes_recording_stages_keep_each_others(tmp_path):
    path = tmp_path / "grid.json"
    first, second = {"done": {}, "who": "first"}, {"done": {}, "who": "second"}
    gridtables.record_stage(first, path, "fold a", seconds=10.0, new_runs=1, runs=1)
    gridtables.record_stage(second, path, "fold b", seconds=20.0, new_runs=1, runs=1)
    written = json.loads(path.read_text())
    assert set(written["done"]) == {"fold a", "fold b"} and written["who"] == "second"


def test_open_meta_keeps_the_whole_design_across_partial_commands(tmp_path):
    path = tmp_path / "grid.json"
    first = gridtables.open_meta(path, script="grid.py", argv=["--data-seeds", "0", "1"], this_machine="m1",
                                 design={"data_seeds": [0, 1], "k_values": [1]}, threads=2)
    gridtables.record_stage(first, path, "data seed 0", seconds=5.0, new_runs=4, runs=4, report=False)
    second = gridtables.open_meta(path, script="grid.py", argv=["--data-seeds", "3", "2", "--k", "2"],
                                  this_machine="m2", design={"data_seeds": [3, 2], "k_values": [2]}, threads=1)
    assert second["data_seeds"] == [0, 1, 2, 3] and second["k_values"] == [1, 2]
    assert second["command"] == "python grid.py --data-seeds 3 2 --k 2" and second["threads"] == 1
    assert second["machines"] == ["m1", "m2"] and "data seed 0" in second["done"]


def test_processes_that_open_the_record_before_either_writes_keep_each_others_design(tmp_path):
    path = tmp_path / "grid.json"
    one = gridtables.open_meta(path, script="grid.py", argv=["--k", "4", "--data-seeds", "6"],
                               this_machine="m", design={"data_seeds": [6], "k_values": [4]})
    other = gridtables.open_meta(path, script="grid.py", argv=["--k", "8", "--data-seeds", "7"],
                                 this_machine="m", design={"data_seeds": [7], "k_values": [8]})
    gridtables.record_stage(one, path, "k 4, data seed 6", seconds=1.0, new_runs=1, runs=1, report=False)
    gridtables.record_stage(other, path, "k 8, data seed 7", seconds=1.0, new_runs=1, runs=1, report=False)
    written = json.loads(path.read_text())
    assert written["data_seeds"] == [6, 7] and written["k_values"] == [4, 8]
    assert written["design"] == ["data_seeds", "k_values"]


def test_open_meta_records_the_command_line_it_was_run_with(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["grid.py", "--threads", "1"])
    meta = gridtables.open_meta(tmp_path / "grid.json", script="benchmarks/grid.py", this_machine="m")
    assert meta["command"] == "python benchmarks/grid.py --threads 1"


def test_each_stage_records_its_command_and_processes_keep_each_others_machines(tmp_path):
    path = tmp_path / "grid.json"
    one = gridtables.open_meta(path, script="grid.py", argv=["--folds", "a"], this_machine="m1")
    other = gridtables.open_meta(path, script="grid.py", argv=["--folds", "b"], this_machine="m2")  # a second process
    gridtables.record_stage(one, path, "fold a", seconds=1.0, new_runs=1, runs=1, report=False)
    gridtables.record_stage(other, path, "fold b", seconds=2.0, new_runs=1, runs=1, report=False)
    written = json.loads(path.read_text())
    assert written["done"]["fold a"]["command"] == "python grid.py --folds a"
    assert written["done"]["fold b"]["command"] == "python grid.py --folds b"
    assert written["machines"] == ["m2", "m1"]
