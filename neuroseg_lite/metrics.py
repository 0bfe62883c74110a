"""Voxel, object and surface scores for a 3D segmentation against ground truth.

One job: score a segmentation against ground truth. Introduced in chapter 6 (``06_evaluation``).
Voxel Dice, the paper's headline metric, is dominated by the large interiors of cell bodies; object
scores say whether each neuron was found once, surface scores (in micrometres, aware of the
anisotropic voxel size) say how well its boundary was placed, and :func:`cap_profile` scores each
neuron plane by plane from its top and bottom caps, which 2D models reconstruct worst.
:func:`pick_objects` chooses the neurons that figures are centred on (chapters 1-8).

Conventions shared by all functions
-----------------------------------
- ``prediction`` may be a probability map (float) or a binary/bool mask; foreground is
  ``prediction >= threshold`` (bool predictions are used as they are).
- ``truth`` is bool, binary or instance labels (non-negative integers); foreground is ``truth > 0``.
- A ratio whose denominator is zero scores 1.0: precision is 1 when nothing is predicted (no false
  positive was made), recall is 1 when the truth is empty (nothing could be missed), Dice/IoU are 1
  when both are empty. The scores that matter then still drop: an empty prediction of a non-empty
  truth has Dice 0 and recall 0.
- All numbers are returned as plain Python ``int``/``float`` so that they serialise to JSON as they are.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from neuroseg_lite._checks import NeurosegInputError, check_same_shape, check_spacing, check_volume
from neuroseg_lite.io import binarize_labels

__all__ = ["dice", "confusion_counts", "scores_from_counts", "segmentation_scores", "object_scores",
           "surface_scores", "evaluate", "pick_objects", "cap_profile"]

# Face-neighbour (6-)connectivity: two somata that touch only at an edge or corner stay two objects.
_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)
_FULL_CONNECTED = ndimage.generate_binary_structure(3, 3)


# -------- input handling --------------------------------------------------------------
def _binary_prediction(prediction, threshold: float) -> np.ndarray:
    arr = check_volume(prediction, name="prediction")
    if arr.dtype == bool:
        return arr
    if not np.isfinite(threshold):
        raise NeurosegInputError(f"threshold must be a finite number, got {threshold!r}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise NeurosegInputError(
            "prediction contains NaN or Inf values; fix the model output (e.g. np.nan_to_num) before scoring.")
    return arr >= threshold


def _prepare(prediction, truth, threshold, mask=None):
    pred = _binary_prediction(prediction, threshold)
    true = binarize_labels(truth, name="truth")
    check_same_shape(pred, true, names=("prediction", "truth"))
    region = None
    if mask is not None:
        region = check_volume(mask, name="mask")
        check_same_shape(region, true, names=("mask", "truth"))
        region = region.astype(bool, copy=False)
    return pred, true, region


def _check_count(value, *, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise NeurosegInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _ratio(numerator: int, denominator: int) -> float:
    # Empty denominators score 1.0: see the module docstring for why.
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


# -------- voxel scores ----------------------------------------------------------------
def _counts(pred: np.ndarray, true: np.ndarray, region: np.ndarray | None) -> dict:
    if region is not None:
        pred = pred & region
        true = true & region
        n_total = int(np.count_nonzero(region))
    else:
        n_total = int(pred.size)
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(true)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": n_total - tp - fp - fn}


def confusion_counts(prediction, truth, *, threshold: float = 0.5, mask=None) -> dict:
    """Voxel-wise true/false positives/negatives.

    Parameters
    ----------
    prediction : ndarray of shape (Z, Y, X)
        Foreground probability or binary mask.
    truth : ndarray of shape (Z, Y, X)
        Ground truth (bool, binary or instance labels).
    threshold : float
        Foreground is ``prediction >= threshold`` (ignored for bool predictions).
    mask : bool ndarray of shape (Z, Y, X), optional
        Count only voxels where ``mask`` is True (e.g. unannotated planes, or one distance band).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``tn`` as ints; they sum to the number of evaluated voxels.
    """
    return _counts(*_prepare(prediction, truth, threshold, mask))


def scores_from_counts(counts: dict) -> dict:
    """The scores of :func:`segmentation_scores` from confusion counts, e.g. counts pooled over volumes.

    Parameters
    ----------
    counts : dict
        ``tp``, ``fp``, ``fn`` and ``tn`` (as :func:`confusion_counts` returns them).

    Examples
    --------
    >>> scores_from_counts({"tp": 3, "fp": 1, "fn": 1, "tn": 5})["dice"]
    0.75
    """
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        **counts,
    }


def dice(prediction, truth, *, threshold: float = 0.5, mask=None) -> float:
    """Voxel Dice, 2TP / (2TP + FP + FN): the one Dice of the package (training curves use it too).

    Parameters
    ----------
    prediction, truth, threshold, mask
        As in :func:`confusion_counts`.

    Returns
    -------
    float
        1.0 when both prediction and truth are empty.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((1, 2, 2), bool); truth[0, 0] = True
    >>> dice(np.full((1, 2, 2), 0.9), truth)
    0.6666666666666666
    """
    return segmentation_scores(prediction, truth, threshold=threshold, mask=mask)["dice"]


def segmentation_scores(prediction, truth, *, threshold: float = 0.5, mask=None) -> dict:
    """Voxel-wise Dice, IoU, precision and recall, with the confusion counts.

    Parameters
    ----------
    prediction, truth, threshold, mask
        As in :func:`confusion_counts`.

    Returns
    -------
    dict
        ``dice`` = 2TP / (2TP + FP + FN), ``iou`` = TP / (TP + FP + FN), ``precision`` = TP / (TP + FP),
        ``recall`` = TP / (TP + FN) as floats (1.0 when the denominator is 0, see the module docstring),
        plus ``tp``, ``fp``, ``fn``, ``tn``.
    """
    return scores_from_counts(confusion_counts(prediction, truth, threshold=threshold, mask=mask))


# -------- object scores ---------------------------------------------------------------
def _match_objects(true_ids: np.ndarray, pred_ids: np.ndarray, n_true: int, n_pred: int, min_iou: float):
    """Return (n_matched, mean IoU of the matched pairs) for a one-to-one matching by IoU."""
    if n_true == 0 or n_pred == 0:
        return 0, float("nan")
    true_sizes = np.bincount(true_ids.ravel(), minlength=n_true + 1)
    pred_sizes = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)
    both = (true_ids > 0) & (pred_ids > 0)
    pair_codes = true_ids[both].astype(np.int64) * (n_pred + 1) + pred_ids[both]
    codes, overlaps = np.unique(pair_codes, return_counts=True)
    t_idx, p_idx = np.divmod(codes, n_pred + 1)
    ious = overlaps / (true_sizes[t_idx] + pred_sizes[p_idx] - overlaps)
    keep = ious >= min_iou
    t_idx, p_idx, ious = t_idx[keep], p_idx[keep], ious[keep]
    if ious.size == 0:
        return 0, float("nan")
    # With IoU > 0.5 the matching is unique without any assignment: IoU(t, p) > 0.5 means the overlap
    # is more than half of the union, hence more than half of p; disjoint true objects cannot both own
    # more than half of p (and vice versa), so each object has at most one partner. Below 0.5, and at
    # an exact 0.5 tie, several partners are possible; the Hungarian assignment then picks the
    # one-to-one matching with the largest total IoU.
    rows, row_of = np.unique(t_idx, return_inverse=True)
    cols, col_of = np.unique(p_idx, return_inverse=True)
    iou_matrix = np.zeros((rows.size, cols.size))
    iou_matrix[row_of, col_of] = ious
    chosen_r, chosen_c = linear_sum_assignment(iou_matrix, maximize=True)
    matched = iou_matrix[chosen_r, chosen_c]
    matched = matched[matched > 0]
    return int(matched.size), float(matched.mean()) if matched.size else float("nan")


def _object_scores(pred, true, *, min_iou, min_size_voxels, connectivity) -> dict:
    if not 0 < min_iou <= 1:
        raise NeurosegInputError(
            f"min_iou must be in (0, 1], got {min_iou!r}; 0.5 is the usual choice (it makes matches unique).")
    _check_count(min_size_voxels, name="min_size_voxels", minimum=0)
    if connectivity not in (1, 3):
        raise NeurosegInputError(
            f"connectivity must be 1 (6 face neighbours) or 3 (26 neighbours), got {connectivity!r}.")
    structure = _SIX_CONNECTED if connectivity == 1 else _FULL_CONNECTED
    true_ids, n_true = ndimage.label(true, structure=structure)
    pred_ids, n_pred = ndimage.label(pred, structure=structure)
    if min_size_voxels > 0 and n_pred > 0:
        sizes = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)
        large = sizes >= min_size_voxels
        large[0] = False
        # Relabel the survivors 1..n so ids stay dense for the overlap table.
        new_ids = np.zeros(n_pred + 1, dtype=pred_ids.dtype)
        new_ids[large] = np.arange(1, int(large.sum()) + 1, dtype=pred_ids.dtype)
        pred_ids = new_ids[pred_ids]
        n_pred = int(large.sum())
    n_matched, mean_iou = _match_objects(true_ids, pred_ids, n_true, n_pred, min_iou)
    return {"precision": _ratio(n_matched, n_pred), "recall": _ratio(n_matched, n_true),
            "f1": _ratio(2 * n_matched, n_true + n_pred), "n_true": int(n_true), "n_pred": int(n_pred),
            "n_matched": int(n_matched), "mean_matched_iou": mean_iou}


def object_scores(prediction, truth, *, threshold: float = 0.5, min_iou: float = 0.5,
                  min_size_voxels: int = 0, connectivity: int = 1) -> dict:
    """Detection scores of connected components matched one-to-one by IoU.

    Objects are the connected components of the binary prediction and of the binary truth (instance ids
    in ``truth`` are ignored: touching instances that share a face count as one object). A predicted and
    a true object match when their IoU is at least ``min_iou``; a merge of two neurons or a split of one
    into halves therefore yields at most one match.

    Parameters
    ----------
    prediction, truth, threshold
        As in :func:`confusion_counts`.
    min_iou : float in (0, 1]
        Minimum IoU for a match. Any value above 0.5 makes the matching unique by construction.
    min_size_voxels : int
        Predicted components smaller than this are dropped before matching (noise specks); the truth is
        left as it is.
    connectivity : {1, 3}
        1 = 6-connectivity (face neighbours, the default: objects touching only at an edge or a corner
        stay separate), 3 = 26-connectivity.

    Returns
    -------
    dict
        ``precision`` = matched / n_pred, ``recall`` = matched / n_true, ``f1`` = 2 matched /
        (n_true + n_pred) (1.0 on empty denominators), ``n_true``, ``n_pred``, ``n_matched`` and
        ``mean_matched_iou`` (NaN when nothing matched).
    """
    pred, true, _ = _prepare(prediction, truth, threshold)
    return _object_scores(pred, true, min_iou=min_iou, min_size_voxels=min_size_voxels,
                          connectivity=connectivity)


# -------- single neurons: picking them, scoring them plane by plane from their caps ---
def _objects(labels, *, inside: bool, name: str = "labels"):
    """6-connected objects of ``labels > 0``: (ids, [(id, box)]) largest first, ties in scan order."""
    ids, n_objects = ndimage.label(binarize_labels(labels, name=name), structure=_SIX_CONNECTED)
    boxes = ndimage.find_objects(ids)
    sizes = np.bincount(ids.ravel(), minlength=n_objects + 1)[1:]
    keep = [i for i, box in enumerate(boxes)
            if not inside or all(0 < s.start and s.stop < n for s, n in zip(box, ids.shape))]
    keep.sort(key=lambda i: (-sizes[i], i))
    return ids, [(i + 1, boxes[i]) for i in keep]


def pick_objects(labels, *, n: int | None = 1, inside: bool = True, by: str = "size") -> list:
    """Centres of the largest connected objects (neurons), largest first: where figures cut a stack.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        Objects are the 6-connected components of ``labels > 0`` (ids ignored, as in
        :func:`object_scores`).
    n : int or None
        How many (fewer if the stack holds fewer); ``None``: every object that qualifies.
    inside : bool
        Only objects whose bounding box touches no face of the stack (nothing cut off).
    by : {"size"}
        Order: number of voxels, largest first (ties in scan order).

    Returns
    -------
    list of tuple (z, y, x) of int
        Rounded centres of mass in voxels (for a curved object possibly just outside it).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((5, 8, 8), bool)
    >>> labels[1:4, 1:3, 1:3] = True   # 12 voxels, inside the stack
    >>> labels[1:4, 4:7, 4:7] = True   # 27 voxels, inside the stack
    >>> labels[0:2, 5:8, 0:2] = True   # touches the border
    >>> pick_objects(labels, n=None)
    [(2, 5, 5), (2, 2, 2)]
    """
    if n is not None:
        _check_count(n, name="n (or None for all objects)", minimum=1)
    if by != "size":
        raise NeurosegInputError(f"by must be 'size' (largest first), got {by!r}.")
    ids, objects = _objects(labels, inside=bool(inside))
    chosen = [i for i, _ in objects[:n]]
    if not chosen:
        return []
    centres = ndimage.center_of_mass(ids > 0, ids, chosen)
    return [tuple(int(round(c)) for c in centre) for centre in centres]


def cap_profile(prediction, truth, *, inside: bool = True, margin: int = 4,
                threshold: float = 0.5) -> dict:
    """Per-plane Dice of every neuron's cross-section, by the plane's distance from the nearer cap.

    For each neuron of ``truth`` (those of :func:`pick_objects` with ``n=None``) and each z-plane it
    spans: the Dice of its cross-section, inside its bounding box widened by ``margin`` pixels in y
    and x, not counting predicted voxels of *other* neurons. Distance 0 is the top or bottom plane.

    Parameters
    ----------
    prediction : ndarray of shape (Z, Y, X)
        Probabilities (foreground ``>= threshold``) or a binary/bool mask.
    truth : ndarray of shape (Z, Y, X)
        Bool, binary or instance labels.
    inside : bool
        Only neurons wholly inside the stack (both caps present), as in :func:`pick_objects`.
    margin : int
    threshold : float

    Returns
    -------
    dict of str to ndarray of shape (n_rows,)
        One entry per (neuron, plane): ``"object"`` (its index in ``pick_objects(truth, n=None,
        inside=inside)``), ``"z"``, ``"planes_from_cap"`` and ``"dice"`` (1.0 if both are empty).
        ``pandas.DataFrame(profile)`` makes it a table.

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.indices((7, 9, 9))
    >>> ball = (z - 3) ** 2 + (y - 4) ** 2 + (x - 4) ** 2 <= 4  # radius 2: planes 1 to 5
    >>> profile = cap_profile(ball, ball)
    >>> profile["z"].tolist(), profile["planes_from_cap"].tolist()
    ([1, 2, 3, 4, 5], [0, 1, 2, 1, 0])
    >>> cap_profile(ball & (abs(z - 3) < 2), ball)["dice"].tolist()  # caps missed
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    pred, true, _ = _prepare(prediction, truth, threshold)
    _check_count(margin, name="margin (pixels)", minimum=0)
    ids, objects = _objects(true, inside=bool(inside), name="truth")
    columns = {"object": [], "z": [], "planes_from_cap": [], "dice": []}
    for rank, (neuron, box) in enumerate(objects):
        window = (box[0],) + tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box[1:])
        in_window = ids[window]
        cross = in_window == neuron
        predicted = pred[window] & ((in_window == 0) | cross)  # other neurons do not count
        overlap = 2 * np.count_nonzero(cross & predicted, axis=(1, 2))
        total = np.count_nonzero(cross, axis=(1, 2)) + np.count_nonzero(predicted, axis=(1, 2))
        depth = cross.shape[0]
        columns["object"] += [rank] * depth
        columns["z"] += list(range(box[0].start, box[0].stop))
        columns["planes_from_cap"] += [min(k, depth - 1 - k) for k in range(depth)]
        columns["dice"] += [float(o / t) if t else 1.0 for o, t in zip(overlap, total)]
    return {key: np.asarray(values, dtype=float if key == "dice" else np.int64)
            for key, values in columns.items()}


