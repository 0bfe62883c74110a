"""Choosing a training budget on the baselines only, and the stored real-data grid of chapter 8.

Introduced in chapter 8 (``08_real_data``). A budget (the number of 3D training steps) is chosen before any
pseudo-label run, from the dense and the sparse 3D models alone, so that it cannot favour the method under
test: the cheapest budget whose dense model is an upper bound (above the sparse model) and has converged (within
a tolerance of the longest budget tried), in every group (fold). ``benchmarks/qcanet_grid.py`` applies the rule
to the QCANet embryos and runs the comparison with the chosen budget on two folds and three seeds;
:func:`load_qcanet_grid` reads its tables, which ship with the package.
"""
from __future__ import annotations

import dataclasses
import json

import pandas as pd

from neuroseg_lite import datasets, gridtables, sparse
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.experiment_data import Data, prepare_data

__all__ = ["TOLERANCE", "QCANET_K_VALUES", "QCANET_FOLDS", "qcanet_fold", "budget_table", "choose_budget",
           "pair_differences", "summarise_pairs", "dense_bound", "nuclei_crossed", "RealDataGrid",
           "load_qcanet_grid"]

#: Largest shortfall of a budget's mean dense Dice below the longest budget's for it to count as converged.
TOLERANCE = 0.01

#: Annotated planes per training stack in chapter 8's stored grid (of 51; about 2 % and 6 % of the voxels).
QCANET_K_VALUES = (1, 3)

#: The two folds of the QCANet embryos, each a pair (training stack, test stack) keyed by the data's name.
QCANET_FOLDS = {"qcanet-8to16": ("8_cell_stage", "16_cell_stage"),
                "qcanet-16to8": ("16_cell_stage", "8_cell_stage")}


def qcanet_fold(fold: str = "qcanet-8to16", *, download: bool = True) -> Data:
    """One fold of the QCANet embryos, ready for :class:`~neuroseg_lite.experiment.Pipeline`.

    Parameters
    ----------
    fold : {"qcanet-8to16", "qcanet-16to8"}
        Train on the first stack of :data:`QCANET_FOLDS`, test on the second; also the data's name.
    download : bool
        See :func:`neuroseg_lite.datasets.fetch_qcanet`.

    Returns
    -------
    Data
        One training volume of shape (Z, Y, X), the test volume, spacing in relative units (z, y, x).
    """
    if fold not in QCANET_FOLDS:
        raise NeurosegInputError(f"unknown fold {fold!r}; choose one of {sorted(QCANET_FOLDS)}.")
    train_name, test_name = QCANET_FOLDS[fold]
    train_image, train_labels, spacing = datasets.load_qcanet(train_name, download=download)
    test_image, test_labels, _ = datasets.load_qcanet(test_name, download=download)
    return prepare_data([train_image], [train_labels], test_image, test_labels, spacing, name=fold)


