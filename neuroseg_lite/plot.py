"""Figures: orthogonal views, training curves, confusion matrices, 3D surfaces and a notebook slice browser.

Introduced in chapter 1 (``01_data``) and used throughout the book.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show()``. Figures are made by
pyplot (so that Jupyter's inline backend knows how to display them) and at once released from pyplot's list of
open figures, so a notebook shows each one exactly once (as the cell's value) and scripts do not pile up open
figures. Save them with ``fig.savefig``. Physical axes are in micrometres, so anisotropic stacks are drawn with
their true proportions.
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from neuroseg_lite._checks import NeurosegInputError, check_same_shape, check_spacing, check_volume
from neuroseg_lite.io import binarize_labels

__all__ = [
    "show_orthogonal",
    "plot_history",
    "plot_confusion",
    "render_surfaces",
    "slice_browser",
    "plot_metric_vs_k",
    "plot_sections",
    "METHOD_LABELS",
    "LABEL_COLOR",
    "PREDICTION_COLOR",
]

LABEL_COLOR = "limegreen"
PREDICTION_COLOR = "magenta"
_CROSSHAIR_COLOR = "yellow"
_PLANE_COLOR = "cyan"


def _new_figure(**kwargs) -> Figure:
    """A pyplot-made figure that pyplot no longer tracks (see the module docstring for why)."""
    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig


def _as_mask(values, *, shape, name: str, threshold: float = 0.5) -> np.ndarray | None:
    """Boolean mask from labels (bool/binary/instance) or probabilities (floats in [0, 1], thresholded)."""
    if values is None:
        return None
    values = check_volume(np.asarray(values), name=name)
    check_same_shape(np.broadcast_to(False, shape), values, names=("image", name))
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        return values > threshold
    return binarize_labels(values)


def _display_range(*slices: np.ndarray) -> tuple[float, float]:
    """Robust grey-level limits from the shown slices (the whole volume may be lazy or huge)."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in slices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1.0, 99.8])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _draw_contour(ax, mask2d: np.ndarray, *, pixel: tuple[float, float], color: str, linewidth=1.2) -> None:
    """Outline a 2D mask, with pixel centres at physical coordinates ((i + 0.5) * size)."""
    if not mask2d.any() or mask2d.all():
        return  # nothing to outline; matplotlib would warn about an empty contour
    rows = (np.arange(mask2d.shape[0]) + 0.5) * pixel[0]
    cols = (np.arange(mask2d.shape[1]) + 0.5) * pixel[1]
    ax.contour(cols, rows, mask2d.astype(np.float32), levels=[0.5], colors=[color], linewidths=linewidth)


