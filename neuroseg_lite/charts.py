"""Charts of numbers: training curves, confusion matrices and scores against the annotation budget.

One job: draw results (not images). Training curves and confusion matrices are introduced in
chapter 3 (``03_train_2d``), scores against the annotation budget in chapter 7
(``07_sparsity_sweep``). The book reaches these functions through :mod:`neuroseg_lite.plot`, which
re-exports them, together with the method names of every figure and table, ``METHOD_LABELS``.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show()``. It draws
into the axes given (``ax=`` for one panel, ``axes=`` for several) or makes a new figure; new
figures are made by pyplot (so that Jupyter's inline backend knows how to display them) and at once
released from pyplot's list of open figures, so a notebook shows each one exactly once (as the
cell's value) and scripts do not pile up open figures.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from neuroseg_lite._checks import NeurosegInputError

__all__ = ["plot_history", "plot_confusion", "plot_metric_vs_k", "plot_paired_differences", "plot_learning_curves",
           "plot_build_points", "plot_gain_vs_knob", "METHOD_LABELS"]

#: The one set of method names for every figure and table of the book (chapters 6-8).
METHOD_LABELS = {
    "2d": "2D pseudo-labeller",
    "3d_sparse": "3D sparse (λ = 0)",
    "3d_pseudo": "3D + pseudo-labels",
    "3d_dense": "3D dense (upper bound)",
}


def _new_figure(**kwargs) -> Figure:
    """A pyplot-made figure that pyplot no longer tracks (see the module docstring for why)."""
    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig


def _frame(table, needed, *, name: str = "table", hint: str = "", empty_ok: bool = False):
    """``table`` as a DataFrame; a clear error when it lacks one of the ``needed`` columns or (unless
    ``empty_ok``) has no rows."""
    import pandas as pd

    frame = pd.DataFrame(table)
    missing = sorted(set(needed) - set(frame.columns))
    if missing:
        raise NeurosegInputError(f"{name} has no column(s) {missing}; {hint or f'it has {sorted(frame.columns)}'}.")
    if frame.empty and not empty_ok:
        raise NeurosegInputError(f"{name} has no rows to plot.")
    return frame


def _figure_axes(axes, count: int, *, figsize, name: str = "axes", **subplot_kw):
    """(figure, list of ``count`` axes): a new row of panels, or the caller's axes of one figure."""
    if axes is None:
        fig = _new_figure(figsize=figsize, layout="constrained")
        return fig, list(fig.subplots(1, count, squeeze=False, subplot_kw=subplot_kw or None)[0])
    given = [axes] if hasattr(axes, "figure") else list(np.ravel(np.asarray(axes, dtype=object)))
    if len(given) != count or not all(hasattr(ax, "figure") for ax in given):
        raise NeurosegInputError(f"{name} must be {count} matplotlib Axes for this figure, got {axes!r}.")
    if len({id(ax.figure) for ax in given}) > 1:
        raise NeurosegInputError(f"the {name} given belong to different figures; pass axes of one figure.")
    return given[0].figure, given


def _x_values(history: dict, key: str, n: int) -> tuple[np.ndarray, str]:
    """The x-axis for a logged series: its matching step list when lengths agree, else the index."""
    candidates = ["val_step", "step"] if key.startswith("val_") else ["step"]
    for step_key in candidates:
        steps = history.get(step_key)
        if steps is not None and len(steps) == n:
            return np.asarray(steps, dtype=float), "step"
    return np.arange(n, dtype=float), "entry"


def _plot_series(ax, history: dict, key: str, **style) -> bool:
    values = np.asarray(history.get(key, []), dtype=float)
    if values.size == 0:
        return False
    steps, x_label = _x_values(history, key, values.size)
    if "loss" in key and values.size >= 50:
        # per-step losses are noisy: show them faintly under a running mean over ~2% of the run
        window = max(5, values.size // 50)
        ax.plot(steps, values, alpha=0.25, linewidth=0.8, **style)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, label=f"{key} (mean of {window})", **style)
    else:
        ax.plot(steps, values, marker="o" if values.size < 30 else None, markersize=3, label=key, **style)
    ax.set_xlabel(x_label)
    return True