# -------- surface scores --------------------------------------------------------------
def _surface(mask: np.ndarray) -> np.ndarray:
    # Outside the volume counts as background (erosion border_value=0), so objects cut by the volume
    # edge get a surface there, as they would in any crop of the stack.
    return mask & ~ndimage.binary_erosion(mask, structure=_SIX_CONNECTED, border_value=0)


def _surface_scores(pred, true, *, spacing, tolerance_um) -> dict:
    if not (np.isfinite(tolerance_um) and tolerance_um >= 0):
        raise NeurosegInputError(
            f"tolerance_um must be a non-negative number of micrometres, got {tolerance_um!r}.")
    pred_empty, true_empty = not pred.any(), not true.any()
    if pred_empty and true_empty:
        return {"hd95_um": 0.0, "hd_um": 0.0, "assd_um": 0.0, "surface_dice": 1.0}
    if pred_empty or true_empty:
        return {"hd95_um": float("inf"), "hd_um": float("inf"), "assd_um": float("inf"), "surface_dice": 0.0}

    # Every surface voxel lies in the bounding box of the union, so distances computed inside that box
    # (plus one voxel, so the erosion sees the same neighbours) are exact and far cheaper on big stacks.
    coords = np.nonzero(pred | true)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    surf_pred, surf_true = _surface(pred[box]), _surface(true[box])
    dist_to_true = ndimage.distance_transform_edt(~surf_true, sampling=spacing)[surf_pred]
    dist_to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)[surf_true]
    within = np.count_nonzero(dist_to_true <= tolerance_um) + np.count_nonzero(dist_to_pred <= tolerance_um)
    return {
        # HD95 as in MONAI and DeepMind's surface-distance: the larger of the two directed 95th percentiles.
        "hd95_um": float(max(np.percentile(dist_to_true, 95), np.percentile(dist_to_pred, 95))),
        "hd_um": float(max(dist_to_true.max(), dist_to_pred.max())),
        "assd_um": float((dist_to_true.sum() + dist_to_pred.sum()) / (dist_to_true.size + dist_to_pred.size)),
        "surface_dice": float(within / (dist_to_true.size + dist_to_pred.size)),
    }


