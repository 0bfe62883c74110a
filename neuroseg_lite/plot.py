"""Figures of stacks: sections with outlines, orthogonal views, compared sections and 3D surfaces.

One job: draw image volumes with their labels and predictions, to physical scale (axes in µm,
outlines through pixel centres). Introduced in chapter 1 (``01_data``) and used throughout the
book. The charts of numbers (training curves, confusion matrices, scores against the annotation
budget, ``METHOD_LABELS``) live in :mod:`neuroseg_lite.charts` and are re-exported here, so
``plot.<name>`` reaches every figure of the book; the notebook slice browser is
:func:`neuroseg_lite.widgets.slice_browser`.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show()``; it draws
into the axes given (``ax=`` for one panel, ``axes=`` for several) or into a new figure that pyplot
does not keep open (see :mod:`neuroseg_lite.charts`). Save figures with ``fig.savefig``. A voxel
``i`` covers ``[i, i + 1) * spacing`` micrometres, so its centre, where outlines and cross-hairs
are drawn, is at ``(i + 0.5) * spacing``.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from neuroseg_lite import charts
from neuroseg_lite._checks import NeurosegInputError, check_same_shape, check_spacing, check_volume
from neuroseg_lite.charts import (
    METHOD_LABELS,
    plot_build_points,
    plot_confusion,
    plot_gain_vs_knob,
    plot_history,
    plot_learning_curves,
    plot_metric_vs_k,
    plot_paired_differences,
)
from neuroseg_lite.io import binarize_labels

__all__ = ["plot_section", "show_orthogonal", "plot_sections", "render_surfaces", "LABEL_COLOR",
           "PREDICTION_COLOR", "plot_history", "plot_confusion", "plot_metric_vs_k", "plot_paired_differences",
           "plot_learning_curves", "plot_build_points", "plot_gain_vs_knob", "METHOD_LABELS"]

LABEL_COLOR = "limegreen"
PREDICTION_COLOR = "magenta"
_CROSSHAIR_COLOR = "yellow"
_PLANE_COLOR = "cyan"
# plane name -> (axis cut through, (row axis, column axis) of the section); axes are (Z, Y, X)
_PLANES = {"xy": (0, (1, 2)), "xz": (1, (0, 2)), "yz": (2, (0, 1))}


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


def _draw_panel(ax, section: np.ndarray, *, pixel, outlines=(), origin=(0, 0), cmap="gray", vmin=None,
                vmax=None, linewidth: float = 1.2) -> None:
    """A 2D section and outlines of 2D masks in µm; ``origin``: (row, col) index of its first pixel."""
    (r0, c0), (pr, pc) = origin, pixel
    n_rows, n_cols = section.shape
    ax.imshow(section, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal",
              extent=(c0 * pc, (c0 + n_cols) * pc, (r0 + n_rows) * pr, r0 * pr))
    for mask, color in outlines:
        if mask is None or not mask.any() or mask.all():
            continue  # nothing to outline; matplotlib would warn about an empty contour
        rows = (r0 + np.arange(n_rows) + 0.5) * pr
        cols = (c0 + np.arange(n_cols) + 0.5) * pc
        ax.contour(cols, rows, mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=linewidth)


def plot_section(image, *, labels=None, prediction=None, spacing, plane: str = "xy", index=None, ax=None,
                 title=None, threshold: float = 0.5, outlines=None, cmap="gray", vmin=None,
                 vmax=None) -> Figure:
    """One section of a stack with the outlines of its labels and of a prediction, axes in µm.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X), or a 2D section already cut
        A 2D section has the shape ``plane`` names: (Y, X) for ``"xy"``, (Z, X) for ``"xz"``,
        (Z, Y) for ``"yz"``; ``index`` is then not given.
    labels : ndarray of the shape of ``image``, optional
        Ground truth (bool, binary or instance), outlined in green.
    prediction : ndarray of the shape of ``image``, optional
        Mask or probabilities (thresholded at ``threshold``), outlined in magenta.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres.
    plane : {"xy", "xz", "yz"}
        ``"xy"`` cuts at z = ``index``, ``"xz"`` at y = ``index``, ``"yz"`` at x = ``index``; in XZ
        and YZ sections z runs down.
    index : int
        Where to cut (required for a 3D ``image``).
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.
    title : str, optional
        Default e.g. ``"XY, z = 12"``; ``""`` for none.
    threshold : float
    outlines : sequence of (mask, colour), optional
        More masks of the shape of ``image`` to outline, e.g. ``[(glia_mask, "orange")]``.
    cmap, vmin, vmax
        Grey-level map and limits (default: the 1st and 99.8th percentiles of the section).

    Returns
    -------
    Figure
        The new figure (one axes) or ``ax.figure``.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((4, 6, 8), bool); labels[1:3, 2:4, 2:6] = True
    >>> fig = plot_section(labels.astype(float), labels=labels,
    ...                    spacing=(2.0, 0.5, 0.5), plane="xz", index=2)
    >>> ax = fig.axes[0]
    >>> ax.get_xlabel(), ax.get_ylabel(), ax.get_title()
    ('x (µm)', 'z (µm)', 'XZ, y = 2')
    >>> # x: 8 pixels of 0.5 µm; z: 4 planes of 2 µm, drawn downwards
    >>> [float(v) for v in ax.images[0].get_extent()]
    [0.0, 4.0, 8.0, 0.0]
    """
    if plane not in _PLANES:
        raise NeurosegInputError(f"plane must be one of {sorted(_PLANES)}, got {plane!r}.")
    cut_axis, (row_axis, col_axis) = _PLANES[plane]
    image = np.asarray(image)
    if image.ndim == 2:  # a section already cut: give it back its cut axis, of length 1
        if index is not None:
            raise NeurosegInputError("index is only for a 3D image; a 2D image is the section itself.")
        image, index = np.expand_dims(image, cut_axis), 0
        labels = None if labels is None else np.expand_dims(labels, cut_axis)
        prediction = None if prediction is None else np.expand_dims(prediction, cut_axis)
        outlines = [(np.expand_dims(mask, cut_axis), color) for mask, color in outlines or ()]
    image = check_volume(image, name="image")
    spacing = check_spacing(spacing)
    if index is None or not 0 <= int(index) < image.shape[cut_axis]:
        raise NeurosegInputError(f"index must be a {'zyx'[cut_axis]}-index in 0..{image.shape[cut_axis] - 1} "
                                 f"for the {plane.upper()} section of a stack of shape {image.shape}, "
                                 f"got {index!r}.")
    index = int(index)
    masks = [(_as_mask(labels, shape=image.shape, name="labels"), LABEL_COLOR),
             (_as_mask(prediction, shape=image.shape, name="prediction", threshold=threshold),
              PREDICTION_COLOR)]
    masks += [(_as_mask(mask, shape=image.shape, name="outline mask"), color) for mask, color in outlines or ()]
    section = np.take(image, index, axis=cut_axis)
    if vmin is None or vmax is None:
        low, high = _display_range(section)
        vmin, vmax = (low if vmin is None else vmin), (high if vmax is None else vmax)
    fig, (ax,) = charts._figure_axes(ax, 1, figsize=(4.5, 4.0), name="ax")
    _draw_panel(ax, section, pixel=(spacing[row_axis], spacing[col_axis]), cmap=cmap, vmin=vmin, vmax=vmax,
                outlines=[(None if m is None else np.take(m, index, axis=cut_axis), c) for m, c in masks])
    ax.set_xlabel(f"{'zyx'[col_axis]} (µm)")
    ax.set_ylabel(f"{'zyx'[row_axis]} (µm)")
    ax.set_title(f"{plane.upper()}, {'zyx'[cut_axis]} = {index}" if title is None else title, fontsize=9)
    return fig


def show_orthogonal(image, *, labels=None, prediction=None, spacing=(1.0, 1.0, 1.0), position=None,
                    annotated_planes=None, title=None, figsize=None, threshold: float = 0.5,
                    axes=None) -> Figure:
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
        Voxel (z, y, x) where the sections cross; default the centre of the stack (e.g. a neuron's
        centre from :func:`neuroseg_lite.metrics.pick_objects`).
    annotated_planes : sequence of int, optional
        z-indices of annotated slices, drawn as dashed lines on the XZ and YZ sections.
    title : str, optional
    figsize : tuple of 2 float, optional
        Default: about 8 inches wide, height from the stack's physical proportions.
    threshold : float
        Probability threshold for ``prediction``.
    axes : sequence of 3 matplotlib Axes, optional
        (XY, YZ, XZ) axes to draw into instead of a new figure.

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
    position = (nz // 2, ny // 2, nx // 2) if position is None else position
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
    if axes is None:
        if figsize is None:
            figsize = (8.0, 8.0 * (height_y + depth_z) / (width_x + depth_z) + 0.6)
        fig = charts._new_figure(figsize=figsize, layout="constrained")
        grid = fig.add_gridspec(2, 2, width_ratios=[width_x, depth_z], height_ratios=[height_y, depth_z])
        ax_xy = fig.add_subplot(grid[0, 0])
        ax_yz = fig.add_subplot(grid[0, 1], sharey=ax_xy)
        ax_xz = fig.add_subplot(grid[1, 0], sharex=ax_xy)
        ax_xy.tick_params(labelbottom=False)
        ax_yz.tick_params(labelleft=False)
    else:
        fig, (ax_xy, ax_yz, ax_xz) = charts._figure_axes(axes, 3, figsize=None)

    sections = {  # name: (axes, 2D image, (row pixel, column pixel), mask slicer)
        "xy": (ax_xy, image[z], (sy, sx), lambda m: m[z]),
        "yz": (ax_yz, image[:, :, x].T, (sy, sz), lambda m: m[:, :, x].T),
        "xz": (ax_xz, image[:, y, :], (sz, sx), lambda m: m[:, y, :]),
    }
    vmin, vmax = _display_range(*(section[1] for section in sections.values()))
    for ax, plane, pixel, take in sections.values():
        outlines = [(take(m), c) for m, c in ((label_mask, LABEL_COLOR), (pred_mask, PREDICTION_COLOR))
                    if m is not None]
        _draw_panel(ax, plane, pixel=pixel, outlines=outlines, vmin=vmin, vmax=vmax)

    cross = {"color": _CROSSHAIR_COLOR, "linewidth": 0.6, "alpha": 0.6}
    for ax, vertical, horizontal in ((ax_xy, (x + 0.5) * sx, (y + 0.5) * sy),
                                     (ax_yz, (z + 0.5) * sz, (y + 0.5) * sy),
                                     (ax_xz, (x + 0.5) * sx, (z + 0.5) * sz)):
        ax.axvline(vertical, **cross)
        ax.axhline(horizontal, **cross)
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

    handles = [Line2D([], [], color=color, label=name) for name, mask, color in
               (("labels", label_mask, LABEL_COLOR), ("prediction", pred_mask, PREDICTION_COLOR))
               if mask is not None]
    if planes:
        handles.append(Line2D([], [], label="annotated z-planes", **dashed))
    if handles:
        fig.legend(handles=handles, loc="lower right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_sections(image, predictions: dict, *, labels, spacing, positions, plane: str = "xz",
                  half_width_um: float = 20.0, threshold: float = 0.5, figsize=None, axes=None,
                  vmin=None, vmax=None) -> Figure:
    """Side-by-side sections through chosen points, one row per point, one column per prediction.

    Introduced in chapter 6 (``06_evaluation``), and in chapter 7 (``07_sparsity_sweep``) for the
    paper's Figure 3: XZ cuts through single neurons show how well each method reconstructs their
    tops and bottoms.

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
        One row per position (e.g. from :func:`neuroseg_lite.metrics.pick_objects`): the ``"xz"``
        section at its y (or the ``"yz"`` section at its x), cropped to ``half_width_um`` on each side
        of it, all planes in z.
    plane : {"xz", "yz"}
    half_width_um : float
    threshold : float
    figsize : tuple of 2 float, optional
    axes : 2D array of matplotlib Axes, optional
        ``len(positions)`` x ``1 + len(predictions)`` axes to draw into instead of a new figure.
    vmin, vmax : float, optional
        Grey-level limits; default the 1st and 99.8th percentiles of each row's section.

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
    n_rows, n_cols = len(positions), 1 + len(masks)
    if axes is None:
        if figsize is None:
            aspect = image.shape[0] * sz / (2 * half * pixel)
            figsize = (2.0 * n_cols, 2.0 * aspect * n_rows + 0.6)
        fig = charts._new_figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        fig.legend(handles=[Line2D([], [], color=LABEL_COLOR, label="truth"),
                            Line2D([], [], color=PREDICTION_COLOR, label="prediction")],
                   loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    else:
        fig, given = charts._figure_axes(axes, n_rows * n_cols, figsize=None)
        axes = np.array(given, dtype=object).reshape(n_rows, n_cols)
    for row, (_, y, x) in enumerate(positions):
        centre, size = (x, image.shape[2]) if plane == "xz" else (y, image.shape[1])
        lo, hi = max(0, centre - half), min(size, centre + half + 1)
        window = (slice(None), y, slice(lo, hi)) if plane == "xz" else (slice(None), slice(lo, hi), x)
        section = image[window]
        low, high = _display_range(section)
        for col, (name, mask) in enumerate([("truth", None), *masks.items()]):
            ax = axes[row, col]
            outlines = [(label_mask[window], LABEL_COLOR)]
            if mask is not None:
                outlines.append((mask[window], PREDICTION_COLOR))
            _draw_panel(ax, section, pixel=(sz, pixel), origin=(0, lo), outlines=outlines,
                        vmin=low if vmin is None else vmin, vmax=high if vmax is None else vmax)
            ax.set_xlim(lo * pixel, hi * pixel)
            ax.set_ylim(image.shape[0] * sz, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{plane.upper()} at {'y' if plane == 'xz' else 'x'} = {y if plane == 'xz' else x}"
                              "\nz down", fontsize=8)
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
                    threshold: float = 0.5, figsize=None, axes=None) -> Figure:
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
    axes : sequence of 3D matplotlib Axes, optional
        One (two with a prediction) axes made with ``projection="3d"`` to draw into.

    Returns
    -------
    Figure
        One 3D axes, two with a prediction.
    """
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

    fig, axes = charts._figure_axes(axes, len(panels), figsize=figsize or (4.8 * len(panels), 4.6), projection="3d")
    if any(getattr(ax, "name", "") != "3d" for ax in axes):
        raise NeurosegInputError("render_surfaces draws into 3D axes: make them with projection='3d'.")
    nz, ny, nx = label_mask.shape
    extent_xyz = (nx * spacing[2], ny * spacing[1], nz * spacing[0])
    colors = [f"C{i}" for i in range(10)]
    for ax, (name, _, parts) in zip(axes, panels):
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
