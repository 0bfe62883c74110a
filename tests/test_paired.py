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
                              outlines={1: 10, 2: 20, 4: 40}, minutes_per_outline=1.5,
                              min_data_sets=4).set_index("method")
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


def _grid_rows(gains, *, k=1):
    """Results-like rows of all three sparse methods with the columns ablation_differences needs."""
    table = _table(gains, k=k)
    extra = pd.concat([table[table["method"] == "3d_sparse"].assign(method="2d", dice=lambda t: t["dice"] - 0.01)])
    table = pd.concat([table, extra], ignore_index=True)
    pseudo = table["method"] == "3d_pseudo"
    return table.assign(lam=np.where(pseudo, 0.5, 0.0), pseudo_mode=np.where(pseudo, "hard", "none"),
                        loss_normalization=np.where(pseudo, "paper", "none"), preset="sweep_curves",
                        surface_dice=table["dice"])


def test_an_empty_table_gives_empty_results_with_their_columns(tmp_path):
    grid = paired.load_stored_grid(tmp_path)  # nothing stored: every table empty, with its columns
    assert grid.results.empty and grid.ablations.empty and grid.cpu_hours() == 0.0
    result = paired.paired_differences(grid.results)
    assert result.empty and {"difference", "ci_low", "verdict"} <= set(result.columns)
    assert grid.per_k().empty and paired.steps_to_reach(grid.curves).empty
    claims = paired.paper_claims(result, result)
    assert list(claims["status"]) == ["not in the grid"] * 3


def test_paired_gains_and_the_sentence_describe_each_pair():
    table = _table([0.05, 0.03])
    gains = paired.paired_gains(table, other="3d_sparse")
    assert len(gains) == 4 and gains.groupby("data_seed")["gain"].mean().round(6).tolist() == [0.05, 0.03]
    row = paired.paired_differences(table, against=["3d_sparse"], metrics=["dice"], n_boot=200).iloc[0]
    text = paired.describe_difference(row, labels={"3d_pseudo": "pseudo"})
    assert text.startswith("pseudo minus 3d_sparse, dice, k = 1: +0.040 [95 % CI ") and "2 data sets" in text
    assert text.endswith(": too few data sets")  # an interval over 2 data sets is given, no verdict
    row = paired.paired_differences(table, against=["3d_sparse"], metrics=["dice"], n_boot=200,
                                    min_data_sets=2).iloc[0]
    assert paired.describe_difference(row).endswith(": better")


def test_a_verdict_needs_min_data_sets_even_when_the_interval_excludes_zero():
    gains = [0.03, 0.05, 0.04, 0.06]
    few = paired.paired_differences(_table(gains), against=["3d_sparse"], metrics=["dice"])
    assert paired.MIN_DATA_SETS == 5 and few["verdict"].item() == "too few data sets"
    assert few["ci_low"].item() > 0 and np.isfinite(few["wilcoxon_p"].item())
    enough = paired.paired_differences(_table(gains + [0.05]), against=["3d_sparse"], metrics=["dice"])
    assert enough["verdict"].item() == "better"


def test_ablation_differences_pair_each_variant_with_its_default():
    results = _grid_rows([0.03, 0.05, 0.04])
    pseudo = results[results["method"] == "3d_pseudo"]
    variants = pd.concat([pseudo.assign(lam=1.0, dice=pseudo["dice"] + 0.02),
                          pseudo.assign(pseudo_mode="soft", dice=pseudo["dice"] - 0.03),
                          pseudo,  # the default itself: left out
                          results[results["method"] == "2d"].assign(preset="sweep_curves+prior_correction")])
    table = paired.ablation_differences(variants, results, metrics=["dice"], n_boot=200,
                                        min_data_sets=3).set_index("variant")
    assert set(table.index) == {"lambda = 1", "soft pseudo-labels", "prior-corrected"}
    assert table.loc["lambda = 1", "difference"] == pytest.approx(0.02)
    assert table.loc["soft pseudo-labels", "verdict"] == "worse" and table.loc["lambda = 1", "data_sets"] == 3
    assert table.loc["prior-corrected", "of"] == "2d" and table.loc["prior-corrected", "difference"] == 0
    one = paired.ablation_differences(variants[variants["data_seed"] == 0], results, metrics=["dice"])
    assert (one["verdict"] == "too few data sets").all() and (one["data_sets"] == 1).all()