def show_orthogonal(image, *, labels=None, prediction=None, spacing=(1.0, 1.0, 1.0), position=None,
                    annotated_planes=None, title=None, figsize=None, threshold: float = 0.5) -> Figure:
    """Three orthogonal sections (XY, XZ, YZ) through a stack, drawn to physical scale.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X)
    labels : ndarray of shape (Z, Y, X), optional
        Ground truth (bool, binary or instance), outlined in green.
    prediction : ndarray of shape (Z, Y, X), optional
        Binary mask or probabilities (thresholded at ``threshold``), outlined in magenta.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres; axes are in micrometres.
    position : tuple of 3 int, optional
        Voxel (z, y, x) where the sections cross; default the centre of the stack.
    annotated_planes : sequence of int, optional
        z-indices of annotated slices, drawn as dashed lines on the XZ and YZ sections.
    title : str, optional
    figsize : tuple of 2 float, optional
        Default: about 8 inches wide, height from the stack's physical proportions.
    threshold : float
        Probability threshold for ``prediction``.

    Returns
    -------
    Figure
        Three axes: XY (top left), YZ (top right, z horizontal), XZ (bottom left, z vertical).
    """
    image = check_volume(image if isinstance(image, np.ndarray) else np.asarray(image), name="image")
    sz, sy, sx = check_spacing(spacing)
    nz, ny, nx = image.shape
    label_mask = _as_mask(labels, shape=image.shape, name="labels")
    pred_mask = _as_mask(prediction, shape=image.shape, name="prediction", threshold=threshold)
    if position is None:
        position = (nz // 2, ny // 2, nx // 2)
    try:
        z, y, x = (int(p) for p in position)
    except (TypeError, ValueError) as err:
        raise NeurosegInputError(f"position must be three voxel indices (z, y, x), got {position!r}.") from err
    if not (0 <= z < nz and 0 <= y < ny and 0 <= x < nx):
        raise NeurosegInputError(f"position {(z, y, x)} is outside the stack of shape {image.shape}; "
                                 "use indices 0 <= p < size on each axis.")
    planes = sorted({int(p) for p in annotated_planes}) if annotated_planes is not None else []
    if any(p < 0 or p >= nz for p in planes):
        raise NeurosegInputError(f"annotated_planes {planes} must be z-indices in 0..{nz - 1}.")

    width_x, height_y, depth_z = nx * sx, ny * sy, nz * sz
    if figsize is None:
        width_in = 8.0
        figsize = (width_in, width_in * (height_y + depth_z) / (width_x + depth_z) + 0.6)
    fig = _new_figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[width_x, depth_z], height_ratios=[height_y, depth_z])
    ax_xy = fig.add_subplot(grid[0, 0])
    ax_yz = fig.add_subplot(grid[0, 1], sharey=ax_xy)
    ax_xz = fig.add_subplot(grid[1, 0], sharex=ax_xy)

    sections = {
        # name: (axes, 2D image, (row pixel, column pixel), extent, mask slicer)
        "xy": (ax_xy, image[z], (sy, sx), (0, width_x, height_y, 0), lambda m: m[z]),
        "yz": (ax_yz, image[:, :, x].T, (sy, sz), (0, depth_z, height_y, 0), lambda m: m[:, :, x].T),
        "xz": (ax_xz, image[:, y, :], (sz, sx), (0, width_x, depth_z, 0), lambda m: m[:, y, :]),
    }
    vmin, vmax = _display_range(*(section[1] for section in sections.values()))
    for ax, plane, pixel, extent, take in sections.values():
        ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest",
                  aspect="equal")
        if label_mask is not None:
            _draw_contour(ax, take(label_mask), pixel=pixel, color=LABEL_COLOR)
        if pred_mask is not None:
            _draw_contour(ax, take(pred_mask), pixel=pixel, color=PREDICTION_COLOR)

    cross = {"color": _CROSSHAIR_COLOR, "linewidth": 0.6, "alpha": 0.6}
    ax_xy.axvline((x + 0.5) * sx, **cross)
    ax_xy.axhline((y + 0.5) * sy, **cross)
    ax_yz.axvline((z + 0.5) * sz, **cross)
    ax_yz.axhline((y + 0.5) * sy, **cross)
    ax_xz.axvline((x + 0.5) * sx, **cross)
    ax_xz.axhline((z + 0.5) * sz, **cross)
    dashed = {"color": _PLANE_COLOR, "linestyle": "--", "linewidth": 0.9}
    for p in planes:
        ax_xz.axhline((p + 0.5) * sz, **dashed)
        ax_yz.axvline((p + 0.5) * sz, **dashed)

    marker = " (annotated)" if z in planes else ""
    ax_xy.set_title(f"XY, z = {z}{marker}", fontsize=9)
    ax_yz.set_title(f"YZ, x = {x}", fontsize=9)
    ax_xz.set_title(f"XZ, y = {y}", fontsize=9)
    ax_xy.set_ylabel("y (µm)")
    ax_xz.set_xlabel("x (µm)")
    ax_xz.set_ylabel("z (µm)")
    ax_yz.set_xlabel("z (µm)")
    ax_xy.tick_params(labelbottom=False)
    ax_yz.tick_params(labelleft=False)

    handles = []
    if label_mask is not None:
        handles.append(Line2D([], [], color=LABEL_COLOR, label="labels"))
    if pred_mask is not None:
        handles.append(Line2D([], [], color=PREDICTION_COLOR, label="prediction"))
    if planes:
        handles.append(Line2D([], [], label="annotated z-planes", **dashed))
    if handles:
        fig.legend(handles=handles, loc="lower right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


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


def plot_history(history: dict, *, keys=None) -> Figure:
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

    Returns
    -------
    Figure
        One axes per panel, plus one twin axes when ``lam`` is drawn.
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

    fig = _new_figure(figsize=(4.2 * len(keys), 3.2), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
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

    if ax is None:
        fig = _new_figure(figsize=(3.8, 3.3), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [["TP", "FN"], ["FP", "TN"]]
    for row in range(2):
        for col in range(2):
            ax.text(col, row, f"{names[row][col]}\n{int(matrix[row, col]):,}\n{100 * fraction[row, col]:.1f}% of all"
                    f"\n{100 * row_share[row, col]:.1f}% of row",
                    ha="center", va="center", fontsize=8, color="white" if row_share[row, col] > 0.6 else "black")
    ax.set_xticks([0, 1], ["foreground", "background"])
    ax.set_yticks([0, 1], ["foreground", "background"])
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _component_meshes(mask: np.ndarray, components: list[tuple[np.ndarray, tuple]], spacing):
    """Marching-cubes meshes, in (x, y, z) micrometres, of the given components of ``mask``."""
    from skimage.measure import marching_cubes

    meshes = []
    for component, box in components:
        crop = np.pad(component[box], 1).astype(np.float32)
        if min(crop.shape) < 2:
            continue
        # coarser steps for big objects keep the polygon count (and drawing time) bounded
        step = max(1, int(round((component[box].sum() / 30000.0) ** (1 / 3))))
        verts, faces, _, _ = marching_cubes(crop, level=0.5, spacing=spacing, step_size=step)
        # -1 undoes the padding; +0.5 puts voxel centres where show_orthogonal's extents put them
        origin = np.array([(sl.start - 1 + 0.5) * s for sl, s in zip(box, spacing)])
        verts = verts + origin
        meshes.append(verts[:, ::-1][faces])
    return meshes


def render_surfaces(labels, *, spacing, prediction=None, max_objects: int = 6, seed: int = 0,
                    threshold: float = 0.5, figsize=None) -> Figure:
    """3D surfaces (marching cubes) of a few labelled objects, optionally beside the prediction.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        Bool, binary or instance labels; objects are the connected components of ``labels > 0``.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres, so surfaces have their physical shape.
    prediction : ndarray of shape (Z, Y, X), optional
        Mask or probabilities; its components that touch the chosen objects are drawn in a second panel.
    max_objects : int
        How many objects to draw (chosen at random among those at least 2 voxels thick on each axis).
    seed : int
        Seed for the choice of objects.
    threshold : float
        Probability threshold for ``prediction``.
    figsize : tuple of 2 float, optional

    Returns
    -------
    Figure
        One 3D axes, two with a prediction.
    """
    from scipy import ndimage
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    spacing = check_spacing(spacing)
    label_mask = _as_mask(labels, shape=np.shape(labels), name="labels")
    pred_mask = _as_mask(prediction, shape=label_mask.shape, name="prediction", threshold=threshold)
    if int(max_objects) < 1:
        raise NeurosegInputError(f"max_objects must be at least 1, got {max_objects}.")

    components, n_found = ndimage.label(label_mask)
    boxes = ndimage.find_objects(components)
    usable = [i + 1 for i, box in enumerate(boxes) if all(sl.stop - sl.start >= 2 for sl in box)]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(usable, size=min(int(max_objects), len(usable)), replace=False).tolist()) \
        if usable else []
    true_parts = [(components == i, boxes[i - 1]) for i in chosen]

    panels = [("labels", label_mask, true_parts)]
    if pred_mask is not None:
        pred_components, _ = ndimage.label(pred_mask)
        pred_boxes = ndimage.find_objects(pred_components)
        touched = np.unique(pred_components[np.isin(components, chosen) & pred_mask]) if chosen else []
        # a poor prediction may fragment into many pieces; a few per chosen object are enough to see it
        pred_parts = [(pred_components == i, pred_boxes[i - 1]) for i in touched if i > 0][:3 * len(chosen)]
        panels.append(("prediction", pred_mask, pred_parts))

    if figsize is None:
        figsize = (4.8 * len(panels), 4.6)
    fig = _new_figure(figsize=figsize, layout="constrained")
    nz, ny, nx = label_mask.shape
    extent_xyz = (nx * spacing[2], ny * spacing[1], nz * spacing[0])
    colors = [f"C{i}" for i in range(10)]
    for index, (name, _, parts) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1, projection="3d")
        meshes = _component_meshes(label_mask if name == "labels" else pred_mask, parts, spacing)
        for k, triangles in enumerate(meshes):
            color = colors[k % len(colors)] if name == "labels" else PREDICTION_COLOR
            ax.add_collection3d(Poly3DCollection(triangles, facecolors=color, linewidths=0, alpha=0.75,
                                                 shade=True))
        if not meshes:
            ax.text2D(0.5, 0.5, "no objects", transform=ax.transAxes, ha="center")
        ax.set_xlim(0, extent_xyz[0])
        ax.set_ylim(0, extent_xyz[1])
        ax.set_zlim(0, extent_xyz[2])
        ax.set_box_aspect(extent_xyz)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        ax.set_zlabel("z (µm)")
        shown = f"{len(meshes)} of {n_found} objects" if name == "labels" else f"{len(meshes)} touching objects"
        ax.set_title(f"{name}: {shown}", fontsize=9)
    return fig


def _static_figures_requested() -> bool:
    return os.environ.get("NEUROSEG_STATIC_FIGURES", "").strip().lower() in ("1", "true", "yes")


def _inside_ipython_kernel() -> bool:
    """True in a Jupyter kernel (which can show widgets), False in scripts, pytest and plain IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _browser_widget(image, *, labels, prediction, spacing, annotated_planes=None):
    """The interactive browser: a z-slider and overlay check boxes redrawing ``show_orthogonal``."""
    import ipywidgets as widgets

    nz, ny, nx = image.shape
    z_slider = widgets.IntSlider(value=nz // 2, min=0, max=nz - 1, description="z", continuous_update=False)
    show_labels = widgets.Checkbox(value=labels is not None, description="labels (green)",
                                   disabled=labels is None)
    show_prediction = widgets.Checkbox(value=prediction is not None, description="prediction (magenta)",
                                       disabled=prediction is None)
    output = widgets.Output()

    def redraw(_change=None):
        fig = show_orthogonal(image, labels=labels if show_labels.value else None,
                              prediction=prediction if show_prediction.value else None, spacing=spacing,
                              position=(z_slider.value, ny // 2, nx // 2), annotated_planes=annotated_planes)
        # Replacing the outputs directly, not `with output: clear_output(); display()`, which sometimes
        # leaves a headless executor (papermill, the book build) waiting forever (jupyter/nbclient#312).
        output.outputs = ()
        output.append_display_data(fig)

    for control in (z_slider, show_labels, show_prediction):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([z_slider, show_labels, show_prediction]), output])


def slice_browser(image, *, labels=None, prediction=None, spacing=(1.0, 1.0, 1.0), annotated_planes=None):
    """Browse a stack in a notebook: a z-slider and check boxes for the label and prediction outlines.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X)
    labels, prediction : ndarray of shape (Z, Y, X), optional
        As in :func:`show_orthogonal`.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres.
    annotated_planes : sequence of int, optional
        z-indices of annotated slices.

    Returns
    -------
    ipywidgets.VBox or Figure
        The widget inside a Jupyter kernel. The static :func:`show_orthogonal` figure instead when the
        environment variable ``NEUROSEG_STATIC_FIGURES=1`` is set (executed/built books, where widgets have no
        live kernel), outside a kernel, or when ipywidgets is not installed.
    """
    image = check_volume(image if isinstance(image, np.ndarray) else np.asarray(image), name="image")
    spacing = check_spacing(spacing)
    if not _static_figures_requested() and _inside_ipython_kernel():
        try:
            return _browser_widget(image, labels=labels, prediction=prediction, spacing=spacing,
                                   annotated_planes=annotated_planes)
        except ImportError:
            pass  # no ipywidgets: the static figure below still shows the data
    return show_orthogonal(image, labels=labels, prediction=prediction, spacing=spacing,
                           annotated_planes=annotated_planes)


METHOD_LABELS = {
    "2d": "2D pseudo-labeller",
    "3d_sparse": "3D sparse (λ = 0)",
    "3d_pseudo": "3D + pseudo-labels",
    "3d_dense": "3D dense (upper bound)",
}


def _spread(values: np.ndarray, kind: str) -> tuple[float, float]:
    """(lower, upper) distance of the error bar from the mean."""
    mean = float(np.mean(values))
    if kind == "range":  # clipped: rounding can make mean - min a tiny negative number
        return max(0.0, mean - float(np.min(values))), max(0.0, float(np.max(values)) - mean)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return std, std


def plot_metric_vs_k(table, *, metrics=("dice", "precision", "recall"), x="n_slices", methods=None,
                     reference_methods=("3d_dense",), spread="range", xscale="log", show_points=True,
                     title=None, figsize=None) -> Figure:
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

    if figsize is None:
        figsize = (4.0 * len(metrics), 3.6)
    fig = _new_figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
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


def plot_sections(image, predictions: dict, *, labels, spacing, positions, plane: str = "xz",
                  half_width_um: float = 20.0, threshold: float = 0.5, figsize=None) -> Figure:
    """Side-by-side sections through chosen points, one row per point, one column per prediction.

    Introduced in chapter 7 (``07_sparsity_sweep``) for the paper's Figure 3: XZ cuts through single neurons
    show how well each method reconstructs their tops and bottoms.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X)
    predictions : dict of str to ndarray of shape (Z, Y, X)
        Column title -> probabilities (thresholded at ``threshold``) or binary mask, outlined in magenta.
    labels : ndarray of shape (Z, Y, X)
        Ground truth, outlined in green in every panel.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres; panels are drawn to physical scale.
    positions : sequence of (z, y, x) voxel indices
        One row per position: the ``"xz"`` section at its y (or the ``"yz"`` section at its x), cropped to
        ``half_width_um`` on each side of it, all planes in z.
    plane : {"xz", "yz"}
    half_width_um : float
    threshold : float
    figsize : tuple of 2 float, optional

    Returns
    -------
    Figure
        ``len(positions)`` x ``1 + len(predictions)`` axes; the first column shows the truth alone.
    """
    image = check_volume(image if isinstance(image, np.ndarray) else np.asarray(image), name="image")
    sz, sy, sx = check_spacing(spacing)
    label_mask = _as_mask(labels, shape=image.shape, name="labels")
    masks = {name: _as_mask(p, shape=image.shape, name=f"prediction {name!r}", threshold=threshold)
             for name, p in predictions.items()}
    if plane not in ("xz", "yz"):
        raise NeurosegInputError(f"plane must be 'xz' or 'yz', got {plane!r}.")
    positions = [tuple(int(p) for p in position) for position in positions]
    if not positions:
        raise NeurosegInputError("positions is empty; give at least one (z, y, x) voxel index.")
    for position in positions:
        if len(position) != 3 or not all(0 <= p < n for p, n in zip(position, image.shape)):
            raise NeurosegInputError(f"position {position} is outside the stack of shape {image.shape}.")
    if not half_width_um > 0:
        raise NeurosegInputError(f"half_width_um must be > 0, got {half_width_um}.")

    pixel = sx if plane == "xz" else sy
    half = max(1, int(round(half_width_um / pixel)))
    n_cols = 1 + len(masks)
    if figsize is None:
        aspect = image.shape[0] * sz / (2 * half * pixel)
        figsize = (2.0 * n_cols, 2.0 * aspect * len(positions) + 0.6)
    fig = _new_figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(len(positions), n_cols, squeeze=False)
    for row, (z, y, x) in enumerate(positions):
        centre, size = (x, image.shape[2]) if plane == "xz" else (y, image.shape[1])
        lo, hi = max(0, centre - half), min(size, centre + half + 1)

        def cut(volume):
            return volume[:, y, lo:hi] if plane == "xz" else volume[:, lo:hi, x]

        section = cut(image)
        vmin, vmax = _display_range(section)
        extent = (lo * pixel, hi * pixel, image.shape[0] * sz, 0)
        for col, (name, mask) in enumerate([("truth", None), *masks.items()]):
            ax = axes[row, col]
            ax.imshow(section, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
            shifted = lambda m: np.pad(cut(m), ((0, 0), (lo, 0)))  # noqa: E731 - contour coordinates from 0
            _draw_contour(ax, shifted(label_mask), pixel=(sz, pixel), color=LABEL_COLOR)
            if mask is not None:
                _draw_contour(ax, shifted(mask), pixel=(sz, pixel), color=PREDICTION_COLOR)
            ax.set_xlim(lo * pixel, hi * pixel)
            ax.set_ylim(image.shape[0] * sz, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{plane.upper()} at {'y' if plane == 'xz' else 'x'} = {y if plane == 'xz' else x}"
                              "\nz down", fontsize=8)
    fig.legend(handles=[Line2D([], [], color=LABEL_COLOR, label="truth"),
                        Line2D([], [], color=PREDICTION_COLOR, label="prediction")],
               loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig
