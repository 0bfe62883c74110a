"""Paired comparisons over many data sets: intervals, tests, learning curves and an annotation-budget planner.

Introduced in chapter 7 (``07_sparsity_sweep``). One run is one draw: two methods are compared by the paired
difference of runs that share the data set, the annotated planes and the training seed, and data sets, not
training seeds, are the independent units (runs on one data set share its volumes). So each data set's
difference is first averaged over its training seeds, and the interval and the tests are taken over data sets:
a percentile bootstrap that resamples data sets, the Wilcoxon signed-rank test and the sign test.

The powered grid of the book (``benchmarks/paired_grid.py``) is stored with the package;
:func:`load_stored_grid` reads it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from neuroseg_lite._checks import NeurosegInputError

__all__ = ["StoredGrid", "load_stored_grid", "paired_differences", "steps_to_reach", "plan_budget",
           "MINUTES_PER_OUTLINE"]

_LOWER_IS_BETTER = ("hd95_um",)
#: Our assumption for the annotation planner, not a measurement: minutes to outline one neuron in one plane.
MINUTES_PER_OUTLINE = 1.0


@dataclass(frozen=True)
class StoredGrid:
    """The tables of a grid run by ``benchmarks/paired_grid.py``.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per run (the columns of :meth:`neuroseg_lite.experiment.Pipeline.evaluate`, ``data_seed``,
        ``machine``).
    curves : pandas.DataFrame
        Validation Dice against ``step`` and training ``seconds`` of every 3D run; ``key`` joins ``results``.
    pseudo : pandas.DataFrame
        Per data set, ``n_slices`` and ``seed``: the pseudo-labels' ``pseudo_dice``, ``pseudo_precision`` and
        ``pseudo_recall`` on the unannotated training voxels, ``annotated_fraction``, ``neurons_crossed`` (by an
        annotated plane) and ``neurons`` (all, over the training volumes).
    meta : dict
        The command, package and torch versions and machines the grid came from.
    """

    results: pd.DataFrame
    curves: pd.DataFrame
    pseudo: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def coverage(self) -> pd.DataFrame:
        """Data sets and runs per method and ``n_slices`` (the dense bound under its number of planes)."""
        if self.results.empty:
            return pd.DataFrame(columns=["method", "n_slices", "data_sets", "runs"])
        grouped = self.results.groupby(["method", "n_slices"])
        return pd.DataFrame({"data_sets": grouped["data_seed"].nunique(), "runs": grouped.size()}).reset_index()


def load_stored_grid(folder=None) -> StoredGrid:
    """Read the grid stored with the package (or in ``folder``); missing tables are empty.

    Parameters
    ----------
    folder : path-like, optional
        Holding ``results.csv``, ``curves.csv``, ``pseudo.csv`` and ``grid.json``; default: the package's
        ``neuroseg_lite/data/paired_grid``.
    """
    if folder is None:
        folder = Path(str(resources.files("neuroseg_lite"))) / "data" / "paired_grid"
    folder = Path(folder)

    def table(name):
        path = folder / name
        return pd.read_csv(path) if path.exists() else pd.DataFrame()

    meta_file = folder / "grid.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return StoredGrid(results=table("results.csv"), curves=table("curves.csv"), pseudo=table("pseudo.csv"),
                      meta=meta)


def _require(table: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise NeurosegInputError(f"{what} lacks the column(s) {missing}; pass a results table of "
                                 "experiment.sweep with a data_seed column (e.g. load_stored_grid().results).")


def _bootstrap_mean(values: np.ndarray, *, n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n_boot, values.size), replace=True).mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_differences(table: pd.DataFrame, *, method: str = "3d_pseudo", against=("2d", "3d_sparse"),
                       metrics=("dice", "surface_dice"), by=("n_slices",), cluster: str = "data_seed",
                       pair_on: str = "seed", n_boot: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> pd.DataFrame:
    """``method`` minus each of ``against``, paired run by run, summarised over data sets.

    Parameters
    ----------
    table : pandas.DataFrame
        Results rows (e.g. :func:`neuroseg_lite.experiment.sweep`'s over several data sets) with ``method``,
        ``cluster``, ``pair_on``, ``by`` and ``metrics`` columns; one row per method and pair (filter other
        knobs, such as lambda, first).
    method : str
    against : sequence of str
    metrics : sequence of str
        For ``hd95_um`` (lower is better) the difference is taken the other way round, so positive always
        means ``method`` is better.
    by : sequence of str
        Groups compared separately (the sparsity level).
    cluster : str
        The independent unit (the data set); differences are averaged over ``pair_on`` within each.
    pair_on : str
        What else a pair shares (the training seed).
    n_boot : int
        Bootstrap resamples of the data sets.
    confidence : float
        Of the interval.
    seed : int
        Of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per group, other method and metric: ``data_sets``, ``pairs``, ``mean_method``, ``mean_other``,
        ``difference`` (mean over data sets of each data set's mean paired difference), ``ci_low``, ``ci_high``,
        ``wins`` (data sets where ``method`` is better), ``wilcoxon_p``, ``sign_p`` (two-sided; NaN below 2 data
        sets) and ``verdict``: "better" or "worse" when the interval excludes 0, "no clear difference"
        otherwise, "too few data sets" below 2.
    """
    by = list(by)
    _require(table, ["method", cluster, pair_on, *by, *metrics], "the results table")
    keys = [*by, cluster, pair_on]
    rows = []
    mine = table[table["method"] == method]
    for other in against:
        theirs = table[table["method"] == other]
        for metric in metrics:
            sign = -1.0 if metric in _LOWER_IS_BETTER else 1.0
            pairs = mine[keys + [metric]].merge(theirs[keys + [metric]], on=keys, suffixes=("_m", "_o"),
                                                validate="one_to_one")
            pairs["difference"] = sign * (pairs[f"{metric}_m"] - pairs[f"{metric}_o"])
            for group, part in (pairs.groupby(by) if by else [((), pairs)]):
                per_set = part.groupby(cluster)["difference"].mean().to_numpy()
                n = per_set.size
                row = dict(zip(by, group if isinstance(group, tuple) else (group,)))
                row.update(against=other, metric=metric, data_sets=n, pairs=len(part),
                           mean_method=part[f"{metric}_m"].mean(), mean_other=part[f"{metric}_o"].mean(),
                           difference=float(per_set.mean()) if n else np.nan, wins=int((per_set > 0).sum()))
                if n >= 2:
                    low, high = _bootstrap_mean(per_set, n_boot=n_boot, confidence=confidence, seed=seed)
                    nonzero = per_set[per_set != 0]
                    row.update(ci_low=low, ci_high=high,
                               wilcoxon_p=float(stats.wilcoxon(per_set).pvalue) if nonzero.size else 1.0,
                               sign_p=float(stats.binomtest(int((nonzero > 0).sum()), nonzero.size).pvalue)
                               if nonzero.size else 1.0,
                               verdict="better" if low > 0 else "worse" if high < 0 else "no clear difference")
                else:
                    row.update(ci_low=np.nan, ci_high=np.nan, wilcoxon_p=np.nan, sign_p=np.nan,
                               verdict="too few data sets")
                rows.append(row)
    return pd.DataFrame(rows)


def steps_to_reach(curves: pd.DataFrame, *, reference: str = "3d_dense", fractions=(0.9, 0.95),
                   pair_on=("data_seed", "seed")) -> pd.DataFrame:
    """Training steps and seconds each 3D run needed to reach a share of the reference model's final Dice.

    Parameters
    ----------
    curves : pandas.DataFrame
        Learning curves (:meth:`neuroseg_lite.experiment.Pipeline.learning_curve` rows with ``pair_on``
        columns added, e.g. ``load_stored_grid().curves``).
    reference : str
        The method whose final validation Dice sets the target (the dense upper bound), per ``pair_on`` group.
    fractions : sequence of float
        Shares of that Dice.
    pair_on : sequence of str
        What a run and its reference share.

    Returns
    -------
    pandas.DataFrame
        One row per run and fraction: ``pair_on`` columns, ``method``, ``n_slices``, ``fraction``, ``target``,
        ``reached`` (bool), ``step`` and ``seconds`` of the first validation at or above the target (NaN if
        never reached within the budget).
    """
    pair_on = list(pair_on)
    _require(curves, [*pair_on, "method", "n_slices", "step", "seconds", "val_dice"], "the learning curves")
    finals = (curves[curves["method"] == reference].sort_values("step").groupby(pair_on)["val_dice"].last())
    rows = []
    for keys, curve in curves.groupby([*pair_on, "key"], sort=False):
        group = keys[:-1] if len(pair_on) > 1 else keys[0]
        if group not in finals.index:
            continue
        curve = curve.sort_values("step")
        for fraction in fractions:
            target = fraction * finals.loc[group]
            hit = curve[curve["val_dice"] >= target]
            rows.append({**dict(zip(pair_on, keys[:-1])), "method": curve["method"].iloc[0],
                         "n_slices": curve["n_slices"].iloc[0], "fraction": fraction, "target": target,
                         "reached": not hit.empty, "step": hit["step"].iloc[0] if len(hit) else np.nan,
                         "seconds": hit["seconds"].iloc[0] if len(hit) else np.nan})
    return pd.DataFrame(rows)


def plan_budget(table: pd.DataFrame, *, target: float, metric: str = "dice",
                methods=("2d", "3d_sparse", "3d_pseudo"), cluster: str = "data_seed", outlines=None,
                minutes_per_outline: float = MINUTES_PER_OUTLINE, n_boot: int = 10_000,
                seed: int = 0) -> pd.DataFrame:
    """How many annotated planes each method needs to reach ``target`` in ``metric``, read off a results table.

    Parameters
    ----------
    table : pandas.DataFrame
        Results rows over several ``n_slices`` (and data sets, ``cluster``); a lab's own table from
        :func:`neuroseg_lite.experiment.sweep` on its densely labelled crops works the same way (one data set:
        no interval).
    target : float
        The score wanted, e.g. 0.85.
    metric : str
        A score where higher is better (``dice``, ``surface_dice``, ``object_f1``).
    methods : sequence of str
    cluster : str
        The independent unit; the interval of each mean resamples it (absent column: one data set).
    outlines : mapping of int to float, optional
        Neuron outlines an annotator draws per training volume at each ``n_slices`` (e.g. the stored grid's
        ``neurons_crossed`` per volume); with it, the effort in minutes.
    minutes_per_outline : float
        Our assumption (:data:`MINUTES_PER_OUTLINE`), not a measurement; pass your own.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``planes_needed`` (the fewest annotated planes per volume whose mean reaches the
        target, NaN if none in the table), ``planes_needed_confident`` (whose 95 % interval's lower end does),
        the mean score there, and with ``outlines`` the ``outlines`` and ``minutes`` per training volume.
    """
    if metric in _LOWER_IS_BETTER:
        raise NeurosegInputError(f"plan_budget needs a score where higher is better, not {metric!r}.")
    _require(table, ["method", "n_slices", metric], "the results table")
    rows = []
    for method in methods:
        runs = table[table["method"] == method]
        if runs.empty:
            raise NeurosegInputError(f"the results table has no {method!r} runs; methods in it: "
                                     f"{sorted(table['method'].unique())}.")
        levels = []
        for k, part in sorted(runs.groupby("n_slices")):
            per_set = (part.groupby(cluster)[metric].mean() if cluster in part else part[metric]).to_numpy()
            low = (_bootstrap_mean(per_set, n_boot=n_boot, confidence=0.95, seed=seed)[0] if per_set.size >= 2
                   else np.nan)
            levels.append((int(k), float(per_set.mean()), low))
        reached = [k for k, mean, _ in levels if mean >= target]
        confident = [k for k, _, low in levels if low >= target]
        needed = min(reached) if reached else np.nan
        row = {"method": method, "target": target, "metric": metric, "planes_needed": needed,
               "planes_needed_confident": min(confident) if confident else np.nan,
               "score_there": dict((k, m) for k, m, _ in levels).get(needed, np.nan),
               "planes_in_table": [k for k, _, _ in levels]}
        if outlines is not None:
            count = outlines.get(needed, np.nan) if reached else np.nan
            row.update(outlines=count, minutes=count * minutes_per_outline)
        rows.append(row)
    return pd.DataFrame(rows)
