"""Neurons as objects in a whole sample: labelling, a table of neurons, counts, densities and matching.

Introduced in chapter 10 (``10_whole_sample``). A segmentation of a whole sample is larger than memory, so
everything here works block by block on dask arrays (numpy and zarr arrays are wrapped): nothing ever holds
the whole volume, only one block at a time plus small per-object tables.

- :func:`label_neurons` turns a mask or probability into instance labels: connected components across blocks
  (``scipy.ndimage.label`` labels each block, then the labels that touch across block faces are merged by a
  union-find in ``neuroseg_lite._blocklabel``),
  an optional watershed split of touching somata, then a size filter in µm³.
- :func:`neuron_table` gives one row per neuron (centroid, volume, bounding box, mean probability) from
  per-block partial sums merged at the end.
- :func:`count_neurons` does both and adds the count and the density per mm³; :func:`density_map` bins the
  neurons in (y, x) for a figure.
- :func:`match_centroids` scores found against true neuron positions (precision, recall, F1, count error);
  :func:`write_table` saves a table as CSV or Parquet.

Conventions: axes (Z, Y, X), spacing (z, y, x) in micrometres, positions in µm from the centre of voxel
(0, 0, 0) (as ``synth.SynthVolume.soma_centers_um``), bounding boxes in voxels with exclusive ends.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from neuroseg_lite._blocklabel import STRUCTURES, components, final_labels, object_stats
from neuroseg_lite._checks import NeurosegInputError, check_spacing
from neuroseg_lite.cache import atomic_write

__all__ = ["DEFAULT_MIN_VOLUME_UM3", "label_neurons", "neuron_table", "NeuronCount", "count_neurons",
           "match_centroids", "density_map", "write_table"]

#: The volume of a sphere 5 µm across; smaller fragments are noise or slivers of cells cut by the stack's faces.
DEFAULT_MIN_VOLUME_UM3 = 4.0 / 3.0 * math.pi * 2.5 ** 3

TABLE_COLUMNS = ["id", "z_um", "y_um", "x_um", "volume_um3", "diameter_um", "z0", "y0", "x0", "z1", "y1", "x1",
                 "n_voxels", "mean_probability", "on_border"]


# -------- input handling --------------------------------------------------------------
def _as_dask(array, *, name: str, chunks=None) -> da.Array:
    """A lazy (Z, Y, X) dask array of ``array``: dask as it is, zarr by its own chunks, numpy as one block."""
    if isinstance(array, da.Array):
        arr = array
    else:
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):
            array = np.asarray(array)
        own = getattr(array, "chunks", None)
        if isinstance(array, np.ndarray) or not isinstance(own, tuple):
            own = array.shape  # an in-memory array: one block, i.e. the whole-array computation
        arr = da.from_array(array, chunks=own)
    if arr.ndim != 3:
        hint = f" For a single 2D slice use {name}[np.newaxis] to make a (1, Y, X) stack." if arr.ndim == 2 else ""
        raise NeurosegInputError(
            f"{name} must be a 3D array in (Z, Y, X) order, got {arr.ndim}D with shape {arr.shape}.{hint}")
    if arr.size == 0:
        raise NeurosegInputError(f"{name} is empty (shape {arr.shape}); every axis needs at least one voxel.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise NeurosegInputError(f"{name} has dtype {arr.dtype}; pass a numeric (integer, float or bool) array.")
    return arr.rechunk(chunks) if chunks is not None else arr


def _foreground(arr: da.Array, threshold: float) -> tuple[da.Array, bool]:
    """(lazy bool mask, whether the input is a probability)."""
    if arr.dtype == bool:
        return arr, False
    if not np.isfinite(threshold):
        raise NeurosegInputError(f"threshold must be a finite number, got {threshold!r}.")
    if np.issubdtype(arr.dtype, np.floating):
        return arr >= threshold, True
    # predict_large stores probabilities as uint8 0..255 beside a uint8 0/1 mask; only the values tell them
    # apart, at the price of one cheap pass (a maximum) over the data.
    if arr.dtype == np.uint8 and int(arr.max().compute()) > 1:
        return arr >= threshold * 255.0, True
    return arr >= threshold, False


def _check_nonnegative(value, *, name: str, fix: str, positive: bool = False) -> float:
    bound = "> 0" if positive else ">= 0"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0 or (positive and number == 0):
        raise NeurosegInputError(f"{name} must be a finite number {bound}, got {value!r}; {fix}")
    return number


# -------- watershed split of touching somata ------------------------------------------
def _split_block(block, *, spacing, split_depth_um: float, connectivity: int):
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = np.asarray(block, dtype=bool)
    if not mask.any():
        return mask
    distance = ndimage.distance_transform_edt(mask, sampling=spacing)
    # One marker per regional maximum of the distance at least split_depth_um deeper than the saddle to any
    # higher one: the neck between two touching somata makes such a saddle, the voxel grid's ripples do not.
    markers, _ = ndimage.label(h_maxima(distance, split_depth_um), structure=STRUCTURES[3])
    basins = watershed(-distance, markers, mask=mask, connectivity=connectivity, watershed_line=True)
    return basins > 0


def _fill_lines(labels, mask, *, structure):
    # The watershed lines were foreground: give each line voxel the largest neighbouring label back.
    grown = ndimage.grey_dilation(labels, footprint=structure)
    return np.where((labels == 0) & mask, grown, labels)


def _split_touching(fg: da.Array, *, spacing, max_soma_diameter_um: float, split_depth_um: float,
                    connectivity: int) -> da.Array:
    """Foreground with one-voxel watershed lines cut between touching somata (computed with an overlap)."""
    # The distance to the background inside a soma reaches at most its radius, and a soma's basin extends at
    # most one diameter from its marker, so an overlap of the largest diameter lets each block see what
    # decides its own voxels, and neighbouring blocks cut the same lines.
    depth = tuple(int(math.ceil(max_soma_diameter_um / s)) for s in spacing)
    depth = tuple(min(d, n - 1) for d, n in zip(depth, fg.shape))
    return fg.map_overlap(_split_block, depth=depth, boundary="none", dtype=bool, spacing=spacing,
                          split_depth_um=split_depth_um, connectivity=connectivity)


def _table(stats: pd.DataFrame, *, spacing, shape) -> pd.DataFrame:
    n = stats["n"].to_numpy(np.float64)
    volume = n * float(np.prod(spacing))
    table = pd.DataFrame({"id": stats["id"].to_numpy(np.int64)})
    for axis, s in zip("zyx", spacing):
        table[f"{axis}_um"] = stats[f"s{axis}"].to_numpy(np.float64) / np.maximum(n, 1) * s
    table["volume_um3"] = volume
    table["diameter_um"] = np.cbrt(6.0 * volume / math.pi)
    for key in ("z0", "y0", "x0", "z1", "y1", "x1"):
        table[key] = stats[key].to_numpy(np.int64)
    table["n_voxels"] = stats["n"].to_numpy(np.int64)
    table["mean_probability"] = stats["psum"].to_numpy(np.float64) / np.maximum(n, 1)
    low = (table[["z0", "y0", "x0"]].to_numpy() == 0).any(axis=1)
    high = (table[["z1", "y1", "x1"]].to_numpy() == np.asarray(shape)).any(axis=1)
    table["on_border"] = low | high
    return table[TABLE_COLUMNS]


def _segment(mask, *, spacing, threshold, split_touching, connectivity, max_soma_diameter_um, split_depth_um,
             min_volume_um3, chunks, with_probability: bool):
    """(lazy final labels, stats of the kept objects by final id, input as dask, whether it is a probability)."""
    if connectivity not in STRUCTURES:
        raise NeurosegInputError(
            f"connectivity must be 1 (6 face neighbours) or 3 (26 neighbours), got {connectivity!r}.")
    min_volume_um3 = _check_nonnegative(min_volume_um3, name="min_volume_um3", fix="use 0 to keep every object.")
    spacing = check_spacing(spacing)
    arr = _as_dask(mask, name="mask", chunks=chunks)
    fg, is_probability = _foreground(arr, threshold)
    structure = STRUCTURES[connectivity]
    source = fg
    if split_touching:
        max_d = _check_nonnegative(max_soma_diameter_um, name="max_soma_diameter_um", positive=True,
                                   fix="give the diameter of the largest soma in µm (e.g. 25).")
        depth_um = _check_nonnegative(split_depth_um, name="split_depth_um",
                                      fix="give how much deeper than a neck a soma centre must be, in µm (e.g. 1).")
        source = _split_touching(fg, spacing=spacing, max_soma_diameter_um=max_d, split_depth_um=depth_um,
                                 connectivity=connectivity)
    prob = arr if (with_probability and is_probability and not split_touching) else None
    stats, codes, comp = components(source, structure, connectivity, prob)
    keep = stats["n"].to_numpy() * float(np.prod(spacing)) >= min_volume_um3
    final_of_comp = np.zeros(len(stats), np.int32)
    final_of_comp[keep] = np.arange(1, int(keep.sum()) + 1)
    kept = stats[keep].reset_index(drop=True)
    kept["id"] = np.arange(1, len(kept) + 1)
    labels = final_labels(source, structure, codes, final_of_comp[comp])
    if split_touching:
        labels = da.map_overlap(_fill_lines, labels, fg, depth=1, boundary="none", dtype=np.int32,
                                structure=structure)
    return labels, kept, arr, is_probability


# -------- public API -----------------------------------------------------------------
def label_neurons(mask, *, spacing, min_volume_um3: float = 0.0, split_touching: bool = False,
                  connectivity: int = 1, threshold: float = 0.5, max_soma_diameter_um: float = 25.0,
                  split_depth_um: float = 1.0, chunks=None) -> tuple[da.Array, int]:
    """Instance labels of the neurons in a mask or probability, block by block.

    Connected components are found per block and merged where they touch across block faces, edges and
    corners (see :mod:`neuroseg_lite._blocklabel`), so a neuron spread over many blocks gets one id whatever
    the chunks.
    Optionally touching somata are split first, then objects smaller than ``min_volume_um3`` are dropped
    and the rest renumbered 1..n in scan order of their first block.

    Parameters
    ----------
    mask : ndarray, dask array or zarr array of shape (Z, Y, X)
        Bool mask, 0/1 integers, instance labels, or a probability: foreground is ``mask >= threshold``;
        a uint8 array holding values above 1 is a probability scaled by 255 (as ``scale.predict_large``
        writes it), foreground ``mask >= 255 * threshold``. A numpy array is one block (the whole-array
        computation) unless ``chunks`` is given; zarr arrays are read by their own chunks.
    spacing : tuple of 3 floats
        Voxel size (z, y, x) in micrometres.
    min_volume_um3 : float
        Objects smaller than this (in µm³) are dropped.
    split_touching : bool
        Split touching somata with a watershed of the distance transform (in µm) from its h-maxima. It runs
        block-wise with an overlap of ``max_soma_diameter_um`` on every side (blocks smaller than that are
        merged by dask first), which lets neighbouring blocks agree on the cut; somata larger than that may
        be cut differently at block borders. Objects thinner than ``2 * split_depth_um`` get no marker and
        vanish.
    connectivity : {1, 3}
        1 = 6 face neighbours (objects touching only at an edge or corner stay separate), 3 = 26.
    threshold : float
    max_soma_diameter_um : float
        Largest soma diameter expected; sets the overlap of the split.
    split_depth_um : float
        How much deeper than the neck between them two soma centres must lie (in the distance transform)
        to be split.
    chunks : tuple of 3 ints, optional
        Rechunk the input to these blocks first.

    Returns
    -------
    labels : dask array of shape (Z, Y, X), int32
        Lazy: store it (e.g. ``labels.to_zarr``) or compute it block by block.
    n : int
        Number of objects (ids 1..n).
    """
    labels, kept, _, _ = _segment(mask, spacing=spacing, threshold=threshold, split_touching=split_touching,
                                  connectivity=connectivity, max_soma_diameter_um=max_soma_diameter_um,
                                  split_depth_um=split_depth_um, min_volume_um3=min_volume_um3, chunks=chunks,
                                  with_probability=False)
    return labels, len(kept)


def neuron_table(labels, *, spacing, probability=None) -> pd.DataFrame:
    """One row per labelled object, computed from per-block partial sums (never the whole volume).

    Parameters
    ----------
    labels : ndarray, dask array or zarr array of shape (Z, Y, X), integer
        Instance labels (0 = background), e.g. from :func:`label_neurons`.
    spacing : tuple of 3 floats
        Voxel size (z, y, x) in micrometres.
    probability : array of shape (Z, Y, X), optional
        Float probability, or uint8 scaled by 255 (divided by 255 here).

    Returns
    -------
    pandas.DataFrame
        Columns ``id``; ``z_um``, ``y_um``, ``x_um`` (centroid in µm from voxel (0, 0, 0)); ``volume_um3``;
        ``diameter_um`` (of the sphere of that volume); ``z0, y0, x0, z1, y1, x1`` (bounding box in voxels,
        ends exclusive); ``n_voxels``; ``mean_probability`` (NaN without ``probability``); ``on_border``
        (the box touches a face of the volume: the neuron may be cut off). Sorted by id.
    """
    spacing = check_spacing(spacing)
    arr = _as_dask(labels, name="labels")
    if not np.issubdtype(arr.dtype, np.integer):
        raise NeurosegInputError(
            f"labels must be integer instance labels, got dtype {arr.dtype}; make them with "
            "label_neurons(mask, spacing=...) first.")
    prob = None
    if probability is not None:
        prob = _as_dask(probability, name="probability")
        if prob.shape != arr.shape:
            raise NeurosegInputError(
                f"probability has shape {prob.shape} but labels have shape {arr.shape}; pass the probability "
                "of the same stack.")
        if np.issubdtype(prob.dtype, np.integer) and prob.dtype != np.uint8:
            raise NeurosegInputError(
                f"probability must be float (0..1) or uint8 (0..255), got {prob.dtype}.")
    return _table(object_stats(arr, prob), spacing=spacing, shape=arr.shape)


@dataclasses.dataclass
class NeuronCount:
    """What :func:`count_neurons` found.

    Attributes
    ----------
    table : pandas.DataFrame
        :func:`neuron_table` of the kept neurons (ids as in ``labels``).
    count : int
    volume_mm3 : float
        Volume of the whole stack.
    density_per_mm3 : float
        ``count / volume_mm3``.
    labels : dask array of shape (Z, Y, X), int32
        The lazy instance labels (store them with ``labels.to_zarr`` or ``zarrio.create_labels``).
    spacing : tuple of 3 floats
    """

    table: pd.DataFrame = dataclasses.field(repr=False)
    count: int
    volume_mm3: float
    density_per_mm3: float
    labels: da.Array | None = dataclasses.field(default=None, repr=False)
    spacing: tuple[float, float, float] | None = None


def count_neurons(prediction, *, spacing, threshold: float = 0.5, min_volume_um3: float = DEFAULT_MIN_VOLUME_UM3,
                  split_touching: bool = False, connectivity: int = 1, max_soma_diameter_um: float = 25.0,
                  split_depth_um: float = 1.0, chunks=None) -> NeuronCount:
    """Label the neurons of a prediction, tabulate them and give their number per mm³.

    One pass of labelling and per-block statistics; see :func:`label_neurons` for the parameters. When
    ``prediction`` is a probability the table's ``mean_probability`` is filled. Every object counts,
    including those cut by the stack's faces (``table.on_border``).

    Parameters
    ----------
    prediction : ndarray, dask array or zarr array of shape (Z, Y, X)
    spacing, threshold, min_volume_um3, split_touching, connectivity, max_soma_diameter_um, split_depth_um, chunks
        As in :func:`label_neurons` (``min_volume_um3`` defaults to a 5 µm sphere).

    Returns
    -------
    NeuronCount
    """
    spacing = check_spacing(spacing)
    labels, kept, arr, is_probability = _segment(
        prediction, spacing=spacing, threshold=threshold, split_touching=split_touching, connectivity=connectivity,
        max_soma_diameter_um=max_soma_diameter_um, split_depth_um=split_depth_um, min_volume_um3=min_volume_um3,
        chunks=chunks, with_probability=True)
    if split_touching:
        # The first pass counted the objects without their cut lines; tabulate the final labels again.
        table = neuron_table(labels, spacing=spacing, probability=arr if is_probability else None)
    else:
        table = _table(kept, spacing=spacing, shape=arr.shape)
    volume_mm3 = float(np.prod(arr.shape) * np.prod(spacing)) * 1e-9
    return NeuronCount(table=table, count=len(table), volume_mm3=volume_mm3,
                       density_per_mm3=len(table) / volume_mm3, labels=labels, spacing=spacing)


def _points(points, *, name: str) -> np.ndarray:
    if isinstance(points, pd.DataFrame):
        missing = [c for c in ("z_um", "y_um", "x_um") if c not in points.columns]
        if missing:
            raise NeurosegInputError(f"{name} has no column(s) {missing}; pass a neuron table or an (N, 3) array.")
        points = points[["z_um", "y_um", "x_um"]].to_numpy(np.float64)
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise NeurosegInputError(
            f"{name} must be an (N, 3) array of (z, y, x) positions in µm, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise NeurosegInputError(f"{name} contains NaN or Inf positions; drop those rows first.")
    return arr


def _ratio(numerator: float, denominator: float) -> float:
    # As in metrics: an empty denominator scores 1.0 (nothing predicted -> no false positive, and so on).
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def _assign(found: np.ndarray, true: np.ndarray, radius: float):
    """Pairs (i, j, distance) of a one-to-one matching with the most pairs within radius, then least distance."""
    if len(found) == 0 or len(true) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    near = cKDTree(found).sparse_distance_matrix(cKDTree(true), radius, output_type="ndarray")
    rows, cols, dist = near["i"].astype(int), near["j"].astype(int), near["v"].astype(float)
    if rows.size == 0:
        return rows, cols, dist
    n_f = len(found)
    graph = coo_matrix((np.ones(rows.size), (rows, cols + n_f)), shape=(n_f + len(true),) * 2)
    _, component = connected_components(graph, directed=False)
    edge_comp = component[rows]
    out_r, out_c, out_d = [], [], []
    # Each cluster of nearby points is assigned on its own (exact, and small in any real tissue).
    for comp in np.unique(edge_comp):
        sel = np.flatnonzero(edge_comp == comp)
        r_ids, r_of = np.unique(rows[sel], return_inverse=True)
        c_ids, c_of = np.unique(cols[sel], return_inverse=True)
        # Non-neighbours cost more than all real pairs together, so the assignment first maximises the
        # number of real pairs, then minimises their total distance.
        big = (radius + 1.0) * (sel.size + 1)
        cost = np.full((r_ids.size, c_ids.size), big)
        cost[r_of, c_of] = dist[sel]
        ri, ci = linear_sum_assignment(cost)
        real = cost[ri, ci] < big
        out_r.append(r_ids[ri[real]])
        out_c.append(c_ids[ci[real]])
        out_d.append(cost[ri[real], ci[real]])
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_d)


def match_centroids(found_um, true_um, *, radius_um: float, return_pairs: bool = False) -> dict:
    """One-to-one matching of found and true neuron positions within a radius, and detection scores.

    Pairs closer than ``radius_um`` (inclusive) are candidates (found with a KD-tree); the matching
    maximises the number of pairs, then minimises their total distance (Hungarian assignment,
    ``scipy.optimize.linear_sum_assignment``, per cluster of mutually near points), so it never loses a
    match the way greedy closest-first matching can.

    Parameters
    ----------
    found_um, true_um : ndarray of shape (N, 3) or pandas.DataFrame
        Positions (z, y, x) in µm; a table with ``z_um``, ``y_um``, ``x_um`` columns is accepted.
    radius_um : float
        Largest centroid distance of a match, e.g. a soma radius.
    return_pairs : bool
        Also return ``pairs``: an (M, 2) int array of matched (found row, true row).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` (ints); ``precision``, ``recall``, ``f1`` (1.0 on empty denominators, as in
        ``metrics``); ``count_error`` = found - true; ``relative_count_error`` = count_error / true (0.0 when
        both are empty, inf when only the truth is); ``mean_distance_um`` of the matches (NaN if none).

    Examples
    --------
    >>> found = [[0, 0, 1.0], [0, 0, 9.0], [0, 30, 0]]
    >>> true = [[0, 0, 0.0], [0, 0, 10.0]]
    >>> scores = match_centroids(found, true, radius_um=3.0)
    >>> scores["tp"], scores["fp"], scores["fn"], scores["count_error"]
    (2, 1, 0, 1)
    """
    found, true = _points(found_um, name="found_um"), _points(true_um, name="true_um")
    radius = _check_nonnegative(radius_um, name="radius_um", fix="give the match radius in µm, e.g. 5.")
    rows, cols, dist = _assign(found, true, radius)
    tp, n_f, n_t = int(rows.size), len(found), len(true)
    error = n_f - n_t
    result = {"tp": tp, "fp": n_f - tp, "fn": n_t - tp, "precision": _ratio(tp, n_f), "recall": _ratio(tp, n_t),
              "f1": _ratio(2 * tp, n_f + n_t), "count_error": int(error),
              "relative_count_error": float(error / n_t) if n_t else (0.0 if error == 0 else float("inf")),
              "mean_distance_um": float(dist.mean()) if tp else float("nan")}
    if return_pairs:
        result["pairs"] = np.stack([rows, cols], axis=1).reshape(-1, 2)
    return result


def density_map(table, *, shape, spacing, bin_um: float = 50.0) -> tuple[np.ndarray, tuple]:
    """Neurons per mm³ in (y, x) bins over the whole depth, for a figure (``plt.imshow(d, extent=extent)``).

    Parameters
    ----------
    table : pandas.DataFrame
        With ``y_um`` and ``x_um`` columns (a :func:`neuron_table`).
    shape : tuple of 3 ints
        (Z, Y, X) of the stack.
    spacing : tuple of 3 floats
        Voxel size (z, y, x) in micrometres.
    bin_um : float
        Side of a bin in µm; the last bin of each axis ends at the stack's edge (its volume is smaller).

    Returns
    -------
    density : ndarray of shape (n_y, n_x)
        Neurons per mm³ of each bin (count / bin volume).
    extent : tuple of 4 floats
        (left, right, bottom, top) in µm for ``imshow`` with the default ``origin="upper"``.
    """
    spacing = check_spacing(spacing)
    if len(tuple(shape)) != 3 or not all(int(n) == n and n > 0 for n in shape):
        raise NeurosegInputError(f"shape must be three positive integers (Z, Y, X), got {shape!r}.")
    bin_um = _check_nonnegative(bin_um, name="bin_um", fix="give the bin side in µm, e.g. 50.", positive=True)
    points = _points(table[["y_um", "x_um"]].assign(z_um=0.0)[["z_um", "y_um", "x_um"]]
                     if isinstance(table, pd.DataFrame) else table, name="table")
    edges = []
    for n, s in zip(shape[1:], spacing[1:]):
        low, high = -0.5 * s, (n - 0.5) * s  # the field of view, voxel faces included
        edges.append(np.r_[np.arange(low, high, bin_um), high])
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 2], bins=edges)
    volume_mm3 = np.outer(np.diff(edges[0]), np.diff(edges[1])) * shape[0] * spacing[0] * 1e-9
    extent = (float(edges[1][0]), float(edges[1][-1]), float(edges[0][-1]), float(edges[0][0]))
    return counts / volume_mm3, extent


def write_table(table, path, *, overwrite: bool = False) -> Path:
    """Write a table atomically as CSV or Parquet, chosen by the suffix of ``path``.

    Parameters
    ----------
    table : pandas.DataFrame
    path : str or Path
        Ending in ``.csv`` or ``.parquet`` (Parquet needs pyarrow).
    overwrite : bool
        Replace an existing file; without it an existing file is refused.

    Returns
    -------
    Path
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise NeurosegInputError(f"{path} must end in .csv or .parquet, got suffix {path.suffix!r}.")
    if path.exists() and not overwrite:
        raise NeurosegInputError(f"{path} already exists; pass overwrite=True to replace it, or choose another path.")
    if suffix == ".parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise NeurosegInputError(
                f"writing {path.name} needs pyarrow, which is not installed; run `pip install pyarrow`, or "
                "write a .csv file instead.")
        return atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
