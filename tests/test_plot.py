"""Tests for neuroseg_lite.plot, .charts and .widgets: Figures with the expected panels on tiny inputs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neuroseg_lite import charts, plot, widgets  # noqa: E402
from neuroseg_lite._checks import NeurosegInputError  # noqa: E402

SPACING = (2.0, 0.5, 0.5)


def blobs(shape=(8, 24, 24)):
    """Two ball-like objects in a noisy image."""
    z, y, x = np.indices(shape)
    labels = ((z - 3) ** 2 / 4 + (y - 7) ** 2 / 16 + (x - 7) ** 2 / 16 < 1) | \
             ((z - 5) ** 2 / 4 + (y - 16) ** 2 / 16 + (x - 15) ** 2 / 16 < 1)
    rng = np.random.default_rng(0)
    image = (100 + 200 * labels + rng.normal(0, 10, shape)).astype(np.float32)
    return image, labels


@pytest.fixture
def closing():
    figures = []
    yield figures.append
    for fig in figures:
        plt.close(fig)


def test_show_orthogonal_panels_extent_and_overlays(closing):
    image, labels = blobs()
    prediction = np.roll(labels, 1, axis=2).astype(np.float32) * 0.9
    fig = plot.show_orthogonal(image, labels=labels, prediction=prediction, spacing=SPACING,
                               annotated_planes=[2, 5], title="t")
    closing(fig)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    ax_xy, ax_yz, ax_xz = fig.axes
    # extents are physical: x spans 24 * 0.5 = 12 um, z spans 8 * 2 = 16 um
    assert ax_xy.images[0].get_extent() == pytest.approx([0, 12, 12, 0])
    assert ax_xz.images[0].get_extent() == pytest.approx([0, 12, 16, 0])
    assert ax_yz.images[0].get_extent() == pytest.approx([0, 16, 12, 0])
    # label (green) and prediction (magenta) contours drawn on the XY section through the centre
    contour_colors = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in ax_xy.collections}
    assert tuple(np.round(matplotlib.colors.to_rgb(plot.LABEL_COLOR), 3)) in contour_colors
    assert tuple(np.round(matplotlib.colors.to_rgb(plot.PREDICTION_COLOR), 3)) in contour_colors
    # annotated planes: two dashed lines on XZ (horizontal, at z centres 5 and 11 um) and on YZ
    dashed_xz = [ln for ln in ax_xz.lines if ln.get_linestyle() == "--"]
    assert sorted(ln.get_ydata()[0] for ln in dashed_xz) == pytest.approx([5.0, 11.0])
    assert len([ln for ln in ax_yz.lines if ln.get_linestyle() == "--"]) == 2
    fig.canvas.draw()  # renders without error


def test_show_orthogonal_image_only_default_crosshair_at_centre(closing):
    image, _ = blobs()
    fig = plot.show_orthogonal(image, spacing=SPACING)
    closing(fig)
    assert len(fig.axes) == 3
    ax_xy = fig.axes[0]
    assert "z = 4" in ax_xy.get_title()
    assert not ax_xy.collections  # no overlays requested


def test_show_orthogonal_bad_inputs():
    image, labels = blobs()
    with pytest.raises(NeurosegInputError, match="3D"):
        plot.show_orthogonal(image[0])
    with pytest.raises(NeurosegInputError, match="shape"):
        plot.show_orthogonal(image, labels=labels[:, :-1])
    with pytest.raises(NeurosegInputError, match="outside"):
        plot.show_orthogonal(image, position=(8, 0, 0))
    with pytest.raises(NeurosegInputError, match="annotated_planes"):
        plot.show_orthogonal(image, annotated_planes=[9])


def test_plot_history_panels_and_log_scale(closing):
    history = {"step": [1, 2, 3, 4], "loss": [1.0, 0.5, 0.3, 0.2], "val_step": [2, 4],
               "val_dice": [0.4, 0.7], "lam": [0.0, 0.1, 0.2, 0.2]}
    fig = plot.plot_history(history)
    closing(fig)
    assert len(fig.axes) == 3  # loss, val dice, twin axis for lambda
    assert fig.axes[0].get_yscale() == "log"
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_xdata(), [2, 4])


def test_plot_history_missing_keys(closing):
    fig = plot.plot_history({"step": [0, 1], "loss": [0.7, 0.6]})
    closing(fig)
    assert len(fig.axes) == 1
    fig = plot.plot_history({"val_step": [5], "val_dice": [0.5]})
    closing(fig)
    assert len(fig.axes) == 1
    with pytest.raises(NeurosegInputError, match="nothing to plot"):
        plot.plot_history({"step": [], "loss": []})
    with pytest.raises(NeurosegInputError, match="val_dice"):
        plot.plot_history({"step": [0], "loss": [1.0]}, keys=["val_dice"])


def test_plot_confusion_counts_and_percentages(closing):
    fig = plot.plot_confusion({"tp": 30, "fp": 10, "fn": 20, "tn": 940}, title="test")
    closing(fig)
    assert len(fig.axes) == 1
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("TP" in t and "30" in t and "3.0% of all" in t and "60.0% of row" in t for t in texts)
    assert any("TN" in t and "940" in t and "94.0%" in t for t in texts)
    with pytest.raises(NeurosegInputError, match="tp"):
        plot.plot_confusion({"tp": 1})
    with pytest.raises(NeurosegInputError, match="non-negative"):
        plot.plot_confusion({"tp": 1, "fp": -1, "fn": 0, "tn": 0})


def test_plot_confusion_into_existing_axes(closing):
    outer = Figure()
    closing(outer)
    axes = outer.subplots(1, 2)
    fig = plot.plot_confusion({"tp": 1, "fp": 0, "fn": 0, "tn": 3}, ax=axes[1])
    assert fig is outer and len(outer.axes) == 2 and axes[1].texts


def test_render_surfaces(closing):
    _, labels = blobs()
    fig = plot.render_surfaces(labels, spacing=SPACING)
    closing(fig)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].collections) == 2  # both objects meshed
    fig = plot.render_surfaces(labels, spacing=SPACING, prediction=np.roll(labels, 1, axis=1), max_objects=1)
    closing(fig)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].collections) == 1 and len(fig.axes[1].collections) == 1


def test_surface_meshes_are_in_micrometres():
    mask = np.zeros((6, 10, 10), bool)
    mask[2:4, 3:7, 5:9] = True  # voxel centres z 2..3, y 3..6, x 5..8
    (triangles,) = plot._component_meshes(mask, [(mask, (slice(2, 4), slice(3, 7), slice(5, 9)))], SPACING)
    xyz = triangles.reshape(-1, 3)
    # the 0.5 iso-surface lies half a voxel outside the outer voxel centres, centres at (i + 0.5) * spacing
    assert xyz.min(axis=0) == pytest.approx([5 * 0.5, 3 * 0.5, 2 * 2.0], abs=1e-6)
    assert xyz.max(axis=0) == pytest.approx([9 * 0.5, 7 * 0.5, 4 * 2.0], abs=1e-6)


def test_render_surfaces_empty_labels(closing):
    fig = plot.render_surfaces(np.zeros((4, 8, 8), bool), spacing=SPACING)
    closing(fig)
    assert len(fig.axes) == 1 and not fig.axes[0].collections


def test_slice_browser_static_fallback(monkeypatch, closing):
    image, labels = blobs()
    monkeypatch.setenv("NEUROSEG_STATIC_FIGURES", "1")
    fig = widgets.slice_browser(image, labels=labels, spacing=SPACING)
    closing(fig)
    assert isinstance(fig, Figure) and len(fig.axes) == 3


def test_slice_browser_outside_kernel_is_static(monkeypatch, closing):
    monkeypatch.delenv("NEUROSEG_STATIC_FIGURES", raising=False)
    fig = widgets.slice_browser(blobs()[0], spacing=SPACING)  # pytest is not a Jupyter kernel
    closing(fig)
    assert isinstance(fig, Figure)


def test_browser_widget_redraws_on_slider():
    ipywidgets = pytest.importorskip("ipywidgets")
    image, labels = blobs()
    box = widgets._browser_widget(image, labels=labels, prediction=None, spacing=SPACING)
    assert isinstance(box, ipywidgets.VBox)
    slider, show_labels, show_prediction = box.children[0].children
    assert slider.max == image.shape[0] - 1 and slider.value == image.shape[0] // 2
    assert show_labels.value and show_prediction.disabled
    slider.value = 1  # triggers a redraw; must not raise
    show_labels.value = False


def sweep_table():
    """A sweep-like table: 2 methods over k = 1, 4 with 3 seeds, plus a dense reference per seed."""
    import pandas as pd

    rows = []
    for seed in range(3):
        for k in (1, 4):
            rows.append({"method": "2d", "n_slices": k, "seed": seed, "dice": 0.5 + 0.1 * seed, "recall": 0.6})
            rows.append({"method": "3d_pseudo", "n_slices": k, "seed": seed, "dice": 0.7 + 0.01 * k,
                         "recall": 0.8})
        rows.append({"method": "3d_dense", "n_slices": 32, "seed": seed, "dice": 0.9 + 0.01 * seed, "recall": 0.9})
    return pd.DataFrame(rows)


def test_plot_metric_vs_k_means_spread_and_reference(closing):
    fig = plot.plot_metric_vs_k(sweep_table(), metrics=("dice", "recall"))
    closing(fig)
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    # first line of each errorbar container is the mean; 2d: mean over seeds 0.5, 0.6, 0.7 -> 0.6 at k = 1 and 4
    container_2d, container_pseudo = ax.containers
    np.testing.assert_allclose(container_2d.lines[0].get_ydata(), [0.6, 0.6])
    np.testing.assert_allclose(container_pseudo.lines[0].get_ydata(), [0.71, 0.74])
    # range spread of the 2d method: the caps sit at the min and max over seeds
    caps = np.sort(np.concatenate([cap.get_ydata() for cap in container_2d.lines[1]]))
    np.testing.assert_allclose(caps, [0.5, 0.5, 0.7, 0.7])
    # the dense upper bound is a horizontal line at its mean, not a point per k
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(0.91)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [plot.METHOD_LABELS[m] for m in ("2d", "3d_pseudo", "3d_dense")]
    fig.canvas.draw()


def test_plot_metric_vs_k_std_linear_axis_and_errors(closing):
    table = sweep_table()
    fig = plot.plot_metric_vs_k(table, metrics="dice", methods=["2d"], spread="std")
    closing(fig)
    caps = np.sort(np.concatenate([cap.get_ydata() for cap in fig.axes[0].containers[0].lines[1]]))
    np.testing.assert_allclose(caps, [0.5, 0.5, 0.7, 0.7])  # std of 0.5, 0.6, 0.7 is 0.1
    table_lam = table.assign(lam=table["n_slices"].map({1: 0.0, 4: 0.5}))
    fig = plot.plot_metric_vs_k(table_lam, metrics="dice", x="lam", xscale="linear", methods=["3d_pseudo"])
    closing(fig)
    assert fig.axes[0].get_xscale() == "linear"
    with pytest.raises(NeurosegInputError, match="log axis"):
        plot.plot_metric_vs_k(table_lam, x="lam", metrics="dice")
    with pytest.raises(NeurosegInputError, match="no column"):
        plot.plot_metric_vs_k(table, metrics=("surface_dice",))
    with pytest.raises(NeurosegInputError, match="Filter"):
        plot.plot_metric_vs_k(pd_concat(table, table), metrics="dice")
    with pytest.raises(NeurosegInputError, match="not in the table"):
        plot.plot_metric_vs_k(table, metrics="dice", methods=["3d_sparse"])


def pd_concat(*tables):
    import pandas as pd

    return pd.concat(tables, ignore_index=True)


def test_plot_sections_grid_extent_and_overlays(closing):
    image, labels = blobs()
    predictions = {"shifted": np.roll(labels, 1, axis=0).astype(np.float32) * 0.9, "empty": np.zeros_like(labels)}
    fig = plot.plot_sections(image, predictions, labels=labels, spacing=SPACING, positions=[(3, 7, 7), (5, 16, 15)],
                             half_width_um=2.0)
    closing(fig)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["truth", "shifted", "empty"]
    # crop of +-2 um = +-4 pixels of 0.5 um around x = 7: pixels 3..11, all 8 planes of 2 um
    assert axes[0, 0].images[0].get_extent() == pytest.approx([1.5, 6.0, 16.0, 0.0])
    assert axes[0, 0].images[0].get_array().shape == (8, 9)
    green = tuple(np.round(matplotlib.colors.to_rgb(plot.LABEL_COLOR), 3))
    magenta = tuple(np.round(matplotlib.colors.to_rgb(plot.PREDICTION_COLOR), 3))
    colors = lambda ax: {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in ax.collections}  # noqa: E731
    assert colors(axes[0, 0]) == {green}
    assert colors(axes[0, 1]) == {green, magenta}
    assert colors(axes[0, 2]) == {green}  # an empty prediction draws no outline
    fig.canvas.draw()
    with pytest.raises(NeurosegInputError, match="outside"):
        plot.plot_sections(image, predictions, labels=labels, spacing=SPACING, positions=[(8, 0, 0)])
    with pytest.raises(NeurosegInputError, match="plane"):
        plot.plot_sections(image, predictions, labels=labels, spacing=SPACING, positions=[(1, 1, 1)], plane="xy")


# ------------------------------------------------------------------------------------ plot_section
def contour_points(ax):
    """All vertices of the outlines drawn on ``ax``, as (x, y) in micrometres."""
    return np.concatenate([path.vertices for c in ax.collections for path in c.get_paths()])


def test_plot_section_draws_into_given_ax_with_outlines_at_pixel_centres(closing):
    image, _ = blobs()
    labels = np.zeros(image.shape, bool)
    labels[:, 4:8, 10:14] = True  # rows 4..7, columns 10..13 in every plane
    outer = Figure()
    closing(outer)
    axes = outer.subplots(1, 2)
    before = labels.copy()
    fig = plot.plot_section(image, labels=labels, spacing=SPACING, plane="xy", index=3, ax=axes[1])
    assert fig is outer and not axes[0].images and len(axes[1].images) == 1
    np.testing.assert_array_equal(labels, before)
    # the 0.5 level between pixel centres (i + 0.5) * 0.5 um: halfway between row 3 and 4 is y = 2.0 um
    points = contour_points(axes[1])
    assert points[:, 0].min() == pytest.approx(5.0) and points[:, 0].max() == pytest.approx(7.0)
    assert points[:, 1].min() == pytest.approx(2.0) and points[:, 1].max() == pytest.approx(4.0)
    assert axes[1].images[0].get_extent() == pytest.approx([0, 12, 12, 0])
    assert (axes[1].get_xlabel(), axes[1].get_ylabel()) == ("x (µm)", "y (µm)")
    assert axes[1].get_title() == "XY, z = 3"


def test_plot_section_planes_prediction_and_extra_outlines(closing):
    image, labels = blobs()
    prediction = np.roll(labels, 1, axis=2).astype(np.float32) * 0.9
    fig = plot.plot_section(image, labels=labels, prediction=prediction, spacing=SPACING, plane="xz", index=7,
                            outlines=[(labels, "orange")], title="")
    closing(fig)
    ax = fig.axes[0]
    assert ax.images[0].get_extent() == pytest.approx([0, 12, 16, 0])  # z runs down
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("x (µm)", "z (µm)", "")
    colors = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in ax.collections}
    assert colors == {tuple(np.round(matplotlib.colors.to_rgb(c), 3))
                      for c in (plot.LABEL_COLOR, plot.PREDICTION_COLOR, "orange")}
    fig = plot.plot_section(image, spacing=SPACING, plane="yz", index=7)
    closing(fig)
    assert fig.axes[0].get_xlabel() == "y (µm)" and fig.axes[0].images[0].get_extent() == pytest.approx(
        [0, 12, 16, 0])


def test_plot_section_accepts_a_cut_section_and_checks_inputs(closing):
    image, labels = blobs()
    fig = plot.plot_section(image[:, 7], labels=labels[:, 7], spacing=SPACING, plane="xz", cmap="magma",
                            vmin=0, vmax=1)
    closing(fig)
    whole = plot.plot_section(image, labels=labels, spacing=SPACING, plane="xz", index=7)
    closing(whole)
    np.testing.assert_allclose(contour_points(fig.axes[0]), contour_points(whole.axes[0]))
    assert fig.axes[0].images[0].get_clim() == (0, 1)
    with pytest.raises(NeurosegInputError, match="index"):
        plot.plot_section(image, spacing=SPACING, plane="xy", index=8)
    with pytest.raises(NeurosegInputError, match="index"):
        plot.plot_section(image, spacing=SPACING, plane="xy")
    with pytest.raises(NeurosegInputError, match="plane"):
        plot.plot_section(image, spacing=SPACING, plane="zz", index=0)
    with pytest.raises(NeurosegInputError, match="shape"):
        plot.plot_section(image, labels=labels[:, :-1], spacing=SPACING, index=0)


# ------------------------------------------------------------------------------ axes= everywhere
def test_every_figure_draws_into_given_axes(closing):
    image, labels = blobs()
    outer = Figure()
    closing(outer)
    grid = outer.subplots(2, 3)
    assert plot.show_orthogonal(image, labels=labels, spacing=SPACING, axes=grid[0]) is outer
    assert all(ax.images for ax in grid[0])
    history = {"step": [1, 2], "loss": [0.5, 0.4], "val_step": [2], "val_dice": [0.6]}
    assert plot.plot_history(history, axes=grid[1, :2]) is outer
    assert grid[1, 0].get_ylabel() == "loss" and grid[1, 1].get_ylabel() == "val_dice"
    assert plot.plot_metric_vs_k(sweep_table(), metrics="dice", axes=grid[1, 2]) is outer
    assert grid[1, 2].containers
    with pytest.raises(NeurosegInputError, match="2 matplotlib Axes"):
        plot.plot_history(history, axes=grid[1, :1])
    sections = Figure()
    closing(sections)
    cells = sections.subplots(1, 2)
    fig = plot.plot_sections(image, {"same": labels}, labels=labels, spacing=SPACING, positions=[(3, 7, 7)],
                             axes=cells)
    assert fig is sections and all(ax.images for ax in cells)
    surfaces = Figure()
    closing(surfaces)
    ax3d = surfaces.add_subplot(projection="3d")
    assert plot.render_surfaces(labels, spacing=SPACING, axes=[ax3d]) is surfaces and ax3d.collections
    with pytest.raises(NeurosegInputError, match="3d"):
        plot.render_surfaces(labels, spacing=SPACING, axes=[grid[0, 0]])


def test_plot_reexports_the_charts_and_one_set_of_method_labels():
    assert plot.METHOD_LABELS is charts.METHOD_LABELS
    assert set(plot.METHOD_LABELS) == {"2d", "3d_sparse", "3d_pseudo", "3d_dense"}
    assert plot.plot_history is charts.plot_history and plot.plot_confusion is charts.plot_confusion
    assert not hasattr(plot, "slice_browser")  # widgets imports plot, never the other way round


def grid_table():
    """A grid over 2 data sets x 2 seeds: the per-data-set means are 0.6 and 0.8 for 2d at every k."""
    import pandas as pd

    rows = []
    for data_seed in (0, 1):
        for seed in (0, 1):
            for k in (1, 2):
                rows.append({"method": "2d", "n_slices": k, "seed": seed, "data_seed": data_seed,
                             "dice": 0.6 + 0.2 * data_seed + 0.02 * (seed - 0.5)})
            rows.append({"method": "3d_dense", "n_slices": 32, "seed": seed, "data_seed": data_seed, "dice": 0.9})
    return pd.DataFrame(rows)


def test_plot_metric_vs_k_averages_seeds_within_each_data_set(closing):
    table = grid_table()
    with pytest.raises(NeurosegInputError, match="cluster="):
        plot.plot_metric_vs_k(table, metrics="dice")  # the same seed on two data sets: not one setting
    fig = plot.plot_metric_vs_k(table, metrics="dice", cluster="data_seed", spread="std")
    closing(fig)
    container = fig.axes[0].containers[0]
    np.testing.assert_allclose(container.lines[0].get_ydata(), [0.7, 0.7])
    caps = np.sort(np.concatenate([cap.get_ydata() for cap in container.lines[1]]))
    np.testing.assert_allclose(caps, 0.7 + np.array([-1, -1, 1, 1]) * np.std([0.6, 0.8], ddof=1))
    dots = [ln for ln in fig.axes[0].lines if ln.get_marker() == "." and len(ln.get_ydata()) == 2]
    assert dots and sorted(np.round(dots[0].get_ydata(), 6)) == [0.6, 0.8]  # one dot per data set
    with pytest.raises(NeurosegInputError, match="cluster"):
        plot.plot_metric_vs_k(table, metrics="dice", cluster="lab")


def test_plot_paired_differences_bars_are_the_intervals(closing):
    import pandas as pd

    table = pd.DataFrame([
        {"n_slices": 1, "against": "2d", "metric": "dice", "difference": 0.05, "ci_low": 0.01, "ci_high": 0.08,
         "data_sets": 6},
        {"n_slices": 2, "against": "2d", "metric": "dice", "difference": 0.02, "ci_low": np.nan, "ci_high": np.nan,
         "data_sets": 1},
        {"n_slices": 1, "against": "3d_sparse", "metric": "dice", "difference": -0.01, "ci_low": -0.03,
         "ci_high": 0.02, "data_sets": 6}])
    fig = plot.plot_paired_differences(table)
    closing(fig)
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one errorbar per comparison with an interval
    caps = np.sort(np.concatenate([cap.get_ydata() for cap in ax.containers[0].lines[1]]).astype(float))
    np.testing.assert_allclose(caps, [0.01, 0.08])
    open_markers = [ln for ln in ax.lines if ln.get_markerfacecolor() == "none"]
    assert len(open_markers) == 1 and open_markers[0].get_ydata()[0] == pytest.approx(0.02)
    assert any(ln.get_linestyle() == "--" and ln.get_ydata()[0] == 0 for ln in ax.lines)
    with pytest.raises(NeurosegInputError, match="paired_differences"):
        plot.plot_paired_differences(table.drop(columns="ci_low"))


def test_plot_learning_curves_and_build_points(closing):
    import pandas as pd

    steps = np.array([50, 100, 150])
    curves = pd.concat([pd.DataFrame({"step": steps, "seconds": steps / 10, "val_dice": values, "method": method,
                                      "n_slices": k, "key": key})
                        for method, k, key, values in (("3d_sparse", 1, "a", [0.2, 0.4, 0.6]),
                                                       ("3d_sparse", 1, "b", [0.4, 0.6, 0.8]),
                                                       ("3d_sparse", 2, "c", [0.9, 0.9, 0.9]),
                                                       ("3d_dense", 32, "d", [0.7, 0.8, 0.9]))])
    fig = plot.plot_learning_curves(curves, n_slices=1)
    closing(fig)
    ax = fig.axes[0]
    mean = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    assert len(mean) == 1 and np.allclose(mean[0].get_ydata(), [0.3, 0.5, 0.7])  # run c (k = 2) left out
    assert [ln.get_linestyle() for ln in ax.lines].count("--") == 1 and "2 runs" in ax.get_legend().texts[0].get_text()
    with pytest.raises(NeurosegInputError, match="n_slices = 4"):
        plot.plot_learning_curves(curves[curves["method"] != "3d_dense"], n_slices=4)
    stored = grid_table()
    live = stored[(stored["data_seed"] == 0) & (stored["seed"] == 0)].drop(columns="data_seed")
    fig = plot.plot_build_points(stored[stored["n_slices"] != 2], live[live["n_slices"] != 2])
    closing(fig)
    ax = fig.axes[0]
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 2 and [t.get_text() for t in ax.get_xticklabels()] == [
        plot.METHOD_LABELS["2d"], plot.METHOD_LABELS["3d_dense"]]
    assert "this build" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert plot.plot_paired_differences is charts.plot_paired_differences


def test_plot_gain_vs_knob_draws_each_data_set_and_their_mean(closing):
    import pandas as pd

    gains = pd.DataFrame([{"data_seed": d, "sigma_z_um": s, "against": a, "metric": "dice", "gain": g + 0.1 * d}
                          for d in (0, 1) for a in ("3d_sparse", "2d") for s, g in ((1.0, 0.0), (2.5, 0.04))])
    fig = plot.plot_gain_vs_knob(gains)
    closing(fig)
    assert len(fig.axes) == 2  # one panel per other method
    ax = fig.axes[0]
    thin = [ln for ln in ax.lines if ln.get_linewidth() == 1 and ln.get_linestyle() == "-"]
    assert len(thin) == 2 and np.allclose(thin[1].get_ydata(), [0.1, 0.14])  # one line per data set
    bold = [ln for ln in ax.lines if ln.get_linewidth() == 2.5]
    assert len(bold) == 1 and np.allclose(bold[0].get_xdata(), [1.0, 2.5]) and np.allclose(bold[0].get_ydata(),
                                                                                                [0.05, 0.09])
    assert plot.plot_gain_vs_knob is charts.plot_gain_vs_knob
    with pytest.raises(NeurosegInputError, match="knob_gains"):
        plot.plot_gain_vs_knob(gains.drop(columns="gain"))
    with pytest.raises(NeurosegInputError, match="surface_dice"):
        plot.plot_gain_vs_knob(gains, metric="surface_dice")