def test_speed_is_compared_by_steps_to_target_and_claims_are_read_off():
    curves = []
    for data_seed in range(4):
        for seed in (0, 1):
            curves += [_curve("3d_dense", [0.5, 0.8, 0.9, 1.0], data_seed=data_seed, seed=seed),
                       _curve("3d_sparse", [0.2, 0.5, 0.8, 0.92], data_seed=data_seed, seed=seed),
                       _curve("3d_pseudo", [0.5, 0.91, 0.95, 0.96], data_seed=data_seed, seed=seed)]
    steps = paired.steps_to_reach(pd.concat(curves))
    summary = paired.summarise_steps(steps).set_index(["method", "fraction"])
    assert summary.loc[("3d_pseudo", 0.9), "step_median"] == 100 and summary.loc[("3d_sparse", 0.9), "reached"] == 1
    assert summary.loc[("3d_sparse", 0.95), "reached"] == 0
    assert np.isnan(summary.loc[("3d_sparse", 0.95), "step_median"])
    reach = paired.reach_table(steps, fraction=0.95)
    assert (reach.loc[reach["method"] == "3d_sparse", "steps_to_target"] == 200).all()  # censored at the budget
    speed = paired.paired_differences(reach, against=["3d_sparse"], metrics=["steps_to_target"], n_boot=200,
                                      min_data_sets=4)
    assert speed["verdict"].item() == "better" and speed["difference"].item() == pytest.approx(50)
    scores = paired.paired_differences(_grid_rows([0.03, 0.05, -0.01, 0.04]), metrics=["dice"], n_boot=200,
                                       min_data_sets=4)
    claims = paired.paper_claims(scores, speed).set_index("claim")
    assert claims.loc[3, "status"] == "supported" and claims.loc[1, "against"] == "2d"
    assert claims.loc[2, "status"] in {"supported", "not shown"} and claims.loc[2, "data_sets"] == 4


def test_per_k_reports_the_annotated_fraction_and_the_neurons_crossed(tmp_path):
    results = _grid_rows([0.03, 0.05]).assign(key=lambda t: [f"r{i}" for i in range(len(t))], total_seconds=60.0)
    results.to_csv(tmp_path / "results.csv", index=False)
    pd.DataFrame([{"data_seed": d, "n_slices": 1, "seed": s, "annotated_fraction": 0.01, "neurons_crossed": 30 + d,
                   "neurons": 300} for d in (0, 1) for s in (0, 1)]).to_csv(tmp_path / "pseudo.csv", index=False)
    grid = paired.load_stored_grid(tmp_path)
    row = grid.per_k().iloc[0]
    assert row["data_sets"] == 2 and row["runs"] == 12 and row["neurons_crossed"] == 30.5
    assert grid.cpu_hours() == pytest.approx(12 * 60 / 3600)


def _timed_rows(*, train_3d=(100.0, 100.0, 100.0, 900.0)):
    """Rows with stage seconds: 2D model 60 s, pseudo-labels 40 s, 2D prediction 20 s, 3D prediction 4 s."""
    rows = [{"method": "2d", "train_2d_seconds": 60.0, "pseudo_seconds": 0.0, "train_3d_seconds": 0.0,
             "predict_seconds": 20.0}]
    methods = ["3d_sparse", "3d_pseudo", "3d_dense", "3d_sparse"]
    for method, seconds in zip(methods, train_3d):  # the last, 9 times slower: a busy machine
        rows.append({"method": method, "train_2d_seconds": 60.0 if method == "3d_pseudo" else 0.0,
                     "pseudo_seconds": 40.0 if method == "3d_pseudo" else 0.0, "train_3d_seconds": seconds,
                     "predict_seconds": 4.0})
    return pd.DataFrame(rows)