def surface_scores(prediction, truth, *, spacing, tolerance_um: float = 2.0, threshold: float = 0.5) -> dict:
    """Boundary distances in micrometres and the surface Dice at a tolerance.

    A surface is the set of foreground voxels with at least one background face neighbour (the mask
    minus its erosion). Distances between the two surfaces are Euclidean in micrometres, using the
    voxel ``spacing``, so one plane of error along z weighs more than one pixel in-plane.

    Parameters
    ----------
    prediction, truth, threshold
        As in :func:`confusion_counts`.
    spacing : tuple of 3 floats
        Voxel size (z, y, x) in micrometres.
    tolerance_um : float
        Surface points closer than this to the other surface count as correct for the surface Dice.

    Returns
    -------
    dict
        ``hd95_um``: the larger of the two directed 95th percentiles of surface-to-surface distances;
        ``hd_um``: the Hausdorff distance (maximum); ``assd_um``: mean of all surface distances in both
        directions; ``surface_dice``: the fraction of both surfaces lying within ``tolerance_um`` of the
        other (Nikolov et al. 2018, arXiv:1809.04430; here each surface voxel counts once rather than
        by its surface area as in their implementation).
        If both masks are empty: distances 0.0 and surface Dice 1.0 (perfect agreement, like Dice);
        if exactly one is empty: distances ``inf`` and surface Dice 0.0.
    """
    pred, true, _ = _prepare(prediction, truth, threshold)
    return _surface_scores(pred, true, spacing=check_spacing(spacing), tolerance_um=tolerance_um)


