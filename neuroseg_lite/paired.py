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

import numpy as np
import pandas as pd
from scipy import stats

from neuroseg_lite import gridtables
from neuroseg_lite._checks import NeurosegInputError

__all__ = ["StoredGrid", "load_stored_grid", "paired_differences", "paired_gains", "steps_to_reach",
           "summarise_steps", "reach_table", "plan_budget", "describe_difference", "ablation_differences",
           "paper_claims", "estimate_grid_hours", "knob_gains", "PAPER_CLAIMS", "MIN_DATA_SETS", "MINUTES_PER_OUTLINE",
           "ASSUMED_GPU_SPEEDUP"]

#: Columns where a smaller value is better (distances, and the steps or seconds needed to reach a target).
_LOWER_IS_BETTER = ("hd95_um", "hd_um", "assd_um", "steps_to_target", "seconds_to_target")
_DIFFERENCE_COLUMNS = ["against", "metric", "data_sets", "pairs", "mean_method", "mean_other", "difference",
                       "wins", "ci_low", "ci_high", "wilcoxon_p", "sign_p", "verdict"]
# the columns an empty stored table gets, so that every reader of it works (and finds no rows)
_EMPTY_COLUMNS = {
    "results.csv": ["data", "preset", "method", "n_slices", "seed", "lam", "pseudo_mode", "loss_normalization",
                    "annotated_fraction", "dice", "precision", "recall", "surface_dice", "train_2d_seconds",
                    "pseudo_seconds", "train_3d_seconds", "total_seconds", "key",
                    "data_seed", "machine"],
    "curves.csv": ["step", "seconds", "val_dice", "method", "n_slices", "seed", "key", "data_seed"],
    "pseudo.csv": ["data", "data_seed", "n_slices", "seed", "annotated_fraction", "neurons_crossed", "neurons",
                   "pseudo_dice", "pseudo_precision", "pseudo_recall"],
    "ablations.csv": ["data", "preset", "method", "n_slices", "seed", "lam", "pseudo_mode", "loss_normalization",
                      "dice", "surface_dice", "key", "data_seed", "machine"],
    "blur.csv": ["data", "preset", "method", "n_slices", "seed", "lam", "pseudo_mode", "loss_normalization",
                 "dice", "surface_dice", "key", "data_seed", "sigma_z_um", "machine"],
}
#: The fewest data sets behind a verdict. Below it a percentile bootstrap over data sets is too coarse to trust
#: (with 2 data sets its "interval" is little more than their range), so the verdict is "too few data sets"
#: (the interval and tests are still reported from 2 data sets on).
MIN_DATA_SETS = 5
#: Minutes to outline one neuron in one plane, for the annotation planner (our assumption, not a measurement).
MINUTES_PER_OUTLINE = 1.0
#: How many times faster one GPU runs the grid's accelerator stages than 2 CPU cores (an assumption, to be
#: replaced by ``benchmarks/bench_train3d.py --compare-devices`` on a GPU). The grid's models are small: one 3D
#: step is about 15 GFLOP (bench_train3d), a few milliseconds of a Colab T4's arithmetic under AMP, so kernel
#: launches and the patch sampling that stays on the CPU set its pace, and the 2D stages and the blending of
#: predicted tiles gain less than the 3D steps; 5 is a guess on the low side of the 5-10 such steps suggest.
ASSUMED_GPU_SPEEDUP = 5.0
# Seconds of the grid's CPU-only work, not in the rows: generating one "tall" data set (synthetic_data, 5
# volumes of 128^3, written and read back: 4.5 s) and scoring one run (metrics.evaluate on the test volume:
# 0.9 s), measured on 2026-12-02 with one thread on 2 cores shared with two training jobs, rounded up.
_CPU_ONLY_SECONDS = {"data set": 5.0, "scoring": 1.0}


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
    ablations : pandas.DataFrame
        The pseudo-label method's variants at the sparsest k (columns of ``results``; empty until the grid's
        ablation stage has run).
    blur : pandas.DataFrame
        The sparse methods at the sparsest k on data sets made with other axial PSF sigmas (columns of
        ``results`` and ``sigma_z_um``; the default sigma's runs are in ``results``; empty until the grid's
        blur stage has run).
    """

    results: pd.DataFrame
    curves: pd.DataFrame
    pseudo: pd.DataFrame
    meta: dict = field(default_factory=dict)
    ablations: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_EMPTY_COLUMNS["ablations.csv"]))
    blur: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_EMPTY_COLUMNS["blur.csv"]))

    def per_k(self) -> pd.DataFrame:
        """Per ``n_slices`` of the sparse methods: data sets, runs, annotated fraction and neurons crossed.

        ``neurons_crossed`` and ``neurons`` are per data set, summed over its training volumes (the mean over
        data sets); ``annotated_fraction`` is the share of the training voxels in annotated planes.
        """
        sparse = self.results[self.results["method"] != "3d_dense"]
        table = sparse.groupby("n_slices").agg(data_sets=("data_seed", "nunique"), runs=("key", "size"))
        if len(self.pseudo):
            per_set = self.pseudo.groupby(["n_slices", "data_seed"])[
                ["annotated_fraction", "neurons_crossed", "neurons"]].first()
            table = table.join(per_set.groupby(level="n_slices").mean(), how="left")
        else:
            table = table.assign(annotated_fraction=np.nan, neurons_crossed=np.nan, neurons=np.nan)
        return table.reset_index()

    def cpu_hours(self) -> float:
        """Hours of computing behind the results: the sum of the rows' ``total_seconds``.

        A 2D model and its pseudo-labels are timed in both rows that use them, so this is an upper bound.
        """
        return float(self.results["total_seconds"].sum()) / 3600 if len(self.results) else 0.0

    def estimate_hours(self, **options) -> pd.DataFrame:
        """:func:`estimate_grid_hours` of this grid's rows."""
        return estimate_grid_hours(self.results, **options)

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
        Holding ``results.csv``, ``curves.csv``, ``pseudo.csv``, ``ablations.csv``, ``blur.csv`` and
        ``grid.json``; default: the package's
        ``neuroseg_lite/data/paired_grid``.
    """
    folder = gridtables.stored_folder("paired_grid", folder)

    def table(name):
        return gridtables.read_table(folder / name, columns=_EMPTY_COLUMNS[name])

    meta_file = folder / "grid.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return StoredGrid(results=table("results.csv"), curves=table("curves.csv"), pseudo=table("pseudo.csv"),
                      meta=meta, ablations=table("ablations.csv"), blur=table("blur.csv"))


def estimate_grid_hours(results: pd.DataFrame, *, speedup: float = ASSUMED_GPU_SPEEDUP, data_seeds: int = 8,
                        seeds: int = 2, k_values=(1, 2, 4), ablation_data_seeds: int = 3, blur_data_seeds: int = 3,
                        blur_seeds: int = 1, blur_sigmas: int = 2) -> pd.DataFrame:
    """Hours the whole grid of ``benchmarks/paired_grid.py`` takes on 2 CPU cores and on one GPU, estimated.

    Introduced in chapter 7 (``07_sparsity_sweep``). Each stage's CPU seconds are the median over the stored
    rows of its recorded time (``train_2d_seconds``, ``pseudo_seconds``, ``train_3d_seconds`` with its
    validation curves, pooled over the three 3D methods, whose budgets are the same; ``predict_seconds``), the
    median because rows made while other jobs shared the cores take up to 8 times longer, times the number of
    such stages the grid needs. A budget's cost does not depend on k, so rows at one k price every k.
    Training, pseudo-labels and prediction run on the accelerator: on a GPU they take ``speedup`` times less.
    Data generation and scoring stay on the CPU (stated costs, not in the rows).

    Parameters
    ----------
    results : pandas.DataFrame
        Rows of the grid (``load_stored_grid().results``) with the 2D, 3D-sparse, 3D-pseudo and dense methods.
    speedup : float
        GPU over 2 CPU cores on the accelerator stages; default :data:`ASSUMED_GPU_SPEEDUP`, an assumption.
    data_seeds, seeds, k_values
        The main grid (paired_grid.py's defaults): each data set, training seed and k trains a 2D model, its
        pseudo-labels and two 3D models and predicts three; each data set and seed one dense model.
    ablation_data_seeds : int
        Data sets of the ablations (at the sparsest k, every seed): five more 3D models (two lambdas, soft,
        "global", prior-corrected), the corrected pseudo-labels and six predictions each.
    blur_data_seeds, blur_seeds, blur_sigmas : int
        The axial-blur stage (sparsest k): a new data set per data seed and sigma, each with a main-grid cell.

    Returns
    -------
    pandas.DataFrame
        One row per grid part and stage: ``part``, ``stage``, ``on`` ("accelerator" or "cpu"), ``count``,
        ``seconds_each`` (on the CPU), ``cpu_hours`` and ``gpu_hours``.
    """
    _require(results, ["method", "train_2d_seconds", "pseudo_seconds", "train_3d_seconds", "predict_seconds"],
             "the results table")
    if speedup <= 0:
        raise NeurosegInputError(f"speedup must be > 0, got {speedup!r}.")

    def median(method, column):
        values = results.loc[results["method"].isin([method] if isinstance(method, str) else method), column]
        if values.empty:
            raise NeurosegInputError(f"the results table has no {method!r} rows to time {column} with.")
        return float(values.median())

    three_d = ("3d_sparse", "3d_pseudo", "3d_dense")  # one budget: the same steps of the same network
    cost = {"2D model": median("2d", "train_2d_seconds"), "pseudo-labels": median("3d_pseudo", "pseudo_seconds"),
            "3D model": median(three_d, "train_3d_seconds"), "2D prediction": median("2d", "predict_seconds"),
            "3D prediction": median(three_d, "predict_seconds"), **_CPU_ONLY_SECONDS}
    cell = {"2D model": 1, "pseudo-labels": 1, "3D model": 2, "2D prediction": 1, "3D prediction": 2, "scoring": 3}
    main, blur = data_seeds * seeds * len(k_values), blur_data_seeds * blur_seeds * blur_sigmas
    parts = {
        "main grid": {"data set": data_seeds, **{stage: n * main for stage, n in cell.items()}},
        "dense bound": {"3D model": data_seeds * seeds, "3D prediction": data_seeds * seeds,
                        "scoring": data_seeds * seeds},
        "ablations": {stage: n * ablation_data_seeds * seeds for stage, n in
                      (("3D model", 5), ("pseudo-labels", 1), ("2D prediction", 1),
                       ("3D prediction", 5), ("scoring", 6))},
        "axial blur": {"data set": blur_data_seeds * blur_sigmas, **{stage: n * blur for stage, n in cell.items()}},
    }
    rows = []
    for part, stages in parts.items():
        for stage, count in stages.items():
            on = "cpu" if stage in _CPU_ONLY_SECONDS else "accelerator"
            hours = count * cost[stage] / 3600
            rows.append({"part": part, "stage": stage, "on": on, "count": count, "seconds_each": cost[stage],
                         "cpu_hours": hours, "gpu_hours": hours if on == "cpu" else hours / speedup})
    return pd.DataFrame(rows)


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
                       seed: int = 0, min_data_sets: int = MIN_DATA_SETS) -> pd.DataFrame:
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
    min_data_sets : int
        The fewest data sets for a verdict (:data:`MIN_DATA_SETS`).

    Returns
    -------
    pandas.DataFrame
        One row per group, other method and metric: ``data_sets``, ``pairs``, ``mean_method``, ``mean_other``,
        ``difference`` (mean over data sets of each data set's mean paired difference), ``ci_low``, ``ci_high``,
        ``wins`` (data sets where ``method`` is better), ``wilcoxon_p``, ``sign_p`` (two-sided; NaN below 2 data
        sets) and ``verdict``: "better" or "worse" when the interval excludes 0, "no clear difference"
        otherwise, "too few data sets" below ``min_data_sets`` (the interval and tests are given from 2 on).
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
                               verdict="too few data sets" if n < min_data_sets else
                               "better" if low > 0 else "worse" if high < 0 else "no clear difference")
                else:
                    row.update(ci_low=np.nan, ci_high=np.nan, wilcoxon_p=np.nan, sign_p=np.nan,
                               verdict="too few data sets")
                rows.append(row)
    return pd.DataFrame(rows, columns=[*by, *_DIFFERENCE_COLUMNS])


def paired_gains(table: pd.DataFrame, *, method: str = "3d_pseudo", other: str = "3d_sparse",
                 metric: str = "dice", keys=("n_slices", "data_seed", "seed")) -> pd.DataFrame:
    """One row per pair of runs: ``keys``, both scores and ``gain`` (``method`` minus ``other``).

    The per-pair table behind :func:`paired_differences` (which averages it per data set), for plots and
    for joining with other per-pair facts, e.g. the pseudo-labels' quality in ``load_stored_grid().pseudo``.

    Parameters
    ----------
    table : pandas.DataFrame
        Results rows with ``method``, ``keys`` and ``metric`` columns.
    method, other : str
    metric : str
        For a lower-is-better column (``hd95_um``, ``steps_to_target``) the gain is taken the other way round.
    keys : sequence of str
        What a pair shares.

    Returns
    -------
    pandas.DataFrame
        ``keys``, ``<metric>_<method>``, ``<metric>_<other>`` and ``gain``.
    """
    keys = list(keys)
    _require(table, ["method", *keys, metric], "the results table")
    mine = table.loc[table["method"] == method, keys + [metric]]
    theirs = table.loc[table["method"] == other, keys + [metric]]
    pairs = mine.merge(theirs, on=keys, suffixes=(f"_{method}", f"_{other}"), validate="one_to_one")
    sign = -1.0 if metric in _LOWER_IS_BETTER else 1.0
    return pairs.assign(gain=sign * (pairs[f"{metric}_{method}"] - pairs[f"{metric}_{other}"]))


def knob_gains(knob_rows: pd.DataFrame, results: pd.DataFrame, *, knob: str = "sigma_z_um", default: float,
               method: str = "3d_pseudo", against=("3d_sparse", "2d"), metrics=("dice", "surface_dice"),
               cluster: str = "data_seed", pair_on: str = "seed") -> pd.DataFrame:
    """Per data set and value of a realism knob: ``method`` minus each of ``against``, paired, mean over seeds.

    Introduced in chapter 7 (``07_sparsity_sweep``), for the axial blur (``load_stored_grid().blur``).

    Parameters
    ----------
    knob_rows : pandas.DataFrame
        Results rows of data sets made with other values of ``knob`` (a ``knob`` column, ``cluster``,
        ``pair_on``, ``n_slices``, ``method`` and ``metrics``).
    results : pandas.DataFrame
        The main grid's rows: its runs of the same data sets, seeds and k stand for ``knob = default``
        (unless ``knob_rows`` hold that value for a data set themselves).
    knob : str
    default : float
        The knob's value in the main grid (the grid's ``meta["blur"]["default_sigma_z_um"]``).
    method : str
    against : sequence of str
    metrics : sequence of str
        Higher is better (for a distance the sign is turned, as in :func:`paired_differences`).
    cluster, pair_on : str
        The data set and the training seed.

    Returns
    -------
    pandas.DataFrame
        One row per ``cluster``, ``knob`` value, ``n_slices``, other method and metric: ``pairs`` (seeds) and
        ``gain`` (their mean paired difference).
    """
    keys = [cluster, pair_on, "n_slices"]
    _require(knob_rows, ["method", knob, *keys, *metrics], "the knob's rows")
    _require(results, ["method", *keys, *metrics], "the results table")
    cells = knob_rows[keys].drop_duplicates()
    has_default = set(knob_rows.loc[np.isclose(knob_rows[knob].astype(float), default), cluster])
    base = results.merge(cells, on=keys)
    base = base[~base[cluster].isin(has_default)].assign(**{knob: float(default)})
    table = pd.concat([knob_rows, base], ignore_index=True).astype({knob: float})
    parts = []
    for other in against:
        for metric in metrics:
            pairs = paired_gains(table, method=method, other=other, metric=metric, keys=[knob, *keys])
            per_set = pairs.groupby([cluster, knob, "n_slices"]).agg(pairs=("gain", "size"), gain=("gain", "mean"))
            parts.append(per_set.reset_index().assign(against=other, metric=metric))
    columns = [cluster, knob, "n_slices", "against", "metric", "pairs", "gain"]
    return pd.concat(parts, ignore_index=True)[columns].sort_values(columns[:5], ignore_index=True)


def describe_difference(row, *, labels=None, digits: int = 3) -> str:
    """One sentence for one row of :func:`paired_differences`: the difference, its interval, the tests.

    Parameters
    ----------
    row : mapping or pandas.Series
        A row of :func:`paired_differences` (with ``n_slices``, ``method`` optional).
    labels : mapping of str to str, optional
        Display names of the methods (e.g. ``plot.METHOD_LABELS``).
    digits : int

    Returns
    -------
    str

    Examples
    --------
    >>> row = {"n_slices": 1, "against": "2d", "metric": "dice", "data_sets": 1,
    ...        "pairs": 2, "difference": 0.05, "verdict": "too few data sets"}
    >>> sentence = describe_difference(row)
    >>> sentence.split(": ")[1]
    '+0.050 over 1 data set (2 pairs)'
    >>> sentence.split(": ")[2]
    'too few data sets for an interval'
    """
    labels = labels or {}
    name = lambda method: labels.get(method, method)  # noqa: E731
    method = row.get("method", "3d_pseudo")
    where = f", k = {row['n_slices']}" if "n_slices" in row else ""
    head = f"{name(method)} minus {name(row['against'])}, {row['metric']}{where}: "
    sets = f"{row['data_sets']} data set{'s' if row['data_sets'] != 1 else ''} ({row['pairs']} pairs)"
    if row["data_sets"] == 0:
        return head + "no pairs in the table"
    if row["verdict"] == "too few data sets" and not np.isfinite(row.get("ci_low", np.nan)):
        return head + f"{row['difference']:+.{digits}f} over {sets}: too few data sets for an interval"
    return (head + f"{row['difference']:+.{digits}f} [95 % CI {row['ci_low']:+.{digits}f}, "
            f"{row['ci_high']:+.{digits}f}] over {sets}, better on {row['wins']} of {row['data_sets']} data "
            f"sets, Wilcoxon p = {row['wilcoxon_p']:.2g}, sign test p = {row['sign_p']:.2g}: {row['verdict']}")


def _variant(row: dict, *, lam: float, preset: str) -> str:
    """What an ablation row changes against the default (empty: it is the default)."""
    parts = []
    if row["method"] == "3d_pseudo":
        if not np.isclose(float(row["lam"]), lam):
            parts.append(f"lambda = {float(row['lam']):g}")
        if row["pseudo_mode"] != "hard":
            parts.append(f"{row['pseudo_mode']} pseudo-labels")
        if row["loss_normalization"] != "paper":
            parts.append(f"{row['loss_normalization']} normalisation")
    if row["preset"] != preset:
        extra = str(row["preset"]).removeprefix(preset).lstrip("+")
        parts.append(extra.replace("_", " ").replace("prior correction", "prior-corrected") or str(row["preset"]))
    return ", ".join(parts)


def ablation_differences(ablations: pd.DataFrame, results: pd.DataFrame, *, lam: float = 0.5, preset=None,
                         metrics=("dice", "surface_dice"), cluster: str = "data_seed", pair_on: str = "seed",
                         n_boot: int = 10_000, seed: int = 0, min_data_sets: int = MIN_DATA_SETS) -> pd.DataFrame:
    """Each ablation variant minus the default run of the same method, data set, k and seed.

    Parameters
    ----------
    ablations : pandas.DataFrame
        Results rows of the variants (e.g. ``load_stored_grid().ablations``, or sweeps of one data set with a
        ``data_seed`` column added); rows that are the default itself are left out.
    results : pandas.DataFrame
        Rows holding the defaults (``lam`` = ``lam``, hard pseudo-labels, "paper" normalisation, ``preset``).
    lam : float
        The default pseudo-label weight.
    preset : str, optional
        The default preset's name; default the most common one in ``results``.
    metrics, cluster, pair_on, n_boot, seed, min_data_sets
        As for :func:`paired_differences`.

    Returns
    -------
    pandas.DataFrame
        :func:`paired_differences`'s columns for each ``variant`` (a description such as
        ``"lambda = 1"`` or ``"prior-corrected"``) and ``of`` (the method it varies); ``against`` is
        ``"default"``. With one data set ``difference`` is that data set's mean gain, without an interval.
    """
    columns = ["method", "n_slices", cluster, pair_on, "lam", "pseudo_mode", "loss_normalization", "preset",
               *metrics]
    _require(ablations, columns, "the ablations table")
    _require(results, columns, "the results table")
    if preset is None:
        preset = results["preset"].mode().iloc[0] if len(results) else ""
    named = ablations.assign(variant=[_variant(row, lam=lam, preset=preset)
                                      for row in ablations.to_dict("records")])
    named = named[named["variant"] != ""].drop_duplicates(["variant", "method", "n_slices", cluster, pair_on])
    defaults = results.assign(variant=[_variant(row, lam=lam, preset=preset) for row in results.to_dict("records")])
    defaults = defaults[defaults["variant"] == ""]
    parts = []
    for (variant, method), part in named.groupby(["variant", "method"], sort=False):
        table = pd.concat([part.assign(method="variant"), defaults[defaults["method"] == method].assign(
            method="default")], ignore_index=True)
        table = table[table.set_index(["n_slices", cluster, pair_on]).index.isin(
            part.set_index(["n_slices", cluster, pair_on]).index)]
        found = paired_differences(table, method="variant", against=["default"], metrics=metrics,
                                   cluster=cluster, pair_on=pair_on, n_boot=n_boot, seed=seed,
                                   min_data_sets=min_data_sets)
        parts.append(found.assign(variant=variant, of=method))
    if not parts:
        return pd.DataFrame(columns=["variant", "of", "n_slices", *_DIFFERENCE_COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    return table[["variant", "of", *[c for c in table.columns if c not in ("variant", "of")]]]


#: The paper's three claims, each as (number, text, (method, against, metric)), the last the comparison that
#: tests it.
PAPER_CLAIMS = (
    (1, "at heavy sparsity 3D + pseudo-labels beats the 2D model", ("3d_pseudo", "2d", "dice")),
    (2, "at heavy sparsity 3D + pseudo-labels beats the sparsely trained 3D model",
     ("3d_pseudo", "3d_sparse", "dice")),
    (3, "sparse training suffers from longer training times (3D + pseudo-labels reaches 90 % of the dense "
        "model's final Dice in fewer steps)", ("3d_pseudo", "3d_sparse", "steps_to_target")),
)


def paper_claims(differences: pd.DataFrame, speed: pd.DataFrame, *, n_slices=None) -> pd.DataFrame:
    """The paper's three claims (:data:`PAPER_CLAIMS`) with the paired result that tests each, at one k.

    Parameters
    ----------
    differences : pandas.DataFrame
        :func:`paired_differences` of the scores (3D + pseudo-labels against the 2D and 3D-sparse models).
    speed : pandas.DataFrame
        :func:`paired_differences` of :func:`reach_table` (``steps_to_target``, 3D + pseudo-labels against 3D
        sparse).
    n_slices : int, optional
        The k of heavy sparsity; default the smallest k in ``differences``.

    Returns
    -------
    pandas.DataFrame
        One row per claim: ``claim``, ``text``, ``n_slices``, ``metric``, ``data_sets``, ``difference``,
        ``ci_low``, ``ci_high``, ``wilcoxon_p``, ``verdict`` (of :func:`paired_differences`) and ``status``:
        "supported" (better), "contradicted" (worse), "not shown" (no clear difference), "too few data sets" or
        "not in the grid".
    """
    both = pd.concat([differences, speed], ignore_index=True)
    if n_slices is None and len(differences):
        n_slices = int(differences["n_slices"].min())
    status = {"better": "supported", "worse": "contradicted", "no clear difference": "not shown",
              "too few data sets": "too few data sets"}
    rows = []
    for number, text, (_, other, metric) in PAPER_CLAIMS:
        match = both[(both["n_slices"] == n_slices) & (both["against"] == other) & (both["metric"] == metric)]
        row = {"claim": number, "text": text, "n_slices": n_slices, "metric": metric}
        if match.empty:
            rows.append({**row, "data_sets": 0, "verdict": "", "status": "not in the grid"})
            continue
        found = match.iloc[0]
        rows.append({**row, **{c: found[c] for c in ("data_sets", "pairs", "difference", "ci_low", "ci_high",
                                                    "wilcoxon_p", "verdict")},
                     "against": other, "status": status[found["verdict"]]})
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
        never reached within the budget), and ``last_step``, ``last_seconds`` (the run's whole budget).
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
                         "seconds": hit["seconds"].iloc[0] if len(hit) else np.nan,
                         "last_step": curve["step"].iloc[-1], "last_seconds": curve["seconds"].iloc[-1]})
    table = pd.DataFrame(rows, columns=[*pair_on, "method", "n_slices", "fraction", "target", "reached", "step",
                                        "seconds", "last_step", "last_seconds"])
    return table.astype({"n_slices": "Int64"})  # the dense runs have none (NaN)


def summarise_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Per method, ``n_slices`` and fraction: the share of runs that reached the target, and how fast.

    Parameters
    ----------
    steps : pandas.DataFrame
        :func:`steps_to_reach`'s table.

    Returns
    -------
    pandas.DataFrame
        ``runs``, ``reached`` (share of the runs), and over the runs that reached it the median, 25th and 75th
        percentile of ``step`` and ``seconds`` (``step_median``, ``step_q25``, ``step_q75``, ...).
    """
    def q25(values):
        return values.quantile(0.25)

    def q75(values):
        return values.quantile(0.75)

    grouped = steps.groupby(["method", "n_slices", "fraction"], dropna=False)  # dense: no n_slices
    table = grouped.agg(runs=("reached", "size"), reached=("reached", "mean"),
                        step_median=("step", "median"), step_q25=("step", q25), step_q75=("step", q75),
                        seconds_median=("seconds", "median"), seconds_q25=("seconds", q25),
                        seconds_q75=("seconds", q75))
    return table.reset_index()