def budget_table(calibration: pd.DataFrame, *, group: str = "fold", budget: str = "steps_3d",
                 metric: str = "dice", tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Dense and sparse scores per group and budget, and whether each budget passes the calibration rule.

    Parameters
    ----------
    calibration : pandas.DataFrame
        One row per group, budget, method (``"3d_dense"`` and ``"3d_sparse"``) and seed, with ``metric``.
    group, budget, metric : str
        Column names.
    tolerance : float
        See :data:`TOLERANCE`.

    Returns
    -------
    pandas.DataFrame
        Indexed by (group, budget): ``dense``, ``sparse`` (means over seeds), ``dense_sd``, ``sparse_sd``,
        ``seeds``, ``upper_bound`` (dense > sparse), ``converged`` (dense within ``tolerance`` of the longest
        budget's dense) and ``passes`` (both).

    Examples
    --------
    >>> rows = pd.DataFrame({"fold": "a", "steps_3d": [400, 400, 800, 800], "seed": 0,
    ...                      "method": ["3d_dense", "3d_sparse"] * 2,
    ...                      "dice": [0.80, 0.85, 0.90, 0.86]})
    >>> budget_table(rows)["passes"].tolist()
    [False, True]
    """
    missing = sorted({group, budget, metric, "method", "seed"} - set(calibration.columns))
    if missing:
        raise NeurosegInputError(f"the calibration table has no column(s) {missing}; pass the rows of "
                                 "benchmarks/qcanet_grid.py's calibration.csv (or name the columns).")
    methods = calibration[calibration["method"].isin(["3d_dense", "3d_sparse"])]
    if set(methods["method"]) != {"3d_dense", "3d_sparse"}:
        raise NeurosegInputError("the calibration needs rows of both baselines, '3d_dense' and '3d_sparse'.")
    stats = methods.groupby([group, budget, "method"])[metric].agg(["mean", "std", "count"]).unstack("method")
    table = pd.DataFrame({"dense": stats[("mean", "3d_dense")], "sparse": stats[("mean", "3d_sparse")],
                          "dense_sd": stats[("std", "3d_dense")], "sparse_sd": stats[("std", "3d_sparse")],
                          "seeds": stats[("count", "3d_dense")]})
    longest = table["dense"].xs(table.index.get_level_values(budget).max(), level=budget)
    table["upper_bound"] = table["dense"] > table["sparse"]
    shortfall = longest.reindex(table.index.get_level_values(group)).to_numpy() - table["dense"].to_numpy()
    table["converged"] = shortfall <= tolerance
    table["passes"] = table["upper_bound"] & table["converged"]
    return table


def choose_budget(calibration: pd.DataFrame, *, group: str = "fold", budget: str = "steps_3d",
                  metric: str = "dice", tolerance: float = TOLERANCE) -> int:
    """The cheapest budget that passes the rule (:func:`budget_table`) in every group; else the longest.

    Parameters
    ----------
    calibration : pandas.DataFrame
        As for :func:`budget_table`.
    group, budget, metric : str
    tolerance : float

    Returns
    -------
    int
        The chosen budget.
    """
    table = budget_table(calibration, group=group, budget=budget, metric=metric, tolerance=tolerance)
    groups = table.index.get_level_values(group).unique()
    for value, rows in table.groupby(level=budget, sort=True):
        if len(rows) == len(groups) and rows["passes"].all():
            return int(value)
    return int(table.index.get_level_values(budget).max())


def pair_differences(results: pd.DataFrame, *, method: str = "3d_pseudo", against=("2d", "3d_sparse"),
                     metrics=("dice", "surface_dice"), pair_on=("fold", "seed"), by=("n_slices",)) -> pd.DataFrame:
    """``method`` minus each of ``against`` in every pair of runs (same fold, seed and k), one row per pair.

    Parameters
    ----------
    results : pandas.DataFrame
        Results rows with ``method`` and the ``pair_on``, ``by`` and ``metrics`` columns.
    method : str
    against : sequence of str
    metrics : sequence of str
        For ``hd95_um`` the difference is taken the other way round, so positive means ``method`` is better.
    pair_on, by : sequence of str

    Returns
    -------
    pandas.DataFrame
        The ``by`` and ``pair_on`` columns, ``against``, ``metric``, ``method_score``, ``other_score`` and
        ``difference``.
    """
    keys = [*by, *pair_on]
    missing = sorted({"method", *keys, *metrics} - set(results.columns))
    if missing:
        raise NeurosegInputError(f"the results table has no column(s) {missing}.")
    mine = results[results["method"] == method]
    rows = []
    for other in against:
        theirs = results[results["method"] == other]
        for metric in metrics:
            pairs = mine[keys + [metric]].merge(theirs[keys + [metric]], on=keys, suffixes=("_m", "_o"),
                                                validate="one_to_one")
            sign = -1.0 if metric == "hd95_um" else 1.0
            rows.append(pairs[keys].assign(against=other, metric=metric, method_score=pairs[f"{metric}_m"],
                                           other_score=pairs[f"{metric}_o"],
                                           difference=sign * (pairs[f"{metric}_m"] - pairs[f"{metric}_o"])))
    columns = [*keys, "against", "metric", "method_score", "other_score", "difference"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def summarise_pairs(pairs: pd.DataFrame, *, by=("n_slices", "against", "metric"), group: str = "fold") -> pd.DataFrame:
    """Count, mean, standard deviation, range and wins of paired differences, and their mean per group.

    Parameters
    ----------
    pairs : pandas.DataFrame
        Rows of :func:`pair_differences` (``difference`` positive where ``method`` is better).
    by : sequence of str
        One summary row per combination of these columns.
    group : str
        Each value of this column (a fold) adds a column ``"mean on <value>"``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``by``: ``count``, ``mean``, ``std``, ``min``, ``max``, ``wins`` (pairs with a positive
        difference) and the per-group means.

    Examples
    --------
    >>> pairs = pd.DataFrame({"n_slices": 1, "against": "2d", "metric": "dice",
    ...                       "fold": ["a", "a", "b"], "difference": [0.1, -0.05, 0.2]})
    >>> summarise_pairs(pairs).round(3).iloc[0].to_dict()  # doctest: +NORMALIZE_WHITESPACE
    {'count': 3.0, 'mean': 0.083, 'std': 0.126, 'min': -0.05, 'max': 0.2, 'wins': 2.0,
     'mean on a': 0.025, 'mean on b': 0.2}
    """
    keys = list(by)
    missing = sorted({*keys, group, "difference"} - set(pairs.columns))
    if missing:
        raise NeurosegInputError(f"the pairs table has no column(s) {missing}; make it with pair_differences.")
    summary = pairs.groupby(keys)["difference"].agg(["count", "mean", "std", "min", "max"])
    summary["wins"] = (pairs["difference"] > 0).groupby([pairs[key] for key in keys]).sum()
    per_group = pairs.pivot_table(index=keys, columns=group, values="difference")
    return summary.join(per_group.add_prefix("mean on "))


def dense_bound(results: pd.DataFrame, *, group: str = "fold", metric: str = "dice",
                dense: str = "3d_dense") -> pd.DataFrame:
    """Per group: is the densely trained model above every sparse method (mean over seeds)?

    Parameters
    ----------
    results : pandas.DataFrame
        Results rows with ``method``, ``n_slices``, ``group`` and ``metric`` columns.
    group : str
    metric : str
        Higher is better.
    dense : str
        The method trained on the full labels.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``group``: ``dense`` (its mean score), ``best_method``, ``best_k`` and ``best`` (the sparse
        method and k with the highest mean score) and ``upper_bound`` (``dense >= best``).

    Examples
    --------
    >>> runs = pd.DataFrame({"fold": "a", "method": ["3d_dense", "2d", "3d_sparse"],
    ...                      "n_slices": [51, 1, 1], "dice": [0.8, 0.7, 0.85]})
    >>> bound = dense_bound(runs).loc["a"]
    >>> bound["best_method"], float(bound["best"]), bool(bound["upper_bound"])
    ('3d_sparse', 0.85, False)
    """
    missing = sorted({"method", "n_slices", group, metric} - set(results.columns))
    if missing:
        raise NeurosegInputError(f"the results table has no column(s) {missing}.")
    means = results.groupby([group, "method", "n_slices"])[metric].mean()
    rows = {}
    for name, of_group in means.groupby(level=group):
        of_group = of_group.droplevel(group)
        methods = of_group.index.get_level_values("method")
        if dense not in methods or (methods == dense).all():
            raise NeurosegInputError(f"{group} {name!r} needs runs of {dense!r} and of a sparse method.")
        sparse_runs = of_group[methods != dense]
        method, k = sparse_runs.idxmax()
        rows[name] = {"dense": float(of_group[methods == dense].mean()), "best_method": method,
                      "best_k": int(k), "best": float(sparse_runs.max())}
        rows[name]["upper_bound"] = rows[name]["dense"] >= rows[name]["best"]
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(group)


def nuclei_crossed(*, folds=None, k_values=QCANET_K_VALUES, download: bool = True) -> pd.DataFrame:
    """How much each k annotates of each fold's training embryo: planes, voxel share and nuclei crossed.

    Parameters
    ----------
    folds : sequence of str, optional
        Keys of :data:`QCANET_FOLDS`; default all.
    k_values : sequence of int
        Annotated planes (evenly spaced, as :func:`neuroseg_lite.sparse.simulate_sparse` places them).
    download : bool
        See :func:`neuroseg_lite.datasets.fetch_qcanet`.

    Returns
    -------
    pandas.DataFrame
        One row per fold and k: ``fold``, ``k``, ``planes`` (their z indices), ``n_planes`` (of the stack),
        ``annotated_percent`` (of the voxels), ``foreground_pixels`` (outlined), ``nuclei_crossed`` and
        ``nuclei`` (face-connected components of the mask).
    """
    folds = list(QCANET_FOLDS) if folds is None else list(folds)
    unknown = sorted(set(folds) - set(QCANET_FOLDS))
    if unknown:
        raise NeurosegInputError(f"unknown fold(s) {unknown}; choose from {sorted(QCANET_FOLDS)}.")
    rows = []
    for fold in folds:
        labels = datasets.load_qcanet(QCANET_FOLDS[fold][0], download=download)[1]
        for k in k_values:
            annotation = sparse.simulate_sparse(labels, n_slices=k)
            crossed, n_nuclei = sparse.objects_crossed(labels, annotation)
            rows.append({"fold": fold, "k": k, "planes": annotation.planes, "n_planes": labels.shape[0],
                         "annotated_percent": 100 * annotation.fraction,
                         "foreground_pixels": int(annotation.labels.sum()), "nuclei_crossed": crossed,
                         "nuclei": n_nuclei})
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class RealDataGrid:
    """The tables of ``benchmarks/qcanet_grid.py``: ``calibration`` and ``results`` rows, and ``meta``."""

    calibration: pd.DataFrame
    results: pd.DataFrame
    meta: dict

    @property
    def chosen_budget(self):
        """The 3D steps the rule picks from the stored calibration (None without one)."""
        return choose_budget(self.calibration) if len(self.calibration) else None

    @property
    def coverage(self) -> pd.DataFrame:
        """Runs per fold, k and method (the dense bound under its number of planes)."""
        if not len(self.results):
            return pd.DataFrame()
        return self.results.pivot_table(index=["fold", "n_slices"], columns="method", values="seed",
                                        aggfunc="count")


def load_qcanet_grid(folder=None) -> RealDataGrid:
    """Read the real-data grid stored with the package (or in ``folder``); missing tables are empty.

    Parameters
    ----------
    folder : path-like, optional
        Holding ``calibration.csv``, ``results.csv`` and ``grid.json``; default the package's
        ``neuroseg_lite/data/qcanet_grid``.
    """
    folder = gridtables.stored_folder("qcanet_grid", folder)
    columns = ["fold", "method", "n_slices", "seed", "dice", "key"]
    meta_file = folder / "grid.json"
    return RealDataGrid(calibration=gridtables.read_table(folder / "calibration.csv", columns=columns),
                        results=gridtables.read_table(folder / "results.csv", columns=columns),
                        meta=json.loads(meta_file.read_text()) if meta_file.exists() else {})