def plot_history(history: dict, *, keys=None, axes=None) -> Figure:
    """Training curves: one panel per logged quantity.

    Parameters
    ----------
    history : dict of lists
        From the training functions: ``"step"`` and ``"loss"``, optionally ``"val_step"`` with ``"val_dice"``
        (and ``"val_loss"``), and ``"lam"`` (the pseudo-label weight). Keys that are absent or empty are
        skipped.
    keys : sequence of str, optional
        Quantities to plot, one panel each. Default: ``"loss"`` (log scale, with ``"val_loss"`` overlaid and
        ``"lam"`` on a twin axis when logged) and ``"val_dice"``.
    axes : sequence of matplotlib Axes, optional
        One per panel, to draw into (e.g. panels of a larger figure) instead of a new figure.

    Returns
    -------
    Figure
        One axes per panel, plus one twin axes when ``lam`` is drawn.

    Examples
    --------
    >>> fig = plot_history({"step": [1, 2, 3], "loss": [0.9, 0.5, 0.4]})
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['loss']
    """
    if not isinstance(history, dict):
        raise NeurosegInputError(f"history must be a dict of lists, got {type(history).__name__}.")
    present = [k for k, v in history.items() if v is not None and len(v) > 0]
    if keys is None:
        keys = [k for k in ("loss", "val_dice") if k in present]
        overlays = True
    else:
        keys = list(keys)
        missing = [k for k in keys if k not in present]
        if missing:
            raise NeurosegInputError(f"history has no values for {missing}; it holds {sorted(present)}.")
        overlays = False
    if not keys:
        raise NeurosegInputError(f"history has nothing to plot (needs 'loss' or 'val_dice'); it holds "
                                 f"{sorted(present)}. Was training run for at least one step?")

    fig, axes = _figure_axes(axes, len(keys), figsize=(4.2 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        _plot_series(ax, history, key, color="tab:blue")
        if overlays and key == "loss" and "val_loss" in present:
            _plot_series(ax, history, "val_loss", color="tab:orange")
            ax.legend(fontsize=8)
        values = np.asarray(history[key], dtype=float)
        if "loss" in key and np.any(np.isfinite(values) & (values > 0)):
            ax.set_yscale("log")
        if "dice" in key:
            ax.set_ylim(0.0, 1.02)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if overlays and key == "loss" and "lam" in present:
            twin = ax.twinx()
            _plot_series(twin, history, "lam", color="tab:gray", linestyle="--")
            twin.set_ylabel("λ (pseudo-label weight)", color="tab:gray")
    return fig


def plot_confusion(counts: dict, *, title=None, ax=None) -> Figure:
    """A 2x2 confusion matrix with voxel counts, percentages of all voxels and of each true class.

    Parameters
    ----------
    counts : dict
        ``tp``, ``fp``, ``fn``, ``tn`` as non-negative numbers (from ``metrics.confusion_counts``).
    title : str, optional
    ax : matplotlib Axes, optional
        Draw into this axes (e.g. a panel of a larger figure) instead of a new figure.

    Returns
    -------
    Figure
        The new figure (one axes) or ``ax.figure``. Rows are the truth, columns the prediction,
        foreground first; cells are coloured by their share of the row (recall and specificity on the
        diagonal).
    """
    try:
        tp, fp, fn, tn = (float(counts[k]) for k in ("tp", "fp", "fn", "tn"))
    except (KeyError, TypeError) as err:
        raise NeurosegInputError(f"counts must be a dict with keys 'tp', 'fp', 'fn', 'tn' (e.g. from "
                                 f"metrics.confusion_counts), got {counts!r}.") from err
    matrix = np.array([[tp, fn], [fp, tn]])
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise NeurosegInputError(f"confusion counts must be non-negative numbers, got {counts!r}.")
    total = matrix.sum()
    fraction = matrix / total if total > 0 else np.zeros_like(matrix)
    # colour by the share of each true class (recall on the diagonal): the background's sheer size would
    # otherwise make every other cell look empty
    row_sums = matrix.sum(axis=1, keepdims=True)
    row_share = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)

    fig, (ax,) = _figure_axes(ax, 1, figsize=(3.8, 3.3), name="ax")
    ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [["TP", "FN"], ["FP", "TN"]]
    for row in range(2):
        for col in range(2):
            share = row_share[row, col]
            ax.text(col, row, f"{names[row][col]}\n{int(matrix[row, col]):,}\n"
                    f"{100 * fraction[row, col]:.1f}% of all\n{100 * share:.1f}% of row",
                    ha="center", va="center", fontsize=8, color="white" if share > 0.6 else "black")
    ax.set_xticks([0, 1], ["foreground", "background"])
    ax.set_yticks([0, 1], ["foreground", "background"])
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _spread(values: np.ndarray, kind: str) -> tuple[float, float]:
    """(lower, upper) distance of the error bar from the mean."""
    mean = float(np.mean(values))
    if kind == "range":  # clipped: rounding can make mean - min a tiny negative number
        return max(0.0, mean - float(np.min(values))), max(0.0, float(np.max(values)) - mean)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return std, std


def plot_metric_vs_k(table, *, metrics=("dice", "precision", "recall"), x="n_slices", methods=None,
                     reference_methods=("3d_dense",), spread="range", xscale="log", show_points=True,
                     cluster=None, title=None, figsize=None, axes=None) -> Figure:
    """Scores against the annotation budget (or another setting): mean and spread over seeds, per method.

    Introduced in chapter 7 (``07_sparsity_sweep``), where it draws the paper's Figure 2.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per run, e.g. from :func:`neuroseg_lite.experiment.sweep`: columns ``"method"``, ``x``, the
        ``metrics`` and usually ``"seed"``. Within one (method, x) the rows must differ only in their seed:
        filter other settings (e.g. one ``lam``) first.
    metrics : sequence of str
        One panel per column.
    x : str
        Column on the horizontal axis (``"n_slices"``, or e.g. ``"lam"`` for an ablation).
    methods : sequence of str, optional
        Methods drawn as lines against ``x``, in this order; default every method in the table that is not in
        ``reference_methods``.
    reference_methods : sequence of str
        Methods that do not depend on ``x`` (the dense upper bound): a horizontal line at their mean over all
        their rows, with a band showing the spread.
    spread : {"range", "std"}
        Error bars: min-max over the rows (seeds), or the sample standard deviation.
    xscale : {"log", "linear"}
        ``"log"`` (base 2) suits annotation budgets 1, 2, 4, ...; use ``"linear"`` when ``x`` can be 0.
    show_points : bool
        Also draw every single run (with ``cluster``: every data set) as a small faint dot.
    cluster : str, optional
        A column naming the independent unit (``"data_seed"`` for a grid over several data sets): rows are
        first averaged over the seeds within each (method, x, cluster), and the mean and spread are taken
        over those per-data-set means.
    title : str, optional
    figsize : tuple of 2 float, optional
    axes : sequence of matplotlib Axes, optional
        One per metric, to draw into instead of a new figure.

    Returns
    -------
    Figure
        One axes per metric; the legend is on the first one.
    """

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    frame = _frame(table, {"method", x, *metrics})
    if spread not in ("range", "std"):
        raise NeurosegInputError(f"spread must be 'range' or 'std', got {spread!r}.")
    if xscale not in ("log", "linear"):
        raise NeurosegInputError(f"xscale must be 'log' or 'linear', got {xscale!r}.")
    present = list(dict.fromkeys(frame["method"]))
    references = [m for m in reference_methods if m in present]
    if methods is None:
        methods = [m for m in present if m not in references]
    else:
        methods = list(methods)
        absent = [m for m in methods if m not in present]
        if absent:
            raise NeurosegInputError(f"method(s) {absent} are not in the table; it holds {present}.")
    if xscale == "log" and (frame.loc[frame["method"].isin(methods), x] <= 0).any():
        raise NeurosegInputError(f"column {x!r} has values <= 0, which a log axis cannot show; use "
                                 "xscale='linear'.")
    if cluster is not None and cluster not in frame.columns:
        raise NeurosegInputError(f"table has no column {cluster!r} (cluster); it has {sorted(frame.columns)}.")
    if "seed" in frame.columns:
        unit = ["method", x, "seed"] + ([cluster] if cluster else [])
        repeated = frame[frame["method"].isin(methods)].duplicated(subset=unit)
        if repeated.any():
            row = frame[frame["method"].isin(methods)][repeated].iloc[0]
            raise NeurosegInputError(
                f"several rows for method {row['method']!r}, {x} = {row[x]}, seed {row['seed']}: they differ in "
                "another setting (e.g. lam or pseudo_mode, or the data set: pass cluster=). Filter the table to one "
                "setting per method first.")
    if cluster is not None:  # one row per data set: its mean over the seeds
        frame = frame.groupby(["method", x, cluster], as_index=False, dropna=False)[metrics].mean()

    x_values = np.sort(frame.loc[frame["method"].isin(methods), x].unique().astype(float))
    # small horizontal offsets keep the error bars of different methods apart
    offsets = np.linspace(-1, 1, len(methods)) * 0.08 if len(methods) > 1 else np.zeros(1)
    if xscale == "linear" and x_values.size > 1:
        offsets = offsets * float(np.min(np.diff(x_values)))

    fig, axes = _figure_axes(axes, len(metrics), figsize=figsize or (4.0 * len(metrics), 3.6))
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            rows = frame[frame["method"] == method]
            grouped = [(float(value), rows.loc[rows[x] == value, metric].to_numpy(dtype=float))
                       for value in np.sort(rows[x].unique())]
            xs = np.array([g[0] for g in grouped])
            shown = xs * 2.0 ** offsets[i] if xscale == "log" else xs + offsets[i]
            means = np.array([np.mean(g[1]) for g in grouped])
            bars = np.array([_spread(g[1], spread) for g in grouped]).T
            color = f"C{i}"
            ax.errorbar(shown, means, yerr=bars, marker="o", markersize=4, capsize=3, color=color,
                        label=METHOD_LABELS.get(method, method))
            if show_points:
                for position, (_, values) in zip(shown, grouped):
                    ax.plot(np.full(values.size, position), values, linestyle="none", marker=".", markersize=4,
                            color=color, alpha=0.35)
        for j, method in enumerate(references):
            values = frame.loc[frame["method"] == method, metric].to_numpy(dtype=float)
            mean = float(np.mean(values))
            low, high = _spread(values, spread)
            color = ["black", "gray", "tab:brown"][j % 3]
            ax.axhline(mean, color=color, linestyle="--", linewidth=1.2, label=METHOD_LABELS.get(method, method))
            if high + low > 0:
                ax.axhspan(mean - low, mean + high, color=color, alpha=0.12, linewidth=0)
        if xscale == "log":
            ax.set_xscale("log", base=2)
        ax.set_xticks(x_values, [f"{v:g}" for v in x_values])
        ax.minorticks_off()
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    order = [METHOD_LABELS.get(m, m) for m in [*methods, *references]]
    by_label = dict(zip(labels, handles))
    axes[0].legend([by_label[label] for label in order], order, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig



def _method_color(method: str, fallback: int) -> str:
    """The method's colour in every chart of the book (its place in ``METHOD_LABELS``)."""
    return f"C{list(METHOD_LABELS).index(method)}" if method in METHOD_LABELS else f"C{fallback}"


def _log2_axis(ax, values) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()


def plot_paired_differences(table, *, metrics=None, x="n_slices", title=None, figsize=None, axes=None) -> Figure:
    """Paired differences with their confidence intervals against ``x``, one panel per metric.

    Introduced in chapter 7 (``07_sparsity_sweep``).

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`neuroseg_lite.paired.paired_differences`'s table: ``x``, ``against``, ``metric``,
        ``difference``, ``ci_low``, ``ci_high``, ``data_sets``. Rows without an interval (too few data sets)
        are drawn as open markers without a bar.
    metrics : sequence of str, optional
        Panels; default every metric of the table.
    x : str
    title : str, optional
    figsize : tuple of 2 float, optional
    axes : sequence of matplotlib Axes, optional

    Returns
    -------
    Figure
        A dashed line at zero; above it the method is better.
    """
    frame = _frame(table, {x, "against", "metric", "difference", "ci_low", "ci_high", "data_sets"},
                   hint="pass paired.paired_differences's table")
    metrics = list(dict.fromkeys(frame["metric"])) if metrics is None else list(metrics)
    others = list(dict.fromkeys(frame["against"]))
    x_values = np.sort(frame[x].unique().astype(float))
    offsets = np.linspace(-1, 1, len(others)) * 0.06 if len(others) > 1 else np.zeros(1)
    fig, axes = _figure_axes(axes, len(metrics), figsize=figsize or (4.2 * len(metrics), 3.6))
    for ax, metric in zip(axes, metrics):
        for i, other in enumerate(others):
            rows = frame[(frame["metric"] == metric) & (frame["against"] == other)].sort_values(x)
            shown = rows[x].to_numpy(dtype=float) * 2.0 ** offsets[i]
            diff = rows["difference"].to_numpy(dtype=float)
            low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
            has_ci = np.isfinite(low) & np.isfinite(high)
            color = _method_color(other, i)
            label = f"minus {METHOD_LABELS.get(other, other)}"
            if has_ci.any():
                ax.errorbar(shown[has_ci], diff[has_ci], yerr=[diff[has_ci] - low[has_ci], high[has_ci] - diff[has_ci]],
                            marker="o", markersize=5, capsize=3, color=color, linestyle="-", label=label)
                label = None
            if (~has_ci).any():
                ax.plot(shown[~has_ci], diff[~has_ci], marker="o", markersize=6, markerfacecolor="none",
                        linestyle="none", color=color, label=label)
            for position, value, sets in zip(shown, diff, rows["data_sets"]):
                ax.annotate(f"{sets}", (position, value), textcoords="offset points", xytext=(5, 3),
                            fontsize=7, color=color)
        ax.axhline(0.0, color="black", linestyle="--", linewidth=1)
        _log2_axis(ax, x_values)
        ax.set_xlabel(x)
        ax.set_ylabel(f"paired difference in {metric}")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="open: no interval; digits: data sets", title_fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_learning_curves(curves, *, n_slices=None, methods=None, reference_methods=("3d_dense",), x="step",
                         y="val_dice", title=None, figsize=None, ax=None) -> Figure:
    """Validation curves: the mean over runs per method, with a band from the lowest to the highest run.

    Introduced in chapter 7 (``07_sparsity_sweep``).

    Parameters
    ----------
    curves : pandas.DataFrame
        Learning-curve rows (:meth:`neuroseg_lite.experiment.Pipeline.learning_curve`, or
        ``load_stored_grid().curves``): ``method``, ``n_slices``, ``key`` (one run), ``x`` and ``y``.
    n_slices : int, optional
        Keep the sparse methods' runs at this k (the ``reference_methods`` are kept whatever their k).
    methods : sequence of str, optional
        Default: every method of the table, reference methods last.
    reference_methods : sequence of str
        Drawn dashed.
    x : {"step", "seconds"}
        Runs share validation steps, so ``"step"`` averages exactly; with ``"seconds"`` each run's seconds
        are averaged per step.
    y : str
    title : str, optional
    figsize : tuple of 2 float, optional
    ax : matplotlib Axes, optional

    Returns
    -------
    Figure
    """
    frame = _frame(curves, {"method", "n_slices", "key", "step", x, y}, name="curves", empty_ok=True,
                   hint="pass learning-curve rows")
    if n_slices is not None:
        frame = frame[frame["method"].isin(reference_methods) | (frame["n_slices"] == n_slices)]
    if frame.empty:
        raise NeurosegInputError("no learning-curve rows to plot" + (f" at n_slices = {n_slices}." if n_slices
                                                                     is not None else "."))
    present = list(dict.fromkeys(frame["method"]))
    if methods is None:
        methods = [m for m in present if m not in reference_methods] + [m for m in reference_methods if m in present]
    fig, (ax,) = _figure_axes(ax, 1, figsize=figsize or (5.5, 3.8), name="ax")
    for i, method in enumerate(methods):
        rows = frame[frame["method"] == method]
        if rows.empty:
            raise NeurosegInputError(f"no curves of method {method!r}; the table holds {present}.")
        per_step = rows.groupby("step").agg(x=(x, "mean"), mean=(y, "mean"), low=(y, "min"), high=(y, "max"))
        color = "black" if method in reference_methods else _method_color(method, i)
        ax.plot(per_step["x"], per_step["mean"], color=color,
                linestyle="--" if method in reference_methods else "-",
                label=f"{METHOD_LABELS.get(method, method)} ({rows['key'].nunique()} runs)")
        ax.fill_between(per_step["x"], per_step["low"], per_step["high"], color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("training step" if x == "step" else "training seconds")
    ax.set_ylabel(f"{y} (validation volume)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or (f"k = {n_slices}" if n_slices is not None else ""), fontsize=10)
    return fig


def plot_build_points(stored, live, *, metric="dice", methods=None, cluster="data_seed", title=None, figsize=None,
                      ax=None) -> Figure:
    """A stored distribution of runs per method, with the runs of this build marked on it.

    Introduced in chapter 7 (``07_sparsity_sweep``): the stored grid's runs are grey dots (jittered), their
    mean per ``cluster`` (data set) larger grey dots, and ``live`` rows red crosses.

    Parameters
    ----------
    stored, live : pandas.DataFrame
        Results rows with ``method`` and ``metric`` (``stored`` also ``cluster``), already filtered to one k.
    metric : str
    methods : sequence of str, optional
        Default: those of ``stored`` and ``live``, in ``METHOD_LABELS`` order.
    cluster : str
    title : str, optional
    figsize : tuple of 2 float, optional
    ax : matplotlib Axes, optional

    Returns
    -------
    Figure
    """
    import pandas as pd

    stored, live = pd.DataFrame(stored), pd.DataFrame(live)
    for name, frame, columns in (("stored", stored, {"method", metric, cluster}), ("live", live, {"method", metric})):
        missing = sorted(columns - set(frame.columns)) if len(frame) else []
        if missing:
            raise NeurosegInputError(f"{name} has no column(s) {missing}.")
    present = set(stored.get("method", [])) | set(live.get("method", []))
    if methods is None:
        methods = [m for m in METHOD_LABELS if m in present] + sorted(present - set(METHOD_LABELS))
    if not methods:
        raise NeurosegInputError("no rows to plot in stored or live.")
    rng, marked, shown = np.random.default_rng(0), False, False
    fig, (ax,) = _figure_axes(ax, 1, figsize=figsize or (1.6 * len(methods) + 2.5, 3.8), name="ax")
    for i, method in enumerate(methods):
        runs = stored[stored["method"] == method] if len(stored) else stored
        if len(runs):
            ax.plot(i + rng.uniform(-0.15, 0.15, len(runs)), runs[metric], linestyle="none", marker=".",
                    color="gray", alpha=0.5, label=None if shown else "stored runs")
            sets = runs.groupby(cluster)[metric].mean()
            ax.plot(np.full(len(sets), i + 0.25), sets, linestyle="none", marker="o", markersize=5,
                    color="dimgray", label=None if shown else "stored: mean per data set")
            shown = True
        mine = live[live["method"] == method] if len(live) else live
        if len(mine):
            ax.plot(np.full(len(mine), i), mine[metric], linestyle="none", marker="x", markersize=9,
                    markeredgewidth=2, color="red", label=None if marked else "this build")
            marked = True
    ax.set_xticks(range(len(methods)), [METHOD_LABELS.get(m, m) for m in methods], rotation=15, fontsize=8)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_gain_vs_knob(gains, *, knob="sigma_z_um", metric="dice", against=None, title=None, figsize=None,
                      axes=None) -> Figure:
    """Paired gain against a realism knob (the axial blur): one thin line per data set, their mean in bold.

    Introduced in chapter 7 (``07_sparsity_sweep``).

    Parameters
    ----------
    gains : pandas.DataFrame
        :func:`neuroseg_lite.paired.knob_gains`'s table: ``data_seed``, ``knob``, ``against``, ``metric`` and
        ``gain``.
    knob : str
    metric : str
    against : sequence of str, optional
        One panel each; default every other method of the table.
    title : str, optional
    figsize : tuple of 2 float, optional
    axes : sequence of matplotlib Axes, optional

    Returns
    -------
    Figure
        A dashed line at zero; above it the method is better.
    """
    frame = _frame(gains, {"data_seed", knob, "against", "metric", "gain"}, name="gains", empty_ok=True,
                   hint="pass paired.knob_gains's table")
    frame = frame[frame["metric"] == metric]
    if frame.empty:
        raise NeurosegInputError(f"no gains in {metric!r} to plot.")
    against = list(dict.fromkeys(frame["against"])) if against is None else list(against)
    fig, axes = _figure_axes(axes, len(against), figsize=figsize or (4.2 * len(against), 3.6))
    for ax, other in zip(axes, against):
        rows = frame[frame["against"] == other]
        if rows.empty:
            raise NeurosegInputError(f"no gains against {other!r}; the table holds {sorted(set(frame['against']))}.")
        for i, (data_seed, part) in enumerate(rows.groupby("data_seed")):
            part = part.sort_values(knob)
            ax.plot(part[knob], part["gain"], marker="o", markersize=3, linewidth=1, alpha=0.6, color="gray",
                    label="one data set (its seed)" if i == 0 else None)
            ax.annotate(f"{data_seed}", (part[knob].iloc[-1], part["gain"].iloc[-1]), textcoords="offset points",
                        xytext=(4, 0), fontsize=7, color="gray")
        mean = rows.groupby(knob)["gain"].mean()
        ax.plot(mean.index, mean.to_numpy(), marker="o", linewidth=2.5, color=_method_color(other, 0),
                label=f"mean of {rows['data_seed'].nunique()} data sets")
        ax.axhline(0.0, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel(knob)
        ax.set_ylabel(f"paired gain in {metric}")
        ax.set_title(f"3D + pseudo-labels minus {METHOD_LABELS.get(other, other)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
