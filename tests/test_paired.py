"""Paired comparisons over data sets: intervals and tests that can fail, learning-curve targets, the planner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroseg_lite import paired
from neuroseg_lite._checks import NeurosegInputError


def _table(gains, *, seeds=(0, 1), k=1, base=0.8):
    """Rows of 3d_pseudo and 3d_sparse on len(gains) data sets; pseudo = sparse + gain (+ a seed wobble)."""
    rows = []
    for data_seed, gain in enumerate(gains):
        for seed in seeds:
            wobble = 0.01 * (seed - 0.5)  # cancels in the mean over the two seeds
            sparse = base + 0.02 * data_seed
            rows += [{"method": "3d_sparse", "data_seed": data_seed, "seed": seed, "n_slices": k,
                      "dice": sparse, "hd95_um": 5.0},
                     {"method": "3d_pseudo", "data_seed": data_seed, "seed": seed, "n_slices": k,
                      "dice": sparse + gain + wobble, "hd95_um": 5.0 - gain}]
    return pd.DataFrame(rows)


def test_a_consistent_gain_is_found_with_its_interval_and_tests():
    gains = [0.03, 0.05, 0.04, 0.06, 0.05, 0.04, 0.03, 0.06]
    result = paired.paired_differences(_table(gains), against=["3d_sparse"], metrics=["dice", "hd95_um"])
    dice = result.set_index("metric").loc["dice"]
    assert dice["data_sets"] == 8 and dice["pairs"] == 16 and dice["wins"] == 8
    assert dice["difference"] == pytest.approx(np.mean(gains))
    assert 0.03 <= dice["ci_low"] < dice["difference"] < dice["ci_high"] <= 0.06
    assert dice["wilcoxon_p"] == pytest.approx(2 / 2**8) and dice["sign_p"] == pytest.approx(2 / 2**8)
    assert dice["verdict"] == "better"
    # lower is better for the Hausdorff distance: a smaller distance still counts as a gain
    assert result.set_index("metric").loc["hd95_um", "verdict"] == "better"


def test_gains_of_both_signs_are_no_clear_difference_and_losses_are_worse():
    mixed = paired.paired_differences(_table([0.05, -0.05, 0.02, -0.02, 0.01, -0.01]), against=["3d_sparse"],
                                      metrics=["dice"])
    assert mixed["verdict"].item() == "no clear difference" and mixed["ci_low"].item() < 0 < mixed["ci_high"].item()
    worse = paired.paired_differences(_table([-0.04] * 5), against=["3d_sparse"], metrics=["dice"])
    assert worse["verdict"].item() == "worse" and worse["wins"].item() == 0


def test_training_seeds_are_not_counted_as_independent_data_sets():
    one_data_set = paired.paired_differences(_table([0.05], seeds=range(10)), against=["3d_sparse"],
                                             metrics=["dice"])
    assert one_data_set["pairs"].item() == 10 and one_data_set["data_sets"].item() == 1
    assert one_data_set["verdict"].item() == "too few data sets" and np.isnan(one_data_set["ci_low"].item())


def test_a_duplicated_pair_is_refused():
    table = _table([0.05, 0.04])
    with pytest.raises(Exception, match="one-to-one|not a one-to-one"):
        paired.paired_differences(pd.concat([table, table.iloc[:1]]), against=["3d_sparse"], metrics=["dice"])
    with pytest.raises(NeurosegInputError, match="data_seed"):
        paired.paired_differences(table.drop(columns="data_seed"), against=["3d_sparse"], metrics=["dice"])


def _curve(method, values, *, data_seed=0, seed=0, k=1):
    steps = np.arange(1, len(values) + 1) * 50
    return pd.DataFrame({"step": steps, "seconds": steps / 10.0, "val_dice": values, "method": method,
                         "n_slices": k, "data_seed": data_seed, "seed": seed,
                         "key": f"{method}-{data_seed}-{seed}"})


def test_steps_to_reach_uses_the_dense_final_score_of_the_same_data_set_and_seed():
    curves = pd.concat([_curve("3d_dense", [0.5, 0.8, 0.9, 1.0]), _curve("3d_sparse", [0.3, 0.85, 0.9, 0.96]),
                        _curve("3d_pseudo", [0.2, 0.3, 0.4, 0.5]),
                        _curve("3d_dense", [0.1, 0.2, 0.3, 0.4], data_seed=1)])  # no sparse run on it
    table = paired.steps_to_reach(curves, fractions=(0.9, 0.95))
    assert set(table["data_seed"]) == {0, 1}
    reached = table[table["data_seed"] == 0].set_index(["method", "fraction"])
    assert reached.loc[("3d_sparse", 0.9), "step"] == 150 and reached.loc[("3d_sparse", 0.95), "step"] == 200
    assert reached.loc[("3d_sparse", 0.9), "seconds"] == 15.0
    assert not reached.loc[("3d_pseudo", 0.9), "reached"] and np.isnan(reached.loc[("3d_pseudo", 0.9), "step"])
    assert reached.loc[("3d_dense", 0.95), "target"] == pytest.approx(0.95)


def test_plan_budget_reads_the_fewest_planes_that_reach_the_target():
    spread = (-0.03, -0.01, 0.01, 0.04)
    rows = [{"method": method, "n_slices": k, "data_seed": d, "seed": 0, "dice": score + spread[d]}
            for d in range(4) for k, scores in ((1, (0.70, 0.80)), (2, (0.78, 0.86)), (4, (0.84, 0.88)))
            for method, score in zip(("2d", "3d_pseudo"), scores)]
    plan = paired.plan_budget(pd.DataFrame(rows), target=0.8, methods=("2d", "3d_pseudo"),
                              outlines={1: 10, 2: 20, 4: 40}, minutes_per_outline=1.5).set_index("method")
    assert plan.loc["2d", "planes_needed"] == 4 and plan.loc["3d_pseudo", "planes_needed"] == 1
    assert plan.loc["2d", "minutes"] == 60.0 and plan.loc["3d_pseudo", "outlines"] == 10
    assert plan.loc["3d_pseudo", "planes_needed_confident"] == 2  # at k = 1 the interval reaches below 0.8
    never = paired.plan_budget(pd.DataFrame(rows), target=0.99, methods=("2d",))
    assert np.isnan(never["planes_needed"].item())
    with pytest.raises(NeurosegInputError, match="no '3d_dense' runs"):
        paired.plan_budget(pd.DataFrame(rows), target=0.8, methods=("3d_dense",))


def test_the_stored_grid_loads_and_its_pairs_are_complete():
    grid = paired.load_stored_grid()
    if grid.results.empty:
        pytest.skip("no stored grid in this checkout (benchmarks/paired_grid.py makes it)")
    assert {"data_seed", "machine", "key", "dice", "surface_dice"} <= set(grid.results.columns)
    assert grid.results["key"].is_unique and grid.meta["preset"] == "sweep_curves"
    sparse = grid.results[grid.results["method"] != "3d_dense"]
    per_cell = sparse.groupby(["data_seed", "seed", "n_slices"])["method"].nunique()
    assert (per_cell == 3).all(), "every stored cell has all three sparse methods (pairs are complete)"
    assert set(grid.curves["key"]) == set(grid.results.loc[grid.results["method"] != "2d", "key"])
    assert grid.curves["val_dice"].between(0, 1).all()
