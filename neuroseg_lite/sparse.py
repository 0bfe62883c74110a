"""Simulate sparse 2D annotations from dense 3D ground truth.

Introduced in chapter 2 (``02_sparse_labels``). An expert rarely paints every voxel of a stack; they
annotate a few 2D planes. :func:`simulate_sparse` keeps ``n_slices`` planes of a dense label volume and
marks every other voxel as *unlabelled* (not background!), which is how the paper builds its sparsity
levels. :func:`distance_to_annotated` measures how far each voxel lies from the nearest annotated plane,
the x-axis of the "pseudo-label quality vs distance" figure in chapter 4.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuroseg_lite._checks import NeurosegInputError, check_volume
from neuroseg_lite.io import binarize_labels

__all__ = ["SparseLabels", "simulate_sparse", "from_planes", "from_annotation_stack", "read_planes_file",
           "distance_to_annotated", "even_planes", "objects_crossed"]

_MODES = ("even", "random")


@dataclass(frozen=True)
class SparseLabels:
    """Sparse annotation of a volume: a few fully labelled planes, everything else unlabelled.

    Attributes
    ----------
    labels : bool ndarray of shape (Z, Y, X)
        Foreground on the annotated planes; ``False`` everywhere else. Off the annotated planes
        ``False`` means "unknown", so always read ``labels`` together with ``annotated``.
    annotated : bool ndarray of shape (Z, Y, X)
        ``True`` on voxels an annotator labelled (the whole of each annotated plane).
    planes : tuple of int
        Indices of the annotated planes along ``axis``, increasing.
    axis : int
        The axis (0 = Z, 1 = Y, 2 = X) that ``planes`` index.
    fraction : float
        Fraction of voxels that are annotated, ``len(planes) / shape[axis]``.
    """

    labels: np.ndarray
    annotated: np.ndarray
    planes: tuple[int, ...]
    axis: int
    fraction: float

    @property
    def n_slices(self) -> int:
        """Number of annotated planes."""
        return len(self.planes)


def _normalise_axis(axis) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= int(axis) <= 2:
        raise NeurosegInputError(
            f"axis must be 0 (Z), 1 (Y) or 2 (X) for a (Z, Y, X) volume, got {axis!r}.")
    return int(axis) % 3


def even_planes(n_planes: int, n_slices: int) -> tuple[int, ...]:
    """Indices of ``n_slices`` planes spread evenly over ``n_planes``: the centres of equal bins.

    Plane ``i`` is the centre of bin ``[i * n / k, (i + 1) * n / k)``, rounded down, so ``k = 1`` gives
    the middle plane and ``k = n`` gives every plane. Bins are at least one plane wide, so the indices
    are distinct.

    Parameters
    ----------
    n_planes : int
        Number of planes along the axis (``n``).
    n_slices : int
        Number of planes to pick (``k``), ``1 <= k <= n``.

    Returns
    -------
    tuple of int
        Increasing plane indices.

    Examples
    --------
    >>> even_planes(48, 1)  # one plane: the middle one
    (24,)
    >>> even_planes(10, 3)
    (1, 5, 8)
    >>> even_planes(4, 4)  # every plane: dense labels
    (0, 1, 2, 3)
    """
    _check_n_slices(n_slices, n_planes, axis=None)
    # Integer arithmetic: (2i + 1) * n / (2k) is the bin centre; floor keeps it exact for any n, k.
    return tuple((2 * i + 1) * n_planes // (2 * n_slices) for i in range(n_slices))


def _check_n_slices(n_slices, n_planes: int, *, axis) -> int:
    where = f" (shape[{axis}] = {n_planes})" if axis is not None else ""
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)):
        raise NeurosegInputError(
            f"n_slices must be an integer between 1 and {n_planes}{where}, got {n_slices!r}.")
    if not 1 <= n_slices <= n_planes:
        raise NeurosegInputError(
            f"n_slices must be between 1 and {n_planes}{where}, got {n_slices}. "
            f"Use n_slices={n_planes} for dense labels, or annotate along another axis.")
    return int(n_slices)


def simulate_sparse(labels, *, n_slices: int, axis: int = 0, mode: str = "even", seed=None) -> SparseLabels:
    """Keep ``n_slices`` fully annotated planes of a dense label volume; the rest becomes unlabelled.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        Dense ground truth: bool, binary (0/1, 0/255) or instance ids (non-negative integers);
        anything > 0 is foreground. Not modified.
    n_slices : int
        Number of annotated planes, ``1 <= n_slices <= labels.shape[axis]``; the maximum gives dense labels.
    axis : {0, 1, 2}
        Axis the annotated planes are perpendicular to; 0 = Z (XY planes, how experts usually annotate).
    mode : {"even", "random"}
        ``"even"``: planes at the centres of ``n_slices`` equal bins (see :func:`even_planes`);
        ``"random"``: ``n_slices`` distinct planes drawn uniformly without replacement.
    seed : int, numpy.random.Generator or None
        Random source for ``mode="random"`` (ignored by ``"even"``). The same seed gives the same planes.

    Returns
    -------
    SparseLabels
        New arrays; ``labels`` is foreground only on annotated planes.

    Raises
    ------
    NeurosegInputError
        If ``labels`` is not a 3D binary/instance volume, or ``n_slices``, ``axis`` or ``mode`` is invalid.

    Examples
    --------
    >>> labels = np.zeros((8, 4, 4), bool)
    >>> labels[2:6, 1:3, 1:3] = True  # one 4 x 2 x 2 object
    >>> annotation = simulate_sparse(labels, n_slices=2)
    >>> annotation.planes, annotation.fraction
    ((2, 6), 0.25)
    >>> # 2 annotated planes of 4 x 4 voxels; the object shows on plane 2 only
    >>> int(annotation.annotated.sum()), int(annotation.labels.sum())
    (32, 4)
    """
    dense = binarize_labels(labels)
    axis = _normalise_axis(axis)
    n_planes = dense.shape[axis]
    n_slices = _check_n_slices(n_slices, n_planes, axis=axis)
    if mode == "even":
        planes = even_planes(n_planes, n_slices)
    elif mode == "random":
        rng = np.random.default_rng(seed)
        planes = tuple(int(p) for p in np.sort(rng.choice(n_planes, size=n_slices, replace=False)))
    else:
        raise NeurosegInputError(f"mode must be one of {_MODES}, got {mode!r}.")

    return _keep_planes(dense, planes, axis)


def _keep_planes(dense: np.ndarray, planes: tuple[int, ...], axis: int) -> SparseLabels:
    n_planes = dense.shape[axis]
    plane_mask = np.zeros(n_planes, dtype=bool)
    plane_mask[list(planes)] = True
    broadcast_shape = [1, 1, 1]
    broadcast_shape[axis] = n_planes
    annotated = np.broadcast_to(plane_mask.reshape(broadcast_shape), dense.shape).copy()
    return SparseLabels(labels=dense & annotated, annotated=annotated, planes=tuple(planes), axis=axis,
                        fraction=len(planes) / n_planes)


def from_planes(labels, *, planes, axis: int = 0) -> SparseLabels:
    """Describe a real annotation: ``labels`` is trusted on the listed planes only.

    Use this for your own data, where an expert labelled a few whole planes of a stack
    (see the book page "Using your own TIFF stacks").

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        Bool, binary or instance labels; only the values on ``planes`` are used. Not modified.
    planes : sequence of int
        Indices along ``axis`` of the completely annotated planes (distinct, within the stack).
    axis : {0, 1, 2}

    Returns
    -------
    SparseLabels

    Examples
    --------
    >>> labels = np.zeros((8, 4, 4), np.uint8)
    >>> labels[3, 1:3, 1:3] = 255  # painted in Fiji: 0/255
    >>> annotation = from_planes(labels, planes=[5, 3])
    >>> annotation.planes, annotation.n_slices, int(annotation.labels.sum())
    ((3, 5), 2, 4)
    """
    dense = binarize_labels(labels)
    axis = _normalise_axis(axis)
    n_planes = dense.shape[axis]
    chosen = sorted({int(p) for p in planes})
    if not chosen:
        raise NeurosegInputError("planes is empty: list at least one annotated plane, e.g. planes=[10].")
    if len(chosen) != len(list(planes)) or chosen[0] < 0 or chosen[-1] >= n_planes:
        raise NeurosegInputError(
            f"planes must be distinct indices between 0 and {n_planes - 1} (shape[{axis}] = {n_planes}), "
            f"got {list(planes)}.")
    return _keep_planes(dense, tuple(chosen), axis)


def read_planes_file(path) -> tuple[int, ...]:
    """Read the annotated plane indices from a side file written beside a label stack.

    Introduced in chapter 10 (``10_whole_sample``) and the command line (``neuroseg-lite train --planes``).

    Parameters
    ----------
    path : str or Path
        A ``.json`` file holding a list of integers (or ``{"planes": [...]}``), or a text/CSV file of
        integers separated by commas, spaces or new lines (``#`` starts a comment).

    Returns
    -------
    tuple of int
        The indices, in the order written (checked against the stack by :func:`from_planes`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> side = pathlib.Path(tempfile.mkdtemp()) / "planes.txt"
    >>> _ = side.write_text("# annotated by A.B.\\n12, 40\\n75\\n")
    >>> read_planes_file(side)
    (12, 40, 75)
    """
    path = Path(path)
    if not path.is_file():
        raise NeurosegInputError(f"planes file {path} does not exist; write the annotated plane indices into it, "
                                 "e.g. '12, 40, 75', or a JSON list.")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = None
        values = values.get("planes") if isinstance(values, dict) else values
        valid = isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    else:
        lines = (line.split("#", 1)[0] for line in text.splitlines())
        values = [token for line in lines for token in line.replace(",", " ").split()]
        valid = all(token.lstrip("-").isdigit() for token in values)
    if not valid:
        raise NeurosegInputError(f"{path} must list whole-number plane indices (e.g. '12, 40, 75' or a JSON list "
                                 f"of integers); could not read {text[:80]!r}.")
    planes = tuple(int(v) for v in values)
    if not planes:
        raise NeurosegInputError(f"{path} lists no plane; write the indices of the annotated planes into it.")
    return planes


def from_annotation_stack(labels, *, unlabelled=None, planes=None, axis: int = 0) -> SparseLabels:
    """Read a label stack as annotation tools save it: a few planes painted, the rest marked unlabelled.

    Introduced in chapter 10 (``10_whole_sample``); the command line's ``train`` uses it. Exactly one of
    ``unlabelled`` and ``planes`` says which planes were annotated.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        Integer or bool labels: 0 is background, any other value (except ``unlabelled``) is a neuron, so
        0/1, 0/255 and instance ids all work. Not modified.
    unlabelled : int, optional
        The value that marks voxels nobody annotated (e.g. 255 in a uint8 stack whose neurons are 1, or -1
        in a signed stack). A plane is annotated when none of its voxels has this value; a plane that is
        only partly annotated is refused, because the method needs whole annotated planes.
    planes : sequence of int, or str or Path, optional
        The annotated planes, or a side file listing them (:func:`read_planes_file`).
    axis : {0, 1, 2}
        The axis the annotated planes are perpendicular to.

    Returns
    -------
    SparseLabels

    Examples
    --------
    >>> stack = np.full((6, 4, 4), 255, np.uint8)   # 255: not annotated
    >>> stack[2] = 0
    >>> stack[2, 1:3, 1:3] = 1                        # plane 2 painted: 4 neuron pixels
    >>> annotation = from_annotation_stack(stack, unlabelled=255)
    >>> annotation.planes, int(annotation.labels.sum())
    ((2,), 4)
    """
    if (unlabelled is None) == (planes is None):
        raise NeurosegInputError(
            "say which planes are annotated in exactly one way: unlabelled=<value> (the value your annotation "
            "tool leaves in unpainted voxels, e.g. 255 or -1) or planes=[...] / planes='planes.txt'.")
    array = check_volume(labels, name="labels")
    axis = _normalise_axis(axis)
    if planes is not None:
        if isinstance(planes, (str, Path)):
            planes = read_planes_file(planes)
        return from_planes(array, planes=planes, axis=axis)
    if isinstance(unlabelled, bool) or not isinstance(unlabelled, (int, np.integer)):
        raise NeurosegInputError(f"unlabelled must be an integer value such as 255 or -1, got {unlabelled!r}.")
    if np.issubdtype(array.dtype, np.integer) and not (
            np.iinfo(array.dtype).min <= int(unlabelled) <= np.iinfo(array.dtype).max):
        raise NeurosegInputError(
            f"unlabelled={unlabelled} cannot occur in a {array.dtype} label stack (its values span "
            f"{np.iinfo(array.dtype).min}..{np.iinfo(array.dtype).max}); check the value your tool writes.")
    missing = array == unlabelled
    other_axes = tuple(a for a in range(3) if a != axis)
    n_missing = missing.sum(axis=other_axes)
    plane_size = array.size // array.shape[axis]
    partial = np.flatnonzero((n_missing > 0) & (n_missing < plane_size))
    if partial.size:
        raise NeurosegInputError(
            f"planes {partial[:5].tolist()} along axis {axis} are only partly annotated (some voxels are "
            f"{unlabelled}, others are not); finish annotating them, or mark them wholly {unlabelled}.")
    chosen = np.flatnonzero(n_missing == 0)
    if chosen.size == array.shape[axis]:
        values = np.unique(array[:: max(1, array.shape[0] // 8)])[:6].tolist()
        raise NeurosegInputError(
            f"unlabelled={unlabelled} occurs nowhere in labels, so every plane would count as annotated "
            f"(values present include {values}); pass the value your tool writes for unpainted voxels, or, for "
            "densely labelled stacks, no unlabelled value at all (sparse.from_planes with every plane).")
    if chosen.size == 0:
        raise NeurosegInputError(
            f"every voxel of labels is {unlabelled}, so no plane is annotated; is unlabelled={unlabelled} the "
            "value your tool writes for unpainted voxels?")
    dense = np.where(missing, 0, array)
    return from_planes(dense, planes=chosen.tolist(), axis=axis)


def distance_to_annotated(annotated, *, axis: int = 0) -> np.ndarray:
    """Distance, in planes along ``axis``, from every voxel to the nearest annotated plane.

    A plane counts as annotated when it holds at least one annotated voxel, so the result is the same
    for every voxel of a plane. Use it to score pseudo-labels by distance, e.g.
    ``segmentation_scores(pseudo, truth, mask=distance == d)`` for each ``d``. Multiply by the spacing
    along ``axis`` for micrometres.

    Parameters
    ----------
    annotated : bool ndarray of shape (Z, Y, X)
        Annotated voxels, e.g. ``SparseLabels.annotated``. Not modified.
    axis : {0, 1, 2}
        Axis the annotated planes are perpendicular to.

    Returns
    -------
    int64 ndarray of shape (Z, Y, X)
        0 on annotated planes, 1 on their neighbours, and so on.

    Raises
    ------
    NeurosegInputError
        If ``annotated`` is not 3D or contains no annotated voxel.

    Examples
    --------
    >>> annotation = simulate_sparse(np.zeros((8, 4, 4), bool), n_slices=2)
    >>> distance_to_annotated(annotation.annotated)[:, 0, 0].tolist()
    [2, 1, 0, 1, 2, 1, 0, 1]
    """
    mask = check_volume(annotated, name="annotated")
    axis = _normalise_axis(axis)
    other_axes = tuple(a for a in range(3) if a != axis)
    plane_is_annotated = np.any(mask != 0, axis=other_axes)
    annotated_planes = np.flatnonzero(plane_is_annotated)
    if annotated_planes.size == 0:
        raise NeurosegInputError(
            "annotated has no annotated voxel, so distances to an annotated plane are undefined. "
            "Pass the mask from simulate_sparse(...).annotated with n_slices >= 1.")
    index = np.arange(mask.shape[axis])
    per_plane = np.abs(index[:, None] - annotated_planes[None, :]).min(axis=1).astype(np.int64)
    broadcast_shape = [1, 1, 1]
    broadcast_shape[axis] = mask.shape[axis]
    return np.broadcast_to(per_plane.reshape(broadcast_shape), mask.shape).copy()


def objects_crossed(labels, annotation: SparseLabels) -> tuple[int, int]:
    """How many objects (neurons) an annotation's planes cut through, out of all objects of a volume.

    Introduced in chapter 7 (``07_sparsity_sweep``): at one plane in a hundred, most neurons are never seen by
    an annotator, and those are the ones pseudo-labels stand in for.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        Instance labels (each object its own value), or binary labels, whose face-connected components are
        taken as the objects (touching objects then count once).
    annotation : SparseLabels
        Of the same volume.

    Returns
    -------
    (n_crossed, n_objects) : tuple of int
        Objects with at least one voxel on an annotated plane, and all objects.

    Examples
    --------
    >>> labels = np.zeros((9, 4, 4), np.int32)
    >>> labels[0:2, :2, :2], labels[4:7, 2:, 2:] = 1, 2
    >>> objects_crossed(labels, from_planes(labels > 0, planes=[5]))
    (1, 2)
    """
    from scipy import ndimage

    labels = check_volume(labels, name="labels")
    if labels.shape != annotation.labels.shape:
        raise NeurosegInputError(f"labels have shape {labels.shape} but the annotation covers "
                                 f"{annotation.labels.shape}; pass the labels of the annotated volume.")
    if labels.dtype == bool or labels.max() <= 1:
        labels, _ = ndimage.label(labels > 0)
    ids = np.unique(labels[labels > 0])
    on_planes = np.take(labels, list(annotation.planes), axis=annotation.axis)
    crossed = np.intersect1d(ids, np.unique(on_planes[on_planes > 0]))
    return int(crossed.size), int(ids.size)