def test_the_grid_estimate_counts_every_stage_and_divides_only_the_accelerator_parts():
    table = paired.estimate_grid_hours(_timed_rows(), speedup=4.0, data_seeds=2, seeds=1, k_values=(1, 2),
                                       ablation_data_seeds=1, blur_data_seeds=1, blur_sigmas=2)
    stage = table.set_index(["part", "stage"])
    assert stage.loc[("main grid", "3D model"), "count"] == 2 * 2 * 2  # two 3D models per data set and k
    assert stage.loc[("main grid", "3D model"), "seconds_each"] == 100.0  # the median: the busy run is left out
    assert stage.loc[("dense bound", "3D model"), "count"] == 2 and stage.loc[("ablations", "3D model"), "count"] == 5
    assert stage.loc[("axial blur", "data set"), "count"] == 2 and stage.loc[("main grid", "scoring"), "count"] == 12
    main = table[table["part"] == "main grid"]
    # per data set and k: 60 + 40 + 2 x 100 + 20 + 2 x 4 = 328 s of accelerator work, 3 scorings, + 2 data sets
    seconds = 4 * 328 + 12 * paired._CPU_ONLY_SECONDS["scoring"] + 2 * paired._CPU_ONLY_SECONDS["data set"]
    assert main["cpu_hours"].sum() == pytest.approx(seconds / 3600)
    on_gpu = table["on"] == "accelerator"
    np.testing.assert_allclose(table.loc[on_gpu, "gpu_hours"], table.loc[on_gpu, "cpu_hours"] / 4.0)
    np.testing.assert_allclose(table.loc[~on_gpu, "gpu_hours"], table.loc[~on_gpu, "cpu_hours"])
    with pytest.raises(NeurosegInputError, match="'2d' rows"):
        paired.estimate_grid_hours(_timed_rows().query("method != '2d'"))
    with pytest.raises(NeurosegInputError, match="speedup"):
        paired.estimate_grid_hours(_timed_rows(), speedup=0)


def _blur_rows(gain_by_sigma, *, data_seeds=(0, 1), seeds=(0,), k=1):
    """Rows of the three sparse methods per data set, seed and sigma_z: pseudo = sparse + gain, 2d = sparse - 0.1."""
    rows = []
    for sigma, gain in gain_by_sigma.items():
        for data_seed in data_seeds:
            for seed in seeds:
                sparse = 0.7 + 0.01 * data_seed
                cell = {"data_seed": data_seed, "seed": seed, "n_slices": k, "sigma_z_um": sigma}
                rows += [{**cell, "method": "3d_sparse", "dice": sparse, "surface_dice": sparse},
                         {**cell, "method": "2d", "dice": sparse - 0.1, "surface_dice": sparse - 0.1},
                         {**cell, "method": "3d_pseudo", "dice": sparse + gain * (1 + data_seed),
                          "surface_dice": sparse + gain}]
    return pd.DataFrame(rows)


def test_knob_gains_pair_each_blur_with_its_sparse_and_2d_runs_and_take_the_default_from_the_grid():
    blur = _blur_rows({1.0: 0.02, 2.5: 0.08})
    main = _blur_rows({1.7: 0.05}).drop(columns="sigma_z_um")
    main = pd.concat([main, main.assign(n_slices=2, dice=0.0)], ignore_index=True)  # another k: not paired
    gains = paired.knob_gains(blur, main, default=1.7)
    dice = gains[(gains["metric"] == "dice") & (gains["against"] == "3d_sparse")].set_index(
        ["data_seed", "sigma_z_um"])["gain"]
    np.testing.assert_allclose(dice.loc[0].to_numpy(), [0.02, 0.05, 0.08])  # sigma 1.0, 1.7 (the grid's), 2.5
    np.testing.assert_allclose(dice.loc[1].to_numpy(), [0.04, 0.10, 0.16])
    versus_2d = gains[(gains["metric"] == "surface_dice") & (gains["against"] == "2d")]
    np.testing.assert_allclose(sorted(set(versus_2d["gain"].round(6))), [0.12, 0.15, 0.18])
    assert set(gains["n_slices"]) == {1} and (gains["pairs"] == 1).all()
    # a data set that holds the default sigma itself (its data could not be the grid's) uses its own runs
    own = pd.concat([blur, _blur_rows({1.7: -0.01}, data_seeds=(1,))], ignore_index=True)
    dice = paired.knob_gains(own, main, default=1.7).query("metric == 'dice' and against == '3d_sparse'")
    assert dice.set_index(["data_seed", "sigma_z_um"]).loc[(1, 1.7), "gain"] == pytest.approx(-0.02)
    with pytest.raises(NeurosegInputError, match="sigma_z_um"):
        paired.knob_gains(blur.drop(columns="sigma_z_um"), main, default=1.7)


def test_an_empty_blur_table_is_read_with_its_columns(tmp_path):
    grid = paired.load_stored_grid(tmp_path)
    assert grid.blur.empty and {"sigma_z_um", "data_seed", "machine", "dice"} <= set(grid.blur.columns)
    assert paired.knob_gains(grid.blur, grid.results, default=1.7).empty
    _blur_rows({1.0: 0.02}).to_csv(tmp_path / "blur.csv", index=False)
    assert len(paired.load_stored_grid(tmp_path).blur) == 6