# -------- everything at once ----------------------------------------------------------
def evaluate(prediction, truth, *, spacing, threshold: float = 0.5, mask=None, tolerance_um: float = 2.0,
             min_iou: float = 0.5, min_size_voxels: int = 0, connectivity: int = 1) -> dict:
    """All scores of this module in one flat dict (one table row per method in the book).

    Parameters
    ----------
    prediction, truth, threshold
        As in :func:`confusion_counts`.
    spacing : tuple of 3 floats
        Voxel size (z, y, x) in micrometres.
    mask : bool ndarray of shape (Z, Y, X), optional
        Restricts the *voxel* scores only; object and surface scores always use the whole volume,
        because cutting objects or surfaces with a mask would invent boundaries.
    tolerance_um, min_iou, min_size_voxels, connectivity
        Passed to :func:`surface_scores` and :func:`object_scores`.

    Returns
    -------
    dict
        The keys of :func:`segmentation_scores`; ``object_precision``, ``object_recall``, ``object_f1``,
        ``n_true_objects``, ``n_pred_objects``, ``n_matched_objects``, ``mean_matched_iou``; and the
        keys of :func:`surface_scores`.
    """
    pred, true, region = _prepare(prediction, truth, threshold, mask)
    spacing = check_spacing(spacing)
    result = scores_from_counts(_counts(pred, true, region))
    objects = _object_scores(pred, true, min_iou=min_iou, min_size_voxels=min_size_voxels,
                             connectivity=connectivity)
    result.update({f"object_{key}": objects[key] for key in ("precision", "recall", "f1")})
    result.update({f"n_{key}_objects": objects[f"n_{key}"] for key in ("true", "pred", "matched")})
    result["mean_matched_iou"] = objects["mean_matched_iou"]
    result.update(_surface_scores(pred, true, spacing=spacing, tolerance_um=tolerance_um))
    return result