def reach_table(steps: pd.DataFrame, *, fraction: float = 0.9) -> pd.DataFrame:
    """:func:`steps_to_reach`'s rows at one fraction as a results-like table, for :func:`paired_differences`.

    ``steps_to_target`` and ``seconds_to_target`` are the step and seconds of the first validation at or above
    the target, or the run's whole budget if it never got there (a lower bound: such a run is counted as
    reaching it at the end, which favours it); ``reached`` says which. Both columns are lower-is-better for
    :func:`paired_differences`, so a positive difference means the method got there sooner.
    """
    rows = steps[np.isclose(steps["fraction"].astype(float), fraction)]
    return rows.assign(steps_to_target=rows["step"].fillna(rows["last_step"]),
                       seconds_to_target=rows["seconds"].fillna(rows["last_seconds"]))


def plan_budget(table: pd.DataFrame, *, target: float, metric: str = "dice",
                methods=("2d", "3d_sparse", "3d_pseudo"), cluster: str = "data_seed", outlines=None,
                minutes_per_outline: float = MINUTES_PER_OUTLINE, n_boot: int = 10_000,
                seed: int = 0, min_data_sets: int = MIN_DATA_SETS) -> pd.DataFrame:
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
    min_data_sets : int
        The fewest data sets for ``planes_needed_confident`` (:data:`MIN_DATA_SETS`).

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
            low = (_bootstrap_mean(per_set, n_boot=n_boot, confidence=0.95, seed=seed)[0]
                   if per_set.size >= max(2, min_data_sets)
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
