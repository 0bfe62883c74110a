"""The exact block-wise form of sliding-window prediction: global tile plan, global intensity range, one block.

Introduced in chapter 10 (``10_whole_sample``). :mod:`neuroseg_lite.scale` splits a stack too big for memory
into output blocks and predicts them in parallel; this module holds the pieces that make the result equal to
:func:`neuroseg_lite.infer.predict_volume` on the whole stack, not merely close to it:

- one *global* tile plan (:class:`TilePlan`), the one predict_volume builds for the whole shape. A block runs
  only the tiles that intersect it and reads the input region those tiles cover: the halo is where the tiles
  reach, derived from the plan rather than guessed. Each tile then sees exactly the voxels (and reflection
  padding at the stack border) it sees in a whole-stack pass, and the blended output is divided by the same
  separable weight sums;
- the *global* intensity range (:func:`intensity_range`): the percentiles io.normalize_percentile would take
  of the whole stack, found block by block. Normalising each block by its own percentiles would shift
  intensities from block to block and leave seams.

The price is that tiles overlapping two blocks run once for each: about ``(block + tile) / block`` times the
work along each axis, which is why blocks should be several tiles wide.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.infer import _AxisPlan, _plan_axis, _resolve_divisor, _resolve_tile, gaussian_window
from neuroseg_lite.intensity import IntensityNormalization

__all__ = ["TilePlan", "make_plan", "block_regions", "intensity_range", "normalize_block", "predict_block"]

# Stacks up to this many float voxels are loaded whole for an exact percentile; above, a histogram is used.
_EXACT_FLOAT_VOXELS = 1 << 26
_FLOAT_BINS = 1 << 20
# Voxels read at a time by intensity_range.
_SCAN_VOXELS = 1 << 22


@dataclass(frozen=True)
class TilePlan:
    """predict_volume's tiling of a whole (Z, Y, X) stack: tile size, per-axis tile sources and weight sums."""

    shape: tuple[int, int, int]
    tile: tuple[int, int, int]
    windows: tuple[np.ndarray, np.ndarray, np.ndarray]  # per axis, (tile,) Gaussian window
    axes: tuple[_AxisPlan, _AxisPlan, _AxisPlan]

    def halo(self) -> tuple[int, int, int]:
        """How far (voxels) a tile intersecting a block can reach beyond it, per axis: tile - 1."""
        return tuple(t - 1 for t in self.tile)

    def tiles_for(self, region) -> list[list[int]]:
        """Per axis, the indices of the tiles whose voxels intersect ``region`` (3 slices)."""
        return [[i for i, (start, count, _) in enumerate(axis.sources) if start < r.stop and start + count > r.start]
                for axis, r in zip(self.axes, region)]

    def input_region(self, region) -> tuple[slice, slice, slice]:
        """The input voxels that the tiles intersecting ``region`` read (region plus its halo, clipped)."""
        out = []
        for axis, indices in zip(self.axes, self.tiles_for(region)):
            sources = [axis.sources[i] for i in indices]
            out.append(slice(min(s for s, _, _ in sources), max(s + n for s, n, _ in sources)))
        return tuple(out)


def make_plan(shape, network, *, tile=None, overlap: float = 0.25, sigma_scale: float = 0.125) -> TilePlan:
    """The global tile plan :func:`~neuroseg_lite.infer.predict_volume` uses for a stack of ``shape``.

    Parameters
    ----------
    shape : tuple of 3 int
        (Z, Y, X) of the whole stack.
    network : torch.nn.Module
        Supplies the divisor (``required_divisor()`` or ``divisor``) tile sizes and starts must respect.
    tile, overlap, sigma_scale
        As for predict_volume.
    """
    if not 0.0 <= overlap < 1.0:
        raise NeurosegInputError(f"overlap must be in [0, 1) (a fraction of the tile), got {overlap!r}; "
                                 "0.25 is typical.")
    shape = tuple(int(n) for n in shape)
    divisor = _resolve_divisor(network, None)
    tile = _resolve_tile(tile, shape, divisor)
    windows = tuple(gaussian_window(t, sigma_scale=sigma_scale) for t in tile)
    axes = tuple(_plan_axis(n, t, d, overlap, w) for n, t, d, w in zip(shape, tile, divisor, windows))
    return TilePlan(shape, tile, windows, axes)


def block_regions(shape, block) -> list[tuple[slice, slice, slice]]:
    """All blocks of size ``block`` (the last ones shorter) tiling ``shape`` in C order, as slice triples."""
    grids = [[slice(a, min(a + b, n)) for a in range(0, n, b)] for n, b in zip(shape, block)]
    return [(z, y, x) for z in grids[0] for y in grids[1] for x in grids[2]]


# ----------------------------------------------------------------------------- intensity

