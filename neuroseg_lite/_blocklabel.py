"""Connected components and per-object sums of a dask array, block by block (the engine of ``objects``).

Introduced in chapter 10 (``10_whole_sample``), behind :mod:`neuroseg_lite.objects`. Each block is labelled
on its own (``scipy.ndimage.label``); object j of block b gets the provisional id ``b * 2**32 + j``, so no
block needs to know how many objects the others hold. Objects that touch across a block face, edge or corner
are joined by a union (scipy's connected components on the pairs of provisional ids that touch), and the final
labels are written lazily by labelling each block again and mapping it with its own small lookup table. The
task graph stays at a few tasks per block (``dask_image.ndmeasure.label`` built about a thousand per block on a
(16, 64, 64) volume in (4, 16, 16) chunks, and took 20 s where this takes 0.4 s). Per-object statistics (voxel
count, coordinate sums, bounding box, probability sum) are computed per block and merged, so only one block and
small tables are ever in memory (a block's labels are kept until its neighbours' contact pairs are found).
"""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["STRUCTURES", "components", "final_labels", "object_stats"]

STRUCTURES = {1: ndimage.generate_binary_structure(3, 1), 3: ndimage.generate_binary_structure(3, 3)}
STAT_FIELDS = ["id", "n", "sz", "sy", "sx", "z0", "y0", "x0", "z1", "y1", "x1", "psum"]

_BLOCK_BITS = 32


def _local_label(block, structure):
    return ndimage.label(np.asarray(block, dtype=bool), structure=structure)[0]


