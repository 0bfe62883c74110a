"""Tests for neuroseg_lite.plot: every function returns a Figure with the expected panels on tiny inputs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neuroseg_lite import plot  # noqa: E402
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
    fig = plot.slice_browser(image, labels=labels, spacing=SPACING)
    closing(fig)
    assert isinstance(fig, Figure) and len(fig.axes) == 3


def test_slice_browser_outside_kernel_is_static(monkeypatch, closing):
    monkeypatch.delenv("NEUROSEG_STATIC_FIGURES", raising=False)
    fig = plot.slice_browser(blobs()[0], spacing=SPACING)  # pytest is not a Jupyter kernel
    closing(fig)
    assert isinstance(fig, Figure)


def test_browser_widget_redraws_on_slider():
    widgets = pytest.importorskip("ipywidgets")
    image, labels = blobs()
    box = plot._browser_widget(image, labels=labels, prediction=None, spacing=SPACING)
    assert isinstance(box, widgets.VBox)
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