def _order_statistics(values: np.ndarray, counts: np.ndarray, ranks) -> list[float]:
    """Values at the zero-based ``ranks`` of the sorted stack described by sorted distinct values and counts."""
    cumulative = np.cumsum(counts)
    return [float(values[np.searchsorted(cumulative, k, side="right")]) for k in ranks]


def _percentile_from_counts(values, counts, q: float) -> float:
    """np.percentile(stack, q) (method "linear") from the stack's distinct values and their counts."""
    n = int(np.sum(counts))
    index = (n - 1) * (q / 100.0)  # numpy's virtual index for the linear method
    below = int(np.floor(index))
    a, b = _order_statistics(values, counts, [below, min(below + 1, n - 1)])
    t = index - below
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end, which keeps the result monotone and exact at t = 1.
    return float(b - diff * (1 - t)) if t >= 0.5 else float(a + diff * t)


def _slabs(data):
    depth, height, width = (int(n) for n in data.shape)
    planes = max(1, _SCAN_VOXELS // max(1, height * width))
    for z0 in range(0, depth, planes):
        yield np.asarray(data[z0:z0 + planes])


def _check_finite(chunk, name):
    if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
        raise NeurosegInputError(f"{name} contains NaN or Inf values; replace them (e.g. np.nan_to_num) before "
                                 "predicting.")


def intensity_range(data, normalization: IntensityNormalization, *, name: str = "image"):
    """The (lo, hi) that io.normalize_percentile would compute on the whole stack, found block by block.

    Parameters
    ----------
    data : array-like of shape (Z, Y, X)
        ndarray, dask array, zarr array or anything sliceable along z; read a slab of planes at a time.
    normalization : IntensityNormalization
        The model's; ``method="none"`` needs no range.

    Returns
    -------
    tuple of 2 float, or None
        None for ``method="none"``. Exact (equal to ``np.percentile(data, [low, high])``) for integer
        dtypes, from the counts of each value; for floating point stacks exact up to 2**26 voxels (loaded
        whole), above that interpolated in a 2**20-bin histogram between the minimum and maximum, which
        is accurate to about (max - min) / 2**20.

    Raises
    ------
    NeurosegInputError
        NaN/Inf values, a constant stack, or both percentiles on the same value.
    """
    if normalization.method == "none":
        for chunk in _slabs(data):
            _check_finite(chunk, name)
        return None
    dtype = np.dtype(data.dtype)
    qs = (normalization.low, normalization.high)
    if np.issubdtype(dtype, np.floating) and int(np.prod(data.shape)) <= _EXACT_FLOAT_VOXELS:
        whole = np.asarray(data[:])
        _check_finite(whole, name)
        lo, hi = (float(v) for v in np.percentile(whole, qs))
    elif np.issubdtype(dtype, np.floating):
        low, high = np.inf, -np.inf
        for chunk in _slabs(data):
            _check_finite(chunk, name)
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        edges = np.linspace(low, high, _FLOAT_BINS + 1)
        counts = np.zeros(_FLOAT_BINS, dtype=np.int64)
        for chunk in _slabs(data):
            counts += np.bincount(np.clip(np.searchsorted(edges, chunk.ravel(), side="right") - 1, 0,
                                          _FLOAT_BINS - 1), minlength=_FLOAT_BINS)
        centres = 0.5 * (edges[:-1] + edges[1:])
        lo, hi = (_percentile_from_counts(centres[counts > 0], counts[counts > 0], q) for q in qs)
    elif dtype.itemsize <= 2:
        offset = int(np.iinfo(dtype).min)
        counts = np.zeros(1 << (8 * dtype.itemsize), dtype=np.int64)
        for chunk in _slabs(data):
            counts += np.bincount((chunk.ravel().astype(np.int64) - offset), minlength=counts.size)
        present = np.flatnonzero(counts)
        lo, hi = (_percentile_from_counts(present + offset, counts[present], q) for q in qs)
    else:
        values, counts = np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
        for chunk in _slabs(data):
            v, c = np.unique(chunk, return_counts=True)
            values, inverse = np.unique(np.concatenate([values, v]), return_inverse=True)
            counts = np.bincount(inverse, weights=np.concatenate([counts, c]), minlength=values.size).astype(np.int64)
        lo, hi = (_percentile_from_counts(values, counts, q) for q in qs)
    if hi <= lo:
        raise NeurosegInputError(
            f"the {normalization.low}th and {normalization.high}th percentiles of {name} are both {lo!r} (a constant "
            "stack, or most voxels share one value), so they cannot be mapped to 0 and 1; check the input, or "
            "use a model trained with a wider percentile range.")
    return lo, hi


def normalize_block(raw: np.ndarray, normalization: IntensityNormalization, value_range) -> np.ndarray:
    """Normalise one block with the global range, as the model's own normalisation does the whole stack."""
    out = raw.astype(np.float32)  # always a copy: the input is never modified
    if normalization.method == "none":
        if not np.issubdtype(raw.dtype, np.floating):
            raise NeurosegInputError(
                f"the stack has dtype {raw.dtype} (raw detector counts?), but this model was trained on images its "
                "user normalised (intensity normalisation 'none'); normalise it the same way first.")
    else:
        lo, hi = value_range
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
    if normalization.clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


# ----------------------------------------------------------------------------- one block

@contextlib.contextmanager
def prepared_network(network: torch.nn.Module, device: torch.device):
    """Eval mode, inference mode and (on the CPU) channels-last 3D weights, as predict_volume runs the network."""
    network.to(device)
    to_channels_last = device.type == "cpu" and any(
        p.dim() == 5 and not p.is_contiguous(memory_format=torch.channels_last_3d) for p in network.parameters())
    was_training = network.training
    network.eval()
    if to_channels_last:
        network.to(memory_format=torch.channels_last_3d)
    try:
        with torch.inference_mode():
            yield network
    finally:
        network.train(was_training)
        if to_channels_last:
            network.to(memory_format=torch.contiguous_format)


def predict_block(network, normalized: np.ndarray, origin, region, plan: TilePlan, *, batch_size: int = 2,
                  device=None) -> np.ndarray:
    """Probability of one output block: its intersecting tiles, Gaussian-blended, divided by the global weights.

    Parameters
    ----------
    network : torch.nn.Module
        Already prepared (:func:`prepared_network`).
    normalized : ndarray of shape (z, y, x), float32
        The normalised input over ``plan.input_region(region)`` (at least), starting at voxel ``origin``.
    origin : tuple of 3 int
        Global index of ``normalized[0, 0, 0]``.
    region : tuple of 3 slice
        The output block (global indices).
    plan : TilePlan
        The global plan of the whole stack.
    batch_size : int
    device : torch.device, optional
        Where ``network`` is; default the CPU.

    Returns
    -------
    ndarray of float32, shape of ``region``, values in [0, 1]
    """
    device = torch.device("cpu") if device is None else device
    tile = plan.tile
    wz, wy, wx = plan.windows
    window = torch.from_numpy((wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).astype(np.float32))
    window = window.to(device)
    param = next(network.parameters(), None)
    input_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if device.type == "cuda":
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast("cuda", dtype=half)
    else:
        autocast = contextlib.nullcontext()
    out = np.zeros(tuple(r.stop - r.start for r in region), dtype=np.float32)
    batch = np.empty((batch_size, 1) + tile, dtype=np.float32)
    pending: list[tuple[tuple[slice, ...], tuple[slice, ...]]] = []  # (block region, tile region) per tile

    def flush():
        with autocast:
            logits = network(torch.from_numpy(batch[:len(pending)]).to(device=device, dtype=input_dtype))
        if tuple(logits.shape) != (len(pending), 1) + tile:
            raise NeurosegInputError(f"the model returned shape {tuple(logits.shape)} for input "
                                     f"{(len(pending), 1) + tile}; it must map (N, 1, z, y, x) to one logit channel "
                                     "of the same size (like UNet3D).")
        weighted = torch.sigmoid(logits[:, 0].float()).mul_(window).cpu().numpy()
        for i, (inside_block, inside_tile) in enumerate(pending):
            out[inside_block] += weighted[i][inside_tile]
        pending.clear()

    per_axis = []
    for axis, indices, r, o in zip(plan.axes, plan.tiles_for(region), region, origin):
        entries = []
        for i in indices:
            start, count, offset = axis.sources[i]
            lo, hi = max(start, r.start), min(start + count, r.stop)  # the tile's voxels inside the block
            entries.append((slice(start - o, start - o + count), offset, count,
                            slice(lo - r.start, hi - r.start), slice(offset + lo - start, offset + hi - start)))
        per_axis.append(entries)
    for zs in per_axis[0]:
        for ys in per_axis[1]:
            for xs in per_axis[2]:
                source = normalized[zs[0], ys[0], xs[0]]
                pads = [(e[1], t - e[1] - e[2]) for e, t in zip((zs, ys, xs), tile)]
                slot = batch[len(pending), 0]
                if any(before or after for before, after in pads):
                    slot[...] = np.pad(source, pads, mode="reflect")
                else:
                    slot[...] = source
                pending.append(((zs[3], ys[3], xs[3]), (zs[4], ys[4], xs[4])))
                if len(pending) == batch_size:
                    flush()
    if pending:
        flush()
    for axis_index, (axis, r) in enumerate(zip(plan.axes, region)):
        inverse = (1.0 / axis.weight_sum).astype(np.float32)[r]
        out *= inverse.reshape([-1 if a == axis_index else 1 for a in range(3)])
    np.clip(out, 0.0, 1.0, out=out)
    return out
