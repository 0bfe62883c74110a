"""The verdict rule of the book: paired by seed, real only when it wins every pair by more than the spread."""
from __future__ import annotations

import pandas as pd
import pytest

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.results import paired_verdicts


def _rows(a, b, metric="dice"):
    return pd.DataFrame({"method": ["a"] * len(a) + ["b"] * len(b), "seed": [*range(len(a)), *range(len(b))],
                         "n_slices": 1, metric: [*a, *b]})


def test_a_consistent_gap_beyond_the_spread_is_better_or_worse():
    assert paired_verdicts(_rows([0.9, 0.8, 0.85], [0.6, 0.55, 0.58]), method="a", against=["b"])["verdict"][0] \
        == "better"
    assert paired_verdicts(_rows([0.6, 0.55, 0.58], [0.9, 0.8, 0.85]), method="a", against=["b"])["verdict"][0] \
        == "worse"


def test_a_gap_within_the_spread_or_not_on_every_seed_is_noise():
    # a wins every pair, but by 0.02 while its seeds spread by 0.1
    small = paired_verdicts(_rows([0.9, 0.7, 0.8], [0.88, 0.68, 0.78]), method="a", against=["b"])
    assert small["verdict"][0] == "within the noise"
    assert small["mean_difference"][0] == pytest.approx(0.02)
    mixed = paired_verdicts(_rows([0.9, 0.6, 0.9], [0.5, 0.7, 0.5]), method="a", against=["b"])
    assert mixed["verdict"][0] == "within the noise"  # big mean gap, but b wins seed 1


def test_one_pair_has_no_spread_to_judge_by():
    # a huge gap on one seed is still one draw: the rule needs a seed-to-seed spread
    single = paired_verdicts(_rows([0.9], [0.1]), method="a", against=["b"])
    assert single["verdict"][0] == "too few pairs" and single["n_pairs"][0] == 1
    assert single["mean_difference"][0] == pytest.approx(0.8)
    assert paired_verdicts(_rows([0.9, 0.91], [0.1, 0.12]), method="a", against=["b"])["verdict"][0] == "better"


def test_distances_count_lower_as_better_and_groups_are_separate():
    rows = pd.concat([_rows([1.0, 1.1, 1.2], [5.0, 5.5, 6.0], "hd95_um"),
                      _rows([5.0, 5.5, 6.0], [1.0, 1.1, 1.2], "hd95_um").assign(n_slices=4)])
    table = paired_verdicts(rows, method="a", against=["b"], metrics=["hd95_um"])
    assert list(table["n_slices"]) == [1, 4] and list(table["verdict"]) == ["better", "worse"]
    assert table["mean_difference"][0] < 0 and list(table["n_pairs"]) == [3, 3]


def test_missing_columns_are_named():
    with pytest.raises(NeurosegInputError, match="surface_dice"):
        paired_verdicts(_rows([1], [1]), method="a", against=["b"], metrics=["surface_dice"])


def test_mean_std_table_has_one_row_per_k_and_the_reference_on_every_row():
    from neuroseg_lite.results import mean_std_table

    rows = pd.concat([_rows([0.9, 0.8], [0.5, 0.7]), _rows([0.6, 0.6], [0.4, 0.2]).assign(n_slices=4),
                      pd.DataFrame({"method": ["ref"], "seed": [0], "n_slices": [32], "dice": [0.97]})])
    table = mean_std_table(rows, "dice", methods=["a", "b"], reference="ref", labels={"a": "A"})
    assert list(table.index) == [1, 4] and list(table.columns) == ["A", "b", "ref"]
    assert table.loc[1, "A"] == "0.850 ± 0.071" and table.loc[4, "b"] == "0.300 ± 0.141"
    assert set(table["ref"]) == {"0.970 (one run)"}
