"""Reading results tables: differences between methods paired by seed, and the book's rule for calling them real.

Introduced in chapter 7 (``07_sparsity_sweep``), where :func:`paired_verdicts` turns a sweep's rows into the
verdict table, and used by the findings page (``09_findings``). Runs are compared in pairs that share everything
but the method (the same data, annotation and seed), so the seed's own effect cancels out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from neuroseg_lite._checks import NeurosegInputError

__all__ = ["paired_verdicts", "mean_std_table"]

_LOWER_IS_BETTER = ("hd95_um",)


def paired_verdicts(table: pd.DataFrame, *, method: str = "3d_pseudo", against=("2d", "3d_sparse"),
                    metrics=("dice",), by=("n_slices",), pair_on: str = "seed") -> pd.DataFrame:
    """``method`` against each of ``against``, per group and metric: mean paired difference and a verdict.

    The verdict follows the book's rule: "better" if ``method`` wins in every pair *and* the mean difference
    exceeds the larger of the two methods' standard deviations over the pairs (the seed-to-seed spread);
    "worse" if the same holds the other way round; otherwise "within the noise"; "too few pairs" below two
    pairs, which have no spread to measure the difference against. For distances (``hd95_um``) lower is
    better, and the difference is still ``method`` minus the other.

    Parameters
    ----------
    table : pandas.DataFrame
        Results rows (e.g. from :func:`neuroseg_lite.experiment.sweep`) with a ``method`` column, the
        ``by`` and ``pair_on`` columns and the metrics.
    method : str
        The method under test.
    against : sequence of str
        The methods it is compared with.
    metrics : sequence of str
    by : sequence of str
        Columns that define the groups compared separately (e.g. the number of annotated planes).
    pair_on : str
        The column whose equal values pair two runs.

    Returns
    -------
    pandas.DataFrame
        One row per group, metric and other method: the ``by`` columns, ``metric``, ``against``,
        ``mean_difference``, ``seed_std``, ``n_pairs`` and ``verdict``. Groups where a method has no run are
        left out.

    Examples
    --------
    >>> rows = pd.DataFrame({"method": ["a", "b"] * 3, "seed": [0, 0, 1, 1, 2, 2],
    ...                      "n_slices": 1, "dice": [0.9, 0.7, 0.91, 0.72, 0.92, 0.71]})
    >>> table = paired_verdicts(rows, method="a", against=["b"])
    >>> table[["mean_difference", "verdict"]].round(3)
       mean_difference verdict
    0              0.2  better
    """
    by = [by] if isinstance(by, str) else list(by)
    needed = {"method", pair_on, *by, *metrics}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise NeurosegInputError(f"the results table has no column(s) {missing}; pass rows from "
                                 "experiment.sweep or name the columns with by=/pair_on=/metrics=.")
    rows = []
    for group, runs in table[table["method"].isin([method, *against])].groupby(by, sort=True):
        keys = dict(zip(by, group if isinstance(group, tuple) else (group,)))
        for metric in metrics:
            wide = runs.pivot_table(index=pair_on, columns="method", values=metric)
            for other in against:
                if method not in wide or other not in wide:
                    continue
                pairs = wide[[method, other]].dropna()
                difference = pairs[method] - pairs[other]
                sign = -1.0 if metric in _LOWER_IS_BETTER else 1.0
                noise, mean = float(pairs.std().max()), float(difference.mean())
                if len(pairs) < 2:
                    verdict = "too few pairs"
                elif (sign * difference > 0).all() and sign * mean > noise:
                    verdict = "better"
                elif (sign * difference < 0).all() and -sign * mean > noise:
                    verdict = "worse"
                else:
                    verdict = "within the noise"
                rows.append({**keys, "metric": metric, "against": other, "mean_difference": mean,
                             "seed_std": noise if np.isfinite(noise) else np.nan, "n_pairs": len(pairs),
                             "verdict": verdict})
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:.3f} (one run)"
    return f"{values.mean():.3f} ± {values.std():.3f}"


def mean_std_table(table: pd.DataFrame, metric: str, *, methods=("2d", "3d_sparse", "3d_pseudo"),
                   reference: str | None = "3d_dense", by: str = "n_slices", labels=None) -> pd.DataFrame:
    """Text table of ``metric``: "mean ± std" over the runs, one row per ``by`` value, one column per method.

    Parameters
    ----------
    table : pandas.DataFrame
        Results rows with ``method``, ``by`` and ``metric`` columns.
    metric : str
    methods : sequence of str
        The methods that depend on ``by`` (one column each).
    reference : str, optional
        A method that does not (the dense bound): one last column, the same on every row.
    by : str
    labels : dict, optional
        Column titles by method name (e.g. :data:`neuroseg_lite.charts.METHOD_LABELS`).

    Returns
    -------
    pandas.DataFrame of str
        A single run reads "value (one run)".

    Examples
    --------
    >>> rows = pd.DataFrame({"method": ["2d", "2d", "3d_dense"], "n_slices": [1, 1, 32],
    ...                      "dice": [0.8, 0.9, 0.95]})
    >>> mean_std_table(rows, "dice", methods=["2d"]).to_dict("records")
    [{'2d': '0.850 ± 0.071', '3d_dense': '0.950 (one run)'}]
    """
    labels = labels or {}
    rows = table[table["method"].isin(methods)]
    out = rows.groupby([by, "method"])[metric].agg(_mean_std).unstack()
    out = out[[m for m in methods if m in out.columns]]
    if reference is not None and (table["method"] == reference).any():
        out[reference] = _mean_std(table.loc[table["method"] == reference, metric])
    return out.rename(columns=labels)
