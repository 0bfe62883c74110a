"""neuroseg_lite.calibration: the budget rule on the baselines, pairs of runs, the stored real-data grid."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neuroseg_lite import NeurosegInputError, calibration

FOLDS = ("qcanet-8to16", "qcanet-16to8")


def _calibration(rows):
    return pd.DataFrame([{"fold": fold, "steps_3d": steps, "method": method, "seed": seed, "dice": dice}
                         for fold, steps, method, seed, dice in rows])


def _rows():
    rows = []
    for fold in FOLDS:
        for seed in (0, 1):
            # 400 steps: dense below sparse (no upper bound); 800: above sparse and within 0.01 of 1600
            rows += [(fold, 400, "3d_dense", seed, 0.80), (fold, 400, "3d_sparse", seed, 0.85),
                     (fold, 800, "3d_dense", seed, 0.895), (fold, 800, "3d_sparse", seed, 0.86),
                     (fold, 1600, "3d_dense", seed, 0.90), (fold, 1600, "3d_sparse", seed, 0.87)]
    return rows


def test_choose_budget_takes_the_cheapest_converged_upper_bound():
    rows = _rows()
    assert calibration.choose_budget(_calibration(rows)) == 800
    # one fold whose dense model at 800 steps is 0.02 short of the longest budget's: 1600
    shorter = [(f, s, m, seed, d - 0.015 if (f, s, m) == (FOLDS[1], 800, "3d_dense") else d)
               for f, s, m, seed, d in rows]
    assert calibration.choose_budget(_calibration(shorter)) == 1600
    # a looser tolerance accepts it again
    assert calibration.choose_budget(_calibration(shorter), tolerance=0.03) == 800


def test_choose_budget_falls_back_to_the_longest():
    rows = [(fold, steps, method, 0, 0.9 if method == "3d_sparse" else 0.8)
            for fold in FOLDS for steps in (400, 800) for method in ("3d_dense", "3d_sparse")]
    assert calibration.choose_budget(_calibration(rows)) == 800
    table = calibration.budget_table(_calibration(rows))
    assert not table["upper_bound"].any() and table["converged"].xs(800, level="steps_3d").all()


def test_a_budget_missing_a_fold_does_not_pass():
    rows = [r for r in _rows() if not (r[0] == FOLDS[1] and r[1] == 800)]
    assert calibration.choose_budget(_calibration(rows)) == 1600


def test_budget_table_gives_means_spreads_and_the_rule():
    rows = _rows() + [(FOLDS[0], 800, "3d_dense", 2, 0.905)]
    table = calibration.budget_table(_calibration(rows))
    first = table.loc[(FOLDS[0], 800)]
    assert first["seeds"] == 3
    assert first["dense"] == pytest.approx(np.mean([0.895, 0.895, 0.905]))
    assert first["dense_sd"] == pytest.approx(np.std([0.895, 0.895, 0.905], ddof=1))
    assert bool(first["upper_bound"]) and bool(first["passes"])
    assert not table.loc[(FOLDS[0], 400), "passes"]


def test_budget_table_names_missing_columns_and_methods():
    with pytest.raises(NeurosegInputError, match="steps_3d"):
        calibration.budget_table(pd.DataFrame({"fold": ["a"], "method": ["3d_dense"], "seed": [0],
                                               "dice": [0.5]}))
    only_dense = _calibration([(FOLDS[0], 400, "3d_dense", 0, 0.8)])
    with pytest.raises(NeurosegInputError, match="both baselines"):
        calibration.budget_table(only_dense)


def test_pair_differences_pairs_by_fold_seed_and_k():
    rows = []
    for fold, offset in zip(FOLDS, (0.0, 0.1)):
        for seed in (0, 1):
            for k in (1, 3):
                base = 0.5 + offset + 0.01 * seed + 0.02 * k
                rows += [{"fold": fold, "seed": seed, "n_slices": k, "method": m, "dice": base + gain,
                          "hd95_um": 10.0 - gain}
                         for m, gain in (("2d", 0.0), ("3d_sparse", 0.05), ("3d_pseudo", 0.08))]
    rows.append({"fold": FOLDS[0], "seed": 0, "n_slices": np.nan, "method": "3d_dense", "dice": 0.99,
                 "hd95_um": 1.0})
    pairs = calibration.pair_differences(pd.DataFrame(rows), metrics=("dice", "hd95_um"))
    assert len(pairs) == 2 * 2 * 2 * 2 * 2  # folds x seeds x k x others x metrics
    dice = pairs[pairs["metric"] == "dice"].set_index("against")["difference"]
    assert np.allclose(dice.loc["2d"], 0.08) and np.allclose(dice.loc["3d_sparse"], 0.03)
    # lower is better for hd95: the difference is flipped, so positive still means 3d_pseudo is better
    hd = pairs[pairs["metric"] == "hd95_um"].set_index("against")["difference"]
    assert np.allclose(hd.loc["2d"], 0.08)


def test_load_qcanet_grid_reads_the_tables_and_tolerates_absence(tmp_path):
    empty = calibration.load_qcanet_grid(tmp_path)
    assert empty.results.empty and empty.calibration.empty and empty.meta == {}
    assert empty.chosen_budget is None and empty.coverage.empty
    _calibration(_rows()).to_csv(tmp_path / "calibration.csv", index=False)
    pd.DataFrame({"fold": FOLDS[0], "method": ["2d", "3d_dense"], "n_slices": [1, 51], "seed": 0,
                  "dice": [0.7, 0.9], "key": ["a", "b"]}).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "grid.json").write_text(json.dumps({"chosen_steps_3d": 800}))
    grid = calibration.load_qcanet_grid(tmp_path)
    assert grid.chosen_budget == 800 == grid.meta["chosen_steps_3d"]
    assert grid.coverage.loc[(FOLDS[0], 51), "3d_dense"] == 1


def test_qcanet_fold_trains_on_one_embryo_and_tests_on_the_other():
    one, other = (calibration.qcanet_fold(fold) for fold in FOLDS)
    assert (one.name, other.name) == FOLDS
    assert len(one.train_images) == 1 and one.train_images[0].shape == one.test_image.shape
    np.testing.assert_array_equal(one.train_images[0], other.test_image)
    np.testing.assert_array_equal(one.test_labels, other.train_labels[0])
    with pytest.raises(NeurosegInputError, match="unknown fold"):
        calibration.qcanet_fold("qcanet-8to8")


def _pair_rows():
    rows = []
    for fold, gain in zip(FOLDS, (0.04, -0.01)):
        for seed in (0, 1):
            rows += [{"fold": fold, "seed": seed, "n_slices": 1, "method": "3d_sparse", "dice": 0.80 + 0.01 * seed},
                     {"fold": fold, "seed": seed, "n_slices": 1, "method": "3d_pseudo",
                      "dice": 0.80 + 0.01 * seed + gain + 0.002 * seed},
                     {"fold": fold, "seed": seed, "n_slices": 1, "method": "2d", "dice": 0.70}]
        rows.append({"fold": fold, "seed": 0, "n_slices": 51, "method": "3d_dense", "dice": 0.83})
    return pd.DataFrame(rows)


def test_summarise_pairs_counts_spreads_wins_and_fold_means():
    pairs = calibration.pair_differences(_pair_rows(), against=("3d_sparse",), metrics=("dice",))
    row = calibration.summarise_pairs(pairs).loc[(1, "3d_sparse", "dice")]
    differences = [0.04, 0.042, -0.01, -0.008]
    assert row["count"] == 4 and row["wins"] == 2
    assert np.isclose(row["mean"], np.mean(differences)) and np.isclose(row["std"], np.std(differences, ddof=1))
    assert np.isclose(row["min"], -0.01) and np.isclose(row["max"], 0.042)
    assert np.isclose(row[f"mean on {FOLDS[0]}"], 0.041) and np.isclose(row[f"mean on {FOLDS[1]}"], -0.009)
    with pytest.raises(NeurosegInputError, match="pair_differences"):
        calibration.summarise_pairs(pairs.drop(columns="fold"))


def test_dense_bound_compares_the_dense_mean_with_the_best_sparse_mean():
    bound = calibration.dense_bound(_pair_rows())
    # fold 1: pseudo reaches 0.80 + 0.005 + 0.04 + 0.001 = 0.846 > 0.83; fold 2: sparse 0.805 < 0.83
    assert not bound.loc[FOLDS[0], "upper_bound"] and bound.loc[FOLDS[0], "best_method"] == "3d_pseudo"
    assert np.isclose(bound.loc[FOLDS[0], "best"], 0.846) and bound.loc[FOLDS[0], "best_k"] == 1
    assert bound.loc[FOLDS[1], "upper_bound"] and np.isclose(bound.loc[FOLDS[1], "dense"], 0.83)
    without_dense = _pair_rows().query("method != '3d_dense'")
    with pytest.raises(NeurosegInputError, match="needs runs of '3d_dense'"):
        calibration.dense_bound(without_dense)


def test_nuclei_crossed_counts_the_nuclei_an_annotated_plane_cuts():
    table = calibration.nuclei_crossed(folds=[FOLDS[0]], k_values=(1, 51))
    assert table["k"].tolist() == [1, 51] and (table["n_planes"] == 51).all()
    every_plane = table.iloc[1]
    assert every_plane["nuclei_crossed"] == every_plane["nuclei"] > 0  # all planes annotated: every nucleus
    assert np.isclose(every_plane["annotated_percent"], 100.0)
    assert 0 < table.iloc[0]["nuclei_crossed"] <= every_plane["nuclei"]
    with pytest.raises(NeurosegInputError, match="unknown fold"):
        calibration.nuclei_crossed(folds=["qcanet-1to2"])
