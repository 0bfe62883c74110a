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

__all__ = ["plot_history", "plot_confusion", "plot_metric_vs_k", "METHOD_LABELS"]

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
                     title=None, figsize=None, axes=None) -> Figure:
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
        Also draw every single run as a small faint dot.
    title : str, optional
    figsize : tuple of 2 float, optional
    axes : sequence of matplotlib Axes, optional
        One per metric, to draw into instead of a new figure.

    Returns
    -------
    Figure
        One axes per metric; the legend is on the first one.
    """
    import pandas as pd

    frame = pd.DataFrame(table)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    needed = {"method", x, *metrics}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise NeurosegInputError(f"table has no column(s) {missing}; it has {sorted(frame.columns)}.")
    if frame.empty:
        raise NeurosegInputError("table has no rows to plot.")
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
    if "seed" in frame.columns:
        repeated = frame[frame["method"].isin(methods)].duplicated(subset=["method", x, "seed"])
        if repeated.any():
            row = frame[frame["method"].isin(methods)][repeated].iloc[0]
            raise NeurosegInputError(
                f"several rows for method {row['method']!r}, {x} = {row[x]}, seed {row['seed']}: they differ in "
                "another setting (e.g. lam or pseudo_mode). Filter the table to one setting per method first.")

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

