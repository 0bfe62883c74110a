"""The notebook slice browser: a z-slider and overlay check boxes over the orthogonal views.

One job: interactive viewing in a live Jupyter kernel (ipywidgets). Introduced in chapter 1
(``01_data``). Where no kernel can answer the widget (scripts, pytest, an executed or built book),
:func:`slice_browser` returns the static :func:`neuroseg_lite.plot.show_orthogonal` figure instead.
This module imports :mod:`neuroseg_lite.plot`, never the other way round.
"""
from __future__ import annotations

import os

import numpy as np

from neuroseg_lite._checks import check_spacing, check_volume
from neuroseg_lite.plot import show_orthogonal

__all__ = ["slice_browser"]


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
    z_slider = widgets.IntSlider(value=nz // 2, min=0, max=nz - 1, description="z",
                                 continuous_update=False)
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
        As in :func:`neuroseg_lite.plot.show_orthogonal`.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres.
    annotated_planes : sequence of int, optional
        z-indices of annotated slices.

    Returns
    -------
    ipywidgets.VBox or Figure
        The widget inside a Jupyter kernel. The static :func:`neuroseg_lite.plot.show_orthogonal`
        figure instead when the environment variable ``NEUROSEG_STATIC_FIGURES=1`` is set (executed or
        built books, where widgets have no live kernel), outside a kernel, or when ipywidgets is not
        installed.
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