def _neighbour_offsets(connectivity: int):
    """Block offsets whose blocks can touch a block, each pair once (first non-zero component +1)."""
    if connectivity == 1:
        return [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    offsets = [tuple(int(v) - 1 for v in o) for o in np.ndindex(3, 3, 3)]
    return [o for o in offsets if any(o) and next(v for v in o if v) == 1]


def _touching_pairs(first, second, offset, base_first, base_second, connectivity):
    """Provisional id pairs of objects of two neighbouring blocks (``second`` at ``offset``) that touch."""
    region_a, region_b, free = [], [], []
    for axis, o in enumerate(offset):
        if o == 1:
            region_a.append(slice(-1, None)), region_b.append(slice(0, 1))
        elif o == -1:
            region_a.append(slice(0, 1)), region_b.append(slice(-1, None))
        else:
            region_a.append(slice(None)), region_b.append(slice(None)), free.append(axis)
    a, b = first[tuple(region_a)], second[tuple(region_b)]
    shifts = [(0,) * len(free)] if connectivity == 1 else list(np.ndindex(*(3,) * len(free)))
    found = []
    for shift in shifts:
        sl_a, sl_b = [slice(None)] * 3, [slice(None)] * 3
        for axis, s in zip(free, shift):
            s = int(s) - (0 if connectivity == 1 else 1)
            sl_a[axis] = slice(max(-s, 0), a.shape[axis] - max(s, 0))
            sl_b[axis] = slice(max(s, 0), b.shape[axis] - max(-s, 0))
        pa, pb = a[tuple(sl_a)].ravel(), b[tuple(sl_b)].ravel()
        both = (pa > 0) & (pb > 0)
        found.append(np.stack([pa[both].astype(np.int64) + base_first, pb[both].astype(np.int64) + base_second]))
    return np.unique(np.concatenate(found, axis=1), axis=1) if found else np.zeros((2, 0), np.int64)


def _block_stats(labels, probability, offset, base=0):
    """Partial sums of every object in one block: counts, coordinate sums, bbox, probability sum."""
    labels = np.asarray(labels)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return {key: np.zeros(0, np.float64 if key in ("sz", "sy", "sx", "psum") else np.int64)
                for key in STAT_FIELDS}
    ids = flat[where].astype(np.int64)
    order = np.argsort(ids, kind="stable")
    ids, where = ids[order], where[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    coords = [c.astype(np.int64) + o for c, o in zip(np.unravel_index(where, labels.shape), offset)]
    out = {"id": ids[starts] + base, "n": np.diff(np.r_[starts, ids.size])}
    for axis, c in zip("zyx", coords):
        out[f"s{axis}"] = np.add.reduceat(c.astype(np.float64), starts)
        out[f"{axis}0"] = np.minimum.reduceat(c, starts)
        out[f"{axis}1"] = np.maximum.reduceat(c, starts) + 1
    if probability is None:
        out["psum"] = np.full(starts.size, np.nan)
    else:
        values = np.asarray(probability).ravel()[where].astype(np.float64)
        out["psum"] = np.add.reduceat(values / 255.0 if probability.dtype == np.uint8 else values, starts)
    return out


def _merge_stats(parts, groups=None) -> pd.DataFrame:
    """Merge partial sums by ``id`` (or by ``groups``, one entry per row of the concatenated parts)."""
    stats = pd.DataFrame({key: np.concatenate([p[key] for p in parts]) for key in STAT_FIELDS})
    key = stats["id"] if groups is None else pd.Series(groups, name="id")
    how = {k: "sum" for k in ("n", "sz", "sy", "sx")}
    how.update({f"{a}0": "min" for a in "zyx"})
    how.update({f"{a}1": "max" for a in "zyx"})
    merged = stats.groupby(key.to_numpy(), sort=True).agg(how)
    # min_count keeps NaN probability sums NaN (pandas would sum them to 0).
    merged["psum"] = stats["psum"].groupby(key.to_numpy(), sort=True).sum(min_count=1)
    return merged.rename_axis("id").reset_index()


def _offsets(chunks, index):
    return tuple(int(sum(c[:i])) for c, i in zip(chunks, index))


def _prob_blocks(probability, chunks, n):
    return [None] * n if probability is None else list(probability.rechunk(chunks).to_delayed().ravel())


def object_stats(labels: da.Array, probability: da.Array | None = None) -> pd.DataFrame:
    """Per-object sums of existing labels over the whole volume, merged from per-block partial sums."""
    blocks = list(labels.to_delayed().ravel())
    probs = _prob_blocks(probability, labels.chunks, len(blocks))
    tasks = [dask.delayed(_block_stats)(lab, prob, _offsets(labels.chunks, index))
             for lab, prob, index in zip(blocks, probs, np.ndindex(*labels.numblocks))]
    return _merge_stats(dask.compute(*tasks))


def components(fg: da.Array, structure, connectivity, probability=None):
    """(per-object stats with provisional ``id`` and merged ``comp``, per-row comp) in one pass."""
    grid = fg.numblocks
    flat_index = {index: i for i, index in enumerate(np.ndindex(*grid))}
    blocks = fg.to_delayed()
    local = {index: dask.delayed(_local_label)(blocks[index], structure) for index in flat_index}
    probs = _prob_blocks(probability, fg.chunks, len(flat_index))
    stat_tasks = [dask.delayed(_block_stats)(local[index], probs[i], _offsets(fg.chunks, index),
                                             i << _BLOCK_BITS) for index, i in flat_index.items()]
    pair_tasks = []
    for index, i in flat_index.items():
        for offset in _neighbour_offsets(connectivity):
            other = tuple(a + o for a, o in zip(index, offset))
            if other in flat_index:
                pair_tasks.append(dask.delayed(_touching_pairs)(local[index], local[other], offset, i << _BLOCK_BITS,
                                                                flat_index[other] << _BLOCK_BITS, connectivity))
    parts, pairs = dask.compute(stat_tasks, pair_tasks)
    codes = np.concatenate([p["id"] for p in parts])
    pairs = np.concatenate([np.zeros((2, 0), np.int64), *pairs], axis=1)
    node_of = np.searchsorted(codes, pairs)  # codes are sorted: blocks in order, local ids in order
    n = codes.size
    graph = coo_matrix((np.ones(pairs.shape[1]), (node_of[0], node_of[1])), shape=(n, n))
    # Components are numbered from the lowest node up, i.e. in scan order of the objects' first block.
    _, comp = connected_components(graph, directed=False) if n else (0, np.zeros(0, int))
    return _merge_stats(parts, groups=comp), codes, comp


def _apply_lut(block, lut, structure):
    return lut[_local_label(block, structure)]


def final_labels(fg: da.Array, structure, codes, final_of_code) -> da.Array:
    """Lazy int32 labels: each block labelled again and mapped by its own lookup table (local id -> final)."""
    blocks_of = codes >> _BLOCK_BITS
    name = "neuron-labels-" + dask.base.tokenize(fg, codes, final_of_code)
    layer = {}
    for i, index in enumerate(np.ndindex(*fg.numblocks)):
        lo, hi = np.searchsorted(blocks_of, [i, i + 1])
        lut = np.zeros(hi - lo + 1, np.int32)
        lut[(codes[lo:hi] & ((1 << _BLOCK_BITS) - 1))] = final_of_code[lo:hi]
        layer[(name, *index)] = (_apply_lut, (fg.name, *index), lut, structure)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[fg])
    return da.Array(graph, name, chunks=fg.chunks, dtype=np.int32)
